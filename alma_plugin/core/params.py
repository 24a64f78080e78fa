"""The hyperparameters of ALMA: one frozen, self-validating dataclass, and the checks that
ALMA prox's (:mod:`.prox_params`) shares with it.

The default numbers of the package live here and in :mod:`.prox_params`, once each. Entry
points (``alma()``, the Foolbox and torchattacks classes) declare each hyperparameter with the
class attribute as its default (:func:`.keywords.takes_params`), so ``inspect.signature``
shows the value, and build a params object from them.

Both algorithms name their step sizes the same way: ``init_lr`` is the initial step size and
``lr_reduction`` the ratio final / initial step size reached at the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from .penalties import PENALTIES
from .restarts import split_budget
from .validation import check_choice, check_in_range, check_positive_int

__all__ = [
    "ALMA_STEPS",
    "CLASS_RESTARTS_FIRST_RUN_SHARE",
    "CLASS_RESTARTS_MIN_CLASSES",
    "CLASS_RESTARTS_MIN_STEPS",
    "PROX_STEPS",
    "RESTART_MODES",
    "SCHEDULES",
    "ALMAParams",
    "budget_alpha",
]

#: The step-size schedules of ALMA (:attr:`ALMAParams.schedule`): the paper's first.
SCHEDULES: tuple[str, ...] = ("paper", "exponential", "cosine")

#: How the runs k ≥ 1 of ``restarts`` > 1 differ from run 0 (:mod:`.restarts`): "random" starts
#: them at random points near x, "classes" starts them at x aimed at classes no earlier run took.
RESTART_MODES: tuple[str, ...] = ("random", "classes")


def check_restart_mode_name(mode: object) -> str:
    return check_choice("restart_mode", mode, RESTART_MODES)


#: The default budgets: ALMA's 1000 steps (the paper's §4), ALMA prox's 500 (thesis §5.5.5.3).
ALMA_STEPS = 1000
PROX_STEPS = 500

#: ALMA's default restarts (``ALMAParams.restarts=None``, not in the paper): for the distances
#: whose ``DISTANCES[name].class_restarts`` is R > 1 (ℓ1, ℓ2), an untargeted attack of at least
#: this many steps is R runs, runs 1 … R − 1 aimed at other classes
#: (``restart_mode="classes"``), run 0 taking this share of the steps. Measured on the MNIST
#: SmallCNNs against one run, mean log ratio per sample (docs/performance.md, "Class restarts
#: by default"): ALMA-ℓ1 at 100 steps −1.8 %, −0.8 %, −1.3 % (PGD-trained, regular,
#: Lagrangian-trained; held-out images), at 1000 steps −7.2 % and −6.2 %; at 50 steps +8 to
#: +9 % (worse: run 1's 15 steps are too few), hence one run below 100 steps.
CLASS_RESTARTS_MIN_STEPS = 100
CLASS_RESTARTS_FIRST_RUN_SHARE = 0.7
#: The default class restarts need a model with at least this many classes K; below, one run
#: (decided at run 0's first forward, where K becomes known). With K = 2, tDLR⁺ towards the
#: other class is DLR⁺ itself (both the plain margin): run 1 would solve run 0's problem again,
#: and on a 2-class SmallCNN the default had given ℓ1 norms 66 % larger than one run at 100
#: steps (an explicit ``restart_mode="classes"`` with ``restarts`` > 1 is refused there). With
#: K = 3 (run 1 has one class left) two runs were 1.5–3.9 % worse per sample for ℓ1 at 100
#: steps (3.6–4.0 % better at 1000); with K = 4, 5 and 10 better at 100 steps
#: (docs/performance.md, "Class restarts and the number of classes").
CLASS_RESTARTS_MIN_CLASSES = 4

POSITIVE = (0.0, math.inf, True, True)  # (low, high, open_low, open_high)
NON_NEGATIVE = (0.0, math.inf, False, True)


def budget_alpha(steps: int) -> float:
    """α of eq. 9 for a budget of ``steps``: the paper's 0.5 for 100 steps and 0.9 for 1000 (§4;
    Appendix E gives 0.5–0.9 for 100–1000 iterations), held outside that range, and between
    them linear in log₁₀(steps): this interpolation is the package's, not the paper's."""
    steps = check_positive_int("steps", steps)
    position = (math.log10(steps) - 2.0) / (3.0 - 2.0)
    return 0.5 + 0.4 * min(max(position, 0.0), 1.0)


_KINDS = {"float": "a number", "int": "an integer", "str": "a string", "bool": "a bool"}


def check_fields(params: Any, rules: dict[str, tuple[float, float, bool, bool]]) -> None:
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

    Defaults are the paper's (§4 "Hyperparameters", Appendix E) but two, not in the paper:
    :attr:`smooth_max`, a smoothed max in DLR⁺'s gradient, and :attr:`restarts`, two runs for
    untargeted ℓ1 / ℓ2 attacks from 100 steps, the second aimed at another class.
    :meth:`published` (``restarts=1, smooth_max=0``) is Algorithm 2 exactly. Fields left at
    None are resolved for a budget, a distance and the goal by :meth:`for_budget`.

    Attributes:
        alpha: α, EMA coefficient of the multiplier (eq. 9). None: :func:`budget_alpha`.
        init_lr_distance: ε, the distance the first step adds (§3.2.3), in the [0, 1]-normalised
            space. None: the distance's Table 3 value (``DISTANCES[name].init_lr_distance``).
        init_lr: a constant initial step size η⁽⁰⁾ instead of the §3.2.3 search (None: search).
        lr_reduction: r, the step size decays to η⁽⁰⁾·r at the last step (Fig. 3).
        penalty: P, "P2" (eq. 10), "P1", "P3" or "PHR" (Appendix D).
        mu_init, rho_init: μ⁽⁰⁾, ρ⁽⁰⁾.  mu_min, mu_max: the safeguarding interval of μ.
        rho_max: a cap on ρ, beyond the paper: ρ grows by γ every M steps where a sample stays
            unsolved, and P2's ρ² overflows float32 from ρ ≈ 1.8e19 (≈ 2400 steps at the
            defaults), which made μ NaN and froze the sample. 1e15 is ALMA prox's cap; no run
            of the paper's budgets (ρ ≤ 1.2¹⁰⁰ ≈ 8.3e7 at 1000 steps) reaches it.
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
            1: Algorithm 2 as published. α (when None) follows the budget of the longest run.
            None (default): **the distance's class restarts** (not in the paper): for ℓ1 and
            ℓ2 (``DISTANCES[name].class_restarts`` = 2), an untargeted attack of at least
            :data:`CLASS_RESTARTS_MIN_STEPS` (100) steps runs twice, run 1 aimed at another
            class (``restart_mode`` None → "classes"), run 0 taking
            :data:`CLASS_RESTARTS_FIRST_RUN_SHARE` (0.7) of the steps (``first_run_share``
            None → 0.7); every other attack (other distances, targeted, fewer steps, models with
            fewer than :data:`CLASS_RESTARTS_MIN_CLASSES` (4) classes) one run.
            ``restarts=1`` (with ``smooth_max=0``) is Algorithm 2 exactly.
        restart_distance: D(x̃⁽⁰⁾, x) of a random restart's start x̃⁽⁰⁾ = P_[0,1](x − η n),
            n ~ U(−1, 1)ⁿ, η found by the §3.2.3 search. None: ε (``init_lr_distance``).
        restart_mode: one of :data:`RESTART_MODES`. "random": run k ≥ 1 starts at a random
            point at ``restart_distance`` from x. "classes" (untargeted attacks only): run
            k ≥ 1 starts at x and minimises D under tDLR⁺ (eq. 18) towards the most likely
            class at x that neither y nor the adversarial of an earlier run took, as
            AutoAttack's APGD-T aims at the top classes; success is still any
            misclassification. Needs K ≥ R classes, and K ≥ 3 (with K = 2 a run aimed at the other
            class would solve run 0's problem again). None (default): "classes" when
            ``restarts`` is None (the distance's class restarts), "random" when it is given.
        first_run_share: p, the share of the steps that run 0 takes when ``restarts`` > 1
            (not in the paper): round(p·N) steps, at least 1 and leaving each other run one;
            runs 1 … R − 1 split the rest evenly. None (default): 0.7 when ``restarts`` is
            None (the distance's class restarts), an even split (N // R each) when it is
            given. With ``restarts=2, restart_mode="classes"``, p = 0.7 lowered ALMA-ℓ1's and
            ℓ2's distances at 100 steps against the single run on all three embedded models,
            where the even split lost on the regular one (docs/performance.md, "A longer
            first run").
        smooth_max: κ of a smoothed max in DLR⁺'s gradient (not in the paper), as
            :attr:`ProxParams.smooth_max`: κ > 0: the gradient of (z_y − LSE(z_{i≠y}))/s, the
            max over the other classes smoothed at temperature κ·s, s = z_π1 − z_π3 held
            (:func:`~alma_plugin.core.constraints.smoothed_dlr_plus`); DLR⁺'s value, hence
            success, μ and ρ, is unchanged. 0: the gradient of DLR⁺ (eq. 4), **Algorithm 2 as
            published**. None (default): the distance's κ (``DISTANCES[name].smooth_max``:
            0.1 for ℓ1, ℓ2, CIEDE2000, MS-SSIM and LPIPS, where it was measured to lower the
            minimal distances; 0 for SSIM, where it did not on every model). Untargeted
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
    rho_max: float = 1e15
    gamma: float = 1.2
    tau: float = 0.95
    check_steps: int = 10
    rmsprop_decay: float | None = None
    momentum: float | None = None
    levels: int | None = None
    schedule: str = "paper"
    restarts: int | None = None
    restart_distance: float | None = None
    restart_mode: str | None = None
    first_run_share: float | None = None
    smooth_max: float | None = None

    def __post_init__(self) -> None:
        penalty = check_choice("penalty", self.penalty, sorted(PENALTIES), upper=True)
        object.__setattr__(self, "penalty", penalty)
        check_fields(
            self,
            {
                "alpha": (0.0, 1.0, False, True),
                "init_lr_distance": POSITIVE,
                "init_lr": POSITIVE,
                "lr_reduction": (0.0, 1.0, True, False),
                "mu_min": POSITIVE,
                "mu_max": (self.mu_min, math.inf, False, True),
                "mu_init": (self.mu_min, self.mu_max, False, False),
                "rho_max": POSITIVE,
                "rho_init": (0.0, self.rho_max, True, False),
                "gamma": (1.0, math.inf, False, True),
                "tau": (0.0, 1.0, False, False),
                "rmsprop_decay": (0.0, 1.0, False, True),
                "momentum": (0.0, 1.0, False, True),
                "restart_distance": POSITIVE,
                "first_run_share": (0.0, 1.0, True, True),
                "smooth_max": NON_NEGATIVE,  # 0: DLR⁺'s own gradient
            },
        )
        object.__setattr__(self, "check_steps", check_positive_int("check_steps", self.check_steps))
        if self.restarts is not None:
            object.__setattr__(self, "restarts", check_positive_int("restarts", self.restarts))
        if self.levels is not None:
            object.__setattr__(self, "levels", check_positive_int("levels", self.levels, 2))
        object.__setattr__(self, "schedule", check_choice("schedule", self.schedule, SCHEDULES))
        if self.restart_mode is not None:
            object.__setattr__(self, "restart_mode", check_restart_mode_name(self.restart_mode))

    @classmethod
    def published(cls) -> ALMAParams:
        """Algorithm 2 exactly as published (§3, §4 and Appendix E of the paper): the defaults
        but for the package's two departures, one run (``restarts=1``) and DLR⁺'s own gradient
        (``smooth_max=0``). ``alma(..., params=ALMAParams.published())``; keywords still
        replace its fields."""
        return cls(restarts=1, smooth_max=0.0)

    def for_budget(
        self,
        steps: int,
        init_lr_distance: float,
        smooth_max: float,
        class_restarts: int = 1,
        targeted: bool = False,
        classes: int | None = None,
    ) -> ALMAParams:
        """These params with every None resolved for ``steps``, an untargeted or ``targeted``
        attack, a model with ``classes`` = K classes (None: not known yet, taken as enough for
        the class restarts) and a distance (``DISTANCES[name]``) whose Table 3 ε is
        ``init_lr_distance``, whose κ is ``smooth_max`` and whose default number of
        class-aimed runs is ``class_restarts``: the runs (:attr:`restarts` None: the
        distance's class restarts, see there), α by :func:`budget_alpha` for the steps of one
        run (the longest), RMSProp decay and momentum = α, the restarts' distance = ε."""
        steps = check_positive_int("steps", steps)
        restarts, mode, share = self.restarts, self.restart_mode, self.first_run_share
        if restarts is None:  # the distance's class restarts (not in the paper)
            enough = classes is None or classes >= CLASS_RESTARTS_MIN_CLASSES
            planned = class_restarts > 1 and not targeted and steps >= CLASS_RESTARTS_MIN_STEPS
            planned = planned and enough
            restarts = class_restarts if planned else 1
            if planned:
                mode = "classes" if mode is None else mode
                share = CLASS_RESTARTS_FIRST_RUN_SHARE if share is None else share
        mode = "random" if mode is None else mode
        run = max(split_budget(steps, restarts, share))
        alpha = budget_alpha(run) if self.alpha is None else self.alpha
        epsilon = init_lr_distance if self.init_lr_distance is None else self.init_lr_distance
        return replace(
            self,
            alpha=alpha,
            init_lr_distance=epsilon,
            restarts=restarts,
            restart_mode=mode,
            first_run_share=share,
            restart_distance=epsilon if self.restart_distance is None else self.restart_distance,
            smooth_max=smooth_max if self.smooth_max is None else self.smooth_max,
            rmsprop_decay=alpha if self.rmsprop_decay is None else self.rmsprop_decay,
            momentum=alpha if self.momentum is None else self.momentum,
        )
