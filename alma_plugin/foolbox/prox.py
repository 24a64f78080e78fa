"""ALMA prox (Rony et al., CVPR 2023; thesis §5.4, Algorithm IV-2) as a Foolbox 3 ℓ∞
minimisation attack, :class:`LinfALMAProx`. The algorithm lives in
:func:`alma_plugin.core.prox_solver.alma_prox_solve`; this module only translates."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
from foolbox.attacks.base import MinimizationAttack, T, get_criterion, raise_if_kwargs
from foolbox.criteria import Misclassification, TargetedMisclassification
from foolbox.distances import linf
from foolbox.models import Model

from ..core.prox_solver import ProxParams, alma_prox_solve, make_params
from ..core.validation import check_positive_int
from ._common import check_early_stop, check_model_and_inputs, goal, success_fn

__all__ = ["LinfALMAProx"]


class LinfALMAProx(MinimizationAttack):
    """ALMA prox: minimal ℓ∞ adversarial perturbations by proximal splitting. [#Rony23]_

    Minimises ‖δ‖∞ subject to misclassification (DLR⁺ < 0) with an Augmented Lagrangian
    penalty (modified P2, eq. 5.9) handled by gradient steps with an Adam-like diagonal metric
    and the exact prox of λ‖·‖∞ + ι_Λ (Algorithm 5.1) for the non-smooth norm and the box
    Λ = ``model.bounds`` (variable-metric forward-backward, eq. 5.17–5.18). One forward and one
    backward model propagation per step; the criterion object judges success (best tracking),
    so targeted (``TargetedMisclassification``) and untargeted attacks are supported.
    Hyperparameters live in the [0, 1]-normalised input space, so they hold for any bounds.

    Args:
        steps : Number of iterations N. The thesis' defaults are tuned for 500 (§5.5.5.3).
        params : A :class:`alma_plugin.core.prox_solver.ProxParams`; None:
            :data:`~alma_plugin.core.prox_solver.CLASSIFICATION_PARAMS`.
        **overrides : Fields of ``ProxParams`` to change, e.g. ``init_lr`` (λ⁽⁰⁾, default 0.1),
            ``final_lr`` (λ⁽ᴺ⁾, 0.01), ``alpha`` (0.8), ``rho_init`` (0.01), ``gamma`` (2),
            ``scale_rate`` (γ_w, 0.02), ``mu_init``, ``tau``, ``check_steps``.

    The thesis' step sizes λ⁽⁰⁾ = 10⁻³ → λ⁽ᴺ⁾ = 10⁻⁴ (§5.5.5.3) were chosen for segmentation,
    where minimal norms are ≈ 0.3/255. Classification norms are ~100× larger and the defaults
    are 10⁻¹ → 10⁻² (see ``CLASSIFICATION_PARAMS``); pass smaller values for models whose
    minimal ℓ∞ norms are far below 0.1 (e.g. ImageNet, where they are ≈ 1/255).

    ``early_stop`` (passed by Foolbox when every epsilon is a number) is accepted but not used:
    the ALMA prox solver always runs its ``steps`` iterations. Results are unaffected; only
    the run time is.

    References:
        .. [#Rony23] Jérôme Rony, Jean-Christophe Pesquet, Ismail Ben Ayed, "Proximal Splitting
            Adversarial Attack for Semantic Segmentation", CVPR 2023,
            https://arxiv.org/abs/2206.07179
    """

    distance = linf

    def __init__(self, *, steps: int = 500, params: ProxParams | None = None, **overrides: Any):
        self.steps = check_positive_int("steps", steps)
        self.params = make_params(params, overrides, classification=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, params={self.params})"

    def __call__(  # type: ignore[misc]
        self,
        model: Model,
        inputs: T,
        criterion: Any,
        *,
        epsilons: Any,
        **kwargs: Any,
    ) -> Any:
        """Foolbox's ``MinimizationAttack.__call__``, after clear checks of model and inputs."""
        check_model_and_inputs(model, inputs)
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
        """Run ALMA prox; the smallest-ℓ∞ adversarial per sample (the input where none).

        Args:
            model: a Foolbox model; its ``bounds`` and preprocessing are honoured.
            inputs: a batch (N, ...) within ``model.bounds``.
            criterion: a labels tensor (N,), a ``Misclassification`` or a
                ``TargetedMisclassification``; the criterion object judges success.
            early_stop: validated, then ignored (the solver has no early stop).
        """
        raise_if_kwargs(kwargs)
        bounds, x = check_model_and_inputs(model, inputs)
        _, restore_type = ep.astensor_(inputs)
        criterion_ = get_criterion(criterion)
        targeted, classes = goal(criterion_, len(x))
        check_early_stop(early_stop)
        if len(x) == 0:
            return restore_type(x)
        result = alma_prox_solve(
            model,
            x,
            classes,
            bounds=bounds,
            targeted=targeted,
            steps=self.steps,
            is_adversarial=success_fn(criterion_),
            params=self.params,
        )
        return restore_type(result.adversarials)
