"""Edge behaviours of the core that no other test pinned (each found by mutation testing: the
test fails on a mutant of the package): bounds and the rounding slack, representable bounds,
the success tolerance, quantisation, ρ's cap in ALMA prox, restarts' generators and best runs,
NaN regions of the model, the ternary prox. Tiny models, a few steps."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin import alma
from alma_plugin.core.constraints import dlr_plus, is_satisfied
from alma_plugin.core.tensors import representable_bounds
from tests.utils import linear_classifier

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bounds_with_lower_equal_to_upper_are_refused() -> None:
    """An empty range (lower = upper) has no [0, 1] normalisation (a division by 0): refused,
    even for inputs that lie exactly on it."""
    x = torch.full((2, 1, 4, 4), 0.5)
    with pytest.raises(
        ValueError, match=r"bounds must be finite with lower < upper, got \(0.5, 0.5\)"
    ):
        alma(linear_classifier(), x, torch.tensor([0, 1]), bounds=(0.5, 0.5), steps=2)


def test_inputs_outside_the_bounds_by_more_than_the_rounding_slack_are_refused() -> None:
    """The slack is 1e-6 of the range (rounding of a de-normalisation); 1e-5 outside is a
    caller's error, not rounding, and is refused rather than clipped silently."""
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    for value in (1 + 1e-5, -1e-5):
        bad = x.clone()
        bad[0, 0, 0, 0] = value
        with pytest.raises(ValueError, match="inputs must lie within bounds"):
            alma(linear_classifier(), bad, y, steps=2)
    for value, bounds in ((255 + 255e-5, (0, 255)), (-255e-5, (0, 255))):
        bad = x.clone() * 255
        bad[0, 0, 0, 0] = value
        with pytest.raises(ValueError, match="inputs must lie within bounds"):
            alma(linear_classifier(), bad, y, steps=2, bounds=bounds)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bounds", [(0.1, 0.3), (-0.4242, 2.8215), (1 / 3, 2 / 3)])
def test_representable_bounds_are_the_tightest_values_inside(
    dtype: torch.dtype, bounds: tuple[float, float]
) -> None:
    """The smallest value of the dtype >= lower and the largest <= upper: inside the bounds (in
    float64), representable, and one step further out would leave them."""
    like = ep.astensor(torch.zeros(1, dtype=dtype))
    lower, upper = representable_bounds(like, bounds)
    for value in (lower, upper):
        assert float(torch.tensor(value, dtype=dtype)) == value  # representable
    assert bounds[0] <= lower < upper <= bounds[1]
    down = torch.nextafter(torch.tensor(lower, dtype=dtype), torch.tensor(-1e9, dtype=dtype))
    up = torch.nextafter(torch.tensor(upper, dtype=dtype), torch.tensor(1e9, dtype=dtype))
    assert float(down) < bounds[0] and float(up) > bounds[1]


def test_inputs_rounded_past_an_unrepresentable_bound_come_back_inside() -> None:
    """float32(0.3) is 0.30000001 > 0.3: such inputs (within the slack) are clipped onto the
    largest float32 <= 0.3, so even a sample returned unchanged lies inside the bounds."""
    bounds = (0.1, 0.3)
    x = torch.full((2, 1, 4, 4), 0.2)
    x[:, 0, 0, 0] = 0.3  # 0.30000001192...
    x[:, 0, 0, 1] = 0.1  # 0.10000000149..., inside
    assert float(x.max()) > 0.3
    model = linear_classifier()
    wrong = (model(x).argmax(1) + 1) % 5  # already "adversarial": returned as given
    result = alma(model, x, wrong, bounds=bounds, steps=2)
    assert result.success.all()
    adv = result.adversarials.double()
    assert float(adv.max()) <= 0.3 and float(adv.min()) >= 0.1


def test_success_needs_a_margin_strictly_beyond_the_tolerance() -> None:
    """A margin of exactly the tolerance is no success, by the default predicate and by the
    constraint alike (d < 0): the solver (d < 0) and the class restarts (is_satisfied) agree."""
    logits = ep.astensor(torch.tensor([[0.0, 1e-6, -3.0, -4.0], [0.0, 2e-6, -3.0, -4.0]],
                                      dtype=torch.float64))  # fmt: skip
    labels = ep.astensor(torch.tensor([0, 0]))
    d = dlr_plus(logits, labels)
    assert d.raw.tolist()[0] == 0.0 and d.raw.tolist()[1] < 0
    assert is_satisfied(logits, labels).raw.tolist() == [False, True]
    assert (d < 0).raw.tolist() == [False, True]


def test_quantisation_rounds_to_the_nearest_level() -> None:
    """``levels`` puts every iterate on the nearest of the levels (not the one below)."""
    from alma_plugin.core.solver import _quantize

    values = torch.tensor([0.6 / 255, 0.4 / 255, 1 - 0.4 / 255, 1 - 0.6 / 255, 0.5 + 0.3 / 255])
    quantised = _quantize(ep.astensor(values), 256).raw * 255
    assert quantised.round().tolist() == [1, 0, 255, 254, 128]
    torch.testing.assert_close(quantised, quantised.round(), rtol=0, atol=1e-4)


def test_prox_rho_stops_growing_at_rho_max() -> None:
    """ρ of a constraint that stalls (a model that ignores its input) grows by γ at every check
    up to ``rho_max``, and stays there."""
    from alma_plugin import ProxParams, alma_prox
    from alma_plugin.core.result import StepInfo

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([3.0, 1.0, 0.0, -1.0, -2.0]))
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    records: list[StepInfo] = []
    params = ProxParams(rho_init=1.0, gamma=2.0, check_steps=2, rho_max=10.0)
    result = alma_prox(model, x, torch.zeros(2, dtype=torch.long), steps=20, params=params,
                       callback=records.append)  # fmt: skip
    assert not result.success.any()
    rhos = torch.stack([torch.as_tensor(r.rho) for r in records])
    assert float(rhos.max()) == 10.0 and float(rhos[-1].min()) == 10.0
    assert float(rhos[3].max()) == 4.0  # grown twice (steps 2, 4) before reaching the cap


def test_each_restart_draws_from_its_own_generator() -> None:
    """Run 0 draws what a run without restarts draws (``default_rng(seed)``); runs k >= 1 each
    their own stream, so two random restarts never start from the same point."""
    from alma_plugin.core.restarts import restart_rng

    assert restart_rng(3, 0).uniform() == np.random.default_rng(3).uniform()
    draws = [restart_rng(3, k).uniform(size=4).tolist() for k in range(4)]
    assert len({tuple(d) for d in draws}) == 4
    assert restart_rng(3, 2).uniform(size=4).tolist() == draws[2]  # and reproducible


def test_a_success_of_an_earlier_run_stays_a_success() -> None:
    """With restarts, each sample keeps the best adversarial of every run, and with it its
    success: a run that finds nothing does not undo an earlier run's success."""
    model = linear_classifier()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)

    def only_x(inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return (inputs == x).flatten(1).all(1)  # run 0's first step; never a random restart

    result = alma(model, x, y, steps=4, restarts=2, restart_mode="random",
                  is_adversarial=only_x)  # fmt: skip
    assert result.success.all() and (result.distances == 0).all()
    assert torch.equal(result.adversarials, x)


def test_the_iterate_stays_finite_through_a_nan_region_of_the_model() -> None:
    """Where the model answers NaN (its gradient is NaN), ALMA takes no step from it: the
    iterate and its distance stay finite at every step and the attack goes on."""
    from alma_plugin.core.result import StepInfo

    net = linear_classifier()

    def model(inputs: torch.Tensor) -> torch.Tensor:
        logits = net(inputs)
        bright = inputs.flatten(1).amax(1, keepdim=True) > 0.81
        return torch.where(bright, torch.nan, logits)

    x = 0.5 + 0.3 * torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    records: list[StepInfo] = []
    result = alma(model, x, y, steps=30, callback=records.append)
    d = torch.stack([torch.as_tensor(r.constraint) for r in records])
    distances = torch.stack([torch.as_tensor(r.distance) for r in records])
    assert d.isnan().any()  # the NaN region was reached
    assert distances.isfinite().all()
    assert result.adversarials.isfinite().all()


@pytest.mark.parametrize("attack", ["alma", "alma_prox", "lagrangian"])
def test_the_iterate_stays_finite_when_a_float16_backward_overflows(attack: str) -> None:
    """A float16 model's backward overflows to ±Inf once the gradient at its logits passes
    65504 (here μ⁽⁰⁾ = 10⁵; in a long run, ρ and μ growing on a hard sample): the step is
    taken from the bounded gradient. Before, ALMA's RMSProp computed Inf / Inf and the
    iterate was NaN from step 1 on for every sample, reported as "no adversarial found";
    the Lagrangian attack's g / max|g| did the same."""
    from alma_plugin import alma_prox, lagrangian
    from alma_plugin.core.result import StepInfo

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).eval().half()
    x = (0.5 + 0.49 * torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))).half()
    with torch.no_grad():
        y = net(x).argmax(1)
    records: list[StepInfo] = []
    if attack == "lagrangian":  # its margin loss has a bounded gradient: a model amplifies it

        class Amplified(torch.autograd.Function):
            @staticmethod
            def forward(ctx: object, z: torch.Tensor) -> torch.Tensor:
                return z.clone()

            @staticmethod
            def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
                return g * 1e5  # float16: ±Inf

        trained = lagrangian(lambda z: Amplified.apply(net(z)), x, y, steps=10)
        assert trained.perturbed.isfinite().all() and trained.norms.isfinite().all()
        return
    run = alma if attack == "alma" else alma_prox
    result = run(net, x, y, steps=20, mu_init=1e5, callback=records.append)
    distances = torch.stack([torch.as_tensor(r.distance) for r in records])
    assert not distances.isnan().any()
    assert result.adversarials.isfinite().all()


def test_ternary_prox_is_within_half_its_precision_of_the_exact_beta() -> None:
    """Algorithm 5.1 ends at the middle of an interval of width <= Δβ (step 17): β is within
    Δβ / 2 of the exact β*."""
    from alma_plugin.core.prox import linf_box_prox, ternary_iterations

    g = torch.Generator().manual_seed(0)
    delta = ep.astensor(torch.randn(64, 50, generator=g, dtype=torch.float64) * 0.3)
    lam = ep.astensor(torch.rand(64, generator=g, dtype=torch.float64) * 2)
    precision = 1e-3
    _, exact = linf_box_prox(delta, lam, -1.0, 1.0, precision=None)
    _, ternary = linf_box_prox(delta, lam, -1.0, 1.0, precision=precision, radius=1.0)
    # the search starts on [0, ‖P_Λ(δ)‖∞] and keeps 2/3 of it per iteration
    width = delta.raw.clamp(-1, 1).abs().amax(1) * (2 / 3) ** ternary_iterations(1.0, precision)
    assert float(width.max()) <= precision
    error = (ternary - exact).abs().raw
    assert (error <= width / 2 + 1e-12).all()
