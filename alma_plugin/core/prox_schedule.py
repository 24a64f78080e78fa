"""The schedules of ALMA prox (thesis §5.4.1, §5.5.5.3): constraint masking (eq. 5.6),
constraint scaling (eq. 5.8) and the step size λ⁽ᵗ⁾."""

from __future__ import annotations

import math
from fractions import Fraction

import eagerpy as ep
import numpy as np

__all__ = ["constraint_mask", "least_count", "masking_rank", "scale_update", "step_size"]


def least_count(fraction: float, counts: np.ndarray) -> np.ndarray:
    """Per sample, the smallest k ≥ 1 with k / ‖m‖₁ ≥ ``fraction``, the ratio in float64 as
    Python computes it: what "APSR ≥ ν" (eq. 5.19) means for ‖m‖₁ constraints. No slack: 1 of
    10 meets ν = 0.1, 1 of 2 does not meet ν = 0.5 + 10⁻¹⁰. (The product rounds, so the
    ceiling is corrected by one either way where the ratio says so.)"""
    counts = np.asarray(counts, dtype=np.int64)
    k = np.maximum(np.ceil(fraction * counts), 1).astype(np.int64)
    k = np.where((k > 1) & ((k - 1) / counts >= fraction), k - 1, k)
    return np.where(k / counts < fraction, k + 1, k)


def masking_rank(counts: np.ndarray, nu: float, step: int, steps: int, decay: bool) -> np.ndarray:
    """Per sample, the 0-based rank of the percentile ξ⁽ᵗ⁾ among its ‖m‖₁ constraints at step
    t = ``step`` of N = ``steps``: the ⌈f‖m‖₁⌉ smallest constraints are kept (at least one),
    f = 1 − (1 − ν)(t − 1)/(N − 1) decaying linearly from 100 % to ν (eq. 5.6), or f = ν
    throughout when ``decay`` is False. Computed in exact fractions, ν as the decimal it is
    written as (its shortest repr: 0.9 is 9/10), so an f‖m‖₁ that is an integer is not rounded
    past it; the last step keeps at least what success needs (:func:`least_count` of ν), and
    exactly that unless ν·‖m‖₁ falls within a rounding of an integer."""
    progress = Fraction(step - 1, steps - 1) if decay and steps > 1 else Fraction(int(not decay))
    fraction = 1 - (1 - Fraction(repr(float(nu)))) * progress
    kept = [max(math.ceil(fraction * int(count)), 1) for count in np.ravel(counts)]
    return (np.asarray(kept, dtype=np.int64) - 1).reshape(-1, 1)


def constraint_mask(d: ep.Tensor, mask: ep.Tensor, rank: ep.Tensor) -> ep.Tensor:
    """m̃ = m ∧ [d ≤ ξ]: the user mask without the constraints above the percentile ξ⁽ᵗ⁾
    (the ``rank``-th smallest d among the masked ones)."""
    if d.shape[1] == 1:
        return mask
    ranked = ep.where(mask, d, ep.inf).sort(axis=-1)
    xi = ranked.take_along_axis(rank, axis=-1)
    return ep.logical_and(mask, d <= xi)


def scale_update(
    w: ep.Tensor, satisfied: ep.Tensor, needed: ep.Tensor, rate: float, w_min: float
) -> ep.Tensor:
    """Eq. 5.8: w grows by 1/(1 − γ_w) while fewer than ``needed`` constraints are satisfied
    (APSR < ν), shrinks by 1/(1 + γ_w) otherwise, within [w_min, 1]. (Algorithm IV-2 writes τ in
    step 5; the text of eq. 5.8 compares with ν, which we follow.)"""
    grow = satisfied < needed.reshape((-1, 1))
    return ep.where(grow, w / (1 - rate), w / (1 + rate)).clip(w_min, 1.0)


def step_size(init_lr: float, lr_reduction: float, progress: float) -> float:
    """λ⁽ᵗ⁾, decayed geometrically from λ⁽⁰⁾ at the first step to λ⁽⁰⁾·r at the last.
    §5.5.5.3 gives only the end points (10⁻³ decayed to 10⁻⁴), not the decay's shape or start:
    geometric from the first step is the package's reading."""
    return init_lr * lr_reduction**progress
