"""Argument checks shared by every entry point: clear errors instead of silent wrong answers."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

from .tensors import representable_bounds, rounded_bounds

Bounds = tuple[float, float]


def check_bounds(bounds: Any) -> Bounds:
    try:
        if isinstance(bounds, str | bytes):  # "01" would be read as the pair (0, 1)
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
    if len(inputs) == 0:
        return inputs
    if _has_non_finite(inputs):
        raise ValueError("inputs contain NaN or Inf values")
    lower, upper = bounds
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


def _has_non_finite(x: ep.Tensor) -> bool:
    return bool(ep.logical_or(x.isnan(), x.isinf()).any().item())


def check_labels(labels: ep.Tensor, batch_size: int, name: str = "labels") -> None:
    """Labels must be integer class indices of shape (N,) (any integer dtype, not bool)."""
    if tuple(labels.shape) != (batch_size,):
        single = " (one input? add its batch axis: inputs[None])" if labels.shape == (1,) else ""
        raise ValueError(
            f"{name} must have shape ({batch_size},), one class per input along the inputs' "
            f"first axis, got shape {tuple(labels.shape)}{single}"
        )
    if not is_integer_dtype(labels):
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")


def is_integer_dtype(tensor: ep.Tensor) -> bool:
    """Any signed or unsigned integer dtype of any framework (bool is not an integer here)."""
    text = str(tensor.dtype)
    return "int" in text and "bool" not in text


def _eagerpy_or_none(value: Any) -> ep.Tensor | None:
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
    tensor = _eagerpy_or_none(value)
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


def as_labels(name: str, value: Any, like: ep.Tensor, shape: tuple[int, ...]) -> ep.Tensor:
    """Integer class indices of ``shape`` as a tensor of ``like``'s framework and device, in
    that framework's index dtype (int64 for PyTorch), whatever the caller's integer dtype
    (uint8, int16, ...) or container (a tensor, a NumPy array, a list)."""
    if isinstance(value, ep.Tensor):
        labels = value
    elif isinstance(value, np.ndarray | list | tuple) or np.isscalar(value):
        array = np.asarray(value)
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
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {tuple(labels.shape)}")
    if not is_integer_dtype(labels):
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    labels = on_framework_of(_index_tensor(name, labels.numpy().astype(np.int64), like)
                             if type(labels) is not type(like) else labels, like)  # fmt: skip
    # argmax's index dtype (int64 in PyTorch and TensorFlow, int32 in JAX), so that comparing
    # predictions with the labels needs no promotion (eagerpy's TensorFlow promotion calls
    # np.find_common_type, which NumPy 2 removed)
    return labels.astype(ep.zeros(like, (1,)).argmax().dtype)


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


def working_dtype(inputs: ep.Tensor) -> Any:
    """The dtype the solvers compute in: the inputs' own, but at least float32. μ_max = 1e12,
    ρ growth and the squared-gradient averages do not fit in float16 or bfloat16; the model is
    still called on inputs of its own dtype."""
    if "float16" in str(inputs.dtype):  # float16 and bfloat16
        return inputs.float32().dtype
    return inputs.dtype


#: Modules of torch.nn whose forward depends on the train/eval mode.
_MODE_DEPENDENT = ("torch.nn.modules.dropout", "torch.nn.modules.batchnorm",
                   "torch.nn.modules.instancenorm")  # fmt: skip


def _layer_class(module: Any) -> type:
    """A module's class; for TorchScript, the ``torch.nn`` class it was compiled from
    (``original_name``: every scripted or traced submodule's own type is
    ``RecursiveScriptModule``)."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        name = getattr(module, "original_name", None)
        found = getattr(torch.nn, name, None) if isinstance(name, str) else None
        if isinstance(found, type):
            return found
    return type(module)


def warn_if_training(model: Any, name: str = "model") -> None:
    """Warn when a ``torch.nn.Module`` holds a dropout or normalisation layer in training mode:
    dropout then makes each forward random, and batch normalisation uses batch statistics and
    updates its running averages at every step, so the attack optimises (and judges success on)
    a model different from the one evaluated in eval mode. (Layers whose forward ignores the
    mode, such as a wrapper's own flag, do not warn; TorchScript models are judged by the
    classes their modules were compiled from.)"""
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return
    try:
        training = [m for m in modules() if getattr(m, "training", False)]
    except TypeError:
        return
    dependent = [cls for cls in map(_layer_class, training) if cls.__module__ in _MODE_DEPENDENT]
    if dependent:
        layers = sorted({cls.__name__ for cls in dependent})
        warnings.warn(
            f"{name} has layers in training mode ({', '.join(layers)}): dropout and batch "
            "normalisation make the attacked model differ from its eval-mode behaviour (batch "
            "norm running statistics are updated by every step; successes may not hold in eval "
            f"mode). Call {name}.eval() before attacking; the mode is left as you set it.",
            TrainingModeWarning,
            stacklevel=3,
        )


class TrainingModeWarning(UserWarning):
    """The attacked model has modules in training mode (see :func:`warn_if_training`)."""


class ProbabilityOutputWarning(UserWarning):
    """The attacked model returns probabilities, not logits (see :func:`warn_if_probabilities`)."""


def warn_if_probabilities(logits: ep.Tensor) -> None:
    """Warn when the model's first outputs look like probabilities: every value in [0, 1] and
    every sample's (every pixel's) classes, on axis 1, summing to 1. DLR⁺ (eq. 4) is a ratio of
    logit differences; on a softmax output the differences saturate with the probabilities, and
    the attack follows a gradient that vanishes near the boundary: ALMA-ℓ2 on an MNIST SmallCNN
    with a final softmax found perturbations 4.5 times larger than on its logits (ℓ1: 10
    times), with no other sign of trouble. One host read per call (step 0)."""
    values = logits.float32() if "float16" in str(logits.dtype) else logits
    if values.shape[0] == 0 or values.shape[1] < 2:
        return
    in_unit = ep.logical_and(values >= 0, values <= 1).all()
    sums_to_one = ((values.sum(axis=1) - 1).abs() <= 1e-3).all()
    if not ep.logical_and(in_unit, sums_to_one).item():  # the one host read
        return
    warnings.warn(
        "model outputs look like probabilities (every value in [0, 1], every row summing to "
        "1): ALMA's constraint DLR⁺ is defined on logits, and on probabilities it saturates, so "
        "the perturbations found can be several times larger than the minimal ones. Attack "
        "the model without its final softmax (logits or log-probabilities).",
        ProbabilityOutputWarning,
        stacklevel=2,
    )


def check_success(
    success: Any, batch_size: int, name: str = "is_adversarial", like: ep.Tensor | None = None
) -> ep.Tensor:
    """A success predicate's answer must be a boolean tensor of shape (N,), of the framework of
    ``like`` (the logits) when given; a PyTorch answer on another device (a predicate that
    computed on the CPU for logits on a GPU) is moved to the logits' device."""
    expected = f"a boolean tensor of shape ({batch_size},)"
    tensor = _eagerpy_or_none(success)
    if tensor is None:
        raise TypeError(f"{name} must return {expected}, got {type(success).__name__}")
    if like is not None and type(tensor) is not type(like):
        raise TypeError(
            f"{name} must return {expected} of the model's framework "
            f"({type(like.raw).__name__}), got {type(tensor.raw).__name__}"
        )
    if tuple(tensor.shape) != (batch_size,) or "bool" not in str(tensor.dtype):
        raise ValueError(
            f"{name} must return {expected}, got dtype {tensor.dtype} and shape "
            f"{tuple(tensor.shape)}"
        )
    if isinstance(tensor, ep.PyTorchTensor) and like is not None:
        if tensor.raw.device != like.raw.device:
            return ep.astensor(tensor.raw.to(like.raw.device))
    return tensor


_WRITES_INPUT = (
    "model wrote into its input tensor in place (e.g. nn.ReLU(inplace=True) as its first "
    "layer, or x.sub_(mean)): the attack measures and returns the tensors the model judged, so "
    "the model must leave its input unchanged; make its first operation out of place "
    "(nn.ReLU(), x - mean)"
)


_WRITES_INPUT_OR_PARAMETER = (
    "model wrote into its input tensor in place (e.g. nn.ReLU(inplace=True) as its first layer, "
    "or x.sub_(mean)) or into one of its parameters that requires grad (e.g. weights clipped in "
    "its forward, which torch.no_grad() allows but the attack's autograd does not): the attack "
    "measures and returns the tensors the model judged, so make the model's first operation out "
    "of place (nn.ReLU(), x - mean) and change parameters outside its forward or under "
    "torch.no_grad()"
)


_PREDICATE_WRITES = (
    "is_adversarial (or the Foolbox criterion) wrote into the inputs or the logits it was given, "
    "in place (e.g. inputs.mul_(...), logits.softmax_ or an in-place clamp): the attack keeps "
    "and returns the tensors it judged, so a success test must leave them unchanged; compute "
    "out of place (logits.softmax(-1)) or on a copy (inputs.clone())"
)


def versions(*tensors: ep.Tensor) -> tuple[int, ...]:
    """PyTorch's version counters of ``tensors`` (bumped by every in-place write); () for
    the other frameworks, whose tensors cannot be written into."""
    return tuple(t.raw._version for t in tensors if isinstance(t, ep.PyTorchTensor))


def judge_success(
    is_adversarial: Callable[[ep.Tensor, ep.Tensor], Any],
    inputs: ep.Tensor,
    logits: ep.Tensor,
    batch_size: int,
) -> ep.Tensor:
    """``is_adversarial(inputs, logits)`` checked by :func:`check_success`, refusing a PyTorch
    predicate that writes into either tensor: the solver keeps ``inputs`` as the best iterate
    and reads ``logits`` after the call, so a write would be returned as a success the model
    never judged. Free: version counters, no copy."""
    before = versions(inputs, logits)
    success = is_adversarial(inputs, logits)
    if versions(inputs, logits) != before:
        raise ValueError(_PREDICATE_WRITES)
    return check_success(success, batch_size, like=logits)


def _is_grad_leaf(inputs: ep.Tensor) -> bool:
    return isinstance(inputs, ep.PyTorchTensor) and inputs.raw.is_leaf and inputs.raw.requires_grad


def call_model(model: Callable[[ep.Tensor], Any], inputs: ep.Tensor) -> ep.Tensor:
    """``model(inputs)`` as logits (:func:`as_model_output`), refusing a PyTorch model that
    writes into ``inputs``: the attack would otherwise return (and measure) a tensor the model
    changed after judging it. Free: a version counter, no copy."""
    version = versions(inputs)
    try:
        output = model(inputs)
    except RuntimeError as error:
        # PyTorch's message names no tensor: the iterate (a leaf that requires grad, as with
        # bounds (0, 1)) or a parameter of the model (weight clipping in its forward, allowed
        # under torch.no_grad() but not under the attack's autograd). Only the iterate is
        # ours to explain; any other error is the caller's, unchanged.
        if (
            "leaf Variable that requires grad" in str(error)
            and "in-place" in str(error)
            and _is_grad_leaf(inputs)
        ):
            raise ValueError(_WRITES_INPUT_OR_PARAMETER) from error
        raise
    if versions(inputs) != version:
        raise ValueError(_WRITES_INPUT)
    return as_model_output(output, inputs)


def as_model_output(output: Any, inputs: ep.Tensor) -> ep.Tensor:
    """The model's output as an eagerpy tensor of the inputs' framework, or a TypeError that
    says what came back (a NumPy array, a list, a tuple...)."""
    tensor = output if isinstance(output, ep.Tensor) else None
    if tensor is None and isinstance(output, type(inputs.raw)):
        tensor = ep.astensor(output)
    if tensor is None and isinstance(inputs, ep.JAXTensor) and _is_jax_array(output):
        # logits that do not depend on the input: a concrete array where the input is traced
        tensor = ep.astensor(output)
    if tensor is None or type(tensor) is not type(inputs):
        got = type(output.raw if isinstance(output, ep.Tensor) else output).__name__
        # a JAX input is a tracer here (LinearizeTracer...): name the type the user knows
        expected = "jax.Array" if isinstance(inputs, ep.JAXTensor) else type(inputs.raw).__name__
        raise TypeError(f"model must return a {expected} of logits (like its inputs), got {got}")
    if "float" not in str(tensor.dtype):  # integer or bool outputs have no gradient
        raise TypeError(f"model must return floating-point logits, got dtype {tensor.dtype}")
    return tensor


def _is_jax_array(value: Any) -> bool:
    import sys

    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.Array)


def check_logits(
    logits: ep.Tensor, labels: ep.Tensor, name: str = "labels", hint: str = ""
) -> None:
    """The model must return (N, K) logits with K ≥ 2 and labels in [0, K) (``hint`` ends the
    error for labels outside)."""
    n = len(labels)
    if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(
            f"model outputs must have shape (N={n}, K>=2) (one logit per class), got shape "
            f"{tuple(logits.shape)}"
        )
    if n:
        low, high = labels.min().item(), labels.max().item()
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(
                f"{name} must lie in [0, {logits.shape[1]}) for a model with "
                f"{logits.shape[1]} classes, got values in [{low}, {high}]{hint}"
            )
