"""ALMA's default restarts (``ALMAParams.restarts=None``, not in the paper): for the distances
whose ``DISTANCES[name].class_restarts`` is 2 (ℓ1, ℓ2), an untargeted attack of at least
``CLASS_RESTARTS_MIN_STEPS`` steps is two runs, run 1 aimed at another class, run 0 taking
``CLASS_RESTARTS_FIRST_RUN_SHARE`` of the steps; every other attack one run. Checked: the
resolution table, and every entry point's default bit for bit against the explicit setting
it resolves to (and against one run, which it is not)."""

from __future__ import annotations

from typing import Any

import foolbox as fb
import pytest
import torch

from alma_plugin import (
    CLASS_RESTARTS_FIRST_RUN_SHARE,
    CLASS_RESTARTS_MIN_STEPS,
    DISTANCES,
    ALMAParams,
    alma,
    budget_alpha,
)
from alma_plugin.foolbox import L1ALMA, L2ALMA
from alma_plugin.torchattacks import ALMA
from tests.core.test_restarts import _batch, _model  # a 5-class linear model, 8 samples
from tests.utils import CountingModel

pytestmark = pytest.mark.usefixtures("single_thread")

PLAN = {"restarts": 2, "restart_mode": "classes", "first_run_share": 0.7}


def test_the_constants_and_the_distances_that_use_them() -> None:
    assert (CLASS_RESTARTS_MIN_STEPS, CLASS_RESTARTS_FIRST_RUN_SHARE) == (100, 0.7)
    assert {name: spec.class_restarts for name, spec in DISTANCES.items()} == {
        "l1": 2, "l2": 2, "ciede2000": 1, "ssim": 1, "msssim": 1, "lpips": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("given", "steps", "class_restarts", "targeted", "expected"),
    [
        ({}, 100, 2, False, (2, "classes", 0.7, 70)),
        ({}, 1000, 2, False, (2, "classes", 0.7, 700)),
        ({}, 99, 2, False, (1, "random", None, 99)),  # below CLASS_RESTARTS_MIN_STEPS
        ({}, 1000, 2, True, (1, "random", None, 1000)),  # targeted: no class to aim at
        ({}, 1000, 1, False, (1, "random", None, 1000)),  # SSIM, CIEDE2000, ...
        ({"restarts": 1}, 1000, 2, False, (1, "random", None, 1000)),  # Algorithm 2's runs
        ({"restarts": 2}, 1000, 2, False, (2, "random", None, 500)),  # as given: random, even
        ({"restarts": 2, "restart_mode": "classes"}, 1000, 2, False, (2, "classes", None, 500)),
        ({"restarts": 3, "first_run_share": 0.5}, 100, 1, False, (3, "random", 0.5, 50)),
        ({"restart_mode": "random"}, 100, 2, False, (2, "random", 0.7, 70)),  # None: the plan's
        ({"first_run_share": 0.6}, 1000, 2, False, (2, "classes", 0.6, 600)),
        ({"first_run_share": 0.2}, 1000, 2, False, (2, "classes", 0.2, 800)),  # α: longest run
        ({"first_run_share": 0.6}, 50, 2, False, (1, "random", 0.6, 50)),  # one run: no share
    ],
)
def test_resolution(
    given: dict[str, Any],
    steps: int,
    class_restarts: int,
    targeted: bool,
    expected: tuple[int, str, float | None, int],
) -> None:
    """(R, mode, p, the longest run whose budget sets α) for the fields given."""
    resolved = ALMAParams(**given).for_budget(steps, 0.1, 0.1, class_restarts, targeted)
    restarts, mode, share, longest = expected
    assert (resolved.restarts, resolved.restart_mode, resolved.first_run_share) == (
        restarts,
        mode,
        share,
    )
    assert resolved.alpha == pytest.approx(budget_alpha(longest))
    assert ALMAParams(alpha=0.3).for_budget(steps, 0.1, 0.1, class_restarts, targeted).alpha == 0.3


def _same(a: Any, b: Any) -> bool:
    return torch.equal(a.distances, b.distances) and torch.equal(a.adversarials, b.adversarials)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_alma_default_is_the_class_restarts_bit_for_bit(distance: str) -> None:
    """From 100 steps: ``alma()`` is ``restarts=2, restart_mode="classes",
    first_run_share=0.7`` and not one run; at 99 steps and targeted it is one run."""
    model, (x, y) = _model(), _batch()
    default = alma(model, x, y, distance=distance, steps=100)
    assert _same(default, alma(model, x, y, distance=distance, steps=100, **PLAN))
    assert not _same(default, alma(model, x, y, distance=distance, steps=100, restarts=1))
    short = alma(model, x, y, distance=distance, steps=99)
    assert _same(short, alma(model, x, y, distance=distance, steps=99, restarts=1))
    targets = (y + 1) % 5
    aimed = alma(model, x, targets, distance=distance, steps=100, targeted=True)
    assert _same(
        aimed, alma(model, x, targets, distance=distance, steps=100, targeted=True, restarts=1)
    )


@pytest.mark.parametrize("distance", ["ciede2000", "ssim"])
def test_other_distances_default_to_one_run(distance: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 5)).eval()
    x, y = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(2)), torch.arange(4)
    default = alma(model, x, y, distance=distance, steps=100)
    assert _same(default, alma(model, x, y, distance=distance, steps=100, restarts=1))


def test_default_costs_exactly_one_forward_and_one_backward_per_step() -> None:
    counting = CountingModel(_model())
    x, y = _batch()
    alma(counting, x, y, distance="l1", steps=100)
    assert (counting.forwards, counting.backwards) == (100, 100)


@pytest.mark.parametrize("attack", [L1ALMA, L2ALMA])
def test_foolbox_default_follows_the_criterion(attack: type) -> None:
    """``Misclassification``: the class restarts; ``TargetedMisclassification``: one run."""
    model, (x, y) = _model(), _batch()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    default = attack(steps=100).run(fmodel, x, y)
    assert torch.equal(default, attack(steps=100, **PLAN).run(fmodel, x, y))
    assert not torch.equal(default, attack(steps=100, restarts=1).run(fmodel, x, y))
    targets = fb.criteria.TargetedMisclassification((y + 1) % 5)
    aimed = attack(steps=100).run(fmodel, x, targets)
    assert torch.equal(aimed, attack(steps=100, restarts=1).run(fmodel, x, targets))


def test_torchattacks_default_follows_the_mode() -> None:
    model, (x, y) = _model(), _batch()
    default = ALMA(model, "l2", steps=100)(x, y)
    assert torch.equal(default, ALMA(model, "l2", steps=100, **PLAN)(x, y))
    assert not torch.equal(default, ALMA(model, "l2", steps=100, restarts=1)(x, y))
    attacks = [ALMA(model, "l2", steps=100), ALMA(model, "l2", steps=100, restarts=1)]
    for attack in attacks:
        attack.set_mode_targeted_by_label(quiet=True)
    targets = (y + 1) % 5
    assert torch.equal(attacks[0](x, targets), attacks[1](x, targets))


def test_published_is_one_run_with_dlr_plus_own_gradient() -> None:
    """``ALMAParams.published()``: the defaults but ``restarts=1, smooth_max=0`` (Algorithm 2,
    α = 0.9 at 1000 steps as Appendix E), bit for bit through ``params=`` from 100 steps, and
    not the default there."""
    published = ALMAParams.published()
    assert published == ALMAParams(restarts=1, smooth_max=0)
    resolved = published.for_budget(1000, 0.1, 0.1, 2, False)
    assert (resolved.restarts, resolved.smooth_max, resolved.alpha) == (1, 0.0, pytest.approx(0.9))
    model, (x, y) = _model(), _batch()
    paper = alma(model, x, y, distance="l1", steps=100, params=published)
    assert _same(paper, alma(model, x, y, distance="l1", steps=100, restarts=1, smooth_max=0))
    assert not _same(paper, alma(model, x, y, distance="l1", steps=100))
