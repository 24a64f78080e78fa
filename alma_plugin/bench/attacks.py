"""The attacks the benchmark compares, and the model wrapper that counts their cost.

Every entry of :data:`ATTACKS` maps ``(model, inputs, labels, budget, seed)`` to adversarial
candidates; the runner re-evaluates them. The budget is the number of iterations the paper's
Table 1 gives each attack: ALMA, DDN, FMN, FAB and DeepFool run ``budget`` steps, C&W-ℓ2 and
EAD split it over 9 binary-search steps, and APGD splits it over a binary search on ε. What an
attack really costs is not assumed from the budget: :class:`CountingModel` counts the forward
and backward propagations (per sample) that reach the model.

The adapters are the product's own (``alma_plugin.foolbox.L1ALMA`` / ``L2ALMA``); ALMA prox
(ℓ∞, Rony et al. CVPR 2023) is ``alma_plugin.foolbox.LinfALMAProx``. Peers come from Foolbox 3
and torchattacks with their default hyperparameters. The reference ALMA of ``adv-lib`` is used
when it can be imported.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ATTACKS", "NORMS", "AttackSpec", "CountingModel", "get_attack"]

#: Norms the benchmark measures, as names of ``--distance``.
NORMS: tuple[str, ...] = ("l1", "l2", "linf")

#: run(model, inputs, labels, budget, seed) -> adversarial candidates (same shape as inputs).
RunFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, int], torch.Tensor]

BINARY_SEARCH_STEPS = 9  # C&W-ℓ2 and EAD, as in the paper's Table 1


class CountingModel(nn.Module):
    """Wraps a model and counts the samples it propagates forward and backward.

    A forward of a batch of n adds n to :attr:`forwards`; each backward pass through that output
    (a hook on the output fires once per pass) adds n to :attr:`backwards`. Per-sample costs are
    these totals divided by the number of attacked samples.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # mirror the mode, without touching the submodules
        self.forwards = 0
        self.backwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's output, counted."""
        out = self.model(x)
        n = int(out.shape[0]) if out.ndim else 1
        self.forwards += n
        if out.requires_grad:

            def count(grad: torch.Tensor, n: int = n) -> None:
                self.backwards += n

            out.register_hook(count)
        return out


@dataclass(frozen=True)
class AttackSpec:
    """One benchmarked attack for one norm.

    key: the name used on the command line (``"alma-l2"``); label: its name in tables.
    norm: ``"l1"``, ``"l2"`` or ``"linf"``. library: where it comes from.
    run: see :data:`RunFn`. budget_note: how the budget is spent (shown in the table).
    requires: a module that must be importable, else the attack is skipped with a note.
    default_budgets: the budgets of the no-argument run.
    """

    key: str
    label: str
    norm: str
    library: str
    run: RunFn
    budget_note: Callable[[int], str] = lambda budget: f"{budget} steps"
    requires: str | None = None
    default_budgets: tuple[int, ...] = (100,)

    def unavailable(self) -> str | None:
        """None when the attack can run, else why not."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"{self.key}: skipped, the {self.requires!r} package cannot be imported"
        return None


# --- ALMA (this package) --------------------------------------------------------------------


def _alma(name: str) -> RunFn:
    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
    ) -> torch.Tensor:
        import foolbox as fb

        alma_fb = importlib.import_module("alma_plugin.foolbox")
        attack = getattr(alma_fb, name)(steps=budget, seed=seed)
        # ``run`` is the attack itself; ``__call__`` would add one forward to judge epsilons.
        return attack.run(fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, y)

    return run


def _alma_prox(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
) -> torch.Tensor:
    import foolbox as fb

    from ..foolbox import LinfALMAProx

    # The product's defaults for classification (λ⁽⁰⁾ = 0.1 → λ⁽ᴺ⁾ = 0.01); ``run`` as above.
    return LinfALMAProx(steps=budget).run(
        fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, y
    )


def _adv_lib_alma(norm: str) -> RunFn:
    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
    ) -> torch.Tensor:
        from adv_lib.attacks import alma as reference_alma

        from ..core.defaults import default_alpha
        from ..distances import get_distance

        options = {
            "distance": norm,
            "num_steps": budget,
            "α": default_alpha(budget),
            "init_lr_distance": get_distance(norm).init_lr_distance,
        }
        return reference_alma(model, x, y, **options)

    return run


# --- Foolbox peers --------------------------------------------------------------------------


def _foolbox(make: Callable[[int], object]) -> RunFn:
    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
    ) -> torch.Tensor:
        import foolbox as fb

        attack = make(budget)
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
        return attack.run(fmodel, x, y)  # type: ignore[attr-defined]

    return run


def _binary_split(budget: int) -> int:
    return max(1, budget // BINARY_SEARCH_STEPS)


def _binary_note(budget: int) -> str:
    per_step = _binary_split(budget)
    return f"{BINARY_SEARCH_STEPS} x {per_step} steps (binary search on c)"


def _fb(name: str, **kwargs: object) -> Callable[[int], object]:
    def make(budget: int) -> object:
        import foolbox as fb

        return getattr(fb.attacks, name)(steps=budget, **kwargs)

    return make


def _fb_binary(name: str) -> Callable[[int], object]:
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


def _fab(norm: str) -> RunFn:
    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
    ) -> torch.Tensor:
        import torchattacks

        classes = _num_classes(model.model if isinstance(model, CountingModel) else model, x)
        # torchattacks' FAB discards adversarials farther than ``eps``: unbounded for minimal.
        attack = torchattacks.FAB(model, norm=_TA_NORMS[norm], eps=float("inf"), steps=budget,
                                  n_restarts=1, seed=seed, n_classes=classes)  # fmt: skip
        return attack(x, y)

    return run


def _deepfool(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int
) -> torch.Tensor:
    import torchattacks

    return torchattacks.DeepFool(model, steps=budget, overshoot=0.02)(x, y)


#: APGD's binary search on ε: (search steps, first ε, largest ε) per norm.
APGD_SEARCH = {"l2": (2.0, 28.0), "linf": (0.3, 1.0)}


def _apgd_searches(budget: int) -> int:
    return 5 if budget < 1000 else 10


def _apgd_note(budget: int) -> str:
    searches = _apgd_searches(budget)
    return f"{searches} x {max(1, budget // searches)} steps (binary search on eps)"


def _apgd(norm: str) -> RunFn:
    """APGD-CE (torchattacks) inside a per-sample binary search on ε: the budget is split over
    the searches; each sample keeps its smallest adversarial found."""

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
                steps=max(1, budget // searches),
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


def _entries() -> list[AttackSpec]:
    both = (100, 1000)
    return [
        AttackSpec("alma-l1", "ALMA", "l1", "alma_plugin", _alma("L1ALMA"), default_budgets=both),
        AttackSpec("alma-l2", "ALMA", "l2", "alma_plugin", _alma("L2ALMA"), default_budgets=both),
        AttackSpec("alma_prox-linf", "ALMA prox", "linf", "alma_plugin", _alma_prox),
        AttackSpec(
            "adv_lib_alma-l1",
            "ALMA (adv-lib)",
            "l1",
            "adv-lib",
            _adv_lib_alma("l1"),
            requires="adv_lib",
            default_budgets=both,
        ),  # fmt: skip
        AttackSpec(
            "adv_lib_alma-l2",
            "ALMA (adv-lib)",
            "l2",
            "adv-lib",
            _adv_lib_alma("l2"),
            requires="adv_lib",
            default_budgets=both,
        ),  # fmt: skip
        AttackSpec("ddn-l2", "DDN", "l2", "foolbox", _foolbox(_fb("DDNAttack"))),
        AttackSpec("fmn-l1", "FMN", "l1", "foolbox", _foolbox(_fb("L1FMNAttack"))),
        AttackSpec("fmn-l2", "FMN", "l2", "foolbox", _foolbox(_fb("L2FMNAttack"))),
        AttackSpec("fmn-linf", "FMN", "linf", "foolbox", _foolbox(_fb("LInfFMNAttack"))),
        AttackSpec(
            "ead-l1", "EAD", "l1", "foolbox", _foolbox(_fb_binary("EADAttack")), _binary_note
        ),  # fmt: skip
        AttackSpec(
            "cw-l2",
            "C&W-l2",
            "l2",
            "foolbox",
            _foolbox(_fb_binary("L2CarliniWagnerAttack")),
            _binary_note,
        ),  # fmt: skip
        # torchattacks' FAB has no working ℓ1 (its perturb() leaves the norm undefined). FAB
        # (one backward per class and step) and DeepFool (a Python loop over images) are too
        # slow for the default run on 2 CPU cores: select them explicitly.
        AttackSpec("fab-l2", "FAB", "l2", "torchattacks", _fab("l2"), default_budgets=()),
        AttackSpec("fab-linf", "FAB", "linf", "torchattacks", _fab("linf"), default_budgets=()),
        AttackSpec(
            "deepfool-l2",
            "DeepFool",
            "l2",
            "torchattacks",
            _deepfool,
            lambda budget: f"at most {budget} steps, overshoot 0.02",
            default_budgets=(),
        ),  # fmt: skip
        AttackSpec("apgd-l2", "APGD", "l2", "torchattacks", _apgd("l2"), _apgd_note),
        AttackSpec("apgd-linf", "APGD", "linf", "torchattacks", _apgd("linf"), _apgd_note),
    ]


#: All benchmarked attacks by key ("<attack>-<norm>").
ATTACKS: dict[str, AttackSpec] = {spec.key: spec for spec in _entries()}


def get_attack(key: str) -> AttackSpec:
    """The registry entry ``key``, with an error listing the known keys."""
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {key!r}; known attacks: {', '.join(ATTACKS)}")
    return ATTACKS[key]
