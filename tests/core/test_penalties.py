"""Penalty-Lagrangian functions: the four axioms of §3.1 and derivatives against autograd."""

from __future__ import annotations

import eagerpy as ep
import pytest
import torch

from alma_plugin.core.penalties import PENALTIES, get_penalty

NAMES = sorted(PENALTIES)


def _t(values: list[float] | torch.Tensor) -> ep.Tensor:
    return ep.astensor(torch.as_tensor(values, dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_autograd(name: str) -> None:
    penalty = PENALTIES[name]
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(500, generator=gen, dtype=torch.float64) - 0.5) * 6
    y = torch.cat([y, torch.tensor([1e-3, -1e-3], dtype=torch.float64)])
    rho = torch.rand(len(y), generator=gen, dtype=torch.float64) * 5 + 0.1
    mu = torch.rand(len(y), generator=gen, dtype=torch.float64) * 5 + 0.1
    y.requires_grad_(True)
    value = penalty.value(ep.astensor(y), ep.astensor(rho), ep.astensor(mu)).raw
    (auto,) = torch.autograd.grad(value.sum(), y)
    analytic = penalty.derivative(_t(y.detach()), _t(rho), _t(mu)).raw
    assert torch.isfinite(value).all()
    torch.testing.assert_close(analytic, auto, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_axiom_1_derivative_nonnegative(name: str) -> None:
    penalty = PENALTIES[name]
    y = _t(torch.linspace(-20, 20, 801, dtype=torch.float64))
    for rho in (0.1, 1.0, 100.0):
        for mu in (1e-6, 1.0, 1e6):
            d = penalty.derivative(y, _t([rho]), _t([mu])).raw
            assert (d >= 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_axiom_2_derivative_at_zero_is_mu(name: str) -> None:
    penalty = PENALTIES[name]
    mu = _t([1e-6, 0.3, 1.0, 7.0, 1e6])
    for rho in (0.1, 1.0, 100.0):
        d = penalty.derivative(_t([0.0] * 5), _t([rho] * 5), mu).raw
        torch.testing.assert_close(d, mu.raw)


@pytest.mark.parametrize("name", NAMES)
def test_axiom_3_violated_constraint_derivative_diverges(name: str) -> None:
    # ρ → ∞ with y → y* > 0 (μ bounded) ⇒ P′ → ∞.
    penalty = PENALTIES[name]
    rhos = [10.0**k for k in range(0, 9, 2)]
    derivatives = [penalty.derivative(_t([0.5]), _t([r]), _t([1.0])).item() for r in rhos]
    assert all(b > a for a, b in zip(derivatives, derivatives[1:], strict=False))
    assert derivatives[-1] > 1e6


@pytest.mark.parametrize("name", NAMES)
def test_axiom_4_satisfied_constraint_derivative_vanishes(name: str) -> None:
    # ρ → ∞ with y → y* < 0 (μ bounded) ⇒ P′ → 0.
    penalty = PENALTIES[name]
    derivative = penalty.derivative(_t([-0.5]), _t([1e8]), _t([1e3])).item()
    assert 0 <= derivative < 1e-3


def test_unknown_penalty_name() -> None:
    with pytest.raises(ValueError, match="penalty must be one of .*'P5'"):
        get_penalty("P5")
    assert get_penalty("p2") is PENALTIES["P2"]
