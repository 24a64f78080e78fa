"""``alma()``: the ALMA attack as one function, usable without Foolbox or torchattacks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import eagerpy as ep

from .core.defaults import make_config
from .core.solver import StepInfo, alma_solve
from .core.validation import (
    as_labels,
    as_tensor,
    check_bounds,
    check_early_stop,
    check_inputs,
    check_positive_int,
    warn_if_training,
)
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
            of shape (N, K). Its train/eval mode is left as the caller set it; a module in
            training mode gets a :class:`~alma_plugin.core.validation.TrainingModeWarning`
            (dropout and batch norm then change the model, and batch norm's running statistics
            are updated by every step).
        inputs: x, shape (N, ...), values within ``bounds``, any float dtype (float16 and
            bfloat16 models are called in their dtype; the solver's state is float32). Never
            modified; a ``requires_grad`` or inference-mode tensor is fine.
        labels: y, shape (N,), true classes — or target classes t when ``targeted``: any
            integer dtype, or a NumPy array / list of ints.
        distance: D, one of ``alma_plugin.distances.DISTANCES`` ("l1", "l2", ...).
        steps: N, the number of iterations (one forward + one backward each).
        targeted: use tDLR⁺ (eq. 18) towards ``labels`` instead of DLR⁺ (eq. 4).
        bounds: the model's input range; ε and distances live in the [0, 1]-normalised space.
        alpha: α of eq. 9; default 0.5 at ≤100 steps, 0.9 at ≥1000 (Appendix E).
        init_lr_distance: ε of §3.2.3; "default" takes Table 3's value for ``distance``.
        penalty: P, one of "P2" (default, eq. 10), "P1", "P3", "PHR" (Appendix D).
        is_adversarial: optional success predicate (model_inputs, logits) → bool (N,); default
            argmax ≠ y (or = t when targeted). A sample whose logits or distance are not
            finite never counts as a success, whatever the predicate says.
        callback: called with a :class:`~alma_plugin.core.StepInfo` after every step.
        early_stop: stop once every sample has an adversarial with D below this value (0:
            never, as Foolbox's ``epsilons`` starting at 0.0 imply).
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
    x = as_tensor("inputs", inputs)
    check_inputs(x, bounds)
    y = as_labels("targets" if targeted else "labels", labels, x, (len(x),))
    early_stop = check_early_stop(early_stop)
    if is_adversarial is not None and not callable(is_adversarial):
        raise TypeError(f"is_adversarial must be callable or None, got {is_adversarial!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {callback!r}")
    warn_if_training(model)

    def model_fn(batch: ep.Tensor) -> ep.Tensor:
        out = model(batch.raw)
        if not isinstance(out, type(batch.raw)):
            raise TypeError(
                f"model must return a {type(batch.raw).__name__} of logits (like its inputs), "
                f"got {type(out).__name__}"
            )
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
