"""Translation helpers shared by the torchattacks adapters: distance names, input checks,
target labels and the restoration of the model's state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import eagerpy as ep
import torch
from torchattacks.attack import Attack

from ..core.prox_solver import ProxParams, make_params
from ..core.validation import check_inputs, check_labels
from ..distances import DistanceSpec, get_distance, linf

BOUNDS = (0.0, 1.0)
#: Names of the ℓ∞ distance, handled by ALMA prox (thesis §5.4) rather than by ALMA.
PROX_DISTANCES = ("linf", "l_inf", "inf")
#: ℓ∞ for comparing outputs (MinimalEnsemble); ALMA routes it to ALMA prox, which has no ε.
LINF = DistanceSpec("linf", linf, float("nan"))


def is_linf(distance: Any) -> bool:
    return isinstance(distance, str) and distance.lower() in PROX_DISTANCES


def resolve_distance(distance: Any) -> DistanceSpec:
    """The registry entry for ``distance``, or :data:`LINF` for the ℓ∞ names."""
    return LINF if is_linf(distance) else get_distance(distance)


def prox_params(overrides: dict[str, Any]) -> ProxParams:
    """Validated ALMA prox hyperparameters for classification (unknown names: TypeError)."""
    return make_params(None, overrides, classification=True)


def check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def prepare(
    attack: Attack, inputs: Any, labels: Any, spec: DistanceSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated, detached copies of ``inputs`` (in [0, 1]) and ``labels`` on the attack's
    device, following torchattacks (``images.clone().detach().to(self.device)``)."""
    check_tensor("inputs", inputs)
    if labels is None:
        raise ValueError(
            f"{attack.attack} needs labels: the true classes of shape (N,), or the target "
            "classes in targeted(label) mode; got labels=None"
        )
    check_tensor("labels", labels)
    device = attack.device if attack.device is not None else inputs.device
    images = inputs.detach().clone().to(device)
    labels = labels.detach().clone().to(device)
    try:
        check_inputs(ep.astensor(images), BOUNDS)
    except ValueError as error:
        raise ValueError(
            f"{error}. torchattacks attacks take images in [0, 1]; if the model expects "
            "normalised inputs, pass normalised images after set_normalization_used(mean, std)"
        ) from None
    check_labels(ep.astensor(labels), len(images))
    if spec.needs_color and (images.ndim != 4 or images.shape[1] != 3):
        raise ValueError(
            f"distance={spec.name!r} needs RGB images of shape (N, 3, H, W), got shape "
            f"{tuple(images.shape)}"
        )
    # Inverse normalisation may leave values a rounding error outside [0, 1].
    return images.clamp(0.0, 1.0), labels


def target_labels(attack: Attack, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = attack.get_target_label(images, labels)
    targets = check_tensor("target labels", targets).to(images.device)
    check_labels(ep.astensor(targets), len(images), name="target labels")
    return targets


@contextmanager
def restored_state(attack: Attack) -> Iterator[None]:
    """Restore each module's ``training`` flag exactly (torchattacks only calls ``train()``
    again on a model that was training), the parameters' ``requires_grad`` and ``.grad``, and
    the normalisation flag, even after an error."""
    model = attack.model
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    flags = [m.training for m in modules]
    parameters = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    # Members of an ensemble may backpropagate into the parameters (torchattacks' DeepFool).
    saved = [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in parameters]
    applied = attack._normalization_applied
    try:
        yield
    finally:
        for module, flag in zip(modules, flags, strict=True):
            module.training = flag
        for parameter, (requires_grad, grad) in zip(parameters, saved, strict=True):
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad
        if attack._normalization_applied != applied:
            attack._set_normalization_applied(applied)
