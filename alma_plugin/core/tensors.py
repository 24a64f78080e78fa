"""Small batch helpers shared by both solvers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

from ..distances._common import finite_rows, stop_gradient

__all__ = [
    "GRADIENT_LIMIT",
    "bounded_gradient",
    "class_indices",
    "expand",
    "finite_rows",
    "full",
    "judged_logits",
    "model_space",
    "representable_bounds",
    "rounded_bounds",
    "valid_logit_rows",
]


def class_indices(labels: ep.Tensor, num_classes: int) -> ep.Tensor:
    """0 … K − 1 in the labels' framework and dtype, to compare with them: eagerpy's
    ``arange`` is int32 in TensorFlow, whose labels (argmax's dtype) are int64, and eagerpy's
    TensorFlow promotion of mixed dtypes calls ``np.find_common_type``, removed in NumPy 2."""
    return ep.arange(labels, num_classes).astype(labels.dtype)


def full(like: ep.Tensor, shape: tuple[int, ...], value: float) -> ep.Tensor:
    """``ep.full`` in ``like``'s dtype on every framework: eagerpy's TensorFlow ``full`` fills
    float32 (int32 for an integer value) whatever ``like`` is, and TensorFlow does not
    promote a float32 operand against float64 ones."""
    return ep.full(like, shape, value).astype(like.dtype)


def expand(per_sample: ep.Tensor, like: ep.Tensor) -> ep.Tensor:
    """A per-sample tensor (N,) reshaped to broadcast against ``like`` (N, ...)."""
    return per_sample.reshape((-1,) + (1,) * (like.ndim - 1))


#: The largest |gradient| a solver steps from (not in the papers): its square stays finite in
#: float32, so RMSProp's and Adam's averages do too.
GRADIENT_LIMIT = 1e18


def bounded_gradient(values: ep.Tensor) -> ep.Tensor:
    """``values`` with every NaN replaced by 0 and clipped to ±:data:`GRADIENT_LIMIT` (±Inf
    included), dtype and shape kept; finite values within the limit are kept bit for bit.

    What a solver steps from: a NaN region of the model (logits overflowing beyond some radius)
    gives no step; an infinite gradient (a float16 model's backward overflows once μ·∂P/∂d
    passes 65504) a bounded one, where RMSProp's inf / inf was a NaN iterate for good. PyTorch
    and JAX use their fused ``nan_to_num`` (one pass; ``isnan`` + ``where`` is two and a
    boolean image: 128 × 784 float32, 1 thread, 19 µs against 134 µs), then a clip. Elsewhere
    the 0 is a 0-d tensor broadcast by ``where``: eagerpy would turn a Python scalar into a
    full tensor of ``values``' shape."""
    limit = GRADIENT_LIMIT
    if isinstance(values, ep.PyTorchTensor):
        import torch

        finite = torch.nan_to_num(values.raw, nan=0.0, posinf=limit, neginf=-limit)
        return ep.astensor(finite.clamp_(-limit, limit))
    if isinstance(values, ep.JAXTensor):
        import jax.numpy as jnp

        finite_jax = jnp.nan_to_num(values.raw, nan=0.0, posinf=limit, neginf=-limit)
        return ep.astensor(jnp.clip(finite_jax, -limit, limit))
    return ep.where(values.isnan(), ep.zeros(values, ()), values).clip(-limit, limit)


def judged_logits(logits: ep.Tensor, dtype: Any) -> ep.Tensor:
    """The logits the constraint and the success test read: the model's own where they are
    float64 (a float64 head on a float32 batch), cast to the solvers' ``dtype`` otherwise
    (float16 and bfloat16 logits). Rounding float64 logits to float32 can merge two of them
    that the model tells apart: a tie that ``argmax`` (a Foolbox criterion) resolves to the
    first class, so an iterate would be kept as adversarial that the model, re-evaluated, does
    not misclassify. The solvers cast d to ``dtype`` after deciding success on it."""
    if logits.dtype == dtype or "float64" in str(logits.dtype):
        return logits
    return logits.astype(dtype)


#: The floating dtypes by the names every framework's dtype string contains (bfloat16 first:
#: it contains "float16").
_FLOAT_NAMES = ("bfloat16", "float16", "float32", "float64")


def _dtype_scalars(like: ep.Tensor) -> tuple[Callable[[float], Any], Callable[[Any, float], Any]]:
    """(scalar, after) for ``like``'s dtype on the host: a Python float as that dtype, and the
    next value of the dtype from one toward a target (NumPy; torch's CPU scalars for bfloat16,
    which NumPy lacks). Python floats for float64 and dtypes this does not know."""
    name = next((n for n in _FLOAT_NAMES if n in str(like.dtype)), None)
    if name == "bfloat16":  # not a NumPy dtype; torch is a dependency of the package
        import torch

        def scalar(value: float) -> Any:
            return torch.tensor(value, dtype=torch.bfloat16)

        def after(value: Any, toward: float) -> Any:
            return torch.nextafter(value, scalar(toward))

        return scalar, after
    dtype = np.dtype(name).type if name in ("float16", "float32") else float

    def scalar_np(value: float) -> Any:
        return dtype(value)

    def after_np(value: Any, toward: float) -> Any:
        return np.nextafter(value, dtype(toward))

    return scalar_np, after_np


def representable_bounds(like: ep.Tensor, bounds: tuple[float, float]) -> tuple[float, float]:
    """The smallest value of ``like``'s dtype ≥ ``lower`` and the largest ≤ ``upper``.

    A bound its dtype cannot represent (0.3 in float32 is 0.30000001…) rounds to the nearest
    value, which may lie outside: clipping onto it, or casting a clipped float32 tensor to
    float16, would return values outside the bounds. Computed on host scalars (NumPy; torch's
    CPU scalars for bfloat16), never on the device; float64 and a dtype this does not know
    keep the bounds as given."""
    scalar, after = _dtype_scalars(like)

    def inside(value: float, toward: float) -> float:
        rounded = scalar(value)
        if (float(rounded) - value) * (toward - value) < 0:  # rounded past the bound
            rounded = after(rounded, toward)
        return float(rounded)

    lower, upper = bounds
    return inside(lower, upper), inside(upper, lower)


def fits_dtype(like: ep.Tensor, *values: float) -> bool:
    """Whether every value is finite in ``like``'s dtype (a bound of 1e39, or a range
    upper − lower of 2e308, is inf in float32 / float64), on host scalars."""
    scalar, _ = _dtype_scalars(like)
    with np.errstate(over="ignore"):
        return all(math.isfinite(float(scalar(value))) for value in values)


def rounded_bounds(like: ep.Tensor, bounds: tuple[float, float]) -> tuple[float, float]:
    """The bounds as ``like``'s dtype rounds them (to the nearest value): where a caller's
    input computed as a bound itself lands. A white pixel normalised with ImageNet's red
    statistics is (1 − 0.485) / 0.229 = 2.2489 as a bound, and 2.25 in bfloat16, 1.1e-3 above
    it: the inputs' checks accept such values (and clip them onto the bounds)."""
    scalar, _ = _dtype_scalars(like)
    return float(scalar(bounds[0])), float(scalar(bounds[1]))


def clip_rounding(t: ep.Tensor, lower: float, upper: float) -> ep.Tensor:
    """``t`` clipped to [lower, upper] (bit for bit), with gradient 1 everywhere: for a tensor
    that leaves the bounds by rounding only (an iterate projected onto the box, mapped to the
    model's space or cast to its dtype), where the clip corrects the value and must not decide
    the gradient. A plain clip did, differently per backend: its gradient is 0 one ulp outside
    a bound (a pixel on the box's edge whose mapping rounded outside got no gradient, from the
    model or the distance, and stayed there), 1 on the bound in PyTorch and TensorFlow and 0.5
    in JAX (whose clip is a maximum and a minimum, which split a tie)."""
    return stop_gradient(t.clip(lower, upper)) + (t - stop_gradient(t))


def model_space(
    inputs: ep.Tensor,
    x: ep.Tensor,
    bounds: tuple[float, float],
    dtype: Any,
    levels: int | None = None,
) -> tuple[Callable[[ep.Tensor], ep.Tensor], bool]:
    """The map from an iterate u in [0, 1] (x: the inputs normalised, in the working ``dtype``)
    to the tensor the model sees, in ``bounds`` and the inputs' dtype, and whether a distance
    must re-measure that tensor rather than u (it rounds: other bounds, a 16-bit model).

    The map is ``inputs + (u − x)·(upper − lower)``: the input itself where u = x (a sample
    already misclassified comes back bit for bit), clipped to the bounds' representable
    values in the working dtype and again after a cast to a 16-bit dtype, so that rounding
    never leaves the bounds. With ``levels`` (u on the grid k / (levels − 1)), the pixels that
    moved map onto lower + k·(upper − lower) / (levels − 1) itself, computed from k: through
    ``inputs + (u − x)·(upper − lower)`` they would land beside it (14.999985 for 15 in
    (0, 255)), and a cast to uint8 would truncate them to the level below. The gradient
    passes as through the plain map, at every pixel: the snap is a stop-gradient offset (where
    nothing moved it is an exact 0). (It was a ``where`` that picked the input itself where
    u = x: no gradient there, so at step 0, where u = x everywhere, none at all: the §3.2.3
    search fell back to random directions and a pixel that never moved never got one.
    ALMA-CIEDE2000 with ``levels=256`` in (0, 255) changed no pixel.)"""
    lower, upper = bounds
    rounds = dtype != inputs.dtype
    if (lower, upper) == (0.0, 1.0):  # u is the model's input; 0 and 1 are exact in any dtype
        return ((lambda u: u.astype(inputs.dtype)) if rounds else (lambda u: u)), rounds
    start, scale = inputs.astype(dtype), upper - lower
    inner, inner_cast = representable_bounds(x, bounds), representable_bounds(inputs, bounds)

    def to_model_space(u: ep.Tensor) -> ep.Tensor:
        moved = start + (u - x) * scale
        if levels is not None:
            level = (u * (levels - 1) + 0.5) // 1  # k: u is k / (levels − 1), rounded
            on_grid = lower + level * (scale / (levels - 1))
            snapped = ep.where(u == x, start, on_grid)  # u = x: moved is start itself
            moved = moved + stop_gradient(snapped - moved)
        mapped = clip_rounding(moved, *inner)
        return clip_rounding(mapped.astype(inputs.dtype), *inner_cast) if rounds else mapped

    return to_model_space, True


def valid_logit_rows(logits: ep.Tensor) -> ep.Tensor:
    """Boolean (N,): True where no logit of sample i is NaN or +∞. A −∞ logit is valid: a class
    of probability 0, as log-softmax gives where it underflows (DLR⁺ handles it)."""
    values = logits.flatten(start=1)
    return ep.logical_and(values == values, values < ep.inf).all(axis=1)
