"""The calling convention every public distance follows, and the safe primitives they share.

:func:`distance_function` is the one decorator applied to each public distance. It

* accepts raw framework tensors (PyTorch, JAX, TensorFlow, NumPy) or eagerpy tensors and
  returns the caller's type (raw in → raw out, eagerpy in → eagerpy out; the type of ``x_adv``
  decides, as ``ep.astensors_`` + ``restore_type`` do in Foolbox's distances);
* refuses anything else with a ``TypeError`` / ``ValueError`` naming the argument: non-tensors,
  two different frameworks, non-floating dtypes, shapes that differ or lack a batch axis;
* computes in at least float32: float16 / bfloat16 (any dtype narrower than 32 bits) are
  promoted to float32, a float64 operand makes the computation float64. The result therefore
  has dtype float32 for 16-bit inputs, and the input dtype otherwise;
* returns NaN for every sample whose ``x_adv`` or ``x`` holds a NaN or ±Inf, and leaves the
  other samples' values (and gradients) untouched: a broken image can never look "close";
* for the perceptual distances (SSIM, MS-SSIM, CIEDE2000, LPIPS), defined on images in
  [0, 1], refuses finite values outside it with a ``ValueError`` (:func:`check_unit_range`;
  not inside ``jax.jit`` or a ``tf.function``, where nothing can be read).

The primitives :func:`safe_sqrt` and :func:`abs0` keep the gradients finite and
framework-independent at zero (``√`` has an infinite derivative there, and ``|·|``'s
sub-gradient at 0 is 0 on PyTorch but 1 on JAX).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

import eagerpy as ep

#: An eagerpy-level distance ``(x_adv, x) -> (N,)``, as the attacks' core calls it.
DistanceFunction = Callable[[ep.Tensor, ep.Tensor], ep.Tensor]

T = TypeVar("T")

_FRAMEWORKS = {
    ep.PyTorchTensor: "PyTorch",
    ep.JAXTensor: "JAX",
    ep.TensorFlowTensor: "TensorFlow",
    ep.NumPyTensor: "NumPy",
}


class Distance(Protocol):
    """A per-sample distance ``D(x_adv, x) -> (N,)`` that returns the caller's tensor type.

    The adversarial comes first, as in the paper's D(x̃, x); Foolbox's
    ``fb.distances.Distance`` is called the other way round, ``(references, perturbed)``
    (every distance of this package is symmetric, so the values agree either way)."""

    def __call__(self, x_adv: T, x: T) -> T: ...  # pragma: no cover


def _describe(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _as_eagerpy(value: Any, name: str) -> ep.Tensor:
    if isinstance(value, ep.Tensor):
        return value
    try:
        return ep.astensor(value)
    except ValueError:
        raise TypeError(
            f"{name} must be a tensor (PyTorch, JAX, TensorFlow, NumPy or eagerpy), got "
            f"{_describe(value)}"
        ) from None


#: The floating dtypes a distance measures, by name, and their width.
_FLOAT_BITS = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}


def _float_bits(t: ep.Tensor, name: str) -> int:
    """Width of a floating dtype: 64, 32, or 16 (float16, bfloat16). Others are refused: NumPy's
    float128 (long double) was measured in float32, as a 16-bit dtype, and float8 promoted."""
    # torch.float32, dtype('float32'), <dtype: 'float32'>, bfloat16, float16, float64 …
    found = re.search(r"\b(?:torch\.)?(b?float\w*)", str(t.dtype))
    bits = _FLOAT_BITS.get(found.group(1)) if found else None
    if bits is None:
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), "
            f"got {name}.dtype={t.dtype}"
        )
    return bits


def prepare(x_adv: Any, x: Any) -> tuple[ep.Tensor, ep.Tensor]:
    """Validate a pair and bring it to eagerpy tensors of the common compute dtype."""
    a, b = _as_eagerpy(x_adv, "x_adv"), _as_eagerpy(x, "x")
    if type(a) is not type(b):
        raise TypeError(
            "x_adv and x must be tensors of the same framework, got "
            f"{_FRAMEWORKS.get(type(a), type(a).__name__)} ({_describe(x_adv)}) and "
            f"{_FRAMEWORKS.get(type(b), type(b).__name__)} ({_describe(x)})"
        )
    if a.ndim < 1:
        raise ValueError(f"x_adv must have a batch axis (shape (N, ...)), got shape {a.shape}")
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            "x_adv and x must have the same shape (N, ...), got "
            f"x_adv.shape={tuple(a.shape)} and x.shape={tuple(b.shape)}"
        )
    bits_a, bits_b = _float_bits(a, "x_adv"), _float_bits(b, "x")
    if max(bits_a, bits_b) == 64:
        dtype = a.dtype if bits_a == 64 else b.dtype
        return a.astype(dtype), b.astype(dtype)
    return a.float32(), b.float32()


def flatten(t: ep.Tensor, start: int = 1) -> ep.Tensor:
    """Merge the axes from ``start`` on; unlike ``Tensor.flatten`` also for empty batches."""
    return t.reshape((*t.shape[:start], math.prod(t.shape[start:])))


def finite_samples(*tensors: ep.Tensor) -> ep.Tensor:
    """Boolean (N,): True where every value of the sample is finite in all ``tensors``."""
    finite: ep.Tensor | None = None
    for t in tensors:
        rows = finite_rows(t)
        finite = rows if finite is None else ep.logical_and(finite, rows)
    assert finite is not None
    return finite


def finite_rows(t: ep.Tensor) -> ep.Tensor:
    """Boolean (N,): True where every value of sample ``t[i]`` is finite.

    0·v is 0 for a finite v and NaN for NaN or ±Inf, and a sum of zeros is exactly 0 (it
    cannot overflow): one product and one reduction, where isnan/isinf/or/all take six
    passes over the batch, every step of an attack.
    """
    return (flatten(t) * 0).sum(axis=1) == 0


#: How far beyond [0, 1] a perceptual distance's input may lie: rounding (a de-normalisation
#: in float32; the attacks' bounds check allows 1e-6 of the range, mapped with rounding).
UNIT_RANGE_SLACK = 1e-5


def _is_traced(t: ep.Tensor) -> bool:
    """Whether ``t`` is symbolic (inside ``jax.jit`` / ``jax.grad`` or a ``tf.function``),
    where no value can be read on the host."""
    if isinstance(t, ep.JAXTensor):
        import jax

        return isinstance(t.raw, jax.core.Tracer)
    if isinstance(t, ep.TensorFlowTensor):
        import tensorflow as tf

        return not tf.executing_eagerly()
    return False


def check_unit_range(t: ep.Tensor, name: str, distance: str) -> None:
    """A ValueError naming ``name`` where a finite value of ``t`` lies outside [0, 1] (beyond
    :data:`UNIT_RANGE_SLACK`). SSIM (data range 1), CIEDE2000 (sRGB) and LPIPS (which maps
    [0, 1] to its network's [−1, 1]) are defined on such images: raw (0, 255) images gave
    plausible values 1.5× (SSIM), 12× (CIEDE2000) and 57× (LPIPS) off, (−1, 1) images LPIPS
    0.45×, all silently. Non-finite values are left to the NaN rule; symbolic tensors (a
    ``jax.jit`` or ``tf.function``) are not checked."""
    if math.prod(t.shape) == 0:  # no value to check (an empty batch, no channel)
        return
    values = flatten(t)
    values = ep.where(values * 0 == 0, values, 0.5)  # NaN and ±Inf: the NaN rule's
    extremes = ep.stack([values.min(), values.max()])
    if _is_traced(extremes):  # a constant inside jax.jit gives traced extremes too
        return
    low, high = extremes.numpy().tolist()
    if low < -UNIT_RANGE_SLACK or high > 1 + UNIT_RANGE_SLACK:
        raise ValueError(
            f"{name} must hold images with values in [0, 1] for {distance}, got values in "
            f"[{low:.6g}, {high:.6g}]: map images in (0, 255) or (−1, 1) to [0, 1] first, or "
            "measure with alma_plugin.foolbox.distances.NormalisedDistance and your bounds"
        )


def apply_distance(
    function: DistanceFunction, x_adv: Any, x: Any, unit_range: str | None = None
) -> Any:
    """Call an eagerpy-level distance under the package's contract (see module docstring);
    ``unit_range``: the name of a distance defined on images in [0, 1] (checked)."""
    a, b = prepare(x_adv, x)
    if unit_range is not None:
        check_unit_range(a, "x_adv", unit_range)
        check_unit_range(b, "x", unit_range)
    value = function(a, b)
    value = ep.where(finite_samples(a, b), value, math.nan)
    return value if isinstance(x_adv, ep.Tensor) else value.raw


def distance_function(
    function: DistanceFunction | None = None, *, unit_range: str | None = None
) -> Any:
    """Decorate an eagerpy-level distance ``(x_adv, x) -> (N,)`` with the package's contract;
    ``@distance_function(unit_range="ssim")`` for a distance of images in [0, 1]."""

    def decorate(function: DistanceFunction) -> Distance:
        @functools.wraps(function)
        def wrapper(x_adv: Any, x: Any) -> Any:
            return apply_distance(function, x_adv, x, unit_range)

        wrapper.unchecked = function  # type: ignore[attr-defined]
        # What help() and inspect.signature show: the caller's tensor type in and out, not
        # the eagerpy types of the function inside.
        signature = inspect.signature(function)
        typed = [p.replace(annotation=T) for p in signature.parameters.values()]
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=typed, return_annotation=T
        )
        wrapper.__annotations__ = {**{p.name: T for p in typed}, "return": T}
        return wrapper

    return decorate if function is None else decorate(function)


def callers_metric(function: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``function`` callable with eagerpy or raw tensors, answering in the same kind: a
    function of the package's contract (:func:`distance_function`, an ``LPIPS``) as it is; any
    other callable is a caller's metric (``lpips=``), fed and answering tensors of the model's
    framework (``torch.Tensor`` for PyTorch), as ``is_adversarial`` is."""
    if hasattr(function, "unchecked"):
        return function

    def on_raw(x_adv: Any, x: Any) -> Any:
        value = function(*(t.raw if isinstance(t, ep.Tensor) else t for t in (x_adv, x)))
        wrap = isinstance(x_adv, ep.Tensor) and not isinstance(value, ep.Tensor)
        return ep.astensor(value) if wrap and hasattr(value, "shape") else value

    return on_raw


def unchecked(distance: Callable[[Any, Any], Any]) -> DistanceFunction:
    """The eagerpy-level function behind a :func:`distance_function` (any other callable is
    returned as it is): the same values and gradients, without the contract's validation,
    dtype promotion and non-finite masking. For callers whose arguments are finite eagerpy
    tensors of one dtype of at least 32 bits, such as a solver's iterates (clipped to the
    box) against its validated input: there the checks change nothing, and they are a third
    of the operations of an ℓp distance and its gradient, every step."""
    return cast(DistanceFunction, getattr(distance, "unchecked", distance))


def zero_where(condition: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """0 where ``condition``, else x. A zero tensor, not the scalar 0: inside a TensorFlow
    ``tf.function`` the scalar in where's first branch becomes int32 and the op fails."""
    return ep.where(condition, ep.zeros_like(x), x)


def safe_sqrt(x: ep.Tensor) -> ep.Tensor:
    """√x with gradient 0 (not ∞ or NaN) at x = 0; 0 for x < 0; NaN stays NaN.

    The root is taken of a harmless 1 where x ≤ 0 (or NaN) and masked out; there the value is
    x itself (0 with derivative 0 through the caller's x = Σ d², NaN for NaN).
    """
    positive = x > 0
    root = ep.where(positive, x, 1).sqrt()
    return ep.where(positive, root, zero_where(x < 0, x))


def abs0(x: ep.Tensor) -> ep.Tensor:
    """|x| with sub-gradient 0 at x = 0 on every backend (``x · sign(x)``)."""
    return x * x.sign()


_PRECISION_LOCK = threading.RLock()


@contextlib.contextmanager
def full_precision_cuda(*, matmul: bool = False, convolutions: bool = False) -> Iterator[None]:
    """PyTorch's reduced-precision float32 modes lifted for the block and restored after:
    matrix products rounded to TF32 / bfloat16 (``torch.set_float32_matmul_precision`` other
    than "highest", ``torch.backends.cuda.matmul.allow_tf32``) with ``matmul``, cuDNN's TF32
    convolutions (``torch.backends.cudnn.allow_tf32``, True by default) with ``convolutions``.

    Nothing is touched where the setting is already full precision. The settings are
    process-wide: the block holds a (re-entrant) lock, so that two threads of this package
    neither restore them under each other nor take the other's lifted setting for the caller's
    (code of other threads running meanwhile computes in full precision)."""
    import torch

    with _PRECISION_LOCK:
        saved = torch.get_float32_matmul_precision()
        lift_matmul = matmul and saved != "highest"
        lift_convolutions = convolutions and torch.backends.cudnn.allow_tf32
        if lift_matmul:
            torch.set_float32_matmul_precision("highest")
        if lift_convolutions:
            torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            if lift_matmul:
                torch.set_float32_matmul_precision(saved)
            if lift_convolutions:
                torch.backends.cudnn.allow_tf32 = True


def without_autocast(x: Any) -> contextlib.AbstractContextManager[Any]:
    """The caller's ``torch.autocast`` switched off on ``x``'s device for the block (a
    no-op elsewhere, and where it is off): the distances compute in their inputs' dtype. Under
    CPU autocast to bfloat16, SSIM's filter products came out in bfloat16 (an error from
    eagerpy's mean) and LPIPS's convolutions rounded D by up to 0.9 %. Only the model runs in
    the caller's autocast."""
    import torch

    if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def stop_gradient(x: ep.Tensor) -> ep.Tensor:
    """The value of ``x`` as a constant for differentiation, in any eagerpy framework."""
    if isinstance(x, ep.PyTorchTensor):
        return ep.astensor(x.raw.detach())
    if isinstance(x, ep.JAXTensor):
        import jax

        return ep.astensor(jax.lax.stop_gradient(x.raw))
    if isinstance(x, ep.TensorFlowTensor):
        import tensorflow as tf

        return ep.astensor(tf.stop_gradient(x.raw))
    return x
