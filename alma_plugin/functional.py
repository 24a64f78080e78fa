"""``alma()``: the ALMA attack as one function, usable without Foolbox or torchattacks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import eagerpy as ep

from .core.defaults import make_config
from .core.solver import StepInfo, alma_solve
from .core.validation import check_bounds, check_inputs, check_labels, check_positive_int
from .distances import get_distance


@dataclass(frozen=True)
class AttackResult:
    """Result of :func:`alma`, as tensors of the caller's framework and device.

    adversarials: best adversarial per sample (the original input where none was found).
    distances: D(x̃, x) in the [0, 1]-normalised space; +inf where unsuccessful.
    success: whether an adversarial was found.
    first_success_step: step t* of the first success, −1 where none.
    steps_run: number of steps actually run (fewer than ``steps`` after an early stop).
    """

    adversarials: Any
    distances: Any
    success: Any
    first_success_step: Any
    steps_run: int


def _as_eagerpy(name: str, value: Any) -> ep.Tensor:
    tensor = value if isinstance(value, ep.Tensor) else ep.astensor(value)
    if isinstance(tensor, ep.NumPyTensor):
        raise TypeError(
            f"{name} must be a PyTorch, JAX or TensorFlow tensor (NumPy has no autodiff), "
            f"got {type(value).__name__}"
        )
    return tensor


def _detached(tensor: ep.Tensor) -> ep.Tensor:
    return ep.astensor(tensor.raw.detach()) if isinstance(tensor, ep.PyTorchTensor) else tensor


def alma(
    model: Callable[[Any], Any],
    inputs: Any,
    labels: Any,
    *,
    distance: str = "l2",
    steps: int = 1000,
    targeted: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    alpha: float | None = None,
    init_lr_distance: float | None | str = "default",
    penalty: str = "P2",
    is_adversarial: Callable[[ep.Tensor, ep.Tensor], ep.Tensor] | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    early_stop: float | None = None,
    seed: int = 0,
    **hyperparameters: Any,
) -> AttackResult:
    """Minimal adversarial examples by the Augmented Lagrangian Method (Rony et al., ICCV 2021).

    Solves min_δ D(x + δ, x) s.t. DLR⁺(f(x + δ), y) < 0 (eq. 5) with Algorithm 2.

    Args:
        model: f, a callable (e.g. ``torch.nn.Module``) mapping a batch in ``bounds`` to logits
            of shape (N, K). Its train/eval mode is left as the caller set it.
        inputs: x, shape (N, ...), values within ``bounds``.
        labels: y, shape (N,), true classes — or target classes t when ``targeted``.
        distance: D, one of ``alma_plugin.distances.DISTANCES`` ("l1", "l2", ...).
        steps: N, the number of iterations (one forward + one backward each).
        targeted: use tDLR⁺ (eq. 18) towards ``labels`` instead of DLR⁺ (eq. 4).
        bounds: the model's input range; ε and distances live in the [0, 1]-normalised space.
        alpha: α of eq. 9; default 0.5 at ≤100 steps, 0.9 at ≥1000 (Appendix E).
        init_lr_distance: ε of §3.2.3; "default" takes Table 3's value for ``distance``.
        penalty: P, one of "P2" (default, eq. 10), "P1", "P3", "PHR" (Appendix D).
        is_adversarial: optional success predicate (model_inputs, logits) → bool (N,); default
            argmax ≠ y (or = t when targeted).
        callback: called with a :class:`~alma_plugin.core.StepInfo` after every step.
        early_stop: stop once every sample has an adversarial with D below this value.
        seed: seeds the random directions used where a gradient vanishes.
        **hyperparameters: ``mu_init`` (μ⁽⁰⁾), ``rho_init`` (ρ⁽⁰⁾), ``mu_min``, ``mu_max``,
            ``gamma`` (γ), ``tau`` (τ), ``check_steps`` (M), ``lr_init``, ``lr_reduction``,
            ``rmsprop_decay`` and ``momentum`` (both default to α), ``levels``.

    Example:
        >>> import torch
        >>> from alma_plugin import alma
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
        >>> result = alma(model, x, y, distance="l2", steps=100)
        >>> result.adversarials.shape
        torch.Size([2, 1, 2, 2])
    """
    spec = get_distance(distance)
    bounds = check_bounds(bounds)
    check_positive_int("steps", steps)
    check_positive_int("seed", seed, minimum=0)
    config = make_config(
        steps=steps,
        default_init_lr_distance=spec.init_lr_distance,
        alpha=alpha,
        init_lr_distance=init_lr_distance,
        penalty=penalty,
        **hyperparameters,
    )
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    x = _detached(_as_eagerpy("inputs", inputs))
    y = _as_eagerpy("labels", labels)
    check_inputs(x, bounds)
    check_labels(y, len(x), name="targets" if targeted else "labels")
    if early_stop is not None and not early_stop > 0:
        raise ValueError(f"early_stop must be a positive number or None, got {early_stop!r}")

    def model_fn(batch: ep.Tensor) -> ep.Tensor:
        out = model(batch.raw)
        if not isinstance(out, type(batch.raw)):
            raise TypeError(f"model must return a tensor of logits, got {type(out).__name__}")
        return ep.astensor(out)

    if len(x) == 0:
        empty = ep.zeros(x, (0,))
        return AttackResult(x.raw, empty.raw, (empty > 0).raw, ep.zeros(y, (0,)).raw, 0)

    result = alma_solve(
        model_fn,
        x,
        y,
        distance=spec.function,
        config=config,
        steps=steps,
        bounds=bounds,
        targeted=targeted,
        is_adversarial=is_adversarial,
        callback=callback,
        early_stop=early_stop,
        seed=seed,
    )
    return AttackResult(
        adversarials=result.adversarials.raw,
        distances=result.distances.raw,
        success=result.success.raw,
        first_success_step=result.first_success_step.raw,
        steps_run=result.steps_run,
    )
