"""Foolbox :class:`~foolbox.distances.Distance` objects for the perceptual distances of
:mod:`alma_plugin.distances` (CIEDE2000, SSIM, MS-SSIM, LPIPS), measured in the [0, 1] space
in which the ALMA paper (Rony et al., ICCV 2021, Table 3) states its ε."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import eagerpy as ep
from foolbox.attacks.base import T
from foolbox.devutils import atleast_kd
from foolbox.distances import Distance

from ..core.validation import Bounds, check_bounds, check_number, outside_bounds, working_dtype
from ..distances import DistanceFunction, get_distance
from ..distances._common import callers_metric
from ._common import CHANNELS_FIRST, CHANNELS_LAST, host_number, to_channels_first

__all__ = ["NormalisedDistance", "WithinSegment"]

_CLIP_BISECTION_STEPS = 30


class NormalisedDistance(Distance):
    """A Foolbox :class:`~foolbox.distances.Distance` for a registry distance of
    :mod:`alma_plugin.distances` (CIEDE2000, SSIM, LPIPS, ...), measured after mapping inputs
    from ``bounds`` to [0, 1] — the space in which the ALMA paper states its ε (Table 3).

    :meth:`clip_perturbation` really clips: where D(x + δ, x) > ε, the perturbation δ is shrunk
    to s·δ with the largest s ∈ [0, 1] found by bisection such that D(x + s·δ, x) ≤ ε (D need
    not be convex in s; the returned point always satisfies the bound), and inputs already
    within ε are returned unchanged. Distances are computed in at least float32 (float16 and
    bfloat16 inputs are measured in float32); results keep the inputs' dtype and layout.
    Inputs outside ``bounds`` (by more than 1e-6 of the range) are a ValueError: measured as if
    they were within them, they would give wrong values silently (e.g. raw (0, 255) images
    given to the (0, 1) ``distance`` of an attack instead of ``attack.for_model(model)``'s).

    Args:
        name: a name of ``alma_plugin.distances.DISTANCES``.
        bounds: the (lower, upper) range of the inputs it measures.
        function: replaces the registry's function for ``name`` (e.g. an
            :class:`alma_plugin.distances.LPIPS` with user-supplied weights); a callable
            (x_adv, x) → (N,) on tensors of the model's framework (``torch.Tensor`` for
            PyTorch) in [0, 1], channels first.
        data_format: the layout of the inputs it measures, ``"channels_first"`` (N, C, H, W)
            or ``"channels_last"`` (N, H, W, C), as Foolbox models state it
            (``model.data_format``); channels-last inputs are transposed before measuring.
    """

    def __init__(
        self,
        name: str,
        bounds: Bounds = (0.0, 1.0),
        function: DistanceFunction | None = None,
        data_format: str = CHANNELS_FIRST,
    ) -> None:
        try:
            self.spec = get_distance(name)
        except (TypeError, ValueError) as error:  # named as the argument here is
            raise type(error)(str(error).replace("distance must", "name must", 1)) from None
        self.bounds = check_bounds(bounds)
        if function is not None and not callable(function):
            raise TypeError(f"function must be callable (x_adv, x) -> (N,), got {function!r}")
        if data_format not in (CHANNELS_FIRST, CHANNELS_LAST):
            raise ValueError(
                f"data_format must be '{CHANNELS_FIRST}' or '{CHANNELS_LAST}', got {data_format!r}"
            )
        self.function: DistanceFunction = (
            self.spec.function if function is None else callers_metric(function)
        )
        self.data_format = data_format

    def __repr__(self) -> str:
        layout = "" if self.data_format == CHANNELS_FIRST else f", data_format={self.data_format!r}"
        return f"NormalisedDistance({self.spec.name!r}, bounds={self.bounds}{layout})"

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and (
            self.spec,
            self.bounds,
            self.function,
            self.data_format,
        ) == (other.spec, other.bounds, other.function, other.data_format)

    def __hash__(self) -> int:
        return hash((self.spec.name, self.bounds, self.data_format))

    def _measure(self, references: ep.Tensor, perturbed: ep.Tensor) -> ep.Tensor:
        lower, upper = self.bounds
        scale = upper - lower
        dtype = working_dtype(references)
        x, y = references.astype(dtype), perturbed.astype(dtype)
        if self.data_format == CHANNELS_LAST:
            x, y = to_channels_first(x), to_channels_first(y)
        # inputs accepted up to rounding past a bound (:func:`outside_bounds`) map onto [0, 1]
        return self.function(((y - lower) / scale).clip(0, 1), ((x - lower) / scale).clip(0, 1))

    def _check_within_bounds(self, *tensors: ep.Tensor) -> None:
        """The caller's inputs must lie within :attr:`bounds` (checked once per call, not at
        each measurement of the bisection)."""
        lower, upper = self.bounds
        for tensor in tensors:
            if math.prod(tensor.shape) == 0:
                continue  # min() of an empty tensor fails; nothing to measure anyway
            low, high = tensor.min().item(), tensor.max().item()
            if outside_bounds(tensor, self.bounds, low, high):
                raise ValueError(
                    f"{self!r} got inputs outside [{lower:g}, {upper:g}] (values in "
                    f"[{low:.6g}, {high:.6g}]); it measures inputs in [{lower:g}, {upper:g}]. "
                    "For a model with other bounds, use attack.for_model(model).distance"
                )

    def __call__(self, references: T, perturbed: T) -> T:
        """D(perturbed, references) per sample, shape (N,)."""
        (x, y), restore_type = ep.astensors_(references, perturbed)
        self._check_within_bounds(x, y)
        return restore_type(self._measure(x, y))

    def clip_perturbation(self, references: T, perturbed: T, epsilon: float) -> T:
        """``perturbed`` with each perturbation shrunk until D ≤ ``epsilon`` (≥ 0; NaN and
        negative values are refused: no point satisfies D ≤ ε for them). Foolbox hands each
        epsilon of a tensor of epsilons over as a 0-d tensor, taken as its number."""
        epsilon = check_number("epsilon", host_number(epsilon))
        if not epsilon >= 0:  # also NaN
            raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
        (x, y), restore_type = ep.astensors_(references, perturbed)
        self._check_within_bounds(x, y)
        return restore_type(shrunk_within(x, y, epsilon, self._measure))


def shrunk_within(
    x: ep.Tensor,
    y: ep.Tensor,
    epsilon: float,
    measure: Callable[[ep.Tensor, ep.Tensor], ep.Tensor],
) -> ep.Tensor:
    """``y`` with each perturbation y − x scaled by the largest s ∈ [0, 1] (bisection, 30
    halvings) whose point, rounded to y's dtype, has ``measure(x, ·) ≤ ε``: the point returned
    is the point checked, so D ≤ ε holds in bfloat16 / float16 too. Samples already within ε
    come back unchanged; every value lies between those of x and y."""
    inside = measure(x, y) <= epsilon
    if inside.all().item():
        return y
    dtype = working_dtype(x)
    xw = x.astype(dtype)
    delta = y.astype(dtype) - xw
    low = ep.zeros(xw, len(x)).astype(dtype)  # D(x, x) = 0 ≤ ε: always feasible
    high = ep.ones(xw, len(x)).astype(dtype)

    def candidate(scale: ep.Tensor) -> ep.Tensor:
        return (xw + atleast_kd(scale, x.ndim) * delta).astype(x.dtype)

    for _ in range(_CLIP_BISECTION_STEPS):
        mid = (low + high) / 2
        feasible = measure(x, candidate(mid)) <= epsilon
        low = ep.where(feasible, mid, low)
        high = ep.where(feasible, high, mid)
    return ep.where(atleast_kd(inside, x.ndim), y, candidate(low))


class WithinSegment(Distance):
    """A Foolbox ℓp distance whose ``clip_perturbation`` returns values between x and x̃.

    Foolbox clips to ε as ``x + (x̃ − x)·min(1, ε/‖x̃ − x‖)``, which rounds: x̃ comes back an
    ulp away from itself, an x̃ on a bound an ulp outside it, and a clipped sample up to
    6·10⁻⁵ (relative) beyond ε, yet counted a success at ε. Here a sample within ε keeps x̃
    exactly, every value of a clipped one lies between those of x and x̃, so inside the
    model's bounds, and its distance, measured as returned, is at most ε. Measures exactly as
    the wrapped distance. :meth:`ALMAAttack.for_model` gives ``__call__`` and ``repeat`` this
    view of ``fb.distances.l1`` / ``l2`` / ``linf``; the attack's own :attr:`distance` stays
    Foolbox's object.

    Args:
        lp: the Foolbox ℓp distance measured and clipped within segments: ``fb.distances.l1``,
            ``l2`` or ``linf``.
    """

    def __init__(self, lp: Distance) -> None:
        if not isinstance(lp, Distance):  # else a late "'str' object is not callable"
            raise TypeError(
                "lp must be a Foolbox distance (fb.distances.l1, l2 or linf), got "
                f"{lp!r} ({type(lp).__name__})"
            )
        self.lp = lp

    def __repr__(self) -> str:
        return f"WithinSegment({self.lp!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, WithinSegment) and other.lp == self.lp

    def __hash__(self) -> int:
        return hash((WithinSegment, self.lp))

    def __call__(self, references: T, perturbed: T) -> T:
        return self.lp(references, perturbed)

    def clip_perturbation(self, references: T, perturbed: T, epsilon: float) -> T:
        (x, x_adv), restore_type = ep.astensors_(references, perturbed)
        within = ep.astensor(self.lp(x, x_adv)) <= epsilon
        if within.all().item():  # also spares Foolbox's clip an ε its dtype cannot hold
            return restore_type(x_adv)
        clipped = ep.astensor(self.lp.clip_perturbation(x, x_adv, epsilon))
        between = ep.minimum(ep.maximum(clipped, ep.minimum(x, x_adv)), ep.maximum(x, x_adv))
        between = ep.where(atleast_kd(within, x.ndim), x_adv, between)

        def measure(a: ep.Tensor, b: ep.Tensor) -> ep.Tensor:
            return ep.astensor(self.lp(a, b))

        # Foolbox's clip lands on ε up to rounding, either side: the last rounding removed
        return restore_type(shrunk_within(x, between, epsilon, measure))
