"""Initial step size (§3.2.3) and the exploration/exploitation schedule (Fig. 3)."""

from __future__ import annotations

import eagerpy as ep
import pytest
import torch

from alma_plugin.core.schedules import decayed_step_size, initial_step_size
from alma_plugin.distances import l1, l2


@pytest.mark.parametrize("distance, epsilon", [(l2, 0.1), (l1, 0.5), (l2, 3.0), (l1, 20.0)])
@pytest.mark.parametrize("gradient_scale", [1e-6, 1.0, 1e4])
def test_initial_step_lands_on_epsilon(distance, epsilon: float, gradient_scale: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    g = torch.randn(16, 1, 8, 8, generator=gen) * gradient_scale
    eta = initial_step_size(distance, ep.astensor(x), ep.astensor(g), epsilon).raw
    # Large ε makes the box projection active on many pixels: still within 1 %.
    reached = distance(ep.astensor((x - eta.view(-1, 1, 1, 1) * g).clamp(0, 1)), ep.astensor(x))
    torch.testing.assert_close(reached.raw, torch.full((16,), epsilon), rtol=0.01, atol=0)


def test_initial_step_saturates_where_box_caps_distance() -> None:
    x = torch.ones(2, 1, 2, 2)  # at the upper bound: a step along −g = +1 cannot move at all
    g = -torch.ones(2, 1, 2, 2)
    eta = initial_step_size(l2, ep.astensor(x), ep.astensor(g), 0.1).raw
    assert torch.isfinite(eta).all() and (eta > 0).all()


def test_decay_constant_while_exploring_then_reaches_one_percent() -> None:
    eta0 = ep.astensor(torch.tensor([0.5, 2.0, 1.0]))
    steps = 100
    first = ep.astensor(torch.tensor([-1, 10, 99]))
    etas = torch.stack([decayed_step_size(eta0, t, first, steps, 0.01).raw for t in range(steps)])
    assert (etas[:, 0] == 0.5).all()  # never adversarial: constant η⁽⁰⁾
    assert (etas[:11, 1] == 2.0).all()  # constant up to t* = 10
    assert (etas[11:, 1].diff() < 0).all()  # then strictly decreasing
    torch.testing.assert_close(etas[-1, 1], torch.tensor(2.0 * 0.01))  # η⁽⁰⁾/100 at t = N − 1
    ratios = etas[12:, 1] / etas[11:-1, 1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()))  # exponential
    assert etas[-1, 2] == 1.0  # first success at the last step: no decay left
