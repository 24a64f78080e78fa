"""Penalty-Lagrangian functions P(y, ρ, μ) and their derivatives ∂P/∂y.

From Birgin et al. (2005), as listed in the ALMA paper's Appendix D (eq. 19–22). ``y`` is the
constraint value (DLR⁺, satisfied when y < 0), ``ρ`` the penalty parameter and ``μ`` the
penalty multiplier. Every function is elementwise on eagerpy tensors (or floats broadcast
against them) and satisfies the axioms of §3.1: P′ ≥ 0, P′(0, ρ, μ) = μ, P′ → ∞ for violated
constraints as ρ → ∞, and P′ → 0 for satisfied ones.

The derivatives are written out rather than obtained by autodiff: the multiplier update of
eq. 9 needs ∂P/∂y at the current point and must not cost a backward propagation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import eagerpy as ep

from .validation import check_choice


class PenaltyFunction(Protocol):
    def __call__(self, y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor: ...


@dataclass(frozen=True)
class Penalty:
    """A penalty-Lagrangian function with its derivative with respect to the constraint y."""

    name: str
    value: PenaltyFunction
    derivative: PenaltyFunction


def _nonneg(y: ep.Tensor) -> ep.Tensor:
    return y.maximum(0)


def _nonpos(y: ep.Tensor) -> ep.Tensor:
    return y.minimum(0)


# P2 (eq. 10 / 21), the ALMA default. Each branch is evaluated on the clamped constraint so that
# the branch not taken can never produce an inf or NaN that would leak into the gradient.
# ALMA prox's modified P2 (thesis eq. 5.9) is the same function with max(1, ρ) in place of ρ in
# the negative branch: ``rho_floor`` is that 1 (0 for the paper's P2).
def p2(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor, rho_floor: float = 0.0) -> ep.Tensor:
    yp, yn = _nonneg(y), _nonpos(y)
    positive = mu * yp + mu * rho * yp**2 + rho**2 * yp**3 / 6
    negative = mu * yn / (1 - _floored(rho, rho_floor) * yn)
    return ep.where(y >= 0, positive, negative)


def p2_derivative(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor, rho_floor: float = 0.0) -> ep.Tensor:
    yp, yn = _nonneg(y), _nonpos(y)
    positive = mu + 2 * mu * rho * yp + rho**2 * yp**2 / 2
    negative = mu / (1 - _floored(rho, rho_floor) * yn) ** 2
    return ep.where(y >= 0, positive, negative)


def _floored(rho: ep.Tensor, floor: float) -> ep.Tensor:
    return rho.maximum(floor) if floor else rho


def p2_prox(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor:
    """The modified P2 of ALMA prox (eq. 5.9): max(1, ρ) in the negative branch."""
    return p2(y, rho, mu, rho_floor=1.0)


def p2_prox_derivative(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor:
    """∂P/∂y of eq. 5.9."""
    return p2_derivative(y, rho, mu, rho_floor=1.0)


# P3 (eq. 22): P2 without the cubic term.
def p3(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor:
    yp, yn = _nonneg(y), _nonpos(y)
    return ep.where(y >= 0, mu * yp + mu * rho * yp**2, mu * yn / (1 - rho * yn))


def p3_derivative(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor:
    yp, yn = _nonneg(y), _nonpos(y)
    return ep.where(y >= 0, mu + 2 * mu * rho * yp, mu / (1 - rho * yn) ** 2)


# P1 (eq. 20): quadratic around 0, flat at −μ²/(2ρ) below y = −μ/ρ, cubic growth above 0.
def p1(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor:
    yp = _nonneg(y)
    y_mid = _nonpos(y).maximum(-mu / rho)
    middle = mu * y_mid + rho * y_mid**2 / 2
    return ep.where(y >= 0, mu * yp + rho * yp**2 / 2 + rho**2 * yp**3, middle)


def p1_derivative(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor:
    yp = _nonneg(y)
    # μ + ρy on [−μ/ρ, 0], 0 below: written as a max so rounding never makes it negative.
    return ep.where(y >= 0, mu + rho * yp + 3 * rho**2 * yp**2, (mu + rho * _nonpos(y)).maximum(0))


# PHR (eq. 19), the Powell–Hestenes–Rockafellar augmented Lagrangian term.
def phr(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor:
    return ((mu + rho * y).maximum(0) ** 2 - mu**2) / (2 * rho)


def phr_derivative(y: ep.Tensor, rho: ep.Tensor, mu: ep.Tensor) -> ep.Tensor:
    return (mu + rho * y).maximum(0)


PENALTIES: dict[str, Penalty] = {
    "P2": Penalty("P2", p2, p2_derivative),
    "P1": Penalty("P1", p1, p1_derivative),
    "P3": Penalty("P3", p3, p3_derivative),
    "PHR": Penalty("PHR", phr, phr_derivative),
}


def get_penalty(name: str) -> Penalty:
    """Look up a penalty by name (case-insensitive), with an error listing the known names."""
    return PENALTIES[check_choice("penalty", name, sorted(PENALTIES), upper=True)]
