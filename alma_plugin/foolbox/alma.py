"""Foolbox 3 drop-ins for ALMA: :class:`L1ALMA`, :class:`L2ALMA` and friends.

Each attack is a :class:`foolbox.attacks.base.MinimizationAttack`, so ``epsilons`` (None, a
float or a list), ``early_stop`` and ``.repeat(n)`` go through Foolbox's own base class. The
adapter only translates: the Foolbox model is the core's ``model_fn`` (its preprocessing stays
inside it), ``model.bounds`` become the core's bounds, the criterion object itself judges
success, and Foolbox's raw-unit ``early_stop`` is converted to the core's [0, 1]-normalised
units. The algorithm (Algorithm 2 of the paper) lives in :mod:`alma_plugin.core`.

Example:
    >>> import foolbox as fb
    >>> from alma_plugin.foolbox import L2ALMA
    >>> fmodel = fb.PyTorchModel(net.eval(), bounds=(0, 1))  # doctest: +SKIP
    >>> raw, clipped, success = L2ALMA(steps=100)(fmodel, images, labels, epsilons=[0.5, 1.0])
    ... # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, ClassVar

import eagerpy as ep
from foolbox.attacks.base import MinimizationAttack, T, get_criterion, raise_if_kwargs
from foolbox.criteria import Criterion, Misclassification, TargetedMisclassification
from foolbox.devutils import atleast_kd
from foolbox.distances import Distance, LpDistance, l1, l2
from foolbox.models import Model

from .core.defaults import make_config
from .core.solver import alma_solve
from .core.validation import Bounds, check_bounds, check_inputs, check_labels, check_positive_int
from .distances import get_distance

__all__ = [
    "ALMAAttack",
    "CIEDE2000ALMA",
    "L1ALMA",
    "L2ALMA",
    "LPIPSALMA",
    "NormalisedDistance",
    "SSIMALMA",
]

_CLIP_BISECTION_STEPS = 30


def _as_eagerpy(tensor: Any) -> ep.Tensor:
    """An eagerpy tensor detached from any autograd graph of the caller."""
    x = tensor if isinstance(tensor, ep.Tensor) else ep.astensor(tensor)
    return ep.astensor(x.raw.detach()) if isinstance(x, ep.PyTorchTensor) else x


class NormalisedDistance(Distance):
    """A Foolbox :class:`~foolbox.distances.Distance` for a registry distance of
    :mod:`alma_plugin.distances` (CIEDE2000, SSIM, LPIPS, ...), measured after mapping inputs
    from ``bounds`` to [0, 1] — the space in which the ALMA paper states its ε (Table 3).

    :meth:`clip_perturbation` really clips: where D(x + δ, x) > ε, the perturbation δ is shrunk
    to s·δ with the largest s ∈ [0, 1] found by bisection such that D(x + s·δ, x) ≤ ε (D need
    not be convex in s; the returned point always satisfies the bound).

    Args:
        name: a name of ``alma_plugin.distances.DISTANCES``.
        bounds: the (lower, upper) range of the inputs it measures.
    """

    def __init__(self, name: str, bounds: Bounds = (0.0, 1.0)) -> None:
        self.spec = get_distance(name)
        self.bounds = check_bounds(bounds)

    def __repr__(self) -> str:
        return f"NormalisedDistance({self.spec.name!r}, bounds={self.bounds})"

    def _measure(self, references: ep.Tensor, perturbed: ep.Tensor) -> ep.Tensor:
        lower, upper = self.bounds
        scale = upper - lower
        return self.spec.function((perturbed - lower) / scale, (references - lower) / scale)

    def __call__(self, references: T, perturbed: T) -> T:
        """D(perturbed, references) per sample, shape (N,)."""
        (x, y), restore_type = ep.astensors_(references, perturbed)
        return restore_type(self._measure(x, y))

    def clip_perturbation(self, references: T, perturbed: T, epsilon: float) -> T:
        """``perturbed`` with each perturbation shrunk until D ≤ ``epsilon``."""
        (x, y), restore_type = ep.astensors_(references, perturbed)
        delta = y - x
        inside = self._measure(x, y) <= epsilon
        if inside.all().item():
            return restore_type(y)
        low = ep.zeros(x, len(x)).astype(x.dtype)  # D(x, x) = 0 ≤ ε: always feasible
        high = ep.ones(x, len(x)).astype(x.dtype)
        for _ in range(_CLIP_BISECTION_STEPS):
            mid = (low + high) / 2
            feasible = self._measure(x, x + atleast_kd(mid, x.ndim) * delta) <= epsilon
            low = ep.where(feasible, mid, low)
            high = ep.where(feasible, high, mid)
        scale = ep.where(inside, 1.0, low)
        return restore_type(x + atleast_kd(scale, x.ndim) * delta)


def _goal(criterion: Criterion, batch: int) -> tuple[bool, ep.Tensor]:
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
    classes = _as_eagerpy(classes)
    check_labels(classes, batch, name=name)
    return targeted, classes


class ALMAAttack(MinimizationAttack):
    """Base class of the ALMA Foolbox attacks; a subclass only names its registry distance
    (``distance_name``) and, for ℓp, its Foolbox ``distance``. See :class:`L2ALMA` for the
    arguments."""

    distance_name: ClassVar[str]

    def __init__(
        self,
        *,
        steps: int = 1000,
        alpha: float | None = None,
        init_lr_distance: float | None | str = "default",
        penalty: str = "P2",
        seed: int = 0,
        **hyperparameters: Any,
    ) -> None:
        spec = get_distance(self.distance_name)
        self.steps = check_positive_int("steps", steps)
        self.seed = check_positive_int("seed", seed, minimum=0)
        # The remaining defaults live once, in make_config; unknown names raise a TypeError.
        self.config = make_config(
            steps=steps,
            default_init_lr_distance=spec.init_lr_distance,
            alpha=alpha,
            init_lr_distance=init_lr_distance,
            penalty=penalty,
            **hyperparameters,
        )
        self._bounds: Bounds = (0.0, 1.0)

    @property
    def distance(self) -> Distance:
        """The Foolbox distance of the attack. For non-ℓp distances it measures inputs of the
        bounds of the model last attacked (initially (0, 1))."""
        return NormalisedDistance(self.distance_name, self._bounds)

    def _normalised_early_stop(self, early_stop: float, bounds: Bounds) -> float:
        """Foolbox's ``early_stop`` (units of :attr:`distance`) in the core's [0, 1] units."""
        if isinstance(self.distance, LpDistance):
            return early_stop / (bounds[1] - bounds[0])  # ‖δ‖ₚ scales linearly with the range
        return early_stop  # NormalisedDistance already measures in [0, 1]

    def __call__(  # type: ignore[misc]
        self,
        model: Model,
        inputs: T,
        criterion: Any,
        *,
        epsilons: Any,
        **kwargs: Any,
    ) -> Any:
        """Foolbox's ``MinimizationAttack.__call__``, after checks that turn Foolbox's bare
        ``AssertionError`` on out-of-bounds inputs into a ValueError naming the bounds."""
        self._check_model_and_inputs(model, inputs)
        return super().__call__(model, inputs, criterion, epsilons=epsilons, **kwargs)

    @staticmethod
    def _check_model_and_inputs(model: Any, inputs: Any) -> tuple[Bounds, ep.Tensor]:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a foolbox.models.Model, got {type(model).__name__}")
        bounds = check_bounds(model.bounds)
        x = _as_eagerpy(inputs)
        check_inputs(x, bounds)
        return bounds, x

    def run(
        self,
        model: Model,
        inputs: T,
        criterion: Misclassification | TargetedMisclassification | T,
        *,
        early_stop: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ALMA and return the best adversarial per sample (the input where none was found).

        Args:
            model: a Foolbox model; its ``bounds`` and preprocessing are honoured.
            inputs: a batch (N, ...) within ``model.bounds``.
            criterion: a labels tensor (N,), a ``Misclassification`` or a
                ``TargetedMisclassification``; the criterion object judges success.
            early_stop: stop once every sample has an adversarial closer than this, in the units
                of :attr:`distance`.
        """
        raise_if_kwargs(kwargs)
        bounds, x = self._check_model_and_inputs(model, inputs)
        _, restore_type = ep.astensor_(inputs)
        criterion_ = get_criterion(criterion)
        targeted, classes = _goal(criterion_, len(x))
        stop = None
        if early_stop is not None:
            if isinstance(early_stop, bool) or not isinstance(early_stop, int | float):
                raise TypeError(f"early_stop must be a number or None, got {early_stop!r}")
            if not early_stop > 0:
                raise ValueError(f"early_stop must be positive, got {early_stop!r}")
            stop = self._normalised_early_stop(float(early_stop), bounds)
        self._bounds = bounds
        if len(x) == 0:
            return restore_type(x)

        def is_adversarial(model_inputs: ep.Tensor, logits: ep.Tensor) -> ep.Tensor:
            return ep.astensor(criterion_(model_inputs, logits))

        result = alma_solve(
            model,
            x,
            classes,
            distance=get_distance(self.distance_name).function,
            config=self.config,
            steps=self.steps,
            bounds=bounds,
            targeted=targeted,
            is_adversarial=is_adversarial,
            early_stop=stop,
            seed=self.seed,
        )
        return restore_type(result.adversarials)


class L2ALMA(ALMAAttack):
    """The ℓ2 Augmented Lagrangian Method for Adversarial attacks (ALMA). [#Rony21]_

    Minimises ‖δ‖₂ subject to misclassification (eq. 5) with the penalty-Lagrangian method of
    Algorithm 2: multiplier EMA (eq. 9), ρ growth on stalled constraints, RMSProp steps whose
    initial size is set so the first step moves by ε (§3.2.3), decayed after the first success.
    One forward and one backward model propagation per step. Step sizes and ε are in the
    [0, 1]-normalised input space, so the defaults hold for any ``model.bounds``.

    Args:
        steps : Number of optimization steps N.
        alpha : EMA coefficient α of the multiplier (eq. 9); None: 0.5 at ≤ 100 steps, 0.9
            at ≥ 1000 steps, log-linear between (Appendix E).
        init_lr_distance : ε, the distance added by the first step (§3.2.3); "default" takes
            Table 3's value for the distance (ℓ1: 0.5, ℓ2: 0.1); None uses ``lr_init``.
        penalty : Penalty-Lagrangian function: "P2" (eq. 10, default), "P1", "P3" or "PHR".
        seed : Seed of the random directions used where a gradient vanishes.
        **hyperparameters : Forwarded to the core's ``make_config`` (paper defaults otherwise):
        mu_init : Initial multiplier μ⁽⁰⁾.
        rho_init : Initial penalty parameter ρ⁽⁰⁾.
        mu_min : Lower safeguard of μ.
        mu_max : Upper safeguard of μ.
        gamma : Growth factor γ of ρ.
        tau : Required relative improvement τ of the constraint between two ρ checks.
        check_steps : Number of steps M between two ρ checks.
        lr_init : Constant initial step size when ``init_lr_distance`` is None.
        lr_reduction : Final step size as a fraction of the initial one (Fig. 3).
        rmsprop_decay : RMSProp decay of the squared-gradient average (§3.2.4).
        momentum : Momentum of the step (§3.2.4).
        levels : If given, quantise the inputs to this many levels after each step.

    References:
        .. [#Rony21] Jérôme Rony, Eric Granger, Marco Pedersoli, Ismail Ben Ayed,
            "Augmented Lagrangian Adversarial Attacks", ICCV 2021,
            https://arxiv.org/abs/2011.11857
    """

    distance_name = "l2"

    @property
    def distance(self) -> Distance:
        return l2


class L1ALMA(ALMAAttack):
    """The ℓ1 Augmented Lagrangian Method for Adversarial attacks (ALMA). [#Rony21]_

    As :class:`L2ALMA`, minimising ‖δ‖₁ (Table 3: ε = 0.5). Same arguments.

    References:
        .. [#Rony21] Jérôme Rony, Eric Granger, Marco Pedersoli, Ismail Ben Ayed,
            "Augmented Lagrangian Adversarial Attacks", ICCV 2021,
            https://arxiv.org/abs/2011.11857
    """

    distance_name = "l1"

    @property
    def distance(self) -> Distance:
        return l1


class CIEDE2000ALMA(ALMAAttack):
    """ALMA minimising the mean per-pixel CIEDE2000 colour difference (§4). [#Rony21]_

    As :class:`L2ALMA`; RGB inputs (N, 3, H, W). :attr:`distance` is a
    :class:`NormalisedDistance` whose ``clip_perturbation`` shrinks δ until D ≤ ε.

    References:
        .. [#Rony21] Jérôme Rony, Eric Granger, Marco Pedersoli, Ismail Ben Ayed,
            "Augmented Lagrangian Adversarial Attacks", ICCV 2021,
            https://arxiv.org/abs/2011.11857
    """

    distance_name = "ciede2000"


class SSIMALMA(ALMAAttack):
    """ALMA minimising 1 − SSIM (Appendix G; ε = 3e-5, Table 3). [#Rony21]_

    As :class:`L2ALMA`, with a :class:`NormalisedDistance`.

    References:
        .. [#Rony21] Jérôme Rony, Eric Granger, Marco Pedersoli, Ismail Ben Ayed,
            "Augmented Lagrangian Adversarial Attacks", ICCV 2021,
            https://arxiv.org/abs/2011.11857
    """

    distance_name = "ssim"


class LPIPSALMA(ALMAAttack):
    """ALMA minimising the LPIPS-AlexNet distance (§4; ε = 1e-3, Table 3). [#Rony21]_

    As :class:`L2ALMA`, with a :class:`NormalisedDistance`; PyTorch models, RGB inputs.

    References:
        .. [#Rony21] Jérôme Rony, Eric Granger, Marco Pedersoli, Ismail Ben Ayed,
            "Augmented Lagrangian Adversarial Attacks", ICCV 2021,
            https://arxiv.org/abs/2011.11857
    """

    distance_name = "lpips"
