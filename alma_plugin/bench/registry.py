"""The benchmark's attack registry: every compared attack, by ``"<attack>-<norm>"`` key.

Every entry maps ``(model, inputs, labels, budget, seed)`` to adversarial candidates; the runner
re-evaluates them and counts their cost with :class:`~.counting.CountingModel` (what an attack
costs is measured, not assumed from its budget). ALMA and ALMA prox run through the product's
own Foolbox adapters (``L1ALMA``, ``L2ALMA``, ``LinfALMAProx``); the peers are in
:mod:`.peers`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.params import ALMAParams
from . import peers
from .peers import RunFn

__all__ = ["ATTACKS", "NORMS", "AttackSpec", "get_attack"]

#: Norms the benchmark measures, as names of ``--distance``.
NORMS: tuple[str, ...] = ("l1", "l2", "linf")


@dataclass(frozen=True)
class AttackSpec:
    """One benchmarked attack for one norm.

    key: the name used on the command line (``"alma-l2"``); label: its name in tables.
    norm: ``"l1"``, ``"l2"`` or ``"linf"``. library: where it comes from.
    run: see :data:`RunFn`. budget_note: how the budget is spent (shown in the table).
    requires: a module that must be importable, else the attack is skipped with a note.
    default_budgets: the budgets of the no-argument run.
    cuda_graphs: the attack takes ``cuda_graphs=True`` as a keyword of ``run`` (ALMA and ALMA
    prox: ``--cuda-graphs``); the others never receive it.
    min_budget: the smallest budget the attack's split honours (C&W and EAD: one step for each
    of 9 binary-search steps; APGD: 5 searches of one iteration, 2 gradients each); below it
    the attack would spend more than the budget, so such budgets are refused
    (:meth:`check_budget`).
    """

    key: str
    label: str
    norm: str
    library: str
    run: RunFn
    budget_note: Callable[[int], str] = lambda budget: f"{budget} steps"
    requires: str | None = None
    default_budgets: tuple[int, ...] = (100,)
    cuda_graphs: bool = False
    min_budget: int = 1

    def check_budget(self, budget: int) -> str | None:
        """None when the attack can spend ``budget`` as its table says, else why not."""
        if budget >= self.min_budget:
            return None
        return (f"{self.key} spends a budget as {self.budget_note(self.min_budget)}, so it "
                f"needs at least {self.min_budget}, got {budget}")  # fmt: skip

    def unavailable(self) -> str | None:
        """None when the attack can run, else why not."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return (f"{self.key}: skipped, the {self.requires!r} package is not installed "
                    "(it cannot be imported)")  # fmt: skip
        return None


# --- ALMA (this package) --------------------------------------------------------------------


def _alma(name: str, **options: Any) -> RunFn:
    def run(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        budget: int,
        seed: int,
        cuda_graphs: bool = False,
    ) -> torch.Tensor:
        import foolbox as fb

        alma_fb = importlib.import_module("alma_plugin.foolbox")
        attack = getattr(alma_fb, name)(steps=budget, seed=seed, cuda_graphs=cuda_graphs,
                                        **options)  # fmt: skip
        # ``run`` is the attack itself; ``__call__`` would add one forward to judge epsilons.
        return attack.run(fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, y)

    return run


def _alma_prox(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    budget: int,
    seed: int,
    cuda_graphs: bool = False,
) -> torch.Tensor:
    import foolbox as fb

    from ..foolbox import LinfALMAProx

    # The product's defaults for classification (λ⁽⁰⁾ = PROX_INIT_LR, decaying to 0.1 λ⁽⁰⁾);
    # ``run`` as above.
    return LinfALMAProx(steps=budget, seed=seed, cuda_graphs=cuda_graphs).run(
        fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, y
    )


def _entries() -> list[AttackSpec]:
    both = (100, 1000)
    return [
        AttackSpec(
            "alma-l1",
            "ALMA",
            "l1",
            "alma_plugin",
            _alma("L1ALMA"),
            default_budgets=both,
            cuda_graphs=True,
        ),
        AttackSpec(
            "alma-l2",
            "ALMA",
            "l2",
            "alma_plugin",
            _alma("L2ALMA"),
            default_budgets=both,
            cuda_graphs=True,
        ),
        # Algorithm 2 exactly as published (ALMAParams.published(): one run and DLR⁺'s own
        # gradient, not the distance's default class restarts and smoothed max).
        *(
            AttackSpec(
                f"alma_alg2-{norm}",
                "ALMA (Algorithm 2)",
                norm,
                "alma_plugin",
                _alma(name, params=ALMAParams.published()),
                cuda_graphs=True,
            )
            for norm, name in (("l1", "L1ALMA"), ("l2", "L2ALMA"))
        ),  # fmt: skip
        AttackSpec(
            "alma_prox-linf", "ALMA prox", "linf", "alma_plugin", _alma_prox, cuda_graphs=True
        ),
        *(
            AttackSpec(
                f"adv_lib_alma-{norm}",
                "ALMA (adv-lib)",
                norm,
                "adv-lib",
                peers.adv_lib_alma(norm),
                requires="adv_lib",
                default_budgets=both,
            )
            for norm in ("l1", "l2")
        ),  # fmt: skip
        AttackSpec(
            "ddn-l2", "DDN", "l2", "foolbox", peers.foolbox_attack(peers.foolbox_named("DDNAttack"))
        ),
        AttackSpec(
            "fmn-l1",
            "FMN",
            "l1",
            "foolbox",
            peers.foolbox_attack(peers.foolbox_named("L1FMNAttack")),
        ),
        # Foolbox 3.3.4's L2FMNAttack never projects onto the ε-ball (peers.foolbox_fmn_l2):
        # "fmn-l2" repairs the projection, "fmn_stock-l2" runs Foolbox's class as installed.
        AttackSpec("fmn-l2", "FMN", "l2", "foolbox", peers.foolbox_attack(peers.foolbox_fmn_l2())),
        AttackSpec(
            "fmn_stock-l2",
            "FMN (Foolbox as installed)",
            "l2",
            "foolbox",
            peers.foolbox_attack(peers.foolbox_named("L2FMNAttack")),
            default_budgets=(),
        ),
        AttackSpec(
            "fmn-linf",
            "FMN",
            "linf",
            "foolbox",
            peers.foolbox_attack(peers.foolbox_named("LInfFMNAttack")),
        ),
        AttackSpec(
            "ead-l1",
            "EAD",
            "l1",
            "foolbox",
            peers.foolbox_attack(peers.foolbox_binary("EADAttack")),
            peers.binary_note,
            min_budget=peers.BINARY_SEARCH_STEPS,
        ),  # fmt: skip
        AttackSpec(
            "cw-l2",
            "C&W-l2",
            "l2",
            "foolbox",
            peers.foolbox_attack(peers.foolbox_binary("L2CarliniWagnerAttack")),
            peers.binary_note,
            min_budget=peers.BINARY_SEARCH_STEPS,
        ),  # fmt: skip
        # torchattacks' FAB has no working ℓ1 (its perturb() leaves the norm undefined). FAB
        # (one backward per class and step) and DeepFool (a Python loop over images) are too
        # slow for the default run on 2 CPU cores: select them explicitly.
        AttackSpec("fab-l2", "FAB", "l2", "torchattacks", peers.fab("l2"), default_budgets=()),
        AttackSpec(
            "fab-linf", "FAB", "linf", "torchattacks", peers.fab("linf"), default_budgets=()
        ),
        AttackSpec(
            "deepfool-l2",
            "DeepFool",
            "l2",
            "torchattacks",
            peers.deepfool,
            lambda budget: f"at most {budget} steps, overshoot 0.02",
            default_budgets=(),
        ),  # fmt: skip
        AttackSpec(
            "apgd-l2",
            "APGD",
            "l2",
            "torchattacks",
            peers.apgd("l2"),
            peers.apgd_note,
            min_budget=peers.APGD_MIN_BUDGET,
        ),  # fmt: skip
        AttackSpec(
            "apgd-linf",
            "APGD",
            "linf",
            "torchattacks",
            peers.apgd("linf"),
            peers.apgd_note,
            min_budget=peers.APGD_MIN_BUDGET,
        ),  # fmt: skip
    ]


#: All benchmarked attacks by key ("<attack>-<norm>").
ATTACKS: dict[str, AttackSpec] = {spec.key: spec for spec in _entries()}


def get_attack(key: str) -> AttackSpec:
    """The registry entry ``key``, with an error listing the known keys."""
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {key!r}; known attacks: {', '.join(ATTACKS)}")
    return ATTACKS[key]
