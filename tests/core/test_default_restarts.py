"""ALMA's default restarts (``ALMAParams.restarts=None``, not in the paper): for the distances
whose ``DISTANCES[name].class_restarts`` is 2 (ℓ1, ℓ2), an untargeted attack of at least
``CLASS_RESTARTS_MIN_STEPS`` steps is two runs, run 1 aimed at another class, run 0 taking
``CLASS_RESTARTS_FIRST_RUN_SHARE`` of the steps; every other attack one run, and so is the
default on a model with fewer than ``CLASS_RESTARTS_MIN_CLASSES`` classes (decided at run 0's
first forward). Checked: the resolution table, and every entry point's default bit for bit
against the explicit setting it resolves to (and against one run, which it is not)."""

from __future__ import annotations

from typing import Any

import foolbox as fb
import pytest
import torch

from alma_plugin import (
    CLASS_RESTARTS_FIRST_RUN_SHARE,
    CLASS_RESTARTS_MIN_CLASSES,
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
    assert CLASS_RESTARTS_MIN_CLASSES == 4
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


@pytest.mark.parametrize(
    ("given", "classes", "expected"),
    [
        ({}, None, (2, "classes", 0.7)),  # K not known yet: planned
        ({}, 4, (2, "classes", 0.7)),
        ({}, 10, (2, "classes", 0.7)),
        ({}, 3, (1, "random", None)),  # one class left for run 1: it lost at 100 steps
        ({}, 2, (1, "random", None)),  # no class besides the one run 0 heads for
        ({"restarts": 2, "restart_mode": "classes"}, 2, (2, "classes", None)),  # refused later
    ],
)
def test_resolution_for_the_class_count(
    given: dict[str, Any], classes: int | None, expected: tuple[int, str, float | None]
) -> None:
    resolved = ALMAParams(**given).for_budget(1000, 0.1, 0.1, 2, False, classes)
    assert (resolved.restarts, resolved.restart_mode, resolved.first_run_share) == expected


def _few_classes(classes: int = 2) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, classes)).eval()
    x = _batch()[0]
    with torch.no_grad():
        return model, x, model(x).argmax(1)


@pytest.mark.parametrize(("distance", "classes"), [("l1", 2), ("l2", 2), ("l1", 3)])
def test_few_classes_get_one_run_of_the_whole_budget(distance: str, classes: int) -> None:
    """K < CLASS_RESTARTS_MIN_CLASSES: the default is ``restarts=1`` bit for bit, α of the
    whole budget included (150 steps: α(105) ≠ α(150)), at exactly one forward and one
    backward per step (decided at run 0's first forward)."""
    model, x, y = _few_classes(classes)
    counting = CountingModel(model)
    default = alma(counting, x, y, distance=distance, steps=150)
    assert (counting.forwards, counting.backwards, default.steps_run) == (150, 150, 150)
    one_run = alma(model, x, y, distance=distance, steps=150, restarts=1)
    assert _same(default, one_run)
    assert budget_alpha(105) != budget_alpha(150)
    attack = L2ALMA if distance == "l2" else L1ALMA
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    assert torch.equal(
        attack(steps=150).run(fmodel, x, y), attack(steps=150, restarts=1).run(fmodel, x, y)
    )
    assert attack(steps=150).resolved_params(classes=classes).restarts == 1
    assert attack(steps=150).resolved_params(classes=4).restarts == 2
    assert torch.equal(
        ALMA(model, distance, steps=150)(x, y), ALMA(model, distance, steps=150, restarts=1)(x, y)
    )


@pytest.mark.parametrize("distance", ["l1", "l2", "linf"])
def test_explicit_class_restarts_on_two_classes_are_refused_at_the_first_forward(
    distance: str,
) -> None:
    from alma_plugin import ProxParams

    model, x, y = _few_classes()
    counting = CountingModel(model)
    given = {"restarts": 2, "restart_mode": "classes"}
    params = ProxParams(**given) if distance == "linf" else ALMAParams(**given)
    with pytest.raises(ValueError, match=r"a model with K=2 classes does not have.*restarts=1"):
        alma(counting, x, y, distance=distance, steps=20, params=params)
    assert counting.forwards == 1


@pytest.mark.parametrize("framework", ["jax", "tensorflow"])
def test_few_classes_get_one_run_on_every_framework(framework: str) -> None:
    """The decision at run 0's first forward is Python around each framework's autodiff (JAX
    traces the loss): a 3-class linear model gets ``restarts=1`` bit for bit (110 steps:
    α(77) ≠ α(110)). The batch and weights are test_frameworks' (JAX compiles per shape)."""
    import numpy as np

    from tests.core.test_frameworks import IMAGES, WEIGHTS

    assert budget_alpha(77) != budget_alpha(110)
    if framework == "jax":
        jnp = pytest.importorskip("jax.numpy")
        weights, x = jnp.asarray(WEIGHTS), jnp.asarray(IMAGES)

        def model(u: Any) -> Any:
            return u.reshape(len(u), -1) @ weights

        labels = model(x).argmax(axis=1)
    else:
        tf = pytest.importorskip("tensorflow")
        weights, x = tf.constant(WEIGHTS), tf.constant(IMAGES)

        def model(u: Any) -> Any:
            return tf.reshape(u, (len(u), -1)) @ weights

        labels = tf.argmax(model(x), axis=1)
    default = alma(model, x, labels, distance="l1", steps=110)
    one_run = alma(model, x, labels, distance="l1", steps=110, restarts=1)
    assert np.array_equal(np.asarray(default.distances), np.asarray(one_run.distances))
    assert np.array_equal(np.asarray(default.adversarials), np.asarray(one_run.adversarials))
    assert int(default.steps_run) == 110
