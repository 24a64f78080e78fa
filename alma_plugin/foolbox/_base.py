"""What ALMA's and ALMA prox's Foolbox attacks share: the checks before Foolbox's base classes
see a call, the criterion, ``epsilons``, Foolbox's raw-unit ``early_stop``, empty batches and
``.repeat(n)``. A subclass only says how to solve (:meth:`MinimalAttack.solve`)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
from foolbox.attacks.base import Attack, MinimizationAttack, Repeated, T, raise_if_kwargs
from foolbox.criteria import Criterion, Misclassification, TargetedMisclassification
from foolbox.models import Model

from ..core.autodiff import autograd_allowed
from ..core.precision import warn_if_reduced_precision
from ..core.validation import Bounds, check_early_stop, check_positive_int
from ._common import (
    check_epsilons,
    check_model_and_inputs,
    empty_batch_result,
    goal,
    host_number,
    like_caller,
    normalise_criterion,
)

__all__ = ["Batch", "MinimalAttack"]


class MinimalAttack(MinimizationAttack):
    """A Foolbox minimisation attack of this package (immutable; see the subclasses)."""

    def check_input_shape(self, inputs: ep.Tensor, model: Model) -> None:
        """Raise a ValueError for inputs the attack cannot measure (before any model call)."""

    def prepare(self, model: Model, inputs: Any, criterion: Any) -> tuple[Any, Criterion]:
        """The clear checks of :meth:`run`, before Foolbox's base classes see the call: the
        inputs (detached, inference-mode safe) in the caller's container, and the criterion
        with labels of the inputs' framework."""
        _, x = check_model_and_inputs(model, inputs)
        self.check_input_shape(x, model)
        return like_caller(x, inputs), normalise_criterion(criterion, x)

    def __call__(  # type: ignore[misc]
        self, model: Model, inputs: T, criterion: Any, *, epsilons: Any, **kwargs: Any
    ) -> Any:
        """Foolbox's ``MinimizationAttack.__call__`` (on :meth:`for_model`'s view of the
        attack), after clear checks of epsilons, model, inputs and criterion; an empty batch
        gives empty results (Foolbox's own bounds check fails on it)."""
        # Here, not through early_stop: Foolbox passes none when an epsilon is None.
        check_epsilons(epsilons)
        x, criterion_ = self.prepare(model, inputs, criterion)
        if len(x) == 0:
            return empty_batch_result(x, epsilons)
        bound = self.for_model(model)
        return MinimizationAttack.__call__(bound, model, x, criterion_, epsilons=epsilons, **kwargs)

    def for_model(self, model: Model) -> MinimalAttack:
        """The attack as it measures inputs of ``model`` (itself, unless its distance depends
        on the model's bounds or layout)."""
        return self

    def repeat(self, times: int) -> Attack:
        """Foolbox's ``Repeated``, comparing with the distance of the attacked model
        (:meth:`for_model`), with the checks and empty-batch results of ``__call__``. The
        attacks are deterministic given ``seed``: every repetition returns the same result."""
        return _Repeated(self, check_positive_int("times", times))

    @autograd_allowed  # called under torch.inference_mode(): as under torch.no_grad()
    def run(
        self,
        model: Model,
        inputs: T,
        criterion: Misclassification | TargetedMisclassification | T,
        *,
        early_stop: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Run the attack: the best adversarial per sample (the input where none was found).

        Args:
            model: a Foolbox model; its ``bounds``, preprocessing and ``data_format`` are
                honoured.
            inputs: a batch (N, ...) within ``model.bounds``.
            criterion: labels (N,) (tensor, array or list of any integer dtype), a
                ``Misclassification`` or a ``TargetedMisclassification``; the criterion object
                judges success.
            early_stop: stop once every sample has an adversarial closer than this, in the units
                of :attr:`distance` (0 never triggers).
        """
        if "starting_points" in kwargs:  # FMN's warm start (DDN refuses it too)
            raise TypeError(
                "starting_points is not supported: ALMA and ALMA prox start from the inputs "
                "(Algorithm 2, step 1); for more starts within the budget use restarts=R"
            )
        raise_if_kwargs(kwargs)
        bounds, x = check_model_and_inputs(model, inputs)
        self.check_input_shape(x, model)
        _, restore_type = ep.astensor_(inputs)
        targeted, criterion_, classes = goal(criterion, x)
        stop = check_early_stop(host_number(early_stop))
        if len(x) == 0:
            return restore_type(x)
        warn_if_reduced_precision(x)
        batch = Batch(model, x, classes, bounds, targeted, criterion_, stop)
        return restore_type(self.solve(batch))

    @abstractmethod
    def solve(self, batch: Batch) -> ep.Tensor:
        """The adversarials of a checked, non-empty batch."""


@dataclass(frozen=True)
class Batch:
    """A checked, non-empty call of :meth:`MinimalAttack.run`: the model, the inputs, the
    classes (true or target), ``model.bounds``, whether targeted, the criterion that judges
    success and Foolbox's ``early_stop`` in raw units (None: none)."""

    model: Model
    inputs: ep.Tensor
    classes: ep.Tensor
    bounds: Bounds
    targeted: bool
    criterion: Criterion
    early_stop: float | None


class _Repeated(Repeated):
    """Foolbox's ``Repeated`` whose ``epsilons=None`` comparisons use the distance of the
    attacked model (:meth:`MinimalAttack.for_model`); the wrapped attack is never changed."""

    attack: MinimalAttack

    def __repr__(self) -> str:
        return f"Repeated(attack={self.attack!r}, times={self.times})"

    def __call__(
        self, model: Model, inputs: T, criterion: Any, *, epsilons: Any, **kwargs: Any
    ) -> Any:
        check_epsilons(epsilons)
        x, criterion_ = self.attack.prepare(model, inputs, criterion)
        if len(x) == 0:  # Foolbox's Repeated checks the bounds with x.min(), which fails on it
            return empty_batch_result(x, epsilons)
        per_model = Repeated(self.attack.for_model(model), self.times)
        return per_model(model, x, criterion_, epsilons=epsilons, **kwargs)

    def repeat(self, times: int) -> Repeated:
        return _Repeated(self.attack, self.times * times)
