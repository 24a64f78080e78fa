"""``ALMA`` as a :class:`torchattacks.attack.Attack`: the Augmented Lagrangian attack of Rony,
Granger, Pedersoli and Ben Ayed (ICCV 2021) for every registry distance, and ALMA prox (Rony,
Pesquet and Ben Ayed, CVPR 2023) for ``distance="linf"``. The algorithms live in
:mod:`alma_plugin.core`; this module only translates torchattacks' conventions (images in
[0, 1], logits through ``get_logits``, targets through ``get_target_label``)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import torch
from torchattacks.attack import Attack

from ..core.defaults import make_config
from ..core.prox_solver import ProxParams, alma_prox_solve
from ..core.solver import ALMAConfig, alma_solve
from ..core.validation import check_early_stop, check_number, check_positive_int, working_dtype
from ..distances import DistanceFunction, DistanceSpec
from ._common import (
    BOUNDS,
    LINF,
    prepare,
    prox_params,
    resolve_distance,
    restored_state,
    target_labels,
)

__all__ = ["ALMA", "Settings"]

_HALF = (torch.float16, torch.bfloat16)
#: The ALMA hyperparameters ``**hyperparameters`` may name (the rest are explicit arguments).
_ALMA_HYPERPARAMETERS = tuple(
    name
    for name in inspect.signature(make_config).parameters
    if name not in ("steps", "default_init_lr_distance", "alpha", "init_lr_distance", "penalty")
)


@dataclass(frozen=True)
class Settings:
    """What one call of :class:`ALMA` runs with, resolved from the attributes: ``config`` for
    ALMA (ℓ1, ℓ2, perceptual distances) or ``prox`` for ALMA prox (ℓ∞), the other None."""

    spec: DistanceSpec
    steps: int
    seed: int
    early_stop: float | None
    config: ALMAConfig | None
    prox: ProxParams | None


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
            (for "linf": normalised ℓ∞); None or 0 never stop early.
        seed (int): seeds the random directions used where a gradient vanishes. A seeded
            attack is deterministic: calling it again on the same batch returns the same
            result (there is no ``repeat``); set ``attack.seed`` to another value to vary it.
        lpips (LPIPS): for "lpips", the network to use, e.g.
            ``alma_plugin.distances.LPIPS(backbone_weights=..., linear_weights=...)``;
            None: the default weights, looked for locally on first use (never downloaded).
        **hyperparameters: ``mu_init``, ``rho_init``, ``mu_min``, ``mu_max``, ``gamma``,
            ``tau``, ``check_steps``, ``lr_init``, ``lr_reduction``, ``rmsprop_decay``,
            ``momentum``, ``levels`` (see :func:`alma_plugin.core.defaults.make_config`);
            for "linf" the fields of :class:`alma_plugin.core.prox_solver.ProxParams`
            (``init_lr``, ``final_lr``, ``rho_init``, ``gamma``, ...).

    Every argument but ``lpips`` is kept as an attribute of the same name, as given
    (``alpha=None`` and ``init_lr_distance="default"`` stay so), and read at each call:
    ``attack.steps = 100`` or ``attack.distance = "l1"`` after construction then picks α
    and ε for the new values, exactly as ``ALMA(model, steps=100)`` would. An invalid
    value set later is refused at the next call, naming the attribute. :meth:`settings`,
    :meth:`config` and :meth:`prox_params` show the resolved values.

    Shape:
        - images: (N, C, H, W), values in [0, 1] (normalised values after
          ``set_normalization_used``); (N, 3, H, W) for "ciede2000" and "lpips". Any float
          dtype of the model (float16 / bfloat16 models are called in their dtype, the
          attack computes in float32); ``requires_grad`` or inference-mode tensors are fine.
        - labels: (N,), integer classes of any integer dtype (targets in
          ``targeted(label)`` mode).
        - output: (N, C, H, W), the images' dtype, on the model's device.

    Like torchattacks' attacks, the model is evaluated in eval mode unless
    ``set_model_training_mode`` says otherwise; afterwards every module's mode, the
    parameters (values, ``requires_grad``, ``.grad``) and the buffers (batch norm running
    statistics) are as before, even after an error. Calls under ``torch.no_grad()`` or
    ``torch.inference_mode()`` work (autograd is enabled for the call).

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
        # The user's choices, as given: None and "default" keep meaning "the paper's rule for
        # the current steps and distance" and are resolved at each call (see settings()).
        self.distance = resolve_distance(distance).name
        self.steps = steps
        self.alpha = alpha
        self.init_lr_distance = init_lr_distance
        self.penalty = penalty
        self.early_stop = early_stop
        self.seed = seed
        self.hyperparameters = dict(hyperparameters)
        self._lpips = lpips
        self.supported_mode = ["default", "targeted"]
        self.settings()  # every check now; the same checks run again at each call

    def settings(self) -> Settings:
        """The validated settings of the current attributes, resolved as the next call will
        use them: α from ``steps`` where ``alpha`` is None, ε from ``distance`` where
        ``init_lr_distance`` is "default". Attributes set after construction are checked
        here, with an error naming the attribute."""
        spec = resolve_distance(self.distance)
        steps = check_positive_int("steps", self.steps)
        seed = check_positive_int("seed", self.seed, minimum=0)
        early_stop = check_early_stop(self.early_stop)
        if not isinstance(self.hyperparameters, dict):
            raise TypeError(
                f"hyperparameters must be a dict, got {type(self.hyperparameters).__name__}"
            )
        lpips = self._lpips
        if lpips is not None and spec.name != "lpips":
            raise ValueError(f"lpips= is only used with distance='lpips', got {self.distance!r}")
        if lpips is not None and not callable(lpips):
            raise TypeError(
                "lpips must be an alma_plugin.distances.LPIPS instance (or a callable "
                f"(x_adv, x) -> (N,)), got {type(lpips).__name__}"
            )
        if spec is LINF:
            for name, default in (("init_lr_distance", "default"), ("penalty", "P2")):
                value = getattr(self, name)
                if value != default:
                    raise ValueError(
                        f"{name}={value!r} does not apply to distance='linf' (ALMA prox: "
                        "modified P2, step sizes init_lr/final_lr)"
                    )
            overrides = dict(self.hyperparameters)
            if self.alpha is not None:
                overrides["alpha"] = check_number("alpha", self.alpha)
            return Settings(spec, steps, seed, early_stop, None, prox_params(overrides))
        unknown = sorted(set(self.hyperparameters) - set(_ALMA_HYPERPARAMETERS))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {unknown} for ALMA with distance="
                f"{spec.name!r}; valid: {sorted(_ALMA_HYPERPARAMETERS)}"
            )
        config = make_config(
            steps=steps,
            default_init_lr_distance=spec.init_lr_distance,
            alpha=self.alpha,
            init_lr_distance=self.init_lr_distance,
            penalty=self.penalty,
            **self.hyperparameters,
        )
        return Settings(spec, steps, seed, early_stop, config, None)

    def config(self) -> ALMAConfig:
        """The validated :class:`ALMAConfig` of the current attributes (resolved as the next
        call will use it); for ``distance="linf"`` see :meth:`prox_params`."""
        settings = self.settings()
        if settings.config is None:
            raise ValueError(
                "distance='linf' runs ALMA prox, which has no ALMAConfig: see prox_params()"
            )
        return settings.config

    def prox_params(self) -> ProxParams:
        """The validated ALMA prox hyperparameters of the current attributes ("linf")."""
        settings = self.settings()
        if settings.prox is None:
            raise ValueError(f"distance={self.distance!r} runs ALMA, not ALMA prox: see config()")
        return settings.prox

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Overridden.
        """
        settings = self.settings()
        images, labels = prepare(self, images, labels, settings.spec)
        if len(images) == 0:
            return images
        targets = target_labels(self, images, labels) if self.targeted else labels
        dtype = images.dtype

        def model_fn(batch: ep.Tensor) -> ep.Tensor:
            # The model sees its own dtype (float16 / bfloat16 too) while the solver works in
            # at least float32; get_logits applies set_normalization_used's normalisation.
            logits = self.get_logits(batch.raw.to(dtype))
            if isinstance(logits, torch.Tensor) and logits.dtype in _HALF:
                logits = logits.float()
            return ep.astensor(logits)

        x = ep.astensor(images)
        x = x.astype(working_dtype(x))
        y = ep.astensor(targets)
        if settings.prox is not None:
            result = alma_prox_solve(
                model_fn,
                x,
                y,
                bounds=BOUNDS,
                targeted=bool(self.targeted),
                steps=settings.steps,
                params=settings.prox,
                early_stop=settings.early_stop,
            )
            adversarials: torch.Tensor = result.adversarials.raw
        else:
            assert settings.config is not None
            solved = alma_solve(
                model_fn,
                x,
                y,
                distance=settings.spec.function if self._lpips is None else self._lpips,
                config=settings.config,
                steps=settings.steps,
                bounds=BOUNDS,
                targeted=bool(self.targeted),
                early_stop=settings.early_stop,
                seed=settings.seed,
            )
            adversarials = solved.adversarials.raw
        # The same rounding as model_fn's: the returned tensor is the one the model judged.
        return adversarials.detach().to(dtype)

    def __call__(self, inputs: Any, labels: Any = None, *args: Any, **kwargs: Any) -> Any:
        """torchattacks' ``Attack.__call__`` that also restores every module's train/eval flag
        and the normalisation state when the attack raises."""
        with restored_state(self):
            return super().__call__(inputs, labels, *args, **kwargs)
