"""Argument checks shared by every entry point: clear errors instead of silent wrong answers."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import eagerpy as ep
import numpy as np

from .tensors import fits_dtype, representable_bounds, rounded_bounds

Bounds = tuple[float, float]


def check_bounds(bounds: Any) -> Bounds:
    try:
        # "01" would be read as the pair (0, 1), {0: 1, 1: 2} as its keys, True as 1
        if isinstance(bounds, str | bytes | Mapping | AbstractSet):
            raise TypeError
        if any(isinstance(b, str | bytes | bool | np.bool_) for b in bounds):
            raise TypeError
        lower, upper = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(
            f"bounds must be a pair (lower, upper) of numbers, got {bounds!r}"
        ) from None
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError(f"bounds must be finite with lower < upper, got {bounds!r}")
    return lower, upper


def check_flag(name: str, value: Any) -> bool:
    """A yes/no argument (``targeted``): a bool, not a string or a number that would be read
    as one (``targeted="False"`` is true)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[str], *, upper: bool = False) -> str:
    """``value`` folded to lower (or ``upper``) case if it then is one of ``choices``: a
    TypeError for a non-string (None, a number), a ValueError for another string, each
    listing the choices."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be one of {list(choices)}, got {value!r} ({type(value).__name__})"
        )
    folded = value.upper() if upper else value.lower()
    if folded not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return folded


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum``; any integral type (NumPy's included) is
    accepted, floats and bools are refused (``steps=100.0`` is a TypeError, not a late crash)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any) -> float:
    """``value`` as a Python float; any real type (NumPy's included), not bool."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_early_stop(value: Any) -> float | None:
    """``early_stop``: None, or a number >= 0 in the units of the attack's distance. 0 is
    allowed and never triggers (no distance is below 0): Foolbox passes ``min(epsilons)``,
    and its users' epsilon lists start at 0.0."""
    if value is None:
        return None
    stop = check_number("early_stop", value)
    if math.isnan(stop) or stop < 0:
        raise ValueError(f"early_stop must be None or a number >= 0, got {value!r}")
    return stop


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    value = check_number(name, value)
    too_low = value <= low if open_low else value < low
    too_high = value >= high if open_high else value > high
    if too_low or too_high or math.isnan(value):
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{name} must lie in {left}{low:g}, {high:g}{right}, got {value!r}")
    return value


#: How far (a fraction of the range) inputs may lie outside the bounds: rounding, e.g. of a
#: de-normalisation. They are clipped onto them.
BOUNDS_SLACK = 1e-6


def check_inputs(inputs: ep.Tensor, bounds: Bounds) -> ep.Tensor:
    """Inputs must be a floating batch (N, ...) of finite values inside the bounds. Values
    outside by at most 1e-6 of the range (rounding, e.g. of a de-normalisation) are accepted
    and clipped onto the bounds in the tensor returned, so that nothing an attack returns —
    the input itself included, for a sample already misclassified — leaves the bounds."""
    if inputs.ndim < 2:
        raise ValueError(
            f"inputs must be a batch of shape (N, ...), got shape {tuple(inputs.shape)}"
        )
    if "float" not in str(inputs.dtype):
        raise TypeError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
    if len(inputs) and math.prod(inputs.shape[1:]) == 0:  # nothing to perturb or measure
        raise ValueError(
            f"inputs must have at least one value per sample, got shape {tuple(inputs.shape)}"
        )
    lower, upper = bounds
    if not fits_dtype(inputs, lower, upper, upper - lower):
        raise ValueError(
            f"bounds must be finite in the inputs' dtype {inputs.dtype}, and so must their "
            f"range upper - lower, got {bounds}"
        )
    if len(inputs) == 0:
        return inputs
    broken = _non_finite_samples(inputs)
    if broken:
        shown = ", ".join(map(str, broken[:10])) + (", ..." if len(broken) > 10 else "")
        raise ValueError(
            f"inputs contain NaN or Inf values, in {len(broken)} of {len(inputs)} samples "
            f"(indices {shown})"
        )
    low, high = inputs.min().item(), inputs.max().item()
    if outside_bounds(inputs, bounds, low, high):
        raise ValueError(
            f"inputs must lie within bounds {bounds}, got values in [{low:.6g}, {high:.6g}]"
        )
    if low < lower or high > upper:
        return inputs.clip(*representable_bounds(inputs, bounds))
    return inputs


def outside_bounds(inputs: ep.Tensor, bounds: Bounds, low: float, high: float) -> bool:
    """Whether ``inputs``, with extremes ``low`` and ``high``, leave ``bounds`` by more than
    rounding: 1e-6 of the range (a de-normalisation), or the bound as the inputs' dtype rounds
    it (2.2489 is 2.25 in bfloat16: a white pixel normalised)."""
    lower, upper = bounds
    slack = BOUNDS_SLACK * (upper - lower)
    rounded_lower, rounded_upper = rounded_bounds(inputs, bounds)
    return low < min(lower - slack, rounded_lower) or high > max(upper + slack, rounded_upper)


def _non_finite_samples(x: ep.Tensor) -> list[int]:
    """The indices of the samples holding a NaN or ±Inf (one host read)."""
    per_sample = ep.logical_or(x.isnan(), x.isinf()).reshape((len(x), -1)).any(axis=1)
    return np.flatnonzero(per_sample.numpy()).tolist()


def check_labels(labels: ep.Tensor, batch_size: int, name: str = "labels") -> None:
    """Labels must be integer class indices of shape (N,) (any integer dtype, not bool)."""
    if tuple(labels.shape) != (batch_size,):
        raise _label_shape_error(name, (batch_size,), tuple(labels.shape))
    if not is_integer_dtype(labels):
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")


def is_integer_dtype(tensor: ep.Tensor) -> bool:
    """Any signed or unsigned integer dtype of any framework (bool is not an integer here)."""
    text = str(tensor.dtype)
    return "int" in text and "bool" not in text


def eagerpy_or_none(value: Any) -> ep.Tensor | None:
    """``value`` as an eagerpy tensor, or None for what eagerpy cannot wrap (lists, ...)."""
    if isinstance(value, ep.Tensor):
        return value
    try:
        return ep.astensor(value)
    except ValueError:
        return None


def _variable_hint(value: Any) -> str:
    """How to pass a ``tf.Variable``, which eagerpy does not take as a tensor."""
    if "Variable" in type(value).__name__ and hasattr(value, "read_value"):
        return " (a tf.Variable: pass tf.convert_to_tensor(variable))"
    return ""


def as_tensor(name: str, value: Any) -> ep.Tensor:
    """An eagerpy tensor of the caller's data that no attack computation can reach back into:
    detached from the caller's autograd graph (no graph kept through the steps, no gradient
    into the caller's tensor) and, for PyTorch inference-mode tensors, a normal copy that
    autograd accepts. NumPy arrays and other objects are refused: the attacks need autodiff."""
    tensor = eagerpy_or_none(value)
    if tensor is None:
        raise TypeError(
            f"{name} must be a PyTorch, JAX or TensorFlow tensor, got "
            f"{type(value).__name__}{_variable_hint(value)}"
        )
    if isinstance(tensor, ep.NumPyTensor):
        raise TypeError(
            f"{name} must be a PyTorch, JAX or TensorFlow tensor (NumPy has no autodiff), "
            f"got {type(value).__name__}"
        )
    if isinstance(tensor, ep.PyTorchTensor):
        raw = tensor.raw.detach()
        if raw.is_inference():
            raw = raw.clone()  # outside inference mode, the clone is a normal tensor
        return ep.astensor(raw)
    return tensor


def host_array(name: str, value: Any) -> np.ndarray:
    """``np.asarray(value)`` for a list, tuple or array the caller gave, refusing ragged
    nesting with a TypeError naming ``name`` (NumPy's own error names neither)."""
    try:
        return np.asarray(value)
    except ValueError:
        raise TypeError(
            f"{name} must be a rectangular nested list (the same length in every row: one entry "
            "per sample, or per pixel), got a ragged one"
        ) from None


def container_shape(name: str, value: Any) -> tuple[int, ...]:
    """The shape of a tensor, an array or a nested list or tuple (a ragged one is a TypeError
    naming ``name``); () for anything else, which the labels' own checks then name."""
    if hasattr(value, "shape"):
        return tuple(value.shape)
    return host_array(name, value).shape if isinstance(value, list | tuple) else ()


def as_labels(name: str, value: Any, like: ep.Tensor, shape: tuple[int, ...]) -> ep.Tensor:
    """Integer class indices of ``shape`` as a tensor of ``like``'s framework and device, in
    that framework's index dtype (int64 for PyTorch), whatever the caller's integer dtype
    (uint8, int16, ...) or container (a tensor, a NumPy array, a list)."""
    if isinstance(value, ep.Tensor):
        labels = value
    elif isinstance(value, np.ndarray | list | tuple) or np.isscalar(value):
        array = host_array(name, value)
        if array.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer class indices, got dtype {array.dtype}")
        labels = _index_tensor(name, array.astype(np.int64), like)
    else:
        try:
            labels = ep.astensor(value)
        except ValueError:
            raise TypeError(
                f"{name} must be an integer tensor, array or list, got "
                f"{type(value).__name__}{_variable_hint(value)}"
            ) from None
    if tuple(labels.shape) != tuple(shape):
        raise _label_shape_error(name, tuple(shape), tuple(labels.shape))
    if not is_integer_dtype(labels):
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    labels = on_framework_of(_index_tensor(name, labels.numpy().astype(np.int64), like)
                             if type(labels) is not type(like) else labels, like)  # fmt: skip
    # argmax's index dtype (int64 in PyTorch and TensorFlow, int32 in JAX), so that comparing
    # predictions with the labels needs no promotion (eagerpy's TensorFlow promotion calls
    # np.find_common_type, which NumPy 2 removed)
    return labels.astype(ep.zeros(like, (1,)).argmax().dtype)


def _label_shape_error(name: str, expected: tuple[int, ...], got: tuple[int, ...]) -> ValueError:
    """Labels of the wrong shape; where they are one label (shape () or (1,)) for a batch
    of more, the inputs are likely one unbatched input."""
    along = ", one class per input along the inputs' first axis" if len(expected) == 1 else ""
    single = ""
    if got == () or (got == (1,) and expected != (1,)):
        single = " (one input? add its batch axis: inputs[None], and labels of shape (1,))"
    return ValueError(f"{name} must have shape {expected}{along}, got shape {got}{single}")


def _index_tensor(name: str, array: np.ndarray, like: ep.Tensor) -> ep.Tensor:
    """int64 ``array`` as a tensor of ``like``'s framework, refusing values its integers cannot
    hold: JAX without x64 keeps int32 and would wrap 2³² + c to the valid class c."""
    tensor = ep.from_numpy(like, array)
    if array.size and not np.array_equal(tensor.numpy().astype(np.int64), array):
        raise ValueError(
            f"{name} must fit in {tensor.dtype}, the framework's integers, got values in "
            f"[{array.min()}, {array.max()}]"
        )
    return tensor


def on_framework_of(value: ep.Tensor | np.ndarray, like: ep.Tensor) -> ep.Tensor:
    """``value`` (a tensor of any framework, or a NumPy array) as a tensor of ``like``'s
    framework on ``like``'s device, detached, outside inference mode: a caller's labels or masks
    may sit on another device (the CPU) or come from another framework than the inputs."""
    if isinstance(value, ep.Tensor) and type(value) is not type(like):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        value = ep.from_numpy(like, value)
    if isinstance(value, ep.PyTorchTensor):
        raw = value.raw.detach().to(like.raw.device)
        return ep.astensor(raw.clone() if raw.is_inference() else raw)
    return value


def check_params_fit(params: Any, like: ep.Tensor) -> None:
    """Every finite number of a params dataclass finite in ``like``'s dtype, the solver's
    working dtype (``mu_max=1e39`` is inf in float32: the state built from it overflowed in
    PyTorch with an error naming no field)."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, float) and math.isfinite(value) and not fits_dtype(like, value):
            raise ValueError(
                f"{f.name} must be finite in {like.dtype}, the dtype the attack computes in, "
                f"got {value!r}"
            )


def working_dtype(inputs: ep.Tensor) -> Any:
    """The dtype the solvers compute in: the inputs' own, but at least float32. μ_max = 1e12,
    ρ growth and the squared-gradient averages do not fit in float16 or bfloat16; the model is
    still called on inputs of its own dtype."""
    if "float16" in str(inputs.dtype):  # float16 and bfloat16
        return inputs.float32().dtype
    return inputs.dtype
