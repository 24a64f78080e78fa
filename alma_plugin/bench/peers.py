"""The peer attacks the benchmark compares ALMA with, as :data:`~.registry.RunFn` functions.

Foolbox 3 and torchattacks attacks with their default hyperparameters, the reference ALMA of
``adv-lib`` (when it can be imported), and APGD inside a per-sample binary search on ε (APGD
has a fixed ε; a minimal-norm comparison needs the smallest ε it succeeds at).

The budget is the benchmark's own equal-budget protocol, **not** the paper's Table 1: every
attack gets ``budget`` iterations in all; C&W-ℓ2 and EAD split it over 9 binary-search steps on
c (100 → 9 × 11), APGD over its search on ε. The paper's Table 1 gives EAD 9 × 100 and
9 × 1000 iterations, C&W-ℓ2 9 × 1000 and 9 × 10 000 (the count per search step) and APGD a
search to a precision of 0.01, next to ALMA at 100 and 1000. With Foolbox's defaults (made for
10 000 steps), C&W-ℓ2 at 9 × 11 finds no adversarial of its own: what its row counts is
Foolbox's all-zero fallback image where the model misclassifies it. ``--budgets 900`` gives
EAD the paper's 9 × 100.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: run(model, inputs, labels, budget, seed) -> adversarial candidates (same shape as inputs).
RunFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, int], torch.Tensor]

BINARY_SEARCH_STEPS = 9  # C&W-ℓ2 and EAD, as in the paper's Table 1


def adv_lib_alma(norm: str) -> RunFn:
    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
    ) -> torch.Tensor:
        from adv_lib.attacks import alma as reference_alma

        from ..core.params import budget_alpha
        from ..distances import get_distance

        options = {
            "distance": norm,
            "num_steps": budget,
            "α": budget_alpha(budget),
            "init_lr_distance": get_distance(norm).init_lr_distance,
        }
        return reference_alma(model, x, y, **options)

    return run


# --- Foolbox peers --------------------------------------------------------------------------


def foolbox_attack(make: Callable[[int], object]) -> RunFn:
    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
    ) -> torch.Tensor:
        import foolbox as fb

        attack = make(budget)
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
        return attack.run(fmodel, x, y)  # type: ignore[attr-defined]

    return run


def fmn_l2_projection_is_broken() -> bool:
    """Whether the installed Foolbox's ``L2FMNAttack.project`` leaves δ unprojected.

    Foolbox 3.3.4 computes the factor as ``min(1, norms / norms)``, which is 1, instead of
    min(1, ε / ‖x − x₀‖₂): every iterate keeps its norm, so the attack never shrinks δ once it
    is adversarial (FMN's Algorithm 1, line 10, projects onto the ε-ball). Tested on a point
    at distance 5 from x₀ and ε = 1, so a fixed Foolbox is used as it is.
    """
    import eagerpy as ep
    import foolbox as fb

    x0 = ep.astensor(torch.zeros(1, 2))
    x = ep.astensor(torch.tensor([[3.0, 4.0]]))
    projected = fb.attacks.L2FMNAttack().project(x, x0, ep.astensor(torch.ones(1)))
    return bool(projected.raw.norm() > 1.0 + 1e-6)


def foolbox_fmn_l2() -> Callable[[int], object]:
    """Foolbox's ``L2FMNAttack``, its ℓ2-ball projection repaired when the installed version
    has the no-op one (:func:`fmn_l2_projection_is_broken`); defaults otherwise unchanged."""

    def make(budget: int) -> object:
        import eagerpy as ep
        import foolbox as fb
        from foolbox.devutils import atleast_kd, flatten

        if not fmn_l2_projection_is_broken():
            return fb.attacks.L2FMNAttack(steps=budget)

        class RepairedL2FMN(fb.attacks.L2FMNAttack):
            def project(self, x: ep.Tensor, x0: ep.Tensor, epsilon: ep.Tensor) -> ep.Tensor:
                norms = ep.maximum(flatten(x - x0).norms.l2(axis=-1), 1e-12)
                factor = atleast_kd(ep.minimum(1, epsilon / norms), x.ndim)
                return x0 + (x - x0) * factor

        return RepairedL2FMN(steps=budget)

    return make


def _binary_split(budget: int) -> int:
    return max(1, budget // BINARY_SEARCH_STEPS)


def binary_note(budget: int) -> str:
    per_step = _binary_split(budget)
    return f"{BINARY_SEARCH_STEPS} x {per_step} steps (binary search on c)"


def foolbox_named(name: str, **kwargs: object) -> Callable[[int], object]:
    def make(budget: int) -> object:
        import foolbox as fb

        return getattr(fb.attacks, name)(steps=budget, **kwargs)

    return make


def foolbox_binary(name: str) -> Callable[[int], object]:
    def make(budget: int) -> object:
        import foolbox as fb

        cls = getattr(fb.attacks, name)
        return cls(binary_search_steps=BINARY_SEARCH_STEPS, steps=_binary_split(budget))

    return make


# --- torchattacks peers ---------------------------------------------------------------------

_TA_NORMS = {"l1": "L1", "l2": "L2", "linf": "Linf"}


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def fab(norm: str) -> RunFn:
    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
    ) -> torch.Tensor:
        import torchattacks

        classes = _num_classes(model, x)  # a forward of one sample, counted as FAB's
        # torchattacks' FAB discards adversarials farther than ``eps``: unbounded for minimal.
        attack = torchattacks.FAB(model, norm=_TA_NORMS[norm], eps=float("inf"), steps=budget,
                                  n_restarts=1, seed=seed, n_classes=classes)  # fmt: skip
        return attack(x, y)

    return run


def deepfool(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
) -> torch.Tensor:
    import torchattacks

    return torchattacks.DeepFool(model, steps=budget, overshoot=0.02)(x, y)


#: APGD's binary search on ε: (search steps, first ε, largest ε) per norm.
APGD_SEARCH = {"l2": (2.0, 28.0), "linf": (0.3, 1.0)}


def _apgd_searches(budget: int) -> int:
    """Binary-search steps on ε: 10 from 100 steps on, so that the searched ε is as fine as the
    distances ALMA prox reports (5 searches leave a grid 0.019 wide in ℓ∞ on [0, 0.3])."""
    return 5 if budget < 100 else 10


def _apgd_steps(budget: int) -> int:
    """APGD iterations per search: torchattacks' APGD takes one gradient at its starting point
    and one per iteration, so S iterations cost S + 1 gradients; N searches of S iterations
    cost N × (S + 1), which is the budget when it is a multiple of N."""
    return max(1, budget // _apgd_searches(budget) - 1)


#: One iteration (two gradients) for each of the 5 searches below 100 steps.
APGD_MIN_BUDGET = 2 * _apgd_searches(1)


def apgd_note(budget: int) -> str:
    searches, steps = _apgd_searches(budget), _apgd_steps(budget)
    return f"{searches} x ({steps} + 1) gradients (binary search on eps)"


def apgd(norm: str) -> RunFn:
    """APGD-CE (torchattacks) inside a per-sample binary search on ε: the budget (gradients, as
    for every attack here) is split over the searches; each sample keeps its smallest
    adversarial found."""

    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
    ) -> torch.Tensor:
        import torchattacks

        searches = _apgd_searches(budget)
        start, largest = APGD_SEARCH[norm]
        p = {"l2": 2.0, "linf": float("inf")}[norm]
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        best = x.clone()
        best_norm = torch.full((len(x),), float("inf"), device=x.device)
        best_norm[~correct] = 0.0
        index = correct.nonzero().flatten()
        eps = torch.full((len(index),), start, device=x.device)
        low = torch.zeros_like(eps)
        high = torch.full_like(eps, float("inf"))
        for _ in range(searches if len(index) else 0):
            # APGD perturbs only the samples it classifies correctly (judged on this very
            # batch, so rounding can differ from the check above): ε is given for those.
            with torch.no_grad():
                attacked = model(x[index]).argmax(1) == y[index]
            attack = torchattacks.APGD(
                model,
                norm=_TA_NORMS[norm],
                eps=eps[attacked].view(-1, 1, 1, 1),
                steps=_apgd_steps(budget),
                n_restarts=1,
                seed=seed,
            )
            adv = attack(x[index], y[index])
            with torch.no_grad():
                success = model(adv).argmax(1) != y[index]
            norms = (adv - x[index]).flatten(1).norm(p=p, dim=1)
            better = success & (norms < best_norm[index])
            best[index[better]] = adv[better]
            best_norm[index[better]] = norms[better]
            high = torch.where(success, eps, high)
            low = torch.where(success, low, eps)
            eps = torch.where(high.isinf(), (2 * eps).clamp(max=largest), (low + high) / 2)
        return best

    return run
