"""ALMA prox for semantic segmentation: minimal ℓ∞ perturbations that fool most pixels.

Rony, Pesquet, Ben Ayed. "Proximal Splitting Adversarial Attack for Semantic Segmentation",
CVPR 2023 (thesis chapter 5, Algorithm IV-2). The attack solves

    min ‖δ‖∞  s.t.  DLR⁺(f(x + δ)_i, y_i) ≤ 0 for the pixels i of the mask m,  x + δ ∈ [0, 1]

(eq. 5.3) and succeeds when the attack pixel success rate APSR (eq. 5.19) reaches ν
(``adv_threshold``, 0.99 by default). Example::

    result = alma_prox(model, images, labels, masks=labels != 255)
    result.adversarials, result.apsr, result.norms, result.success
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep

from .core.prox_solver import ProxParams, ProxResult, alma_prox_dense_solve
from .core.validation import as_tensor, warn_if_training

__all__ = ["ProxParams", "ProxResult", "alma_prox"]


def _as_eagerpy(name: str, value: Any) -> ep.Tensor:
    """torch tensors are wrapped; eagerpy tensors (any framework) pass through; both detached
    from the caller's autograd graph (see :func:`~alma_plugin.core.validation.as_tensor`)."""
    if isinstance(value, ep.Tensor):
        return as_tensor(name, value)
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            return as_tensor(name, value)
    raise TypeError(
        f"{name} must be a torch.Tensor or an eagerpy tensor, got {type(value).__name__}"
    )


def alma_prox(
    model: Callable[[Any], Any],
    images: Any,
    labels: Any,
    *,
    masks: Any = None,
    targeted: bool = False,
    adv_threshold: float = 0.99,
    steps: int = 500,
    bounds: tuple[float, float] = (0.0, 1.0),
    early_stop: float | None = None,
    params: ProxParams | None = None,
    **hyperparameters: Any,
) -> ProxResult[Any]:
    """Run ALMA prox (Algorithm IV-2) on a batch of images.

    Args:
        model: maps images (N, C, H, W) to per-pixel logits (N, K, H, W), e.g. a
            ``torch.nn.Module`` (left untouched: put it in eval mode yourself; a module in
            training mode gets a ``TrainingModeWarning``), or any callable
            on the raw tensors of the framework of eagerpy-wrapped inputs.
        images: (N, C, H, W) floating tensor within ``bounds`` (torch, or an eagerpy tensor of
            any framework); it is not modified.
        labels: (N, H, W) integer tensor: the true classes y, or the targets t if ``targeted``.
            Values at pixels outside ``masks`` are ignored (e.g. 255 for "unlabelled").
        masks: optional (N, H, W) bool (or 0/1) tensor m of the pixels to attack; the others
            neither count in the APSR nor in the objective (eq. 5.5).
        targeted: make every pixel's argmax equal the target instead of different from y.
        adv_threshold: ν of eq. 5.6/5.8: success means APSR ≥ ν, in (0, 1].
        steps: the number of iterations N (one forward and one backward each).
        bounds: the (lower, upper) pixel range of the model's input. Step sizes and the returned
            ``norms`` are expressed in the [0, 1]-normalised space whatever the bounds.
        early_stop: stop once every image has an iterate with APSR ≥ ν and normalised ‖δ‖∞
            below this (None or 0: run every step).
        params, hyperparameters: a :class:`ProxParams` and/or keyword overrides of its fields
            (``init_lr``, ``final_lr``, ``alpha``, ``rho_init``, ``scale_rate``, …).

    Returns:
        A :class:`ProxResult` whose tensors have the type and device of ``images``:
        ``adversarials`` (N, C, H, W) — the smallest-ℓ∞ iterate with APSR ≥ ν, or the original
        image where none was found; ``apsr`` (N,) of the returned images; ``norms`` (N,) their
        ℓ∞ distance to ``images`` in the normalised space; ``success`` (N,) bool.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    warn_if_training(model)
    native = not isinstance(images, ep.Tensor)
    x = _as_eagerpy("images", images)
    y = _as_eagerpy("labels", labels)
    m = None if masks is None else _as_eagerpy("masks", masks)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {x.shape}")
    if y.ndim != 3 or y.shape != (x.shape[0],) + x.shape[2:]:
        raise ValueError(f"labels must have shape (N, H, W) = {(x.shape[0],) + x.shape[2:]}, "
                         f"got {y.shape}")  # fmt: skip

    def model_fn(inputs: ep.Tensor) -> ep.Tensor:
        return ep.astensor(model(inputs.raw))

    result = alma_prox_dense_solve(
        model_fn, x, y, masks=m, bounds=bounds, targeted=targeted, adv_threshold=adv_threshold,
        steps=steps, early_stop=early_stop, params=params, **hyperparameters,
    )  # fmt: skip
    if not native:
        return result
    return ProxResult(
        result.adversarials.raw, result.apsr.raw, result.norms.raw, result.success.raw
    )
