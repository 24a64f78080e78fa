"""Restarts inside the budget, shared by ALMA and ALMA prox.

``restarts = R`` splits the N steps into R consecutive runs of the same algorithm (N // R steps
each, the first N mod R runs one more; or, with ``first_run_share`` = p, about p·N steps for run
0 and the rest split that way among the others), so the attack still costs exactly N forward and
N backward model propagations per sample. Run 0 starts from x, as Algorithm 2 and Algorithm IV-2
do. Run k ≥ 1, by ``restart_mode``: "random" starts from a random point at a small distance from
x (drawn by the solver from :func:`restart_rng`); "classes" starts from x and aims at the most
likely class at x that no earlier run aimed at or returned (:func:`.constraints.restart_goal`:
from the logits of the run's own first step, at x, and the earlier runs' ``predictions``; no
extra model call). Each sample keeps the smallest
adversarial of all runs.

Why: the samples whose result is far from the best known are those whose run settled in a
worse local optimum, and ALMA prox's medians stop moving after ~200 steps; a run from elsewhere
lands elsewhere. Measured (docs/performance.md, "Restarts inside the budget"): at 1000 steps, two
runs of 500 beat one of 1000 for ALMA ℓ1 and ℓ2, and four runs of 250 bring ALMA prox to
APGD's level; at 100 steps the gain is small. Most of the samples that 1000 steps improve over
100 end in another class than at 100 steps: "classes" sends the later runs to the classes the
earlier ones did not reach. R = 1 is the published algorithm, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import eagerpy as ep
import numpy as np

from .result import AttackResult
from .tensors import expand

__all__ = [
    "Place",
    "best_of_runs",
    "check_restart_mode",
    "restart_rng",
    "run_restarts",
    "split_budget",
    "uniform_noise",
]


@dataclass(frozen=True)
class Place:
    """Where one run sits in a restarted attack: run ``index`` (k; 0 starts from x), its
    ``steps``, the steps run before it (``offset``), the samples earlier runs brought below
    ``early_stop`` (``solved``; None without early stop and for run 0), the classes of the
    adversarials earlier runs returned (``reached``: one (N,) tensor per run, −1 where it found
    none; empty for run 0 and where the solver gives no ``predictions``) and the attack's whole
    budget (``budget``: the steps of all runs; run 0 may take them all, see
    :func:`run_restarts`)."""

    index: int
    steps: int
    offset: int
    solved: ep.Tensor | None
    reached: tuple[ep.Tensor, ...] = ()
    budget: int = 0


#: One run of a solver at its place → its result.
Run = Callable[[Place], AttackResult[ep.Tensor]]


def check_restarts(steps: int, restarts: int | None) -> None:
    """Every run needs a step: a ValueError naming both where ``restarts`` > ``steps`` (None,
    ALMA's default, resolves to runs that fit). The classes check it at construction, the
    functions at the call."""
    if restarts is not None and restarts > steps:
        raise ValueError(
            f"restarts must be at most steps (every run needs a step): got restarts={restarts} "
            f"with steps={steps}"
        )


def split_budget(steps: int, restarts: int, first_run_share: float | None = None) -> list[int]:
    """The steps of each of ``restarts`` runs: N // R, the first N mod R runs one more. With
    ``first_run_share`` = p (R > 1), run 0 takes round(p·N) steps, at least 1 and at most
    N − (R − 1) so that every run has one, and runs 1 … R − 1 share the rest that way."""
    check_restarts(steps, restarts)
    if first_run_share is None or restarts == 1:
        base, extra = divmod(steps, restarts)
        return [base + 1 if k < extra else base for k in range(restarts)]
    first = min(max(round(first_run_share * steps), 1), steps - (restarts - 1))
    return [first, *split_budget(steps - first, restarts - 1)]


def check_restart_mode(mode: str, restarts: int, targeted: bool, dense: bool = False) -> None:
    """Refuse ``restart_mode="classes"`` where it has no meaning, before any model call: it
    aims restarts at classes other than the label, so it needs an untargeted attack with one
    label per sample."""
    if mode != "classes" or restarts == 1:
        return
    if targeted:
        raise ValueError(
            "restart_mode='classes' aims the restarts at classes other than the true label, so "
            "it is for untargeted attacks: got targeted=True (use restart_mode='random')"
        )
    if dense:
        raise ValueError(
            "restart_mode='classes' needs one label per sample (classification): got per-pixel "
            "labels or masks (use restart_mode='random')"
        )


def restart_rng(seed: int, restart: int) -> np.random.Generator:
    """The generator of run ``restart``: run 0 keeps ``default_rng(seed)`` (so R = 1 draws what
    a run without restarts draws), run k ≥ 1 its own stream ``default_rng((seed, k))``."""
    return np.random.default_rng(seed if restart == 0 else (seed, restart))


def uniform_noise(like: ep.Tensor, rng: np.random.Generator) -> ep.Tensor:
    """U(−1, 1) noise of ``like``'s shape and dtype, from a seeded NumPy generator (the same
    numbers in every framework)."""
    return ep.from_numpy(like, rng.uniform(-1.0, 1.0, like.shape)).astype(like.dtype)


def best_of_runs(
    best: AttackResult[ep.Tensor], new: AttackResult[ep.Tensor], offset: int
) -> AttackResult[ep.Tensor]:
    """Per sample, the result of ``new`` (a run that began after ``offset`` steps) where its
    distance is smaller, else ``best``'s. ``first_success_step`` counts steps from the start of
    the first run; ``steps_run`` adds up."""
    take = new.distances < best.distances  # +inf where a run found nothing
    first = ep.where(new.first_success_step >= 0, new.first_success_step + offset, -1)
    apsr = predictions = None
    if best.apsr is not None and new.apsr is not None:
        apsr = ep.where(take, new.apsr, best.apsr)
    if best.predictions is not None and new.predictions is not None:
        predictions = ep.where(take, new.predictions, best.predictions)
    adversarials = ep.where(expand(take, new.adversarials), new.adversarials, best.adversarials)
    return AttackResult(
        adversarials=adversarials,
        distances=ep.where(take, new.distances, best.distances),
        success=ep.logical_or(best.success, new.success),
        first_success_step=ep.where(best.first_success_step >= 0, best.first_success_step, first),
        steps_run=best.steps_run + new.steps_run,
        apsr=apsr,
        predictions=predictions,
    )


def run_restarts(
    run: Run,
    steps: int,
    restarts: int,
    early_stop: float | None,
    first_run_share: float | None = None,
) -> AttackResult[ep.Tensor]:
    """Run ``run`` for each share of :func:`split_budget` and keep each sample's best.

    With ``early_stop``, each run stops once every sample has an adversarial below it, counting
    those found by earlier runs (which it is told as ``solved``); the remaining runs are then
    skipped. Between two runs the host reads one boolean (no more than R − 1 per attack).
    A run 0 that took the whole budget (the default class restarts on a model with too few
    classes, decided at its first forward) ends the attack.
    """
    result: AttackResult[ep.Tensor] | None = None
    offset = 0
    reached: tuple[ep.Tensor, ...] = ()
    for k, budget in enumerate(split_budget(steps, restarts, first_run_share)):
        if offset >= steps:
            break
        solved = None
        if result is not None and early_stop is not None:
            solved = result.distances < early_stop
            if bool(solved.all().item()):
                break
        new = run(Place(k, budget, offset, solved, reached, steps))
        result = new if result is None else best_of_runs(result, new, offset)
        offset += new.steps_run
        if new.predictions is not None:
            reached += (new.predictions,)
    assert result is not None
    return result
