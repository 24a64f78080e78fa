"""``ALMA`` as a :class:`torchattacks.attack.Attack`: the Augmented Lagrangian attack of Rony,
Granger, Pedersoli and Ben Ayed (ICCV 2021) for every registry distance, and ALMA prox (Rony,
Pesquet and Ben Ayed, CVPR 2023) for ``distance="linf"``. The algorithms live in
:mod:`alma_plugin.core`; this module only translates torchattacks' conventions (images in
[0, 1], logits through ``get_logits``, targets through ``get_target_label``)."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import torch
from torchattacks.attack import Attack

from ..core.defaults import make_config
from ..core.prox_solver import ProxParams, alma_prox_solve
from ..core.solver import ALMAConfig, alma_solve
from ..core.validation import check_positive_int
from ..distances import DistanceFunction
from ._common import (
    BOUNDS,
    is_linf,
    prepare,
    prox_params,
    resolve_distance,
    restored_state,
    target_labels,
)

__all__ = ["ALMA"]


class ALMA(Attack):
    r"""ALMA (Rony et al., "Augmented Lagrangian Adversarial Attacks", ICCV 2021) and, for
    ``distance="linf"``, ALMA prox (Rony et al., "Proximal Splitting Adversarial Attack for
    Semantic Segmentation", CVPR 2023, §5.4 of Rony's thesis).

    Distance Measure: ``distance``: "l2", "l1", "ciede2000", "ssim", "msssim", "lpips" (any
    name of ``alma_plugin.distances.DISTANCES``) or "linf", measured on images in [0, 1].

    Finds minimal adversarial perturbations by solving min_δ D(x + δ, x) s.t.
    DLR⁺(f(x + δ), y) < 0 (eq. 5; tDLR⁺ of eq. 18 when targeted) with the penalty-Lagrangian
    method of Algorithm 2; for ℓ∞, with the proximal splitting of ALMA prox (Algorithm IV-2).
    Each step costs one forward and one backward propagation. Samples for which no adversarial
    is found are returned unchanged.

    Arguments:
        model (nn.Module): model to attack.
        distance (str): D to minimise. (Default: "l2")
        steps (int): number of iterations. (Default: 1000)
        alpha (float): α of eq. 9; None: 0.5 for ≤100 steps, 0.9 for ≥1000 (Appendix E).
            For "linf": α of ALMA prox (None: 0.8, thesis §5.5.5.3).
        init_lr_distance (float): ε of §3.2.3; "default" takes the distance's value in
            Table 3 (ℓ1 0.5, ℓ2 0.1, SSIM 3e-5, LPIPS 1e-3, CIEDE2000 0.4 on the standard
            CIELAB scale); None uses the constant step ``lr_init``. Not used by "linf".
        penalty (str): "P2" (eq. 10, default), "P1", "P3" or "PHR" (Appendix D); "linf" uses
            the modified P2 of eq. 5.9 only.
        early_stop (float): stop once every sample has an adversarial with D below this
            (not supported by "linf", whose solver always runs ``steps`` iterations).
        seed (int): seeds the random directions used where a gradient vanishes.
        lpips (LPIPS): for "lpips", the network to use, e.g.
            ``alma_plugin.distances.lpips.LPIPS(backbone_weights=..., linear_weights=...)``;
            None: the default weights, looked for locally on first use (never downloaded).
        **hyperparameters: ``mu_init``, ``rho_init``, ``mu_min``, ``mu_max``, ``gamma``,
            ``tau``, ``check_steps``, ``lr_init``, ``lr_reduction``, ``rmsprop_decay``,
            ``momentum``, ``levels`` (see :func:`alma_plugin.core.defaults.make_config`);
            for "linf" the fields of :class:`alma_plugin.core.prox_solver.ProxParams`
            (``init_lr``, ``final_lr``, ``rho_init``, ``gamma``, ...).

    Shape:
        - images: (N, C, H, W), values in [0, 1] (normalised values after
          ``set_normalization_used``); (N, 3, H, W) for "ciede2000" and "lpips".
        - labels: (N,), integer classes (targets in ``targeted(label)`` mode).
        - output: (N, C, H, W), on the model's device.

    Examples::
        >>> attack = ALMA(model, distance="l2", steps=1000)
        >>> adv_images = attack(images, labels)
        >>> adv_linf = ALMA(model, distance="linf", steps=500, init_lr=1e-2, final_lr=1e-3)(
        ...     images, labels)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        distance: str = "l2",
        steps: int = 1000,
        *,
        alpha: float | None = None,
        init_lr_distance: float | None | str = "default",
        penalty: str = "P2",
        early_stop: float | None = None,
        seed: int = 0,
        lpips: DistanceFunction | None = None,
        **hyperparameters: Any,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        super().__init__("ALMA", model)
        spec = resolve_distance(distance)
        check_positive_int("steps", steps)
        check_positive_int("seed", seed, minimum=0)
        if early_stop is not None and not (isinstance(early_stop, int | float) and early_stop > 0):
            raise ValueError(f"early_stop must be a positive number or None, got {early_stop!r}")
        if lpips is not None and spec.name != "lpips":
            raise ValueError(f"lpips= is only used with distance='lpips', got {distance!r}")
        if lpips is not None and not callable(lpips):
            raise TypeError(
                "lpips must be an alma_plugin.distances.lpips.LPIPS instance (or a callable "
                f"(x_adv, x) -> (N,)), got {type(lpips).__name__}"
            )
        self.distance = spec.name
        self.steps = int(steps)
        self.penalty = penalty
        self.early_stop = early_stop
        self.seed = int(seed)
        self.hyperparameters = dict(hyperparameters)
        self._lpips = lpips
        if is_linf(distance):
            for name, value, default in (
                ("init_lr_distance", init_lr_distance, "default"),
                ("penalty", penalty, "P2"),
                ("early_stop", early_stop, None),
            ):
                if value != default:
                    raise ValueError(
                        f"{name}={value!r} does not apply to distance='linf' (ALMA prox: "
                        "modified P2, step sizes init_lr/final_lr, no early stop)"
                    )
            self.alpha = alpha
            self.init_lr_distance = None
            self.prox_params()  # validates the hyperparameters now
        else:
            config = make_config(
                steps=steps,
                default_init_lr_distance=spec.init_lr_distance,
                alpha=alpha,
                init_lr_distance=init_lr_distance,
                penalty=penalty,
                **hyperparameters,
            )
            self.alpha = config.alpha
            self.init_lr_distance = config.init_lr_distance
        self.supported_mode = ["default", "targeted"]

    def config(self) -> ALMAConfig:
        """The validated :class:`ALMAConfig` of the current attributes (read at each call)."""
        return make_config(
            steps=self.steps,
            default_init_lr_distance=resolve_distance(self.distance).init_lr_distance,
            alpha=self.alpha,
            init_lr_distance=self.init_lr_distance,
            penalty=self.penalty,
            **self.hyperparameters,
        )

    def prox_params(self) -> ProxParams:
        """The validated ALMA prox hyperparameters of the current attributes ("linf")."""
        overrides = dict(self.hyperparameters)
        if self.alpha is not None:
            overrides["alpha"] = self.alpha
        return prox_params(overrides)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Overridden.
        """
        spec = resolve_distance(self.distance)
        images, labels = prepare(self, images, labels, spec)
        if len(images) == 0:
            return images
        targets = target_labels(self, images, labels) if self.targeted else labels

        def model_fn(batch: ep.Tensor) -> ep.Tensor:
            # get_logits applies the normalisation of set_normalization_used, if any.
            return ep.astensor(self.get_logits(batch.raw))

        x, y = ep.astensor(images), ep.astensor(targets)
        if is_linf(self.distance):
            result = alma_prox_solve(
                model_fn,
                x,
                y,
                bounds=BOUNDS,
                targeted=bool(self.targeted),
                steps=self.steps,
                params=self.prox_params(),
            )
            adversarials: torch.Tensor = result.adversarials.raw
            return adversarials.detach()
        solved = alma_solve(
            model_fn,
            x,
            y,
            distance=spec.function if self._lpips is None else self._lpips,
            config=self.config(),
            steps=self.steps,
            bounds=BOUNDS,
            targeted=bool(self.targeted),
            early_stop=self.early_stop,
            seed=self.seed,
        )
        adversarials = solved.adversarials.raw
        return adversarials.detach()

    def __call__(self, inputs: Any, labels: Any = None, *args: Any, **kwargs: Any) -> Any:
        """torchattacks' ``Attack.__call__`` that also restores every module's train/eval flag
        and the normalisation state when the attack raises."""
        with restored_state(self):
            return super().__call__(inputs, labels, *args, **kwargs)
