"""The ALMA prox loop (Algorithm IV-2) on classification, and its building blocks."""

from __future__ import annotations

import math

import eagerpy as ep
import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin import ProxParams, alma_prox
from alma_plugin.core.constraints import dlr_plus, is_satisfied
from alma_plugin.core.penalties import p2, p2_derivative, p2_prox, p2_prox_derivative
from tests.core.host_reads import HostReads
from tests.utils import fit_full_batch

# One intra-op thread: these tiny models run faster than with two contended threads.
pytestmark = pytest.mark.usefixtures("single_thread")


def make_bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """12×12 grey images with a faint bar: horizontal, vertical, diagonal or anti-diagonal."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = 0.4 + 0.2 * torch.rand(n, 1, 12, 12, generator=g)
    idx = torch.arange(12)
    for i in range(n):
        pos = int(torch.randint(2, 10, (1,), generator=g))
        rows, cols = [(pos, idx), (idx, pos), (idx, idx), (idx, 11 - idx)][int(labels[i])]
        images[i, 0, rows, cols] += 0.2
    return images.clamp(0, 1), labels


@pytest.fixture(scope="module")
def bars_cnn() -> nn.Module:
    torch.manual_seed(0)
    images, labels = make_bars(256, seed=0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(288, 4)
    )
    return fit_full_batch(model, images, labels, steps=150, lr=1e-2)


@pytest.fixture(scope="module")
def bars_samples(bars_cnn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = make_bars(48, seed=5)
    with torch.no_grad():
        correct = bars_cnn(images).argmax(1) == labels
    assert correct.float().mean() > 0.9
    return images[correct][:32].clone(), labels[correct][:32].clone()


@pytest.mark.parametrize("num_classes", [2, 3, 4, 10])
@pytest.mark.parametrize("targeted", [False, True])
def test_dlr_plus_per_pixel_matches_per_row(num_classes, targeted):
    # Segmentation evaluates one constraint per pixel: logits (N, H, W, K), labels (N, H, W).
    torch.manual_seed(num_classes)
    logits = torch.randn(64, num_classes)
    labels = torch.randint(0, num_classes, (64,))
    expected = dlr_plus(ep.astensor(logits), ep.astensor(labels), targeted).raw
    dense = dlr_plus(
        ep.astensor(logits.reshape(2, 4, 8, num_classes)),
        ep.astensor(labels.reshape(2, 4, 8)),
        targeted,
    ).raw
    assert torch.allclose(dense.reshape(-1), expected, atol=1e-6)
    satisfied = is_satisfied(ep.astensor(logits), ep.astensor(labels), targeted).raw
    assert torch.equal(dense.reshape(-1) < 0, satisfied)


def test_modified_p2_eq_5_9():
    y = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    for rho_value in (0.01, 0.5, 1.0, 4.0):
        rho, mu = torch.full_like(y, rho_value), torch.full_like(y, 0.7)
        value = p2_prox(ep.astensor(y), ep.astensor(rho), ep.astensor(mu)).raw
        r = max(1.0, rho_value)
        yd = y.detach()
        expected = torch.where(
            yd >= 0, 0.7 * yd + 0.7 * rho_value * yd**2 + rho_value**2 * yd**3 / 6,
            0.7 * yd / (1 - r * yd),
        )  # fmt: skip
        assert torch.allclose(value, expected)
        (grad,) = torch.autograd.grad(value.sum(), y)
        derivative = p2_prox_derivative(ep.astensor(yd), ep.astensor(rho), ep.astensor(mu)).raw
        assert torch.allclose(grad, derivative)
        # P′(0) = μ, and for ρ ≥ 1 it is the original P2
        assert abs(derivative[50].item() - 0.7) < 1e-12
        if rho_value >= 1:
            assert torch.allclose(value, p2(ep.astensor(yd), ep.astensor(rho), ep.astensor(mu)).raw)
            assert torch.allclose(
                derivative, p2_derivative(ep.astensor(yd), ep.astensor(rho), ep.astensor(mu)).raw
            )


def test_classification_success_and_norms(bars_cnn, bars_samples):
    images, labels = bars_samples
    before = images.clone(), labels.clone()
    params_before = [p.detach().clone() for p in bars_cnn.parameters()]
    result = alma_prox(bars_cnn, ep.astensor(images), ep.astensor(labels), steps=300)
    adv = result.adversarials.raw
    assert torch.equal(images, before[0]) and torch.equal(labels, before[1])
    assert all(torch.equal(a, b) for a, b in zip(params_before, bars_cnn.parameters(), strict=True))
    assert all(p.grad is None for p in bars_cnn.parameters())
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (bars_cnn(adv).argmax(1) != labels).all()
    assert result.success.raw.all() and (result.apsr.raw == 1).all()
    norms = result.distances.raw
    assert torch.allclose(norms, (adv - images).flatten(1).abs().max(1).values)
    median = norms.median().item()
    print(f"classification: success 100%, median linf {median:.4f}, max {norms.max():.4f}")
    assert 0 < median < 0.06


def test_classification_targeted(bars_cnn, bars_samples):
    images, labels = bars_samples[0][:8], bars_samples[1][:8]
    targets = (labels + 1) % 4
    result = alma_prox(
        bars_cnn, ep.astensor(images), ep.astensor(targets), targeted=True, steps=300
    )
    assert result.success.raw.all()
    with torch.no_grad():
        assert (bars_cnn(result.adversarials.raw).argmax(1) == targets).all()


def test_classification_criterion(bars_cnn, bars_samples):
    images, labels = ep.astensor(bars_samples[0][:4]), ep.astensor(bars_samples[1][:4])
    never = alma_prox(bars_cnn, images, labels, steps=20, is_adversarial=lambda x, z: z[:, 0] > 1e9)
    assert not never.success.raw.any() and torch.equal(never.adversarials.raw, images.raw)
    assert never.distances.raw.isinf().all() and (never.apsr.raw == 0).all()
    always = alma_prox(
        bars_cnn, images, labels, steps=5, is_adversarial=lambda x, z: z[:, 0] > -1e9
    )
    assert always.success.raw.all() and (always.distances.raw == 0).all()


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.forwards, self.backwards = model, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        out = self.model(x)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backwards += 1


@pytest.mark.parametrize("steps", [1, 7, 25])
def test_one_forward_one_backward_per_step(bars_cnn, bars_samples, steps):
    counting = Counting(bars_cnn)
    images, labels = bars_samples[0][:4], bars_samples[1][:4]
    alma_prox(counting, ep.astensor(images), ep.astensor(labels), steps=steps)
    assert counting.forwards == steps and counting.backwards == steps
    dense = Counting(nn.Conv2d(1, 3, 3, padding=1))
    seg_labels = torch.randint(0, 3, (4, 12, 12), generator=torch.Generator().manual_seed(0))
    alma_prox(dense, ep.astensor(images), ep.astensor(seg_labels), steps=steps)
    assert dense.forwards == steps and dense.backwards == steps


def test_deterministic_under_a_fixed_setting(bars_cnn, bars_samples):
    """Same process, same inputs: bit-identical results (the solver draws nothing at random)."""
    images, labels = bars_samples[0][:6], bars_samples[1][:6]

    def run():
        return alma_prox(bars_cnn, ep.astensor(images), ep.astensor(labels), steps=60)

    a, b = run(), run()
    assert torch.equal(a.adversarials.raw, b.adversarials.raw)
    assert torch.equal(a.distances.raw, b.distances.raw)


def test_bounds_invariant_exactly_on_an_affine_float64_model():
    """Hyperparameters live in [0, 1]: a model taking [0, 255] inputs gets the same attack.
    Asserted where it is exact (float64, an affine model: no kink a rounding can cross)."""
    torch.manual_seed(0)
    affine = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).double().eval()
    images = torch.rand(8, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        labels = affine(images).argmax(1)
    a = alma_prox(affine, ep.astensor(images), ep.astensor(labels), steps=40)
    scaled = lambda x: affine(x / 255)  # noqa: E731
    c = alma_prox(scaled, ep.astensor(images * 255), ep.astensor(labels), steps=40, bounds=(0, 255))
    assert c.adversarials.raw.min() >= 0 and c.adversarials.raw.max() <= 255
    assert a.success.raw.all() and torch.equal(c.success.raw, a.success.raw)
    assert torch.allclose(c.distances.raw, a.distances.raw, rtol=1e-6, atol=1e-9)
    assert torch.allclose(c.adversarials.raw / 255, a.adversarials.raw, atol=1e-9)


def test_bounds_invariant_in_aggregate(bars_cnn, bars_samples):
    """On a ReLU CNN in float32 the [0, 1] and [0, 255] runs may end in different local optima
    for single samples (rounding differs), so only the aggregate is compared, with margins."""
    images, labels = bars_samples
    a = alma_prox(bars_cnn, ep.astensor(images), ep.astensor(labels), steps=60)
    scaled = lambda x: bars_cnn(x / 255)  # noqa: E731
    c = alma_prox(scaled, ep.astensor(images * 255), ep.astensor(labels), steps=60, bounds=(0, 255))
    assert abs(int(a.success.raw.sum()) - int(c.success.raw.sum())) <= 2
    both = a.success.raw & c.success.raw
    ratio = c.distances.raw[both].median() / a.distances.raw[both].median()
    assert 0.9 < float(ratio) < 1.1


def test_rho_never_exceeds_rho_max():
    """ρ ← min(γρ, ρ_max) (the float32 safeguard): a model that cannot be fooled stalls every
    constraint, so ρ grows every M steps; with γ = 2 over 60 steps it would reach 64 > 5."""

    class Stubborn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # class 0 always wins by far
            return 1e-3 * self.lin(x.flatten(1)) + torch.tensor([10.0, 0.0, -1.0], dtype=x.dtype)

    torch.manual_seed(0)
    images = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    labels = torch.zeros(2, dtype=torch.long)
    rhos: list[torch.Tensor] = []
    result = alma_prox(Stubborn(), images, labels, steps=60,
                       params=ProxParams(rho_max=5.0, gamma=2.0),
                       callback=lambda info: rhos.append(info.rho))  # fmt: skip
    assert not result.success.any()
    assert max(float(rho.max()) for rho in rhos) == 5.0


def _dense_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(8, 4, 3, padding=1)).double().eval()  # fmt: skip


def test_rho_grows_only_inside_the_user_mask():
    """Algorithm IV-2 steps 14–19 grow ρ on the constraints of m̃ (user mask ∧ percentile mask)
    only: pixels outside ``masks`` keep ρ⁽⁰⁾ for the whole attack, while stalled ones inside
    grow. (A mutation growing every stalled constraint survived the suite before this test.)"""
    model = _dense_model()
    images = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        labels = model(images).argmax(1)
    masks = torch.zeros_like(labels, dtype=torch.bool)
    masks[:, :, :3] = True
    rhos: list[torch.Tensor] = []
    alma_prox(model, images, labels, masks=masks, steps=60, params=ProxParams(rho_init=1.0),
              callback=lambda info: rhos.append(info.rho.reshape(2, 6, 6)))  # fmt: skip
    assert all((rho[~masks] == 1.0).all() for rho in rhos)
    assert (rhos[-1][masks] > 1.0).any()


def test_a_failed_dense_sample_reports_the_apsr_of_the_returned_input():
    """Where the attack fails, the input itself is returned, and ``apsr`` is that of the
    returned tensor: the clean input's APSR (here 2 of 36 pixels already wrong), not 0."""
    model = _dense_model()
    images = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[:, 0, :2] = (labels[:, 0, :2] + 1) % 4
    result = alma_prox(model, images, labels, steps=3)  # far too few steps for APSR ≥ 0.99
    assert not result.success.any() and torch.equal(result.adversarials, images)
    assert torch.equal(result.apsr, torch.full((2,), 2 / 36, dtype=result.apsr.dtype))


def test_apsr_with_restarts_is_that_of_the_returned_adversarials():
    """``apsr`` after R runs is the APSR of the tensor returned, re-evaluated on the model, for
    when a later run wins for some samples (before a mutation
    audit, the only restarts test had ν = 1, where every chosen run reports APSR 1, and taking
    the APSR of the other run went unnoticed)."""
    model = _dense_model()
    images = torch.rand(8, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        labels = model(images).argmax(1)
    seen: list[int] = []

    def record(info) -> None:
        seen.append(info.step)

    result = alma_prox(model, images, labels, steps=60, restarts=3, adv_threshold=0.6,
                       init_lr=0.05, callback=record)  # fmt: skip
    one_run = alma_prox(model, images, labels, steps=20, adv_threshold=0.6, init_lr=0.05)
    with torch.no_grad():
        wrong = (model(result.adversarials).argmax(1) != labels).double()
    torch.testing.assert_close(result.apsr, wrong.flatten(1).mean(1), rtol=0, atol=1e-12)
    assert result.success.any()
    later = result.success & (~one_run.success | (result.distances < one_run.distances))
    assert later.any() and len(seen) == 60  # a later run won somewhere


@pytest.mark.parametrize(
    ("dtype", "bounds"),
    [(torch.float16, (0.0, 1.0)), (torch.bfloat16, (0.0, 1.0)), (torch.float32, (0.0, 255.0)),
     (torch.float32, (-1.0, 1.0))],
)  # fmt: skip
def test_what_alma_prox_tracks_and_reports_is_what_the_model_saw(dtype, bounds):
    """Each step's distance (the callback's) is ‖x̃ − x‖∞ of the very tensor the model was
    given (exactly where it was rounded to a 16-bit dtype), and the reported distances are
    those of the returned adversarials, bit for bit (same process, same operations). Mutations
    tracking the float32 δ instead of the rounded one, or reporting the tracked norm, passed
    the suite before."""
    lower, upper = bounds
    span = upper - lower
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).to(dtype)
    x = (lower + torch.rand(32, 3, 4, 4) * span).to(dtype)
    seen: list[torch.Tensor] = []

    def model(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.detach().clone())
        return linear((z - lower) / span)

    with torch.no_grad():
        labels = model(x).argmax(1)
    seen.clear()
    distances: list[torch.Tensor] = []
    result = alma_prox(model, x, labels, steps=50, bounds=bounds,
                       callback=lambda info: distances.append(info.distance))  # fmt: skip
    assert result.success.sum() >= 24

    def measured(z: torch.Tensor) -> torch.Tensor:
        return ((z.float() - x.float()) / span).flatten(1).abs().amax(1)

    assert len(seen) == len(distances) == 50
    for step, (given, distance) in enumerate(zip(seen, distances, strict=True)):
        if dtype == torch.float32:  # δ itself (no rounding to re-measure): to its last bits
            torch.testing.assert_close(distance, measured(given), rtol=1e-6, atol=3e-7)
        else:
            assert torch.equal(distance, measured(given)), step
    solved = result.success
    assert torch.equal(result.distances[solved], measured(result.adversarials)[solved])


def test_early_stop_ends_the_run_and_zero_never_does(bars_cnn, bars_samples):
    images, labels = ep.astensor(bars_samples[0][:4]), ep.astensor(bars_samples[1][:4])
    counting = Counting(bars_cnn)
    full = alma_prox(counting, images, labels, steps=50, early_stop=0.0)
    assert counting.forwards == 50
    assert full.success.raw.all()
    counting.forwards = 0
    stop = float(full.distances.raw.max()) * 1.5
    early = alma_prox(counting, images, labels, steps=50, early_stop=stop)
    assert counting.forwards < 50
    assert early.success.raw.all() and (early.distances.raw < stop).all()


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("early_stop", [None, 1e-9])
def test_no_host_reads_after_the_first_step_but_the_early_stop_check(
    monkeypatch, bars_cnn, bars_samples, dense, early_stop
):
    """Before: the prox read ‖P_Λ(δ)‖∞ back for its ternary iteration count, dense outputs
    copied the masking percentile to the device, and the early-stop test was read, at every
    step (three GPU synchronisations per step)."""
    images, labels = bars_samples[0][:4], bars_samples[1][:4]
    model = bars_cnn
    if dense:  # one constraint per pixel: logits (N, K, 12, 12), a label map per image
        model = nn.Conv2d(1, 3, 3, padding=1).eval()
        with torch.no_grad():
            labels = model(images).argmax(1)
    reads = HostReads(monkeypatch)
    alma_prox(model, images, labels, steps=25, check_steps=10, early_stop=early_stop,
              callback=reads.callback)  # fmt: skip
    assert reads.after_step_zero() == ({} if early_stop is None else {10: 1, 20: 1})


def test_early_stop_read_every_m_steps_keeps_the_every_step_result(bars_cnn, bars_samples):
    images, labels = bars_samples[0][:4], bars_samples[1][:4]
    records = []
    alma_prox(bars_cnn, images, labels, steps=50, callback=records.append)
    best, bests = torch.full((4,), torch.inf), []
    for info in records:
        best = torch.where(info.success & (info.distance < best), info.distance, best)
        bests.append(best)
    cases = [
        (t, bests[t].max().item() * (1 + 1e-6))
        for t in range(50)
        if (t + 1) % 10 and torch.isfinite(bests[t]).all()
        and bests[t].max() < bests[t - 1].max() and (bests[(t // 10) * 10 + 9] < bests[t]).any()
    ]  # fmt: skip
    assert cases
    t_stop, stop = cases[0]
    result = alma_prox(bars_cnn, images, labels, steps=50, early_stop=stop)
    assert result.steps_run == (t_stop // 10 + 1) * 10
    torch.testing.assert_close(result.distances, bests[t_stop], rtol=1e-6, atol=0)


def test_classification_bad_inputs(bars_cnn):
    fn, x, y = bars_cnn, torch.rand(2, 1, 12, 12), torch.tensor([0, 1])
    cases = [
        (dict(inputs=x * 2), ValueError, "within bounds"),
        (dict(inputs=x.masked_fill(x > 0.5, float("nan"))), ValueError, "NaN"),
        (dict(inputs=x.long()), TypeError, "floating"),
        (dict(labels=y.float()), TypeError, "integer"),
        (dict(labels=y[:1]), ValueError, "labels must have shape"),
        (dict(labels=y[:, None]), ValueError, r"labels must have shape \(N,\)"),
        (dict(labels=torch.tensor([0, 4])), ValueError, r"labels must lie in \[0, 4\)"),
        (
            dict(labels=torch.tensor([0, -1])),
            ValueError,
            r"labels must lie in \[0, K\), K the .* \[-1, 0\]",
        ),
        (dict(steps=0), ValueError, "steps must be >= 1, got 0"),
        (dict(steps=2.5), TypeError, "steps must be an integer"),
        (dict(bounds=(1, 0)), ValueError, "bounds"),
        (dict(gamma=0.5), ValueError, "gamma"),
        (dict(unknown_option=1), TypeError, "unknown_option"),
    ]
    for change, error, message in cases:
        kwargs = dict(inputs=x, labels=y, steps=2)
        kwargs.update(change)
        inputs, labels = ep.astensor(kwargs.pop("inputs")), ep.astensor(kwargs.pop("labels"))
        with pytest.raises(error, match=message):
            alma_prox(fn, inputs, labels, **kwargs)
    with pytest.raises(ValueError, match=r"model outputs must have shape \(N=2, K>=2\)"):
        alma_prox(lambda z: z, ep.astensor(x), ep.astensor(y), steps=1)
    assert ProxParams().alpha == 0.8  # §5.5.5.3
    assert ProxParams().for_task("segmentation").rho_init == 0.01  # §5.5.5.3


@pytest.mark.parametrize(
    ("count", "nu", "step", "steps", "decay"),
    [(10, 0.5, 1, 3, False), (10, 0.5, 2, 3, False), (10, 0.99, 2, 3, True),
     (10, 0.95, 3, 3, True), (36, 0.99, 5, 5, True), (100, 0.99, 5, 5, True),
     (7, 0.5, 1, 9, True), (3, 0.1, 9, 9, True), (10, 0.1, 9, 9, True),
     (7, 0.5, 15, 50, True),  # f‖m‖₁ = 6 exactly: 1 − ½·14/49 = 6/7
     (490, 0.9, 2, 50, True),  # f‖m‖₁ = 489 exactly as written (0.9 in binary: 489.000…1)
     (1, 0.99, 1, 1, True)],
)  # fmt: skip
def test_masking_rank_keeps_the_fraction_of_eq_5_6(count, nu, step, steps, decay):
    """Eq. 5.6: m̃⁽ᵗ⁾ keeps the f-percentile of d, f = 1 − (1 − ν)(t − 1)/(N − 1) (ν throughout
    without decay), so ‖m̃‖₁ ≥ f‖m‖₁, and only the largest constraints beyond that are
    discarded: the ⌈f‖m‖₁⌉ smallest are kept (at least one), the percentile being the one of
    0-based rank ⌈f‖m‖₁⌉ − 1, in exact fractions of ν as written (a float f made 6/7·7 keep
    all 7). The last step keeps at least what success needs."""
    from fractions import Fraction

    from alma_plugin.core.prox_schedule import least_count, masking_rank

    progress = Fraction(step - 1, steps - 1) if decay and steps > 1 else Fraction(int(not decay))
    fraction = 1 - (1 - Fraction(str(nu))) * progress
    kept = max(math.ceil(fraction * count), 1)
    rank = masking_rank(np.array([count]), nu, step, steps, decay)
    assert rank.shape == (1, 1) and int(rank[0, 0]) == kept - 1
    if step == steps or not decay:
        assert kept >= int(least_count(nu, np.array([count]))[0])


def test_constraint_mask_keeps_the_user_masked_constraints_up_to_the_percentile():
    """m̃ = m ∧ [d ≤ ξ], ξ the rank-th smallest d among the constraints of m: ξ itself is kept
    (d ≤ ξ), constraints outside m are neither counted nor kept."""
    from alma_plugin.core.prox_schedule import constraint_mask

    d = torch.tensor([[0.3, -0.1, 0.2, 0.5], [0.3, -0.1, 0.2, 0.5]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True], [True, False, True, True]])
    rank = torch.tensor([[1], [1]])
    kept = constraint_mask(ep.astensor(d), ep.astensor(mask), ep.astensor(rank)).raw
    assert torch.equal(kept, torch.tensor([[False, True, True, False], [True, False, True, False]]))
