"""The checks and conversions shared by the functional entry points (:mod:`alma_plugin.functional`):
inputs, labels and label maps, masks, the distance's input shape, a custom LPIPS, and the
callables (success predicate, callback) fed tensors of the caller's kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import eagerpy as ep
import numpy as np

from .core.model_checks import warn_if_training
from .core.result import AttackResult, StepInfo
from .core.validation import (
    as_labels,
    as_tensor,
    check_inputs,
    container_shape,
    host_array,
    on_framework_of,
    working_dtype,
)
from .distances import MS_SSIM_WEIGHTS, DistanceFunction, get_distance, ms_ssim_min_size
from .distances._common import callers_metric, unchecked

SuccessFn = Callable[[Any, Any], Any]


def entry(
    model: Any, inputs: Any, bounds: tuple[float, float], is_adversarial: Any, callback: Any
) -> tuple[ep.Tensor, Callable[[ep.Tensor], Any], ep.Tensor]:
    """Checks shared by the entry points: the checked inputs (clipped onto the bounds where
    they left them by rounding), the function that gives results back in the caller's kind of
    tensor, and the caller's inputs as given (the same object where nothing was clipped)."""
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    for name, value in (("is_adversarial", is_adversarial), ("callback", callback)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, got {value!r}")
    given = as_tensor("inputs", inputs)
    x = check_inputs(given, bounds)
    warn_if_training(model)
    if isinstance(inputs, ep.Tensor):
        return x, lambda tensor: tensor, given
    return x, lambda tensor: tensor.raw, given


def measured_from_callers_inputs(
    distances: ep.Tensor,
    adversarials: ep.Tensor,
    given: ep.Tensor,
    x: ep.Tensor,
    bounds: tuple[float, float],
    measure: DistanceFunction,
) -> ep.Tensor:
    """``distances`` (+inf kept) measured from the caller's inputs ``given`` rather than from ``x``,
    where :func:`check_inputs` clipped them onto the bounds: 16-bit inputs at a bound that
    their dtype cannot represent (a white pixel of normalised MNIST is 2.828125 in bfloat16,
    above 2.8215; ``x`` holds 2.8125, the largest bfloat16 inside). Measured from ``x`` the
    distances came out smaller than the same distance between the returned tensor and the
    caller's own (by up to 4 % for ℓ∞ in bfloat16). Where nothing was clipped (``x`` is
    ``given``), as they are: no host read, no device work."""
    if x is given:
        return distances
    lower, upper = bounds
    dtype = distances.dtype

    def normalised(t: ep.Tensor) -> ep.Tensor:
        return (t.astype(dtype) - lower) / (upper - lower)

    measured = measure(normalised(adversarials), normalised(given)).astype(dtype)
    return ep.where(distances.isinf(), distances, measured)


def check_distance_inputs(name: str, x: ep.Tensor) -> None:
    """Inputs the distance cannot measure get an error naming ``inputs`` before any model call."""
    spec = get_distance(name)
    if spec.needs_color and (x.ndim != 4 or x.shape[1] != 3):
        raise ValueError(
            f"distance={name!r} needs RGB inputs of shape (N, 3, H, W), got shape {tuple(x.shape)}"
        )
    if name in ("ssim", "msssim", "lpips"):
        needed = {"ssim": 11, "msssim": ms_ssim_min_size(len(MS_SSIM_WEIGHTS)), "lpips": 31}[name]
        if x.ndim != 4 or min(x.shape[2:]) < needed:
            raise ValueError(
                f"distance={name!r} needs inputs of shape (N, C, H, W) with H, W >= {needed}, "
                f"got shape {tuple(x.shape)}"
            )


def check_lpips_framework(lpips: Any, x: ep.Tensor) -> None:
    """The package's LPIPS (``lpips=None``: the default weights, or an ``LPIPS``) is a torch
    network: inputs of another framework get an error naming ``lpips`` before any model call
    (it came from inside the first gradient step, naming a JAX tracer). A caller's own metric
    on that framework's tensors works."""
    ours = lpips is None or hasattr(lpips, "unchecked")
    if ours and not isinstance(x, ep.PyTorchTensor):
        raise TypeError(
            "distance='lpips' with lpips=None or an alma_plugin.distances.LPIPS needs PyTorch "
            f"inputs (the LPIPS network is a torch module), got {type(x.raw).__module__}."
            f"{type(x.raw).__qualname__}; for a JAX or TensorFlow model, pass lpips= a metric "
            "(x_adv, x) -> (N,) on its tensors"
        )


def label_maps(labels: Any, x: ep.Tensor, name: str = "labels") -> ep.Tensor:
    """(N,) class labels, or (N, H, W) label maps for (N, C, H, W) inputs; ``name`` is what
    errors call them ("targets" for a targeted attack, as ALMA's)."""
    shape = container_shape(name, labels)  # label maps may come as nested lists
    if len(shape) <= 1:
        return as_labels(name, labels, x, (len(x),))
    expected = (len(x), *x.shape[2:])
    if x.ndim != 4:  # (N, *S) maps for (N, C, *S) volumes or signals: the core would take them
        raise ValueError(
            f"{name} must have shape (N,) or (N, H, W); (N, H, W) label maps need (N, C, H, W) "
            f"inputs, got labels of shape {shape} for {x.ndim}-D inputs of shape "
            f"{tuple(x.shape)} (label maps of volumes or 1-D signals are not supported)"
        )
    if shape != expected:
        raise ValueError(
            f"{name} must have shape (N,) or (N, H, W) = {expected} for inputs of shape "
            f"{tuple(x.shape)}, got shape {shape}"
        )
    return as_labels(name, labels, x, expected)


def checked_masks(masks: Any, labels: ep.Tensor) -> ep.Tensor:
    """The pixels to attack, from a tensor of any framework and device, a NumPy array or a
    nested list of booleans (or 0/1), as a tensor of the (checked) labels' framework and device,
    i.e. the inputs'. Their values are checked with the labels' (:mod:`.core.prox_constraints`)."""
    if isinstance(masks, np.ndarray | list | tuple):
        array = host_array("masks", masks)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"masks must hold booleans or 0/1 values, got dtype {array.dtype}")
        m: ep.Tensor | np.ndarray = array
    else:
        try:
            m = as_tensor("masks", masks)
        except TypeError:
            raise TypeError("masks must be a tensor, a NumPy array or a list of booleans (or 0/1),"
                            f" got {type(masks).__name__}") from None  # fmt: skip
    if tuple(m.shape) != tuple(labels.shape):
        raise ValueError(
            f"masks must have the labels' shape {tuple(labels.shape)}, got {tuple(m.shape)}"
        )
    return on_framework_of(m, labels)


def checked_lpips(lpips: Any, distance: str) -> DistanceFunction:
    """``lpips`` as the distance the solver descends, answering one value per sample.

    An :class:`~alma_plugin.distances.LPIPS` (or any function of the package's distance
    contract) runs on eagerpy tensors, as the registry's distances. Any other callable is the
    caller's own metric: it gets and may return tensors of the model's framework
    (``torch.Tensor`` for PyTorch), as ``is_adversarial`` does, whatever the solver holds.
    (Before, alma() and the Foolbox class handed it eagerpy tensors, which a metric written
    with ``torch.nn.functional`` cannot take, while ``MinimalEnsemble`` handed it torch ones.)"""
    if distance != "lpips":
        raise ValueError(f"lpips= is only used with distance='lpips', got {distance!r}")
    if not callable(lpips):
        raise TypeError(
            "lpips must be an alma_plugin.distances.LPIPS instance (or a callable "
            f"(x_adv, x) -> (N,) on tensors of the model's framework), got {type(lpips).__name__}"
        )
    # an LPIPS instance: its eagerpy function, as for DISTANCES; a caller's: raw tensors
    measure = unchecked(callers_metric(lpips))

    def checked(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
        value = measure(x_adv, x)
        shape = tuple(getattr(value, "shape", ()))
        if shape != (len(x),):
            raise ValueError(f"lpips must return one distance per sample, shape ({len(x)},), "
                             f"got {type(value).__name__} of shape {shape}")  # fmt: skip
        return value

    return checked


def converted(
    callback: Callable[[StepInfo], None], restore: Callable[[ep.Tensor], Any]
) -> Callable[[StepInfo], None]:
    """The caller's callback, fed tensors of the caller's kind."""
    tensors = [f.name for f in fields(StepInfo) if f.name != "step"]

    def call(info: StepInfo) -> None:
        callback(replace(info, **{name: restore(getattr(info, name)) for name in tensors}))

    return call


def judging(predicate: SuccessFn | None, restore: Callable[[ep.Tensor], Any]) -> SuccessFn | None:
    """The caller's success predicate, fed tensors of the caller's kind (as ``callback``); the
    solver checks its answer (raw or eagerpy) with :func:`.core.model_checks.check_success`."""
    if predicate is None:
        return None

    def judge(model_inputs: ep.Tensor, logits: ep.Tensor) -> Any:
        return predicate(restore(model_inputs), restore(logits))

    return judge


def empty(
    x: ep.Tensor,
    y: ep.Tensor,
    restore: Callable[[ep.Tensor], Any],
    apsr: bool = False,
    predictions: bool = True,
) -> AttackResult[Any]:
    distances = ep.zeros(x, (0,)).astype(working_dtype(x))  # as for a non-empty batch
    nothing = ep.zeros(y, (0,))
    result = AttackResult(x, distances, distances > 0, nothing, 0, distances if apsr else None,
                          nothing if predictions else None)  # fmt: skip
    return result.map(restore)
