"""Per-sample ℓp distances on eagerpy tensors, with safe gradients at zero perturbation."""

from __future__ import annotations

import eagerpy as ep


def _flat_difference(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    return (x_adv - x).flatten(start=1)


def l1(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """‖x̃ − x‖₁ per sample. The sub-gradient at a zero coordinate is 0."""
    return _flat_difference(x_adv, x).abs().sum(axis=1)


def l2(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """‖x̃ − x‖₂ per sample, with gradient 0 (not NaN) where x̃ = x."""
    squared = _flat_difference(x_adv, x).square().sum(axis=1)
    positive = squared > 0
    # sqrt'(0) is infinite: take the root of a harmless 1 there, then mask the value out.
    return ep.where(positive, ep.where(positive, squared, 1).sqrt(), 0)


def linf(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """‖x̃ − x‖∞ per sample."""
    return _flat_difference(x_adv, x).abs().max(axis=1)
