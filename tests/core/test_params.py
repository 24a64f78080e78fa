"""The hyperparameter objects refuse a bad value at construction, naming the field, on every
entry point that takes them as keywords."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
import torch
from torch import nn

from alma_plugin import ALMAParams, LagrangianParams, ProxParams, alma, alma_prox, lagrangian
from alma_plugin.foolbox import L2ALMA, LinfALMAProx
from alma_plugin.torchattacks import ALMA, Lagrangian

NET = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
X, Y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])


def _required(cls: type) -> list[str]:
    """The fields whose type does not admit None."""
    return [f.name for f in fields(cls) if "None" not in str(f.type)]


def _optional(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if "None" in str(f.type)]


# Each entry point with the params class whose fields it takes as keywords.
ENTRY_POINTS: dict[str, tuple[type, Any]] = {
    "ALMAParams": (ALMAParams, lambda **k: ALMAParams(**k)),
    "alma": (ALMAParams, lambda **k: alma(NET, X, Y, steps=2, **k)),
    "L2ALMA": (ALMAParams, lambda **k: L2ALMA(steps=2, **k)),
    "torchattacks.ALMA": (ALMAParams, lambda **k: ALMA(NET, steps=2, **k)),
    "ProxParams": (ProxParams, lambda **k: ProxParams(**k)),
    "alma_prox": (ProxParams, lambda **k: alma_prox(NET, X, Y, steps=2, **k)),
    "LinfALMAProx": (ProxParams, lambda **k: LinfALMAProx(steps=2, **k)),
    "LagrangianParams": (LagrangianParams, lambda **k: LagrangianParams(**k)),
}
CASES = [(entry, name) for entry, (cls, _) in ENTRY_POINTS.items() for name in _required(cls)]


@pytest.mark.parametrize("entry, name", CASES)
def test_none_is_refused_where_the_field_does_not_admit_it(entry: str, name: str) -> None:
    """Before: None passed every check (it meant "resolved later" for every field) and the run
    failed inside the solver with an error naming no field ("where() received an invalid
    combination of arguments" for gamma=None)."""
    _, build = ENTRY_POINTS[entry]
    with pytest.raises((TypeError, ValueError), match=rf"^{name} must be .*got None"):
        build(**{name: None})


@pytest.mark.parametrize("cls", [ALMAParams, ProxParams])
def test_none_is_accepted_where_the_field_admits_it(cls: type) -> None:
    assert _optional(cls)  # a table that cannot be empty
    for name in _optional(cls):
        assert getattr(cls(**{name: None}), name) is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: alma(NET, X, Y, distance="linf", levels=1),  # not an ALMA prox field at all
        lambda: alma(NET, X, Y, distance="Linf", restarts=0),
        lambda: alma(NET, X, Y, distance="linf", params=ALMAParams(), gamma=0.5),
        lambda: ALMA(NET, "linf", restarts=0),
        lambda: ALMA(NET, distance="l_inf", gamma=0.5),  # ALMA's range, not ALMA prox's
    ],
)
def test_alma_keywords_with_linf_are_refused_before_alma_checks_them(call: Any) -> None:
    """Before: the keywords were checked against ALMA's rules first, so an out-of-range one gave
    ALMA's ValueError (``levels must be >= 2``) instead of the documented TypeError."""
    with pytest.raises(TypeError, match="do not apply to distance='linf'"):
        call()


@pytest.mark.parametrize("labels", [torch.zeros(2, 2, 2, dtype=torch.long), [[0, 1]] * 2])
def test_alma_refuses_label_maps_with_linf_and_names_alma_prox(labels: Any) -> None:
    """alma() is for classification, as torchattacks' ALMA: label maps go to alma_prox, which
    takes the masks and ν (adv_threshold) that segmentation needs (before: alma() ran dense
    ALMA prox with ν = 0.99 and no way to give either)."""
    conv = nn.Conv2d(1, 3, 1)
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\).*call alma_prox\("):
        alma(conv, X, labels, distance="linf", steps=2)


@pytest.mark.parametrize(
    "call, hint",
    [
        (lambda: alma(NET, X, Y, step=3), r"\(did you mean 'steps'\?\)$"),
        (lambda: L2ALMA(inti_lr=0.1), r"\(did you mean 'init_lr'\?\)$"),
        (lambda: ALMA(NET, max_iter=3), r"did you mean 'steps'\? 'max_iter' is other attacks'"),
        (lambda: L2ALMA(lr=0.1), r"did you mean 'init_lr'\?"),
        (lambda: alma(NET, X, Y, eps=0.3), r"no ε budget: early_stop=ε"),
        # before: nonsense suggestions from a loose spelling match
        (lambda: alma(NET, X, Y, kappa=1), r"'kappa'$"),  # was 'alpha'
        (lambda: alma_prox(NET, X, Y, levels=256), r"'levels'$"),  # was 'labels'
        (lambda: LinfALMAProx(eps=0.3), r"no ε budget"),  # was 'steps'
        (lambda: lagrangian(NET, X, Y, eps=0.3), r"Lagrangian attack has no ε budget.*multiplier"),
        (lambda: Lagrangian(NET, epsilon=0.3), r"Lagrangian attack has no ε budget"),
        (lambda: ALMA(NET, norm="L2"), r"did you mean 'distance'\? 'norm' is other attacks'"),
    ],
)
def test_unknown_keywords_get_a_useful_hint_or_none(call: Any, hint: str) -> None:
    with pytest.raises(TypeError, match=rf"unexpected keyword argument .*{hint}"):
        call()


@pytest.mark.parametrize(
    "call, message",
    [
        # before: "e.g. steps=..." for every entry point, where steps was accepted positionally
        (
            lambda: ALMA(NET, "l2", 100, 0.5),
            r"takes 3 positional .* 4 were given.*early_stop=\.\.\.",
        ),
        (lambda: alma(NET, X, Y, "l2", 5), r"alma\(\) takes 3 positional .*e\.g\. distance="),
        (lambda: L2ALMA(100), r"takes 0 positional .* 1 were given.*e\.g\. steps="),
    ],
)
def test_too_many_positional_arguments_name_a_keyword_only_one(call: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


def test_the_lagrangian_attacks_alpha_is_init_lr() -> None:
    from alma_plugin import lagrangian

    hint = r"'alpha'.*did you mean 'init_lr'\? 'alpha' is PGD's name for the step size"
    with pytest.raises(TypeError, match=hint):
        lagrangian(NET, X, Y, alpha=0.1)  # was 'kappa'
