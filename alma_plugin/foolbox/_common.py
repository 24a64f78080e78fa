"""Translation helpers shared by the Foolbox attacks: tensors, criteria, layouts, checks.

Every check goes through :mod:`alma_plugin.core.validation`, the one mechanism all entry points
share: inputs become detached, inference-mode-safe eagerpy tensors (:func:`as_tensor`), labels
of any integer dtype or container become the framework's index dtype (:func:`as_labels`).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable, Sized
from typing import Any

import eagerpy as ep
import numpy as np
from foolbox.criteria import Criterion, Misclassification, TargetedMisclassification
from foolbox.models import Model

from ..core.validation import Bounds, as_labels, as_tensor, check_bounds, check_inputs

SuccessFn = Callable[[ep.Tensor, ep.Tensor], ep.Tensor]  # (model_inputs, logits) -> bool (N,)

CHANNELS_FIRST = "channels_first"
CHANNELS_LAST = "channels_last"


class UnsupportedCriterionError(TypeError, ValueError):
    """A Foolbox criterion other than ``Misclassification`` / ``TargetedMisclassification``:
    a ``TypeError`` (a wrong kind of argument), and the ``ValueError`` that Foolbox's own
    attacks raise there (``"unsupported criterion"``), so code written for either catches it."""


def normalise_criterion(criterion: Any, inputs: ep.Tensor) -> Criterion:
    """The caller's criterion with its classes as a tensor of ``inputs``' framework and device
    in the framework's index dtype, whatever their integer dtype (uint8, int16, ...) or
    container (tensor, NumPy array, list).

    A bare labels container means ``Misclassification(labels)``, as in Foolbox. A subclass of
    either criterion (e.g. one that asks for a logit margin) stays what it is: a shallow copy
    with the converted classes, so its own ``__call__`` judges success. Other criteria (e.g. a
    combination with ``&``) raise a TypeError naming the supported ones.
    """
    batch = (len(inputs),)
    if isinstance(criterion, Misclassification):
        converted = copy.copy(criterion)
        converted.labels = as_labels("labels", criterion.labels, inputs, batch)
        return converted
    if isinstance(criterion, TargetedMisclassification):
        targeted = copy.copy(criterion)
        classes = criterion.target_classes
        targeted.target_classes = as_labels("target_classes", classes, inputs, batch)
        return targeted
    if isinstance(criterion, Criterion):
        raise UnsupportedCriterionError(
            "criterion must be a labels tensor, foolbox.criteria.Misclassification or "
            f"foolbox.criteria.TargetedMisclassification, got {criterion!r}"
        )
    return Misclassification(as_labels("labels", criterion, inputs, batch))


def goal(criterion: Any, inputs: ep.Tensor) -> tuple[bool, Criterion, ep.Tensor]:
    """(targeted, the normalised criterion, its classes) for the core solvers."""
    criterion = normalise_criterion(criterion, inputs)
    if isinstance(criterion, TargetedMisclassification):
        return True, criterion, criterion.target_classes
    assert isinstance(criterion, Misclassification)
    return False, criterion, criterion.labels


def success_fn(
    criterion: Criterion, to_caller: Callable[[ep.Tensor], ep.Tensor] | None = None
) -> SuccessFn:
    """The criterion object itself as the core's success predicate; ``to_caller`` maps the
    core's inputs back to the caller's layout first (channels-last models)."""

    def is_adversarial(model_inputs: ep.Tensor, logits: ep.Tensor) -> ep.Tensor:
        if to_caller is not None:
            model_inputs = to_caller(model_inputs)
        return ep.astensor(criterion(model_inputs, logits))

    return is_adversarial


def check_model_and_inputs(model: Any, inputs: Any) -> tuple[Bounds, ep.Tensor]:
    """``model.bounds`` and the inputs as a detached, inference-mode-safe eagerpy tensor, after
    checks that turn Foolbox's bare ``AssertionError`` on out-of-bounds inputs into a
    ValueError naming the bounds."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a foolbox.models.Model, got {type(model).__name__}")
    bounds = check_bounds(model.bounds)
    x = check_inputs(as_tensor("inputs", inputs), bounds)
    return bounds, x


_EPSILONS_EXPECTED = "None, a number >= 0 (inf included) or a sequence of them"


def check_epsilons(epsilons: Any) -> None:
    """Raise unless every epsilon is None or a real number >= 0 (inf included), whether
    ``epsilons`` is one value, a list or tuple, a NumPy array or a tensor of any framework.

    The check of ``early_stop = min(epsilons)`` in :meth:`MinimalAttack.run` never sees them
    when an epsilon is None (Foolbox then passes no ``early_stop``), and Foolbox's
    ``clip_perturbation`` turns a negative ε into a flipped perturbation. An iterator (a
    generator) is a TypeError: checking it would consume it, and Foolbox takes its ``len``.
    """
    values = _epsilon_values(epsilons)
    if not values:  # Foolbox would fail in min(epsilons) naming nothing
        raise ValueError(
            f"epsilons must be {_EPSILONS_EXPECTED}, got an empty {type(epsilons).__name__}: "
            "give at least one epsilon, or None for the minimal perturbations alone"
        )
    for value in values:
        if value is None:
            continue
        where = "" if value is epsilons else f" in {epsilons!r}"
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"epsilons must be {_EPSILONS_EXPECTED}, got {value!r} "
                f"({type(value).__name__}){where}"
            )
        if math.isnan(value) or value < 0:
            raise ValueError(f"epsilons must be {_EPSILONS_EXPECTED}, got {value!r}{where}")


def _epsilon_values(epsilons: Any) -> list[Any]:
    """The values of ``epsilons`` as Python objects (numbers, None, or what the caller put
    there), flattened."""
    if epsilons is None or isinstance(epsilons, numbers.Number | str | bytes | np.bool_):
        return [epsilons]
    if isinstance(epsilons, list | tuple):
        return [value for item in epsilons for value in _epsilon_values(item)]
    try:
        tensor = epsilons if isinstance(epsilons, ep.Tensor) else ep.astensor(epsilons)
    except ValueError:  # not an array or tensor
        tensor = None
    if tensor is not None:
        if "float16" in str(tensor.dtype):  # NumPy has no bfloat16; float32 keeps sign and NaN
            tensor = tensor.float32()
        return list(tensor.numpy().ravel().tolist())
    if isinstance(epsilons, Sized) and isinstance(epsilons, Iterable):
        return [value for item in epsilons for value in _epsilon_values(item)]
    if isinstance(epsilons, Iterable):
        raise TypeError(
            f"epsilons must be {_EPSILONS_EXPECTED} (a list, tuple, array or tensor), got "
            f"{type(epsilons).__name__}: Foolbox needs len(epsilons); pass list(epsilons)"
        )
    return [epsilons]  # any other object: check_epsilons names it


def host_number(value: Any) -> Any:
    """A 0-d tensor as a Python number, anything else as it is. Foolbox passes
    ``early_stop=min(epsilons)``, a 0-d tensor when the caller's epsilons are a tensor."""
    raw = value.raw if isinstance(value, ep.Tensor) else value
    if getattr(raw, "ndim", None) == 0 and hasattr(raw, "item"):
        return raw.item()
    return value


def like_caller(tensor: ep.Tensor, inputs: Any) -> Any:
    """``tensor`` in the caller's container: eagerpy if ``inputs`` was eagerpy, raw otherwise
    (Foolbox's ``restore_type`` then gives the caller back what they passed)."""
    return tensor if isinstance(inputs, ep.Tensor) else tensor.raw


def data_format(model: Any) -> str:
    """The model's layout as Foolbox stores it (``PyTorchModel``: channels first; ``JAXModel``
    and ``TensorFlowModel``: their ``data_format``). A model that states none is taken as
    channels first; an unknown value is a ValueError."""
    fmt = getattr(model, "data_format", None)  # JAXModel(data_format=None) raises AttributeError
    if fmt is None:
        return CHANNELS_FIRST
    if fmt not in (CHANNELS_FIRST, CHANNELS_LAST):
        raise ValueError(
            f"model.data_format must be '{CHANNELS_FIRST}' or '{CHANNELS_LAST}', got {fmt!r}"
        )
    return str(fmt)


def to_channels_first(x: ep.Tensor) -> ep.Tensor:
    """(N, ..., C) → (N, C, ...)."""
    return x.transpose((0, x.ndim - 1, *range(1, x.ndim - 1)))


def to_channels_last(x: ep.Tensor) -> ep.Tensor:
    """(N, C, ...) → (N, ..., C)."""
    return x.transpose((0, *range(2, x.ndim), 1))


def empty_batch_result(inputs: Any, epsilons: Any) -> Any:
    """What Foolbox's ``MinimizationAttack.__call__`` returns, for a batch of 0 inputs (its own
    bounds check fails on an empty tensor): ``(raw, clipped, success)``, with lists over the
    epsilons when ``epsilons`` is a sequence."""
    x, restore_type = ep.astensor_(inputs)
    if isinstance(epsilons, Iterable) and not isinstance(epsilons, str):
        count = len(list(epsilons))
        success = ep.zeros(x, (count, 0)).astype(bool)
        return [restore_type(x)] * count, [restore_type(x)] * count, restore_type(success)
    return restore_type(x), restore_type(x), restore_type(ep.zeros(x, (0,)).astype(bool))


def model_function(model: Model) -> Callable[[ep.Tensor], ep.Tensor]:
    """The Foolbox model as the core's model function; Foolbox's bare "Unknown type" error on
    an output that is not a tensor becomes a TypeError that names the model."""

    def call(inputs: ep.Tensor) -> ep.Tensor:
        try:
            return model(inputs)
        except ValueError as error:
            if "Unknown type" not in str(error):
                raise
            raise TypeError(
                f"model must return a tensor of logits; Foolbox could not convert its output "
                f"({error})"
            ) from None

    return call
