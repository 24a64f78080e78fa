"""What every attack returns, and what its per-step callback sees: one type for ALMA and
ALMA prox, in every framework."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["AttackResult", "StepInfo"]


@dataclass(frozen=True)
class AttackResult(Generic[T]):
    """The outcome of an attack on a batch of N inputs.

    adversarials: per input, the adversarial with the smallest distance found, or the input
        itself where none was found (clipped onto the bounds, where it left them by at most
        the rounding they tolerate: 10⁻⁶ of the range, or the bound as a 16-bit dtype rounds
        it, e.g. a white pixel of normalised MNIST in bfloat16); the inputs' type, dtype,
        device and shape.
    distances: (N,) D(adversarial, input) in the [0, 1]-normalised input space, measured from
        the caller's input as given (not its clipped copy); +inf where no adversarial was
        found (ALMA prox: the normalised ‖δ‖∞).
    success: (N,) bool, an adversarial was found (ALMA prox on dense outputs: APSR ≥ ν).
    first_success_step: (N,) the step t* of the first success, 0-based and counted from the
        start of run 0 through every restart (as ``StepInfo.step``: an input the model
        already misclassifies gives 0); −1 where none. The framework's index dtype (int64 in
        PyTorch and TensorFlow, int32 in JAX without x64), as ``predictions``.
    steps_run: the steps actually run (fewer than asked after an early stop).
    apsr: (N,) for ALMA prox, the attack pixel success rate of eq. 5.19 of the returned
        adversarials (1 or 0 in classification); None for ALMA.
    predictions: (N,) in classification, the class the model gave each returned adversarial
        (the argmax of the logits the attack saw for it); −1 where none was found. None for
        dense outputs (segmentation).
    """

    adversarials: T
    distances: T
    success: T
    first_success_step: T
    steps_run: int
    apsr: T | None = None
    predictions: T | None = None

    def map(self, convert: Callable[[Any], Any]) -> AttackResult[Any]:
        """The same result with ``convert`` applied to every tensor (e.g. eagerpy → raw)."""
        changes = {
            f.name: convert(getattr(self, f.name))
            for f in fields(self)
            if f.name != "steps_run" and getattr(self, f.name) is not None
        }
        return replace(self, **changes)


@dataclass(frozen=True)
class StepInfo(Generic[T]):
    """What the ``callback`` of an attack sees after each step t (per-sample tensors of the
    caller's framework, as in the paper's Fig. 2).

    step: t, 0-based, counted from the start of run 0 through every restart.
    distance: (N,) D of the iterate judged at this step.  constraint: d of each constraint,
    (N,), or (N, M) for ALMA prox on dense outputs (M = H·W, row-major; NaN on the pixels
    outside ``masks``, which are no constraints): DLR⁺ towards misclassification, tDLR⁺
    towards the target when ``targeted``, and towards the run's class in a run of
    ``restart_mode="classes"``, where any misclassification is a success: there ``success``
    can hold with d ≥ 0. ``mu`` (μ) and ``rho`` (ρ) have the
    constraint's shape; outside ``masks`` they hold values no step uses (no NaN).
    step_size: (N,) η⁽ᵗ⁾ (ALMA) or λ⁽ᵗ⁾ (ALMA prox).  success: (N,) the iterate is
    adversarial.
    """

    step: int
    distance: T
    constraint: T
    mu: T
    rho: T
    step_size: T
    success: T
