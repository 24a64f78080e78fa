"""Evaluation metrics of a benchmark run: optimality, best of all, wins and solution patterns.

Pure NumPy. Every function takes per-sample results of several attacks on **the same samples**
of one model for one norm:

- distances ``d_{a,i} >= 0``: the distance of attack ``a``'s adversarial for sample ``i``, with
  ``0`` for samples misclassified before any attack and ``+inf`` where the attack failed;
- perturbations ``δ_i = x̃_i − x_i`` (for the solution patterns).

**Optimality** (AttackBench, Cinà et al. 2024, "AttackBench: Evaluating gradient-based attacks
for adversarial examples"). The best of all attacks is ``d*_i = min_a d_{a,i}``; ``D`` is the
largest finite ``d*_i`` over the samples some attack fooled (``d*_i > 0``). An attack's
robust accuracy ``ρ_a(ε) = mean_i [d_{a,i} > ε]`` is a step function of ε, so the area
under it on ``[0, D]`` is exactly ``A_a = mean_i min(d_{a,i}, D)``. Likewise
``A* = mean_i min(d*_i, D)`` (the best-of-all curve, the lowest possible) and
``A_worst = mean_i D·[d*_i > 0]`` (no sample fooled within ``[0, D]``: the clean accuracy
times ``D``). Then

    optimality_a = 1 − (A_a − A*) / (A_worst − A*)   ∈ [0, 1],

0 when the attack fools no sample within ``[0, D]``. As a distance counts as ``min(d, D)``, a
failure costs the same as any distance ``>= D``: the optimality is 1 when the attack attains
``d*_i`` on every sample except those with ``d*_i = D``, where any distance ``>= D`` (a failure
included) also counts as the best; samples no attack fooled count ``D`` for every attack.
AttackBench integrates the curves numerically; here the area is exact.

**Solution patterns** (Liang et al., "Implications of Solution Patterns on Adversarial
Robustness", §3): the soft sparsity ``‖δ‖₁ / ‖δ‖₂`` of each perturbation (in ``[1, √n]`` for
``n`` entries; lower is sparser) and the histogram of the element-wise magnitude ``|δ|``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

__all__ = [
    "HISTOGRAM_EDGES",
    "abs_histogram",
    "best_of_all",
    "optimality",
    "quartiles",
    "soft_sparsity",
    "tied_samples",
    "win_counts",
    "winners",
]

#: Fixed bin edges of the |δ| histograms: a first bin [0, 1e-4) for (nearly) untouched entries,
#: then 40 log-spaced bins up to 1 (perturbations of images in [0, 1]). Fixed so that the
#: histograms of batches, shards and runs add up.
HISTOGRAM_EDGES: npt.NDArray[np.float64] = np.concatenate([[0.0], np.logspace(-4, 0, 41)])


def _stack(distances: Mapping[str, npt.ArrayLike]) -> tuple[list[str], npt.NDArray[np.float64]]:
    """The attack names and their distances as an (attacks, samples) array, checked."""
    if not distances:
        raise ValueError("distances must hold at least one attack, got an empty mapping")
    names = list(distances)
    arrays = [np.asarray(distances[name], dtype=np.float64) for name in names]
    for name, d in zip(names, arrays, strict=True):
        if d.ndim != 1:
            raise ValueError(f"distances[{name!r}] must be 1-D (one per sample), got {d.shape}")
        if len(d) != len(arrays[0]):
            raise ValueError(
                f"distances must cover the same samples: {names[0]!r} has {len(arrays[0])}, "
                f"{name!r} has {len(d)}"
            )
        if np.isnan(d).any() or (d < 0).any():
            raise ValueError(
                f"distances[{name!r}] must be >= 0 (0: misclassified clean sample, +inf: "
                f"failure), got min {np.nanmin(d) if (~np.isnan(d)).any() else math.nan} "
                f"and {int(np.isnan(d).sum())} NaN"
            )
    return names, np.stack(arrays)


def best_of_all(distances: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float64]:
    """The per-sample best of all attacks, ``d*_i = min_a d_{a,i}`` (+inf where all failed).

    Args:
        distances: attack name → per-sample distances, all over the same samples.
    """
    return _stack(distances)[1].min(axis=0)


def _areas(d: npt.NDArray[np.float64], best: npt.NDArray[np.float64]) -> tuple[float, ...]:
    # D comes from the samples some run fooled; a sample misclassified before the attack
    # (d* = 0) fooled by nobody, so with no other D is undefined, not 0 (which made every
    # run, one that fooled nothing included, score 1.0).
    finite = best[np.isfinite(best) & (best > 0)]
    if not len(finite):
        return (math.nan,) * 4
    top = float(finite.max())  # D
    a_best = float(np.minimum(best, top).mean())  # A*
    a_worst = float((top * (best > 0)).mean())  # A_worst = clean accuracy × D
    return top, float(np.minimum(d, top).mean()), a_best, a_worst


def optimality(distances: Mapping[str, npt.ArrayLike]) -> dict[str, float]:
    """AttackBench's optimality of every attack against the best of all (see module doc).

    Args:
        distances: attack name → per-sample distances ``d_{a,i}`` (0 for samples misclassified
            before the attack, +inf for failures), all over the same samples, for one model
            and one norm.

    Returns:
        attack name → ``1 − (A_a − A*) / (A_worst − A*)`` in [0, 1]; NaN for every attack when
        no attack fooled any sample the model classified correctly (``D`` undefined: every
        ``d*_i`` is 0 or +inf); 1.0 when ``A_worst == A*`` (every fooled sample's ``d*_i`` is
        ``D``).
    """
    names, stacked = _stack(distances)
    best = stacked.min(axis=0)
    result = {}
    for name, d in zip(names, stacked, strict=True):
        top, area, a_best, a_worst = _areas(d, best)
        if math.isnan(top):
            result[name] = math.nan
        elif a_worst == a_best:
            result[name] = 1.0
        else:
            value = 1.0 - (area - a_best) / (a_worst - a_best)
            result[name] = min(1.0, max(0.0, value))  # only rounding can leave [0, 1]
    return result


def winners(distances: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.bool_]:
    """(attacks, samples) mask: attack ``a`` achieves ``d*_i`` on sample ``i`` (ties: every tied
    attack), for samples with ``0 < d*_i < inf`` only (others are nobody's win)."""
    _, stacked = _stack(distances)
    best = stacked.min(axis=0)
    contested = np.isfinite(best) & (best > 0)
    return (stacked == best[None, :]) & contested[None, :]


def win_counts(distances: Mapping[str, npt.ArrayLike]) -> dict[str, int]:
    """How many samples each attack wins in the best-of-all ensemble.

    A sample is won by the attack(s) whose distance equals ``d*_i`` exactly; on a tie every
    tied attack gets the win (so the counts can add up to more than the samples; see
    :func:`tied_samples`). Samples with ``d*_i = 0`` (misclassified before the attack) or
    ``+inf`` (no attack succeeded) are nobody's win.
    """
    names = list(distances)
    return {name: int(row.sum()) for name, row in zip(names, winners(distances), strict=True)}


def tied_samples(distances: Mapping[str, npt.ArrayLike]) -> int:
    """The number of samples won by more than one attack (each counted for all of them)."""
    return int((winners(distances).sum(axis=0) > 1).sum())


def soft_sparsity(perturbations: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-sample soft sparsity ``‖δ_i‖₁ / ‖δ_i‖₂`` of perturbations ``(N, ...)``.

    In ``[1, √n]`` for ``n`` entries per sample: 1 for a single perturbed entry, ``√n`` for a
    constant perturbation; lower is sparser. NaN where ``δ_i = 0`` (unperturbed).
    """
    delta = np.asarray(perturbations, dtype=np.float64)
    if delta.ndim < 1:
        raise ValueError(f"perturbations must be (N, ...), got a scalar of shape {delta.shape}")
    flat = np.abs(delta.reshape(len(delta), int(np.prod(delta.shape[1:]))))
    l1 = flat.sum(axis=1)
    l2 = np.sqrt((flat**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(l2 > 0, l1 / np.where(l2 > 0, l2, 1.0), np.nan)


def abs_histogram(
    perturbations: npt.ArrayLike, edges: npt.ArrayLike = HISTOGRAM_EDGES
) -> npt.NDArray[np.int64]:
    """Counts of the element-wise magnitudes ``|δ|`` of all given perturbations in the fixed
    bins ``edges`` (values beyond the last edge are clipped into the last bin)."""
    edges = np.asarray(edges, dtype=np.float64)
    values = np.abs(np.asarray(perturbations, dtype=np.float64)).ravel()
    values = np.minimum(values, edges[-1])
    counts, _ = np.histogram(values, bins=edges)
    return counts.astype(np.int64)


def quartiles(values: npt.ArrayLike) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile) of the non-NaN values; NaNs if none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return (math.nan, math.nan, math.nan)
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return float(q25), float(q50), float(q75)
