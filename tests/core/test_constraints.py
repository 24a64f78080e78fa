"""DLR⁺ (eq. 4) and tDLR⁺ (eq. 18): sign ⇔ attack goal, scale invariance, small K fallbacks."""

from __future__ import annotations

import eagerpy as ep
import pytest
import torch

from alma_plugin.core.constraints import dlr_plus, is_satisfied


def _random_logits(n: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Integer-spaced logits: no near-ties, so argmax is unambiguous.
    return torch.stack([torch.randperm(k, generator=gen).double() for _ in range(n)]) * 0.5


@pytest.mark.parametrize("k", [2, 3, 4, 10])
def test_dlr_negative_iff_misclassified(k: int) -> None:
    z = _random_logits(400, k)
    y = torch.randint(0, k, (400,), generator=torch.Generator().manual_seed(1))
    d = dlr_plus(ep.astensor(z), ep.astensor(y)).raw
    misclassified = z.argmax(1) != y
    assert ((d < 0) == misclassified).all()
    assert misclassified.any() and (~misclassified).any()


@pytest.mark.parametrize("k", [2, 3, 4, 10])
def test_tdlr_negative_iff_target_reached(k: int) -> None:
    z = _random_logits(400, k, seed=2)
    t = torch.randint(0, k, (400,), generator=torch.Generator().manual_seed(3))
    d = dlr_plus(ep.astensor(z), ep.astensor(t), targeted=True).raw
    reached = z.argmax(1) == t
    assert ((d < 0) == reached).all()
    assert reached.any() and (~reached).any()


def test_dlr_matches_formula_and_is_scale_invariant() -> None:
    z = torch.tensor([[3.0, 1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([2])
    expected = (2.0 - 3.0) / (3.0 - 1.0)  # (z_y − max_{i≠y} z_i) / (z_π1 − z_π3)
    assert dlr_plus(ep.astensor(z), ep.astensor(y)).item() == pytest.approx(expected, abs=1e-5)
    scaled = dlr_plus(ep.astensor(z * 10 + 4), ep.astensor(y)).item()
    assert scaled == pytest.approx(expected, abs=1e-5)
    t = torch.tensor([4])
    expected_t = (3.0 - 0.5) / (3.0 - (1.0 + 0.5) / 2)  # eq. 18
    assert dlr_plus(ep.astensor(z), ep.astensor(t), True).item() == pytest.approx(
        expected_t, abs=1e-5
    )


def test_two_classes_fall_back_to_logit_difference() -> None:
    z = torch.tensor([[1.0, 3.5], [2.0, -1.0]])
    y = torch.tensor([0, 0])
    d = dlr_plus(ep.astensor(z), ep.astensor(y)).raw
    torch.testing.assert_close(d, torch.tensor([-2.5, 3.0]), atol=1e-5, rtol=0)


def test_ties_do_not_count_as_success() -> None:
    z = ep.astensor(torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]]))
    y = ep.astensor(torch.tensor([0, 2]))
    assert not is_satisfied(z, y).any()
    assert (dlr_plus(z, y).raw > 0).all()
    assert not is_satisfied(z, y, targeted=True).any()


def test_targeted_three_classes_keeps_a_gradient_when_target_is_lowest() -> None:
    z = torch.tensor([[3.0, 1.0, -2.0]], requires_grad=True)
    d = dlr_plus(ep.astensor(z), ep.astensor(torch.tensor([2])), targeted=True).raw
    (grad,) = torch.autograd.grad(d.sum(), z)
    assert d.item() == pytest.approx(5.0, abs=1e-5) and grad.abs().sum() > 0
