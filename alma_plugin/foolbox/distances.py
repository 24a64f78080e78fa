"""Foolbox :class:`~foolbox.distances.Distance` objects for the perceptual distances of
:mod:`alma_plugin.distances` (CIEDE2000, SSIM, MS-SSIM, LPIPS), measured in the [0, 1] space
in which the ALMA paper (Rony et al., ICCV 2021, Table 3) states its ε."""

from __future__ import annotations

import eagerpy as ep
from foolbox.attacks.base import T
from foolbox.devutils import atleast_kd
from foolbox.distances import Distance

from ..core.validation import Bounds, check_bounds
from ..distances import DistanceFunction, get_distance

__all__ = ["NormalisedDistance"]

_CLIP_BISECTION_STEPS = 30


class NormalisedDistance(Distance):
    """A Foolbox :class:`~foolbox.distances.Distance` for a registry distance of
    :mod:`alma_plugin.distances` (CIEDE2000, SSIM, LPIPS, ...), measured after mapping inputs
    from ``bounds`` to [0, 1] — the space in which the ALMA paper states its ε (Table 3).

    :meth:`clip_perturbation` really clips: where D(x + δ, x) > ε, the perturbation δ is shrunk
    to s·δ with the largest s ∈ [0, 1] found by bisection such that D(x + s·δ, x) ≤ ε (D need
    not be convex in s; the returned point always satisfies the bound), and inputs already
    within ε are returned unchanged.

    Args:
        name: a name of ``alma_plugin.distances.DISTANCES``.
        bounds: the (lower, upper) range of the inputs it measures.
        function: replaces the registry's function for ``name`` (e.g. an
            :class:`alma_plugin.distances.lpips.LPIPS` with user-supplied weights); a callable
            (x_adv, x) → (N,) on eagerpy tensors in [0, 1].
    """

    def __init__(
        self, name: str, bounds: Bounds = (0.0, 1.0), function: DistanceFunction | None = None
    ) -> None:
        self.spec = get_distance(name)
        self.bounds = check_bounds(bounds)
        if function is not None and not callable(function):
            raise TypeError(f"function must be callable (x_adv, x) -> (N,), got {function!r}")
        self.function: DistanceFunction = self.spec.function if function is None else function

    def __repr__(self) -> str:
        return f"NormalisedDistance({self.spec.name!r}, bounds={self.bounds})"

    def _measure(self, references: ep.Tensor, perturbed: ep.Tensor) -> ep.Tensor:
        lower, upper = self.bounds
        scale = upper - lower
        return self.function((perturbed - lower) / scale, (references - lower) / scale)

    def __call__(self, references: T, perturbed: T) -> T:
        """D(perturbed, references) per sample, shape (N,)."""
        (x, y), restore_type = ep.astensors_(references, perturbed)
        return restore_type(self._measure(x, y))

    def clip_perturbation(self, references: T, perturbed: T, epsilon: float) -> T:
        """``perturbed`` with each perturbation shrunk until D ≤ ``epsilon``."""
        (x, y), restore_type = ep.astensors_(references, perturbed)
        delta = y - x
        inside = self._measure(x, y) <= epsilon
        if inside.all().item():
            return restore_type(y)
        low = ep.zeros(x, len(x)).astype(x.dtype)  # D(x, x) = 0 ≤ ε: always feasible
        high = ep.ones(x, len(x)).astype(x.dtype)
        for _ in range(_CLIP_BISECTION_STEPS):
            mid = (low + high) / 2
            feasible = self._measure(x, x + atleast_kd(mid, x.ndim) * delta) <= epsilon
            low = ep.where(feasible, mid, low)
            high = ep.where(feasible, high, mid)
        shrunk = x + atleast_kd(low, x.ndim) * delta
        return restore_type(ep.where(atleast_kd(inside, x.ndim), y, shrunk))
