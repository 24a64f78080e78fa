"""Restarts inside the budget (``restarts`` = R, :mod:`alma_plugin.core.restarts`): the budget
is shared exactly, each sample keeps the best of every run, run k starts where its docs say, the
early stop counts earlier runs, and R = 1 is the published algorithm."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from alma_plugin import ProxParams, StepInfo, alma, alma_prox
from alma_plugin.core.restarts import split_budget
from tests.utils import CountingModel

pytestmark = pytest.mark.usefixtures("single_thread")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def _attack(distance: str, **options: Any) -> Any:
    """alma() for ℓ1 / ℓ2, alma_prox() (through alma) for ℓ∞, on the same batch."""
    x, y = _batch(16 if "labels" in options else 8)
    y = options.pop("labels", y)
    model = options.pop("model", _model())
    if distance == "linf":
        shared = ("restarts", "restart_distance", "first_run_share")
        params = ProxParams(**{k: options.pop(k) for k in shared if k in options})
        return alma(model, x, y, distance="linf", params=params, **options)
    return alma(model, x, y, distance=distance, **options)


@pytest.mark.parametrize(
    ("steps", "restarts", "expected"),
    [(10, 1, [10]), (10, 2, [5, 5]), (11, 3, [4, 4, 3]), (3, 3, [1, 1, 1])],
)
def test_split_budget(steps: int, restarts: int, expected: list[int]) -> None:
    assert split_budget(steps, restarts) == expected


@pytest.mark.parametrize(
    ("steps", "restarts", "share", "expected"),
    [
        (100, 2, 0.7, [70, 30]),
        (100, 3, 0.7, [70, 15, 15]),
        (11, 3, 0.3, [3, 4, 4]),
        (1000, 2, 0.65, [650, 350]),
        (5, 3, 0.9, [3, 1, 1]),  # every other run keeps a step
        (5, 3, 0.01, [1, 2, 2]),  # run 0 keeps a step
        (10, 1, 0.7, [10]),  # one run: the whole budget
        (10, 2, None, [5, 5]),
    ],
)
def test_split_budget_with_a_first_run_share(
    steps: int, restarts: int, share: float | None, expected: list[int]
) -> None:
    assert split_budget(steps, restarts, share) == expected
    assert sum(expected) == steps


def test_more_runs_than_steps_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"restarts must be at most steps.*restarts=4.*steps=3"):
        split_budget(3, 4)


def test_every_class_checks_restarts_against_its_default_budget_at_construction() -> None:
    """Before: torchattacks' ALMA with steps=None accepted restarts=2000 at construction and
    refused it only at the call, while its docs (and the Foolbox classes) check values there."""
    pytest.importorskip("torchattacks")
    from alma_plugin.core.params import PROX_STEPS
    from alma_plugin.torchattacks import ALMA as TorchattacksALMA

    model = _model()
    with pytest.raises(ValueError, match=r"restarts=1001 with steps=1000"):
        TorchattacksALMA(model, restarts=1001)
    with pytest.raises(ValueError, match=rf"restarts={PROX_STEPS + 1} with steps={PROX_STEPS}"):
        TorchattacksALMA(model, "linf", params=ProxParams(restarts=PROX_STEPS + 1))
    TorchattacksALMA(model, restarts=1000)  # one step per run: allowed


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
@pytest.mark.parametrize(
    ("steps", "restarts", "share"), [(10, 2, None), (11, 3, None), (5, 5, None), (10, 2, 0.7)]
)
def test_exactly_one_forward_and_backward_per_step(
    distance: str, steps: int, restarts: int, share: float | None
) -> None:
    model = CountingModel(_model())
    result = _attack(distance, model=model, steps=steps, restarts=restarts, first_run_share=share)
    assert (model.forwards, model.backwards) == (steps, steps)
    assert result.steps_run == steps


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
def test_each_sample_keeps_the_best_iterate_of_every_run(distance: str) -> None:
    """The returned distance is the smallest adversarial distance the callback saw over all
    runs (every step is numbered once, 0 … N − 1), and the first success is the first step
    the callback saw succeed."""
    seen: list[StepInfo] = []
    result = _attack(distance, steps=30, restarts=3, callback=seen.append)
    assert [info.step for info in seen] == list(range(30))
    distances = torch.stack([info.distance for info in seen])
    success = torch.stack([info.success for info in seen])
    best = torch.where(success, distances, torch.inf).amin(0)
    torch.testing.assert_close(result.distances, best)
    first = torch.where(success.any(0), success.int().argmax(0), -1)
    assert torch.equal(result.first_success_step, first)
    assert torch.isfinite(result.distances).all()


def test_a_restart_starts_at_restart_distance() -> None:
    """ALMA: run k ≥ 1 starts at D(x̃⁽⁰⁾, x) = restart_distance (to the §3.2.3 search's 0.1 %);
    ALMA prox: at ‖δ⁽⁰⁾‖∞ ≤ r, and above r/2 for this many coordinates."""
    seen: list[StepInfo] = []
    _attack("l2", steps=20, restarts=2, restart_distance=0.3, callback=seen.append)
    assert seen[0].distance.abs().max() == 0  # run 0 starts from x
    torch.testing.assert_close(seen[10].distance, torch.full((8,), 0.3), rtol=1e-3, atol=0)
    seen.clear()
    _attack("linf", steps=20, restarts=2, restart_distance=0.05, callback=seen.append)
    assert seen[0].distance.max() == 0
    assert (seen[10].distance <= 0.05 + 1e-7).all() and (seen[10].distance > 0.025).all()


@pytest.mark.parametrize("smooth_max", [0.0, None])  # Algorithm 2's gradient; the default κ
def test_a_random_restart_searches_its_initial_step_along_the_constraint_gradient(
    smooth_max: float | None,
) -> None:
    """§3.2.3 at a random restart: η⁽⁰⁾ of run k ≥ 1 makes the first step along ∇DLR⁺(x̃⁽⁰⁾)
    (with a smoothed max, the gradient the steps descend) add ε to D. There D ≠ 0 and
    ∇L = ∇D + P′·∇DLR⁺, so ∇D must be taken out of the search direction. x̃⁽⁰⁾ and η⁽⁰⁾ are
    recomputed here (float64) and compared with the step size the callback reports at run 1's
    first step. (A search along ∇L survived the suite before this test.)"""
    import eagerpy as ep

    from alma_plugin import DISTANCES
    from alma_plugin.core.constraints import descent_constraint
    from alma_plugin.core.restarts import restart_rng, uniform_noise
    from alma_plugin.core.schedules import initial_step_size
    from alma_plugin.distances import l2

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 5)).double().eval()  # fmt: skip
    x = 0.25 + 0.5 * torch.rand(4, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    seen: list[StepInfo] = []
    alma(model, x, y, steps=4, restarts=2, restart_mode="random", init_lr_distance=0.1,
         restart_distance=0.3, smooth_max=smooth_max, callback=seen.append)  # fmt: skip
    kappa = DISTANCES["l2"].smooth_max if smooth_max is None else smooth_max
    ex = ep.astensor(x)
    noise = uniform_noise(ex, restart_rng(0, 1))
    start = (ex - initial_step_size(l2, ex, noise, 0.3).reshape((-1, 1, 1, 1)) * noise).clip(0, 1)
    leaf = start.raw.clone().requires_grad_(True)
    d = descent_constraint(ep.astensor(model(leaf)), ep.astensor(y), False, kappa)
    (g,) = torch.autograd.grad(d.raw.sum(), leaf)
    expected = initial_step_size(l2, ex, ep.astensor(g), 0.1).raw
    torch.testing.assert_close(seen[2].step_size, expected, rtol=1e-9, atol=0)  # run 1, step 0


def test_the_prox_restart_radius_follows_the_step_size() -> None:
    """ALMA prox's default r is λ⁽⁰⁾ / 4: 0.05 with the classification λ⁽⁰⁾ = 0.2, 0.01 with
    ``init_lr=0.04`` (the scale a user sets λ⁽⁰⁾ for is the scale of the start)."""
    assert ProxParams().for_task("classification").restart_distance == 0.05
    assert ProxParams().for_task("segmentation").restart_distance == 2.5e-4
    assert ProxParams(restart_distance=0.3).for_task("classification").restart_distance == 0.3
    seen: list[StepInfo] = []
    x, y = _batch()
    alma(_model(), x, y, distance="linf", steps=20, params=ProxParams(restarts=2, init_lr=0.04),
         callback=seen.append)  # fmt: skip
    assert (seen[10].distance <= 0.01 + 1e-7).all() and (seen[10].distance > 0.005).all()


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_seeded_restarts_are_deterministic_and_the_seed_matters(distance: str) -> None:
    def starts(seed: int) -> torch.Tensor:
        seen: list[StepInfo] = []
        _attack(distance, steps=10, restarts=2, seed=seed, callback=seen.append)
        return torch.stack([info.constraint for info in seen[5:]])  # run 1's iterates

    assert torch.equal(starts(0), starts(0))
    assert not torch.equal(starts(0), starts(1))


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
def test_one_run_ignores_the_restart_options(distance: str) -> None:
    """R = 1 is the published algorithm: restart_distance and (ALMA prox) the seed change
    nothing."""
    plain = _attack(distance, steps=15)
    other = _attack(distance, steps=15, restarts=1, restart_distance=0.7)
    assert torch.equal(plain.adversarials, other.adversarials)
    if distance == "linf":
        assert torch.equal(plain.adversarials, _attack(distance, steps=15, seed=5).adversarials)


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_early_stop_counts_the_samples_earlier_runs_solved(distance: str) -> None:
    """A threshold every sample meets in run 0 ends the attack at run 0's first check; the
    later runs do not run."""
    model = CountingModel(_model())
    result = _attack(distance, model=model, steps=40, restarts=2, early_stop=100.0)
    assert result.steps_run == 10 and model.forwards == 10  # M = check_steps = 10
    assert result.success.all()


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_early_stop_zero_never_ends_a_run_or_skips_the_next(distance: str) -> None:
    """``early_stop=0`` never stops (D < early_stop), across runs too: with every input already
    misclassified (D = 0 from run 0's step 0) both runs still spend their whole share. (With
    D ≤ early_stop between runs, run 1 would be skipped: that mutation survived the suite
    before this test.)"""
    x, _ = _batch(16)
    model = CountingModel(_model())
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 5
    model.forwards = 0
    result = _attack(distance, model=model, labels=wrong, steps=30, restarts=2, early_stop=0.0)
    assert result.success.all() and (result.distances == 0).all()
    assert result.steps_run == 30 and model.forwards == 30


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_a_run_stops_early_for_samples_earlier_runs_solved(distance: str) -> None:
    """A later run is told which samples earlier runs brought below ``early_stop``: with all of
    them solved, it stops at its first check (M = 10 steps) although its own iterates never get
    below the threshold; with none solved, it runs to the end."""
    import eagerpy as ep

    from alma_plugin.core.params import ALMAParams
    from alma_plugin.core.prox_solver import alma_prox_solve
    from alma_plugin.core.restarts import Place
    from alma_plugin.core.solver import alma_solve
    from alma_plugin.distances import l2

    x, y = (ep.astensor(t) for t in _batch())
    model = _model()

    def run(solved: bool) -> int:
        place = Place(index=1, steps=30, offset=30, solved=ep.full(y, (8,), solved) > 0.5)
        if distance == "linf":
            params = ProxParams(restarts=2).for_task("classification")
            result = alma_prox_solve(lambda u: model(u.raw), x, y, params=params, steps=30,
                                     early_stop=1e-9, place=place)  # fmt: skip
        else:
            params = ALMAParams(restarts=2).for_budget(60, 0.1, 0.0)
            result = alma_solve(lambda u: model(u.raw), x, y, distance=l2, params=params,
                                steps=30, early_stop=1e-9, place=place)  # fmt: skip
        return result.steps_run

    assert (run(solved=True), run(solved=False)) == (10, 30)


def test_restarts_return_the_prox_apsr_of_the_chosen_run() -> None:
    """Dense ALMA prox: the APSR reported is that of the returned adversarial."""
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    images = torch.rand(2, 3, 6, 6, generator=gen)
    labels = net(images).argmax(1).detach()
    result = alma_prox(net, images, labels, steps=12, params=ProxParams(restarts=3))
    with torch.no_grad():
        fooled = (net(result.adversarials).argmax(1) != labels).float().flatten(1).mean(1)
    success = result.success
    torch.testing.assert_close(result.apsr[success], fooled[success])
    assert np.isfinite(result.distances[success].numpy()).all()


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_first_success_counts_steps_from_the_first_run(distance: str) -> None:
    """A sample first fooled by a later run reports the step number of the whole attack: two
    one-step runs, run 0 at x (clean, not adversarial), run 1 at a far random start."""
    x, _ = _batch(16)
    model = _model()
    with torch.no_grad():
        y = model(x).argmax(1)
    far = 3.0 if distance == "l2" else 0.9
    seen: list[StepInfo] = []
    result = _attack(distance, model=model, labels=y, steps=2, restarts=2, restart_distance=far,
                     callback=seen.append)  # fmt: skip
    assert not seen[0].success.any() and seen[1].success.any()
    assert torch.equal(result.first_success_step, torch.where(seen[1].success, 1, -1))


def test_a_restart_starts_on_the_grid_of_levels() -> None:
    """With ``levels``, a restart's random start is quantised like every later iterate: a sample
    fooled at the start of run 1 (two one-step runs, a far start, mostly inside the box) comes
    back on the grid."""
    x, _ = _batch(16)
    x = (x * 255).round() / 255
    model = _model()
    with torch.no_grad():
        y = model(x).argmax(1)
    seen: list[StepInfo] = []
    result = alma(model, x, y, steps=2, restarts=2, restart_distance=1.0, levels=256,
                  callback=seen.append)  # fmt: skip
    assert seen[1].success.any()
    scaled = result.adversarials * 255
    torch.testing.assert_close(scaled, scaled.round(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("distance", ["l2", "linf"])
@pytest.mark.parametrize("early_stop", [None, 1e-9])
def test_host_reads_only_at_the_start_of_each_run_and_every_m_steps(
    monkeypatch: pytest.MonkeyPatch, distance: str, early_stop: float | None
) -> None:
    """R = 2 runs of 15 steps, M = 10: the host reads at each run's step 0 (input checks, the
    η⁽⁰⁾ search, the random start, and between runs whether early_stop already holds) and at
    the early-stop checks (steps 10 and 15 + 10 = 25), nowhere else."""
    from tests.core.host_reads import HostReads

    reads = HostReads(monkeypatch)
    options: dict[str, Any] = {"steps": 30, "restarts": 2, "early_stop": early_stop,
                               "callback": reads.callback}  # fmt: skip
    if distance == "linf":
        x, y = _batch()
        alma(_model(), x, y, distance="linf", steps=30, early_stop=early_stop,
             callback=reads.callback, params=ProxParams(restarts=2, check_steps=10))  # fmt: skip
    else:
        _attack(distance, check_steps=10, **options)
    later = reads.after_step_zero()
    assert 15 in later  # run 1's step 0
    expected = {15} if early_stop is None else {10, 15, 25}
    assert set(later) == expected, later
    if early_stop is not None:
        assert later[10] == later[25] == 1


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
@pytest.mark.parametrize(("steps", "share"), [(300, None), (200, 0.75)])
def test_run_zero_is_the_published_algorithm_with_its_share_of_the_steps(
    distance: str, steps: int, share: float | None
) -> None:
    """Run 0 of R = 2 over 2N steps, or of ``first_run_share=0.75`` over 4N/3, is, bit for bit,
    the one-run attack of N steps (α and the schedule follow N: α = 0.57 for 150 steps, not
    0.69 for 300), so restarts never return a larger distance than that attack."""
    first: list[StepInfo] = []
    alone = _attack(distance, steps=150, restarts=1, callback=first.append)
    both: list[StepInfo] = []
    restarted = _attack(distance, steps=steps, restarts=2, first_run_share=share,
                        callback=both.append)  # fmt: skip
    for a, b in zip(first, both[:150], strict=True):
        assert torch.equal(a.distance, b.distance) and torch.equal(a.constraint, b.constraint)
    assert (restarted.distances <= alone.distances).all()


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_the_next_run_starts_after_the_first_run_share(distance: str) -> None:
    """With ``first_run_share=0.7`` over 20 steps, run 1 starts at step 14 (its random start at
    ``restart_distance``), not at the even split's step 10; ``first_success_step`` and the
    callback count on across runs."""
    seen: list[StepInfo] = []
    radius = 0.3 if distance == "l2" else 0.05
    _attack(distance, steps=20, restarts=2, restart_distance=radius, first_run_share=0.7,
            callback=seen.append)  # fmt: skip
    assert [info.step for info in seen] == list(range(20))
    if distance == "l2":
        torch.testing.assert_close(seen[14].distance, torch.full((8,), radius), rtol=1e-3, atol=0)
    else:
        assert (seen[14].distance <= radius + 1e-7).all() and (seen[14].distance > 0.025).all()
    plain: list[StepInfo] = []
    _attack(distance, steps=14, callback=plain.append)
    for a, b in zip(plain, seen[:14], strict=True):  # run 0: the one-run attack of 14 steps
        assert torch.equal(a.distance, b.distance)


def test_alpha_follows_the_longest_run() -> None:
    """α (None: :func:`budget_alpha`) follows the steps of the longest run: 700 of 1000 with
    ``first_run_share=0.7``, 500 with the even split."""
    from alma_plugin import ALMAParams
    from alma_plugin.core.params import budget_alpha

    def resolved(**options: Any) -> float | None:
        return ALMAParams(restarts=2, **options).for_budget(1000, 0.1, 0.1).alpha

    assert resolved(first_run_share=0.7) == budget_alpha(700)
    assert resolved(first_run_share=0.2) == budget_alpha(800)  # run 1 is the longest
    assert resolved() == budget_alpha(500)


def test_each_run_draws_from_its_documented_stream() -> None:
    """Run 0 draws from ``default_rng(seed)`` (what a run without restarts draws), run k ≥ 1
    from ``default_rng((seed, k))``: a user can reproduce a start. (A mutation to
    ``default_rng(seed + k)`` passed the suite, whose tests built the start with the same
    function.) Streams of neighbouring seeds and runs do not coincide."""
    import numpy as np

    from alma_plugin.core.restarts import restart_rng

    for seed in (0, 1, 7):
        assert restart_rng(seed, 0).uniform() == np.random.default_rng(seed).uniform()
        for run in (1, 2, 3):
            drawn = restart_rng(seed, run).uniform(size=4)
            assert np.array_equal(drawn, np.random.default_rng((seed, run)).uniform(size=4))
            assert not np.array_equal(drawn, np.random.default_rng(seed + run).uniform(size=4))
