"""The hyperparameters of ALMA prox (thesis ch. 5): one frozen, self-validating dataclass, its
per-task defaults, and the refusal of ALMA's hyperparameters for ``distance="linf"``."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from .params import (
    NON_NEGATIVE,
    POSITIVE,
    ALMAParams,
    check_fields,
    check_restart_mode_name,
)
from .validation import check_choice, check_flag, check_positive_int

__all__ = [
    "PROX_INIT_LR",
    "PROX_RHO_INIT",
    "PROX_SMOOTH_MAX",
    "ProxParams",
    "prox_params_for_linf",
    "refuse_for_linf",
]


#: λ⁽⁰⁾ of ALMA prox per task. §5.5.5.3's 10⁻³ was tuned for segmentation, where minimal ℓ∞
#: norms are ≈ 0.3/255; with it ALMA prox fools only 4/32 MNIST samples in 100 steps.
#: Classification norms are ~100× larger, so the step is too: 0.2, chosen on validation images
#: (held-out 9500–9599, never in the reported tables) over {0.1, 0.15, 0.2, 0.3}. Against 0.1
#: it lowers the geometric mean of the minimal ℓ∞ norms at every budget on both embedded
#: SmallCNNs: by 6.4 / 2.6 / 0.4 / 0.2 / 0.3 % at 50 / 100 / 200 / 500 / 1000 steps
#: (PGD-trained) and 2.8 / 1.8 / 1.9 / 1.2 / 1.3 % (regular); median at 50 steps 0.3326 →
#: 0.3097 and 0.1358 → 0.1272.
PROX_INIT_LR = {"classification": 2e-1, "segmentation": 1e-3}

#: ρ⁽⁰⁾ of ALMA prox per task. §5.5.5.3's 0.01 was tuned for segmentation, where the masked sum
#: of ~10⁵ pixel constraints has a large gradient from the first step. One classification
#: constraint on a robust model has a small one: the prox of λ‖·‖∞ keeps δ near 0 while
#: ‖∇_δ L‖₁ < 1, and with ρ = 0.01, μ barely grows (eq. 5.9: P′ ≈ μ(1 + 2ρwd)), so the
#: median adversarially trained SmallCNN sample is first fooled after ~45 of 100 steps (μ ≈ 1.2,
#: ρ = 0.04). ρ⁽⁰⁾ = 1 fools 8/8 robust samples in 30 steps (0.01: 3/8). Median ℓ∞ on the
#: embedded SmallCNNs, 100 held-out samples (images 9000–9099; 9500–9599 for validation), with
#: λ⁽⁰⁾ = 0.1 and the ternary-search prox (the defaults then) and ρ⁽⁰⁾ = 0.01 → 1: adversarial
#: 0.3258 → 0.3075 (validation 0.3273 → 0.3088) at 100 steps, 0.3225 → 0.2955 at 200; regular
#: 0.1388 → 0.1153 (validation 0.1357 → 0.1248) at 100.
#: Re-measured with today's λ⁽⁰⁾ = 0.2 and exact prox (validation images 500–599, medians at
#: 100 / 200 steps): PGD-trained ρ⁽⁰⁾ = 0.01 0.3286 / 0.3132, 0.1 0.3186 / 0.3022, 1 0.3052 /
#: 0.2987, 3 0.3024 / 0.3010, 10 0.3085 / 0.3039; regular 0.1451 / 0.1248, 0.1341 / 0.1239,
#: 0.1255 / 0.1244, 0.1271 / 0.1270, 0.1301 / 0.1279 (docs/performance.md, "ρ⁽⁰⁾ re-measured").
#: With the smoothed max (PROX_SMOOTH_MAX) ρ⁽⁰⁾ = 1 still gives the smallest median in all
#: four (PGD-trained 0.2954 / 0.2930, regular 0.1241 / 0.1225; "ALMA prox with a smoothed max").
#: ``rho_init=0.01`` restores the thesis' value.
PROX_RHO_INIT = {"classification": 1.0, "segmentation": 0.01}

#: κ of ALMA prox's smoothed max per task (``ProxParams.smooth_max``; not in the thesis; 0: the
#: gradient of DLR⁺ itself, as Algorithm IV-2). For classification, 0.1: against 0 it gave
#: 2.2–4.7 % smaller minimal ℓ∞ norms per sample at 100–1000 steps on the three embedded MNIST
#: SmallCNNs (reported images 0–99; ≥ 2.8 standard errors in each of the 12 cells), chosen on
#: validation images (held-out 500–599 and 700–899) over {0.05, 0.1, 0.2, 0.3, 1}, where it
#: was 0.8–3.2 % below 0 at 100 and 200 steps (docs/performance.md, "ALMA prox with a smoothed
#: max"). Segmentation was not measured: it keeps the thesis' gradient.
PROX_SMOOTH_MAX = {"classification": 0.1, "segmentation": 0.0}


@dataclass(frozen=True)
class ProxParams:
    """Hyperparameters of ALMA prox (thesis §5.4, Algorithm IV-2; defaults of §5.5.5.3, tuned
    for 500 steps, except λ⁽⁰⁾ and ρ⁽⁰⁾ for classification: :data:`PROX_INIT_LR`,
    :data:`PROX_RHO_INIT`). τ and M are not given for ALMA prox in the thesis: ALMA's are kept
    (as are μ_min and μ_max).

    Attributes:
        init_lr: λ⁽⁰⁾. None: :data:`PROX_INIT_LR` for the task (classification or segmentation).
        lr_reduction: λ⁽ᴺ⁾ / λ⁽⁰⁾ (§5.5.5.3: 0.1), reached at the last step by a geometric
            decay from the first (the thesis gives no shape: the package's reading).
        alpha: α of steps 13 and 23 (multiplier EMA and the metric's second moment).
        mu_init: μ⁽⁰⁾.  mu_min, mu_max: the safeguarding interval of μ.
        rho_init: ρ⁽⁰⁾. None: :data:`PROX_RHO_INIT` for the task (the thesis' 0.01 for
            segmentation, 1 for classification); ``rho_init=0.01`` is §5.5.5.3's setting.
        rho_max: float32 safeguard on ρ, beyond the thesis (500 steps reach ≈ 1.1e13).
        gamma: ρ increase rate γ.  tau: constraint improvement rate τ.  check_steps: M.
        metric_eps: ε of eq. 5.18 (Adam's).
        scale_min, scale_init, scale_rate: w_min, w⁽⁰⁾ and γ_w of the constraint scaling, eq. 5.8.
        constraint_masking: m̃⁽ᵗ⁾ of eq. 5.6 (False: the user mask m only). Dense outputs
            (segmentation) only: with (N,) labels each sample has one constraint, and this
            and ``mask_decay`` change nothing (as in ``LinfALMAProx``).
        mask_decay: the masking percentile decays 100% → ν (False: ν from the first step).
        restarts: R, the number of runs the step budget is split into (:mod:`.restarts`): run 0
            is Algorithm IV-2 from δ = 0, the others follow ``restart_mode``; each sample keeps
            its best adversarial. The attack still costs one forward and one backward per
            step. 1: Algorithm IV-2.
        restart_distance: r, the ‖δ⁽⁰⁾‖∞ bound of a random restart's start
            δ⁽⁰⁾ ~ U(−r, r)ⁿ ∩ Λ, in the normalised space. None: λ⁽⁰⁾ / 4 (0.05 for
            classification, 2.5·10⁻⁴ for segmentation), so the start follows the scale the step
            size is set for.
        restart_mode: one of :data:`RESTART_MODES`. "random": run k ≥ 1 starts at a random δ⁽⁰⁾
            (``restart_distance``). "classes" (untargeted classification only): run k ≥ 1
            starts at δ = 0 under tDLR⁺ towards the most likely class at x that neither y nor
            the adversarial of an earlier run took, as ALMA's (:class:`ALMAParams`); success
            is still any misclassification. Needs K ≥ R classes, and K ≥ 3 (with K = 2 a run
            aimed at the other class would solve run 0's problem again).
        first_run_share: p, the share of the steps that run 0 takes when ``restarts`` > 1, as
            :attr:`ALMAParams.first_run_share` (not in the thesis). None (default): an even
            split. (At 100 steps, two class runs with p = 0.7 were 0.5 % worse per sample than
            one run on two MNIST models: docs/performance.md, "A longer first run".)
        prox_precision: None (default): the prox's β* exactly, from the sorted breakpoints of
            Φ′ (eq. 5.14 solved piece by piece, :func:`~alma_plugin.core.prox.exact_beta`); a
            float Δβ: Algorithm 5.1's ternary search to that precision (the thesis' 10⁻⁵
            reproduces §5.5.5.3 exactly).
        smooth_max: κ of a smoothed max (not in the papers). None (default):
            :data:`PROX_SMOOTH_MAX` for the task, 0.1 for classification and 0 for segmentation.
            0: the gradient of DLR⁺ (eq. 4), as Algorithm IV-2. κ > 0: the gradient of DLR⁺
            with its max over the other classes smoothed into a log-sum-exp of temperature
            κ·(z_π1 − z_π3) (:func:`~alma_plugin.core.constraints.smoothed_dlr_plus`), so that a
            step moves towards every class nearly as likely as the runner-up rather than the
            runner-up alone; DLR⁺'s value, hence success, μ, ρ, w and the masking, is
            unchanged. κ = 0.1 gave 2–5 % smaller ℓ∞ norms per sample than 0 at 100–1000 steps
            on the three MNIST models, smaller than APGD-ℓ∞'s per sample (docs/performance.md
            "ALMA prox with a smoothed max"); segmentation was not measured. Untargeted
            constraints only: tDLR⁺ (``targeted``, a "classes" restart's aimed runs) keeps its
            gradient.
    """

    init_lr: float | None = None
    lr_reduction: float = 0.1
    alpha: float = 0.8
    mu_init: float = 1.0
    rho_init: float | None = None
    mu_min: float = 1e-6
    mu_max: float = 1e12
    rho_max: float = 1e15
    gamma: float = 2.0
    tau: float = 0.95
    check_steps: int = 10
    metric_eps: float = 1e-8
    scale_min: float = 0.1
    scale_init: float = 1.0
    scale_rate: float = 0.02
    constraint_masking: bool = True
    mask_decay: bool = True
    prox_precision: float | None = None
    restarts: int = 1
    restart_distance: float | None = None
    restart_mode: str = "random"
    first_run_share: float | None = None
    smooth_max: float | None = None

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "init_lr": POSITIVE,
                "lr_reduction": (0.0, 1.0, True, False),
                "alpha": (0.0, 1.0, False, True),
                "mu_min": POSITIVE,
                "mu_max": (self.mu_min, math.inf, False, True),
                "mu_init": (self.mu_min, self.mu_max, False, False),
                "rho_max": POSITIVE,
                "rho_init": (0.0, self.rho_max, True, False),  # ρ only grows up to ρ_max
                "gamma": (1.0, math.inf, False, True),  # as ALMA's: γ = 1, ρ never grows
                "tau": (0.0, 1.0, False, False),
                "metric_eps": POSITIVE,
                "scale_min": (0.0, 1.0, True, False),
                "scale_init": (self.scale_min, 1.0, False, False),
                "scale_rate": (0.0, 1.0, True, True),
                "prox_precision": POSITIVE,
                "restart_distance": POSITIVE,
                "first_run_share": (0.0, 1.0, True, True),
                "smooth_max": NON_NEGATIVE,  # 0: DLR⁺'s own gradient
            },
        )
        object.__setattr__(self, "check_steps", check_positive_int("check_steps", self.check_steps))
        object.__setattr__(self, "restarts", check_positive_int("restarts", self.restarts))
        object.__setattr__(self, "restart_mode", check_restart_mode_name(self.restart_mode))
        for name in ("constraint_masking", "mask_decay"):  # as targeted: NumPy bools too
            object.__setattr__(self, name, check_flag(name, getattr(self, name)))

    def for_task(self, task: str) -> ProxParams:
        """These params with ``init_lr``, ``rho_init`` and ``smooth_max`` resolved for
        "classification" or "segmentation" (:data:`PROX_INIT_LR`, :data:`PROX_RHO_INIT`,
        :data:`PROX_SMOOTH_MAX`), ``restart_distance`` as λ⁽⁰⁾ / 4 where None."""
        task = check_choice("task", task, sorted(PROX_INIT_LR))
        init_lr = PROX_INIT_LR[task] if self.init_lr is None else self.init_lr
        rho_init = PROX_RHO_INIT[task] if self.rho_init is None else self.rho_init
        if rho_init > self.rho_max:  # only the task's ρ⁽⁰⁾ can be: a given one was checked
            raise ValueError(
                f"rho_max must be >= rho_init, which is {rho_init!r} for {task} "
                f"(PROX_RHO_INIT), got rho_max={self.rho_max!r}: pass rho_init too"
            )
        return replace(
            self,
            init_lr=init_lr,
            rho_init=rho_init,
            smooth_max=PROX_SMOOTH_MAX[task] if self.smooth_max is None else self.smooth_max,
            restart_distance=(
                init_lr / 4 if self.restart_distance is None else self.restart_distance
            ),
        )


def prox_params_for_linf(params: ALMAParams | ProxParams | None) -> ProxParams:
    """The ALMA prox params of an entry point asked for ``distance="linf"``: a ProxParams as
    given, ProxParams() for None, and a TypeError for any ALMAParams — ALMA hyperparameter
    keywords included, even at their default values (their defaults mean something else for
    ALMA prox)."""
    if params is None or isinstance(params, ProxParams):
        return params or ProxParams()
    # An ALMAParams only comes from the caller (takes_params passes None when no
    # hyperparameter was given), so even one equal to the defaults was asked for.
    refuse_for_linf(params)


def refuse_for_linf(given: Any) -> NoReturn:
    """The TypeError for ALMA hyperparameters (an ALMAParams, or keywords) given with
    ``distance="linf"``."""
    raise TypeError(
        "ALMA's hyperparameters do not apply to distance='linf' (ALMA prox): pass "
        f"params=ProxParams(...) instead, got {given!r}"
    )
