"""The model and the success predicate, checked where the solvers call them: logits of the
inputs' framework and shape, no in-place writes into the tensors the attack keeps, and
warnings for models the attack would silently misjudge (training mode, probabilities)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import eagerpy as ep

from .validation import eagerpy_or_none

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


def warn_if_probabilities(logits: ep.Tensor, defined: str = "ALMA's constraint DLR⁺") -> None:
    """Warn when the model's first outputs look like probabilities: every value in [0, 1] and
    every sample's (every pixel's) classes, on axis 1, summing to 1. DLR⁺ (eq. 4) is a ratio of
    logit differences; on a softmax output the differences saturate with the probabilities, and
    the attack follows a gradient that vanishes near the boundary: ALMA-ℓ2 on an MNIST SmallCNN
    with a final softmax found perturbations 4.5 times larger than on its logits (ℓ1: 10
    times), with no other sign of trouble. ``defined``: what is defined on logits (the
    Lagrangian attack's margin loss, whose κ is in logits). One host read per call (step 0)."""
    values = logits.float32() if "float16" in str(logits.dtype) else logits
    if values.shape[0] == 0 or values.shape[1] < 2:
        return
    in_unit = ep.logical_and(values >= 0, values <= 1).all()
    sums_to_one = ((values.sum(axis=1) - 1).abs() <= 1e-3).all()
    if not ep.logical_and(in_unit, sums_to_one).item():  # the one host read
        return
    warnings.warn(
        "model outputs look like probabilities (every value in [0, 1], every row summing to "
        f"1): {defined} is defined on logits, and on probabilities it saturates, so "
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
    tensor = eagerpy_or_none(success)
    if tensor is None:
        raise TypeError(f"{name} must return {expected}, got {type(success).__name__}")
    if like is not None and type(tensor) is not type(like):
        raise TypeError(
            f"{name} must return {expected} of the model's framework "
            f"({type(like.raw).__name__}), got {type(tensor.raw).__name__}"
        )
    if "bool" not in str(tensor.dtype):  # the wrong type of answer (a score, a class)
        raise TypeError(
            f"{name} must return {expected}, got dtype {tensor.dtype} and shape "
            f"{tuple(tensor.shape)}"
        )
    if tuple(tensor.shape) != (batch_size,):
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
