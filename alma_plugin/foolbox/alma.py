"""ALMA (Rony et al., ICCV 2021) as Foolbox 3 minimisation attacks: the base class
:class:`ALMAAttack`, :class:`L1ALMA` and :class:`L2ALMA` (the perceptual ones are in
:mod:`.perceptual`).

The adapter only translates: the Foolbox model is the core's ``model_fn`` (its preprocessing
stays inside it), ``model.bounds`` become the core's bounds, the criterion object itself judges
success, Foolbox's raw-unit ``early_stop`` is converted to the core's [0, 1]-normalised units,
and channels-last models (``model.data_format``) are seen channels first by the perceptual
distances. The algorithm (Algorithm 2 of the paper) lives in :mod:`alma_plugin.core`.

The attacks are immutable, as Foolbox's own: :meth:`ALMAAttack.run` and ``__call__`` never
change the attack. What depends on the attacked model (the perceptual distances' bounds and
layout) lives on a per-call copy, :meth:`ALMAAttack.for_model`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import eagerpy as ep
from foolbox.distances import Distance, l1, l2
from foolbox.models import Model

from ..core.graphs import check_cuda_graphs
from ..core.keywords import takes_params
from ..core.params import ALMA_STEPS, ALMAParams
from ..core.restarts import check_restarts
from ..core.solver import alma_solve
from ..core.validation import Bounds, check_bounds, check_flag, check_positive_int
from ..distances import DistanceFunction, get_distance
from ._base import Batch, MinimalAttack
from ._common import (
    CHANNELS_FIRST,
    CHANNELS_LAST,
    data_format,
    model_function,
    success_fn,
    to_channels_first,
    to_channels_last,
)
from .distances import NormalisedDistance, WithinSegment

__all__ = ["ALMAAttack", "L1ALMA", "L2ALMA"]

_REFERENCE = """
    References:
        .. [#Rony21] Jérôme Rony, Eric Granger, Marco Pedersoli, Ismail Ben Ayed,
            "Augmented Lagrangian Adversarial Attacks", ICCV 2021,
            https://arxiv.org/abs/2011.11857
"""

_CONVENTIONS = """
    Foolbox conventions:
        * Immutable: calling or running the attack never changes it (``repr``, ``distance``
          and every attribute are those of ``__init__``), so one instance serves any number
          of models. ``repr`` lists the constructor's arguments only, stable across processes
          (Foolbox-style pytest ids use it).
        * ``distance``: ``fb.distances.l1`` / ``l2`` for :class:`L1ALMA` / :class:`L2ALMA`
          (raw units of the model's bounds, as Foolbox's). For the perceptual attacks, a
          :class:`~alma_plugin.foolbox.NormalisedDistance` measuring in [0, 1]: on the attack
          itself, for inputs in (0, 1), channels first (others are a ValueError);
          ``attack.for_model(model).distance`` measures inputs of ``model`` (its bounds and
          ``data_format``), and ``__call__`` clips ``epsilons`` with exactly that distance.
        * ``model.data_format``: the perceptual distances see channels-first images; inputs of
          a channels-last model (JAX, TensorFlow) are transposed for them and the results come
          back in the caller's layout. ℓp attacks ignore the layout.
        * ``early_stop`` (Foolbox passes ``min(epsilons)`` when no epsilon is None) is in the
          units of ``distance``; 0 is accepted and never triggers. Negative or NaN epsilons
          are a ValueError naming ``epsilons``, whether or not a None is next to them.
        * ``.repeat(n)``: ALMA is deterministic given ``seed`` (random directions are only
          drawn where a gradient vanishes, and for the random starts of ``restarts`` > 1), so
          ``attack.repeat(n)`` runs the same attack n times at n times the cost and returns
          exactly the single-call result, as for Foolbox's DDN and FMN. For random starts
          within one budget, use ``restarts``; across calls, combine attacks with other seeds.
        * Labels: a tensor, NumPy array or list of any integer dtype, or a
          ``Misclassification`` / ``TargetedMisclassification`` holding one. float16 and
          bfloat16 models are called in their dtype; the attack computes in float32.
"""


class ALMAAttack(MinimalAttack):
    """Base class of the ALMA Foolbox attacks; a subclass only names its registry distance
    (``distance_name``) and, for ℓp, its Foolbox ``distance``. See :class:`L2ALMA` for the
    arguments and the Foolbox conventions."""

    distance_name: ClassVar[str]
    #: ℓp distances: Foolbox's own ``distance``, independent of the model's layout.
    lp_distance: ClassVar[Distance | None] = None
    #: Smallest image side the distance can measure (perceptual distances).
    min_image_size: ClassVar[int] = 1

    @takes_params(ALMAParams)
    def __init__(
        self,
        *,
        steps: int = ALMA_STEPS,
        seed: int = 0,
        cuda_graphs: bool = False,
        params: ALMAParams | None = None,
    ) -> None:
        assert params is not None
        if not hasattr(type(self), "distance_name"):  # the base class, exported for isinstance
            raise TypeError(
                f"{type(self).__name__} is the base class of the ALMA Foolbox attacks: use "
                "L1ALMA, L2ALMA, CIEDE2000ALMA, SSIMALMA, MSSSIMALMA or LPIPSALMA (or a subclass "
                "that sets distance_name)"
            )
        spec = get_distance(self.distance_name)
        self.steps = check_positive_int("steps", steps)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.cuda_graphs = check_flag("cuda_graphs", cuda_graphs)
        #: The hyperparameters as given (None: the paper's rule for the budget and distance).
        self.params = params
        check_restarts(self.steps, params.restarts)
        # Resolved per call: the default restarts depend on the criterion (targeted or not).
        self._spec = spec
        self.distance_function: DistanceFunction = spec.function
        # What the perceptual distance measures: (0, 1) channels first, unless this is the
        # per-call copy made by for_model.
        self._measured_as: tuple[Bounds, str] = ((0.0, 1.0), CHANNELS_FIRST)
        self._bound = False  # the per-call copy of for_model: clips within segments (ℓp)

    def resolved_params(self, targeted: bool = False, classes: int | None = None) -> ALMAParams:
        """:attr:`params` with every None resolved for this attack's steps and distance, an
        untargeted (``Misclassification``) or ``targeted`` (``TargetedMisclassification``)
        criterion and a model with ``classes`` = K classes (None: not known yet, taken as
        enough; the default class restarts are one run below ``CLASS_RESTARTS_MIN_CLASSES``;
        the attack resolves them at its first forward) (:meth:`ALMAParams.for_budget`): α, ε,
        κ and the runs the attack uses."""
        return self._spec.alma_params(self.params, self.steps, targeted, classes)

    def __repr__(self) -> str:
        graphs = ", cuda_graphs=True" if self.cuda_graphs else ""
        return (
            f"{type(self).__name__}(steps={self.steps}, seed={self.seed}{graphs}, "
            f"params={self.params!r})"
        )

    @property
    def distance(self) -> Distance:
        """The Foolbox distance of the attack (see "Foolbox conventions" in the class doc)."""
        if self.lp_distance is not None:
            return WithinSegment(self.lp_distance) if self._bound else self.lp_distance
        bounds, layout = self._measured_as
        return NormalisedDistance(self.distance_name, bounds, self.distance_function, layout)

    def for_model(self, model: Model) -> ALMAAttack:
        """A copy of this attack whose :attr:`distance` measures inputs of ``model`` (its
        ``bounds`` and ``data_format``); this attack is left unchanged. ``__call__`` and
        ``repeat`` use such a copy, so Foolbox's ``clip_perturbation`` and ``Repeated``
        measure with the right distance."""
        bound = copy.copy(self)
        bound._measured_as = (check_bounds(model.bounds), self._layout(model))
        bound._bound = True
        return bound

    def _layout(self, model: Model) -> str:
        return CHANNELS_FIRST if self.lp_distance is not None else data_format(model)

    def _normalised_early_stop(self, early_stop: float, bounds: Bounds) -> float:
        """Foolbox's ``early_stop`` (units of :attr:`distance`) in the core's [0, 1] units."""
        if self.lp_distance is not None:
            return early_stop / (bounds[1] - bounds[0])  # ‖δ‖ₚ scales linearly with the range
        return early_stop  # NormalisedDistance already measures in [0, 1]

    def check_input_shape(self, inputs: ep.Tensor, model: Model) -> None:
        """Raise a ValueError for inputs the distance cannot measure (before any model call),
        on the channel axis of the model's ``data_format``."""
        if self.lp_distance is not None:
            return
        layout = self._layout(model)
        shape = tuple(inputs.shape)
        expected = "(N, C, H, W)" if layout == CHANNELS_FIRST else "(N, H, W, C)"
        name = type(self).__name__
        if len(shape) != 4:
            raise ValueError(
                f"{name} needs a batch of images {expected} (model.data_format={layout!r}), "
                f"got inputs of shape {shape}"
            )
        channels, spatial = (
            (shape[1], shape[2:])
            if layout == CHANNELS_FIRST
            else (
                shape[3],
                shape[1:3],
            )
        )
        if get_distance(self.distance_name).needs_color and channels != 3:
            raise ValueError(
                f"{name} needs RGB inputs {expected} with 3 channels "
                f"(model.data_format={layout!r}), got inputs of shape {shape}"
            )
        if min(spatial) < self.min_image_size:
            raise ValueError(
                f"{name} needs images {expected} with H, W >= {self.min_image_size} "
                f"(model.data_format={layout!r}), got inputs of shape {shape}"
            )

    def descent_function(self) -> DistanceFunction:
        """What the solver minimises: :attr:`distance_function` (values and gradient), unless a
        subclass descends another gradient with the same values (SSIM, MS-SSIM)."""
        return self.distance_function

    def solve(self, batch: Batch) -> ep.Tensor:
        """ALMA on a checked batch; a channels-last model's inputs are seen channels first by
        the perceptual distance, and come back in the caller's layout."""
        model, bounds = batch.model, batch.bounds
        stop = batch.early_stop
        if stop is not None:
            stop = self._normalised_early_stop(stop, bounds)
        model_fn: Callable[[ep.Tensor], ep.Tensor] = model_function(model)
        to_caller: Callable[[ep.Tensor], ep.Tensor] | None = None
        x = batch.inputs
        if self._layout(model) == CHANNELS_LAST:  # the perceptual distances measure channels first

            def model_fn(u: ep.Tensor) -> ep.Tensor:
                return model_function(model)(to_channels_last(u))

            x, to_caller = to_channels_first(x), to_channels_last
        result = alma_solve(
            model_fn,
            x,
            batch.classes,
            distance=self.descent_function(),
            params=self.resolved_params(batch.targeted),
            params_for_classes=lambda classes: self.resolved_params(batch.targeted, classes),
            steps=self.steps,
            bounds=bounds,
            targeted=batch.targeted,
            is_adversarial=success_fn(batch.criterion, to_caller),
            early_stop=stop,
            seed=self.seed,
            cuda_graphs=check_cuda_graphs(self.cuda_graphs, x),
        )
        adversarials = result.adversarials
        return adversarials if to_caller is None else to_caller(adversarials)


def _stable_repr(value: Any) -> str:
    """``repr`` without memory addresses: objects with the default ``repr`` show their type."""
    text = repr(value)
    if " at 0x" in text or " object at " in text:
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    return text


class L2ALMA(ALMAAttack):
    __doc__ = (
        """The ℓ2 Augmented Lagrangian Method for Adversarial attacks (ALMA). [#Rony21]_

    Minimises ‖δ‖₂ subject to misclassification (eq. 5) with the penalty-Lagrangian method of
    Algorithm 2: multiplier EMA (eq. 9), ρ growth on stalled constraints, RMSProp steps whose
    initial size is set so the first step moves by ε (§3.2.3), decayed after the first success.
    One forward and one backward model propagation per step. Step sizes and ε are in the
    [0, 1]-normalised input space, so the defaults hold for any ``model.bounds``.

    Args:
        steps : Number of optimization steps N.
        seed : Seed of the random directions used where a gradient vanishes and of the random
            starts of ``restarts`` > 1.
        cuda_graphs : PyTorch models on a CUDA device: replay each step as a CUDA graph after
            3 warm-up steps (as :func:`alma_plugin.alma`: same results, fewer kernel launches;
            the model's Python code runs for the warm-up and the capture only).
        params : An :class:`~alma_plugin.ALMAParams`, whose fields the keywords below replace.
        **hyperparameters : Every field of :class:`~alma_plugin.ALMAParams` (``alpha``,
            ``init_lr_distance``, ``init_lr``, ``lr_reduction``, ``penalty``, ``mu_init``,
            ``rho_init``, ``mu_min``, ``mu_max``, ``rho_max``, ``gamma``, ``tau``, ``check_steps``,
            ``rmsprop_decay``, ``momentum``, ``levels``, ``schedule``, ``restarts``,
            ``restart_distance``, ``restart_mode``, ``first_run_share``, ``smooth_max``), with
            the paper's defaults as ``inspect.signature(L2ALMA)`` shows; None fields follow the
            paper's rules for the budget (α, Appendix E) and the distance (ε, Table 3), and,
            not in the paper, ``smooth_max`` the distance's κ (``DISTANCES[name].smooth_max``;
            0: Algorithm 2) and ``restarts``, ``restart_mode``, ``first_run_share`` the
            distance's class restarts (ℓ1, ℓ2: from 100 steps, with a ``Misclassification``
            criterion and a model of at least 4 classes, two runs, run 1 aimed at another
            class, run 0 taking 0.7 of the steps; ``restarts=1``: one run, Algorithm 2);
            :meth:`resolved_params` shows them resolved.
"""
        + _CONVENTIONS
        + _REFERENCE
    )

    distance_name = "l2"
    lp_distance = l2


class L1ALMA(ALMAAttack):
    __doc__ = (
        """The ℓ1 Augmented Lagrangian Method for Adversarial attacks (ALMA). [#Rony21]_

    As :class:`L2ALMA`, minimising ‖δ‖₁ (Table 3: ε = 0.5). Same arguments and Foolbox
    conventions (immutable, stable ``repr``, deterministic: ``.repeat(n)`` costs n× for the
    single-call result).
"""
        + _REFERENCE
    )

    distance_name = "l1"
    lp_distance = l1
