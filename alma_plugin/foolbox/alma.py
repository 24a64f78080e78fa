"""ALMA (Rony et al., ICCV 2021) as Foolbox 3 minimisation attacks: :class:`L1ALMA`,
:class:`L2ALMA`, :class:`CIEDE2000ALMA`, :class:`SSIMALMA`, :class:`MSSSIMALMA`, :class:`LPIPSALMA`.

The adapter only translates: the Foolbox model is the core's ``model_fn`` (its preprocessing
stays inside it), ``model.bounds`` become the core's bounds, the criterion object itself judges
success, and Foolbox's raw-unit ``early_stop`` is converted to the core's [0, 1]-normalised
units. The algorithm (Algorithm 2 of the paper) lives in :mod:`alma_plugin.core`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import eagerpy as ep
from foolbox.attacks.base import MinimizationAttack, T, get_criterion, raise_if_kwargs
from foolbox.criteria import Misclassification, TargetedMisclassification
from foolbox.distances import Distance, LpDistance, l1, l2
from foolbox.models import Model

from ..core.defaults import make_config
from ..core.solver import alma_solve
from ..core.validation import Bounds, check_positive_int
from ..distances import DistanceFunction, get_distance
from ..distances.ssim import MS_SSIM_WEIGHTS, ms_ssim_min_size
from ._common import check_early_stop, check_model_and_inputs, goal, success_fn
from .distances import NormalisedDistance

__all__ = ["ALMAAttack", "CIEDE2000ALMA", "L1ALMA", "L2ALMA", "LPIPSALMA", "MSSSIMALMA", "SSIMALMA"]

_REFERENCE = """
    References:
        .. [#Rony21] Jérôme Rony, Eric Granger, Marco Pedersoli, Ismail Ben Ayed,
            "Augmented Lagrangian Adversarial Attacks", ICCV 2021,
            https://arxiv.org/abs/2011.11857
"""


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
        self.distance_function: DistanceFunction = spec.function
        self._bounds: Bounds = (0.0, 1.0)

    @property
    def distance(self) -> Distance:
        """The Foolbox distance of the attack. For non-ℓp distances it measures inputs of the
        bounds of the model last attacked (initially (0, 1))."""
        return NormalisedDistance(self.distance_name, self._bounds, self.distance_function)

    def _normalised_early_stop(self, early_stop: float, bounds: Bounds) -> float:
        """Foolbox's ``early_stop`` (units of :attr:`distance`) in the core's [0, 1] units."""
        if isinstance(self.distance, LpDistance):
            return early_stop / (bounds[1] - bounds[0])  # ‖δ‖ₚ scales linearly with the range
        return early_stop  # NormalisedDistance already measures in [0, 1]

    def check_input_shape(self, inputs: ep.Tensor) -> None:
        """Raise a ValueError for inputs the distance cannot measure (before any model call)."""
        if get_distance(self.distance_name).needs_color and (
            inputs.ndim != 4 or inputs.shape[1] != 3
        ):
            raise ValueError(
                f"{type(self).__name__} needs RGB inputs of shape (N, 3, H, W) (channels first), "
                f"got inputs of shape {tuple(inputs.shape)}"
            )

    def __call__(  # type: ignore[misc]
        self,
        model: Model,
        inputs: T,
        criterion: Any,
        *,
        epsilons: Any,
        **kwargs: Any,
    ) -> Any:
        """Foolbox's ``MinimizationAttack.__call__``, after the checks of :meth:`run` (clear
        errors instead of Foolbox's bare ``AssertionError`` on out-of-bounds inputs)."""
        _, x = check_model_and_inputs(model, inputs)
        self.check_input_shape(x)
        return super().__call__(model, inputs, criterion, epsilons=epsilons, **kwargs)

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
        bounds, x = check_model_and_inputs(model, inputs)
        self.check_input_shape(x)
        _, restore_type = ep.astensor_(inputs)
        criterion_ = get_criterion(criterion)
        targeted, classes = goal(criterion_, len(x))
        stop = check_early_stop(early_stop)
        if stop is not None:
            stop = self._normalised_early_stop(stop, bounds)
        self._bounds = bounds
        if len(x) == 0:
            return restore_type(x)
        result = alma_solve(
            model,
            x,
            classes,
            distance=self.distance_function,
            config=self.config,
            steps=self.steps,
            bounds=bounds,
            targeted=targeted,
            is_adversarial=success_fn(criterion_),
            early_stop=stop,
            seed=self.seed,
        )
        return restore_type(result.adversarials)


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
"""
        + _REFERENCE
    )

    distance_name = "l2"

    @property
    def distance(self) -> Distance:
        return l2


class L1ALMA(ALMAAttack):
    __doc__ = (
        """The ℓ1 Augmented Lagrangian Method for Adversarial attacks (ALMA). [#Rony21]_

    As :class:`L2ALMA`, minimising ‖δ‖₁ (Table 3: ε = 0.5). Same arguments.
"""
        + _REFERENCE
    )

    distance_name = "l1"

    @property
    def distance(self) -> Distance:
        return l1


class CIEDE2000ALMA(ALMAAttack):
    __doc__ = (
        """ALMA minimising the CIEDE2000 distance: the ℓ2 norm of per-pixel ΔE₀₀ (§2.3). [#Rony21]_

    As :class:`L2ALMA`; RGB inputs (N, 3, H, W), mapped from ``model.bounds`` to [0, 1] (other
    channel counts raise a ValueError). The default ε is 0.4, the paper's ε = 0.05 re-derived for
    the standard CIELAB scale of :mod:`alma_plugin.distances.color`. :attr:`distance` is a
    :class:`NormalisedDistance` whose ``clip_perturbation`` shrinks δ until D ≤ ε.
"""
        + _REFERENCE
    )

    distance_name = "ciede2000"


class SSIMALMA(ALMAAttack):
    __doc__ = (
        """ALMA minimising 1 − SSIM (Appendix G; ε = 3e-5, Table 3). [#Rony21]_

    As :class:`L2ALMA`, with a :class:`NormalisedDistance`; any channel count, images of at
    least 11×11 pixels (one Gaussian window).
"""
        + _REFERENCE
    )

    distance_name = "ssim"


class MSSSIMALMA(ALMAAttack):
    __doc__ = (
        """ALMA minimising 1 − MS-SSIM (five scales, Wang, Simoncelli & Bovik 2003). [#Rony21]_

    As :class:`SSIMALMA` (same ε = 3e-5), for images of at least 176×176 pixels: each of the
    five scales needs one 11×11 window. Smaller inputs (e.g. 32×32 CIFAR-10) raise a ValueError
    before any model call; use :class:`SSIMALMA` for them. (Fewer scales would be a different
    distance, with other weights and no published ε, so none is chosen silently.)
"""
        + _REFERENCE
    )

    distance_name = "msssim"

    def check_input_shape(self, inputs: ep.Tensor) -> None:
        super().check_input_shape(inputs)
        needed = ms_ssim_min_size(len(MS_SSIM_WEIGHTS))
        if inputs.ndim != 4 or min(inputs.shape[2:]) < needed:
            raise ValueError(
                f"MSSSIMALMA needs images (N, C, H, W) with H, W >= {needed} (five MS-SSIM "
                f"scales of an 11x11 window), got inputs of shape {tuple(inputs.shape)}; "
                "use SSIMALMA for smaller images"
            )


class LPIPSALMA(ALMAAttack):
    __doc__ = (
        """ALMA minimising the LPIPS-AlexNet distance (§4; ε = 1e-3, Table 3). [#Rony21]_

    As :class:`L2ALMA`, with a :class:`NormalisedDistance`; PyTorch models, RGB inputs of at
    least 31×31 pixels.

    Args:
        lpips : the LPIPS network to use, e.g.
            ``alma_plugin.distances.lpips.LPIPS(backbone_weights=..., linear_weights=...)``
            (any callable (x_adv, x) → (N,) on eagerpy tensors in [0, 1]). None: the default
            weights, looked for locally on first use (nothing is downloaded).
        **kwargs : as :class:`L2ALMA`.
"""
        + _REFERENCE
    )

    distance_name = "lpips"

    def __init__(self, *, lpips: DistanceFunction | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if lpips is not None:
            if not callable(lpips):
                raise TypeError(
                    "lpips must be an alma_plugin.distances.lpips.LPIPS instance (or a callable "
                    f"(x_adv, x) -> (N,)), got {type(lpips).__name__}"
                )
            self.distance_function = lpips
