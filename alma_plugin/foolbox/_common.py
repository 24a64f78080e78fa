"""Translation helpers shared by the Foolbox attacks: tensors, criteria, checks."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
from foolbox.criteria import Criterion, Misclassification, TargetedMisclassification
from foolbox.models import Model

from ..core.validation import Bounds, check_bounds, check_inputs, check_labels

SuccessFn = Any  # (model_inputs: ep.Tensor, logits: ep.Tensor) -> ep.Tensor of bool (N,)


def as_eagerpy(tensor: Any) -> ep.Tensor:
    """An eagerpy tensor detached from any autograd graph of the caller."""
    x = tensor if isinstance(tensor, ep.Tensor) else ep.astensor(tensor)
    return ep.astensor(x.raw.detach()) if isinstance(x, ep.PyTorchTensor) else x


def goal(criterion: Criterion, batch: int) -> tuple[bool, ep.Tensor]:
    """(targeted, classes) of a supported criterion, with clear errors otherwise."""
    if isinstance(criterion, Misclassification):
        targeted, classes, name = False, criterion.labels, "labels"
    elif isinstance(criterion, TargetedMisclassification):
        targeted, classes, name = True, criterion.target_classes, "target_classes"
    else:
        raise TypeError(
            "criterion must be a labels tensor, foolbox.criteria.Misclassification or "
            f"foolbox.criteria.TargetedMisclassification, got {criterion!r}"
        )
    classes = as_eagerpy(classes)
    check_labels(classes, batch, name=name)
    return targeted, classes


def success_fn(criterion: Criterion) -> SuccessFn:
    """The criterion object itself as the core's success predicate."""

    def is_adversarial(model_inputs: ep.Tensor, logits: ep.Tensor) -> ep.Tensor:
        return ep.astensor(criterion(model_inputs, logits))

    return is_adversarial


def check_model_and_inputs(model: Any, inputs: Any) -> tuple[Bounds, ep.Tensor]:
    """``model.bounds`` and the detached inputs, after checks that turn Foolbox's bare
    ``AssertionError`` on out-of-bounds inputs into a ValueError naming the bounds."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a foolbox.models.Model, got {type(model).__name__}")
    bounds = check_bounds(model.bounds)
    x = as_eagerpy(inputs)
    check_inputs(x, bounds)
    return bounds, x


def check_early_stop(early_stop: Any) -> float | None:
    """Foolbox's ``early_stop``: None or a positive number."""
    if early_stop is None:
        return None
    if isinstance(early_stop, bool) or not isinstance(early_stop, int | float):
        raise TypeError(f"early_stop must be a number or None, got {early_stop!r}")
    if not early_stop > 0:
        raise ValueError(f"early_stop must be positive, got {early_stop!r}")
    return float(early_stop)
