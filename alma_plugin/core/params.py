"""The hyperparameters of ALMA and ALMA prox: one frozen, self-validating dataclass each.

Every default number of the package lives here, once. Entry points (``alma()``, the Foolbox
and torchattacks classes) declare each hyperparameter with the class attribute as its default,
so ``inspect.signature`` shows the value, and build a params object from them.

Both algorithms name their step sizes the same way: ``init_lr`` is the initial step size and
``lr_reduction`` the ratio final / initial step size reached at the last step.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, NoReturn, TypeVar, get_type_hints

from .penalties import PENALTIES
from .validation import check_choice, check_flag, check_in_range, check_positive_int

__all__ = [
    "ALMA_STEPS",
    "PROX_STEPS",
    "PROX_INIT_LR",
    "PROX_RHO_INIT",
    "PROX_SMOOTH_MAX",
    "RESTART_MODES",
    "SCHEDULES",
    "ALMAParams",
    "ProxParams",
    "budget_alpha",
    "takes_params",
]

R = TypeVar("R")

#: The step-size schedules of ALMA (:attr:`ALMAParams.schedule`): the paper's first.
SCHEDULES: tuple[str, ...] = ("paper", "exponential", "cosine")

#: How the runs k ≥ 1 of ``restarts`` > 1 differ from run 0 (:mod:`.restarts`): "random" starts
#: them at random points near x, "classes" starts them at x aimed at classes no earlier run took.
RESTART_MODES: tuple[str, ...] = ("random", "classes")


def _check_restart_mode(mode: object) -> str:
    return check_choice("restart_mode", mode, RESTART_MODES)


#: The default budgets: ALMA's 1000 steps (the paper's §4), ALMA prox's 500 (thesis §5.5.5.3).
ALMA_STEPS = 1000
PROX_STEPS = 500

_POSITIVE = (0.0, math.inf, True, True)  # (low, high, open_low, open_high)
_NON_NEGATIVE = (0.0, math.inf, False, True)


def budget_alpha(steps: int) -> float:
    """α of eq. 9 for a budget of ``steps``: the paper's 0.5 for 100 steps and 0.9 for 1000 (§4;
    Appendix E gives 0.5–0.9 for 100–1000 iterations), held outside that range, and between
    them linear in log₁₀(steps): this interpolation is the package's, not the paper's."""
    position = (math.log10(max(steps, 1)) - 2.0) / (3.0 - 2.0)
    return 0.5 + 0.4 * min(max(position, 0.0), 1.0)


_KINDS = {"float": "a number", "int": "an integer", "str": "a string", "bool": "True or False"}


def _check(params: Any, rules: dict[str, tuple[float, float, bool, bool]]) -> None:
    """Validate the numeric fields of a params dataclass. None only where the field's type
    admits it ("resolved later" or "off"); elsewhere it is refused here, naming the field,
    rather than failing inside the solver."""
    for f in fields(params):  # first, as a range may be another field (μ_min ≤ μ⁽⁰⁾)
        if getattr(params, f.name) is None and "None" not in str(f.type):
            kind = _KINDS.get(str(f.type), f.type)
            raise TypeError(f"{f.name} must be {kind}, got None (NoneType)")
    # In the rules' order: a field whose range is another field's value comes after it
    # (μ_min, then μ_max ≥ μ_min, then μ⁽⁰⁾ in [μ_min, μ_max]), so the error names the field
    # that is out of place, not a correct one measured against it.
    for name, (low, high, open_low, open_high) in rules.items():
        value = getattr(params, name)
        if value is None:
            continue
        object.__setattr__(
            params,
            name,
            check_in_range(name, value, low, high, open_low=open_low, open_high=open_high),
        )


@dataclass(frozen=True)
class ALMAParams:
    """Hyperparameters of ALMA (Algorithm 2 of Rony et al., ICCV 2021, with §3.2).

    Defaults are the paper's (§4 "Hyperparameters", Appendix E) but one: :attr:`smooth_max`, a
    smoothed max in DLR⁺'s gradient that is not in the paper (``smooth_max=0`` is Algorithm 2
    exactly). Fields left at None are resolved for a budget and a distance by
    :meth:`for_budget`.

    Attributes:
        alpha: α, EMA coefficient of the multiplier (eq. 9). None: :func:`budget_alpha`.
        init_lr_distance: ε, the distance the first step adds (§3.2.3), in the [0, 1]-normalised
            space. None: the distance's Table 3 value (``DISTANCES[name].init_lr_distance``).
        init_lr: a constant initial step size η⁽⁰⁾ instead of the §3.2.3 search (None: search).
        lr_reduction: r, the step size decays to η⁽⁰⁾·r at the last step (Fig. 3).
        penalty: P, "P2" (eq. 10), "P1", "P3" or "PHR" (Appendix D).
        mu_init, rho_init: μ⁽⁰⁾, ρ⁽⁰⁾.  mu_min, mu_max: the safeguarding interval of μ.
        gamma: γ, growth factor of ρ.  tau: τ, required constraint improvement.
        check_steps: M, steps between two ρ checks.
        rmsprop_decay, momentum: RMSProp β and momentum of the step (§3.2.4; the paper gives no
            value; as in the authors' code, None ties both to α).
        levels: quantise the iterate to this many grey levels after each step (None: off):
            lower + k·(upper − lower) / (levels − 1) in the model's bounds, exact where
            representable (``levels=256`` with bounds (0, 255): the integers).
        schedule: the step-size schedule η⁽ᵗ⁾, one of :data:`SCHEDULES`. "paper": §3.2.3 and
            Fig. 3, η⁽⁰⁾ while a sample explores, then an exponential decay from its first
            success t* to η⁽⁰⁾·r at the last step (Algorithm 2 as published). "exponential":
            η⁽ᵗ⁾ = η⁽⁰⁾·r^(t/(N−1)) from the first step, for every sample. "cosine":
            η⁽ᵗ⁾ = η⁽⁰⁾·(r + (1 − r)(1 + cos(πt/(N−1)))/2). The last two decay from the start
            (not from t*), which spends short budgets better (see docs/performance.md, the budget
            sweep); only the step size differs, everything else is Algorithm 2.
        restarts: R, the number of runs the step budget is split into (:mod:`.restarts`): run 0
            is Algorithm 2 from x, the others follow ``restart_mode``; each sample keeps its
            best adversarial. The attack still costs one forward and one backward per step.
            1: Algorithm 2 as published. α (when None) follows the budget of one run.
        restart_distance: D(x̃⁽⁰⁾, x) of a random restart's start x̃⁽⁰⁾ = P_[0,1](x − η n),
            n ~ U(−1, 1)ⁿ, η found by the §3.2.3 search. None: ε (``init_lr_distance``).
        restart_mode: one of :data:`RESTART_MODES`. "random": run k ≥ 1 starts at a random
            point at ``restart_distance`` from x. "classes" (untargeted attacks only): run
            k ≥ 1 starts at x and minimises D under tDLR⁺ (eq. 18) towards the most likely
            class at x that neither y nor the adversarial of an earlier run took, as
            AutoAttack's APGD-T aims at the top classes; success is still any
            misclassification. Needs K ≥ R + 1 classes.
        smooth_max: κ of a smoothed max in DLR⁺'s gradient (not in the paper), as
            :attr:`ProxParams.smooth_max`: κ > 0: the gradient of (z_y − LSE(z_{i≠y}))/s, the
            max over the other classes smoothed at temperature κ·s, s = z_π1 − z_π3 held
            (:func:`~alma_plugin.core.constraints.smoothed_dlr_plus`); DLR⁺'s value, hence
            success, μ and ρ, is unchanged. 0: the gradient of DLR⁺ (eq. 4), **Algorithm 2 as
            published**. None (default): the distance's κ (``DISTANCES[name].smooth_max``:
            0.1 for ℓ1, ℓ2, CIEDE2000 and LPIPS, where it was measured to lower the minimal
            distances; 0 for SSIM, where it did not on every model, and MS-SSIM). Untargeted
            runs only: tDLR⁺ (``targeted``, the aimed runs of ``restart_mode="classes"``)
            keeps its gradient. Measured in docs/performance.md ("ALMA with a smoothed max").
    """

    alpha: float | None = None
    init_lr_distance: float | None = None
    init_lr: float | None = None
    lr_reduction: float = 0.01
    penalty: str = "P2"
    mu_init: float = 1.0
    rho_init: float = 1.0
    mu_min: float = 1e-6
    mu_max: float = 1e12
    gamma: float = 1.2
    tau: float = 0.95
    check_steps: int = 10
    rmsprop_decay: float | None = None
    momentum: float | None = None
    levels: int | None = None
    schedule: str = "paper"
    restarts: int = 1
    restart_distance: float | None = None
    restart_mode: str = "random"
    smooth_max: float | None = None

    def __post_init__(self) -> None:
        penalty = check_choice("penalty", self.penalty, sorted(PENALTIES), upper=True)
        object.__setattr__(self, "penalty", penalty)
        _check(
            self,
            {
                "alpha": (0.0, 1.0, False, True),
                "init_lr_distance": _POSITIVE,
                "init_lr": _POSITIVE,
                "lr_reduction": (0.0, 1.0, True, False),
                "mu_min": _POSITIVE,
                "mu_max": (self.mu_min, math.inf, False, True),
                "mu_init": (self.mu_min, self.mu_max, False, False),
                "rho_init": _POSITIVE,
                "gamma": (1.0, math.inf, False, True),
                "tau": (0.0, 1.0, False, False),
                "rmsprop_decay": (0.0, 1.0, False, True),
                "momentum": (0.0, 1.0, False, True),
                "restart_distance": _POSITIVE,
                "smooth_max": _NON_NEGATIVE,  # 0: DLR⁺'s own gradient
            },
        )
        object.__setattr__(self, "check_steps", check_positive_int("check_steps", self.check_steps))
        object.__setattr__(self, "restarts", check_positive_int("restarts", self.restarts))
        if self.levels is not None:
            object.__setattr__(self, "levels", check_positive_int("levels", self.levels, 2))
        object.__setattr__(self, "schedule", check_choice("schedule", self.schedule, SCHEDULES))
        object.__setattr__(self, "restart_mode", _check_restart_mode(self.restart_mode))

    def for_budget(self, steps: int, init_lr_distance: float, smooth_max: float) -> ALMAParams:
        """These params with every None resolved for ``steps`` and a distance whose Table 3 ε
        is ``init_lr_distance`` and whose κ is ``smooth_max`` (``DISTANCES[name]``): α by
        :func:`budget_alpha` for the steps of one run (the longest of :attr:`restarts`),
        RMSProp decay and momentum = α, the restarts' distance = ε."""
        steps = check_positive_int("steps", steps)
        run = -(-steps // self.restarts)
        alpha = budget_alpha(run) if self.alpha is None else self.alpha
        epsilon = init_lr_distance if self.init_lr_distance is None else self.init_lr_distance
        return replace(
            self,
            alpha=alpha,
            init_lr_distance=epsilon,
            restart_distance=epsilon if self.restart_distance is None else self.restart_distance,
            smooth_max=smooth_max if self.smooth_max is None else self.smooth_max,
            rmsprop_decay=alpha if self.rmsprop_decay is None else self.rmsprop_decay,
            momentum=alpha if self.momentum is None else self.momentum,
        )


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
            is still any misclassification. Needs K ≥ R + 1 classes.
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
    smooth_max: float | None = None

    def __post_init__(self) -> None:
        _check(
            self,
            {
                "init_lr": _POSITIVE,
                "lr_reduction": (0.0, 1.0, True, False),
                "alpha": (0.0, 1.0, False, True),
                "mu_min": _POSITIVE,
                "mu_max": (self.mu_min, math.inf, False, True),
                "mu_init": (self.mu_min, self.mu_max, False, False),
                "rho_init": _POSITIVE,
                "rho_max": _POSITIVE,
                "gamma": (1.0, math.inf, False, True),  # as ALMA's: γ = 1, ρ never grows
                "tau": (0.0, 1.0, False, False),
                "metric_eps": _POSITIVE,
                "scale_min": (0.0, 1.0, True, False),
                "scale_init": (self.scale_min, 1.0, False, False),
                "scale_rate": (0.0, 1.0, True, True),
                "prox_precision": _POSITIVE,
                "restart_distance": _POSITIVE,
                "smooth_max": _NON_NEGATIVE,  # 0: DLR⁺'s own gradient
            },
        )
        object.__setattr__(self, "check_steps", check_positive_int("check_steps", self.check_steps))
        object.__setattr__(self, "restarts", check_positive_int("restarts", self.restarts))
        object.__setattr__(self, "restart_mode", _check_restart_mode(self.restart_mode))
        for name in ("constraint_masking", "mask_decay"):  # as targeted: NumPy bools too
            object.__setattr__(self, name, check_flag(name, getattr(self, name)))

    def for_task(self, task: str) -> ProxParams:
        """These params with ``init_lr``, ``rho_init`` and ``smooth_max`` resolved for
        "classification" or "segmentation" (:data:`PROX_INIT_LR`, :data:`PROX_RHO_INIT`,
        :data:`PROX_SMOOTH_MAX`), ``restart_distance`` as λ⁽⁰⁾ / 4 where None."""
        init_lr = PROX_INIT_LR[task] if self.init_lr is None else self.init_lr
        return replace(
            self,
            init_lr=init_lr,
            rho_init=PROX_RHO_INIT[task] if self.rho_init is None else self.rho_init,
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


#: Other attacks' keywords (Foolbox, torchattacks, adversarial-library) for ours.
_PEER_KEYWORDS = {
    "max_iter": "steps",
    "num_steps": "steps",
    "iterations": "steps",
    "lr": "init_lr",
    "step_size": "init_lr",
    "stepsize": "init_lr",
    "alpha": "init_lr",  # PGD's step size (the Lagrangian attack's α is init_lr)
    "random_start": "restarts",
    "n_restarts": "restarts",
}
_NO_BUDGET = "a minimal attack has no ε budget: early_stop=ε stops once every sample is below it"


def _hint(keyword: str, accepted: list[str], no_budget: str = _NO_BUDGET) -> str:
    """What an unknown keyword may have meant: another attack's name for one of ours, or a
    close spelling (cutoff 0.8: "inti_lr" and "step", not "eps" for "steps"); ``no_budget``
    answers "eps" (a params class's ``NO_BUDGET``, where it differs from a minimal attack's)."""
    if keyword in ("eps", "epsilon"):
        return f" ({no_budget})"
    ours = _PEER_KEYWORDS.get(keyword)
    if ours in accepted:
        return f" (did you mean {ours!r}? {keyword!r} is other attacks' name for it)"
    close = difflib.get_close_matches(keyword, accepted, n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def takes_params(
    cls: type[Any],
    *,
    alternative: type[Any] | None = None,
    alternative_if: Callable[[dict[str, Any]], bool] | None = None,
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give an entry point every field of ``cls`` as a keyword-only argument.

    The decorated callable declares ``params: cls | None = None``; the decorator adds one
    keyword per field of ``cls``, with its type and its default (so ``inspect.signature``,
    ``help()`` and notebook completion show every hyperparameter and its value, while the value
    is written once, in ``cls``), and hands the callable one validated ``params`` object:
    ``params`` (or ``cls()``) with the keywords given replacing its fields. An ``alternative``
    params class (ALMA prox's, for ``distance="linf"``) is passed through as is; hyperparameter
    keywords of ``cls`` given with it are refused. With an ``alternative``, a call that gives
    neither ``params`` nor a keyword gets ``params=None`` (the callee resolves it per task), so
    a keyword given at its default value is still seen as given. ``alternative_if(arguments)``
    (the call's bound arguments) says when a call is for the alternative's task: keywords of
    ``cls`` are then refused before ``cls`` checks them against its own rules.
    """
    names = [f.name for f in fields(cls)]
    no_budget = getattr(cls, "NO_BUDGET", _NO_BUDGET)

    def decorate(function: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(function)
        if "params" not in signature.parameters:
            raise TypeError(f"{function.__qualname__} must declare a params argument")
        types = get_type_hints(cls)
        extra = [
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=types[f.name]
            )
            for f in fields(cls)
        ]
        owner = function.__qualname__.replace(".__init__", "")
        accepted = [*signature.parameters, *names]
        positional = [
            p
            for p in signature.parameters.values()
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        is_init = function.__name__ == "__init__"

        def caller(args: tuple[Any, ...]) -> str:
            """The name the user wrote: the class called (a subclass of the method's owner,
            e.g. L2ALMA for ALMAAttack.__init__), else the function."""
            return f"{type(args[0]).__name__}()" if is_init and args else f"{owner}()"

        def check_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            """Python's own errors would name the decorated method's owner (a base class such
            as ALMAAttack or _SSIMFamily) and count the ``params`` the wrapper passes on."""
            unknown = [k for k in kwargs if k not in accepted or k == "self"]
            if unknown:
                hint = _hint(unknown[0], accepted[int(is_init) :], no_budget)
                raise TypeError(
                    f"{caller(args)} got an unexpected keyword argument {unknown[0]!r}{hint}"
                )
            if len(args) > len(positional):
                skip = int(is_init)  # self
                raise TypeError(
                    f"{caller(args)} takes {len(positional) - skip} positional argument(s) but "
                    f"{len(args) - skip} were given; the others are keyword-only, e.g. "
                    f"steps=..."
                )

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            check_call(args, kwargs)
            given = {name: kwargs.pop(name) for name in names if name in kwargs}
            base = kwargs.pop("params", None)
            if alternative is not None and isinstance(base, alternative):
                if given:
                    raise TypeError(
                        f"{owner} got params={alternative.__name__}(...) and the "
                        f"{cls.__name__} keyword(s) {sorted(given)}: set them in the "
                        f"{alternative.__name__} instead"
                    )
                kwargs["params"] = base
                return function(*args, **kwargs)
            if given and alternative_if is not None:
                if alternative_if(signature.bind_partial(*args, **kwargs).arguments):
                    refuse_for_linf(given)
            if alternative is not None and base is None and not given:
                # Nothing asked for: the callee picks the defaults of its task (ProxParams()
                # for distance="linf"), and can tell an explicit keyword from a default.
                kwargs["params"] = None
                return function(*args, **kwargs)
            if base is not None and not isinstance(base, cls):
                expected = cls.__name__ + (f" or {alternative.__name__}" if alternative else "")
                article = "an" if expected[0] in "AEIOU" else "a"  # as alma()'s "an ALMAParams"
                raise TypeError(f"params must be {article} {expected} or None, got {base!r}")
            kwargs["params"] = replace(base, **given) if base is not None else cls(**given)
            return function(*args, **kwargs)

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), *extra]
        )
        return wrapper

    return decorate
