"""Restarts aimed at other classes (``restart_mode="classes"``): run k ≥ 1 starts at x under
tDLR⁺ towards the class with the (k + 1)-th largest logit at x other than y, success stays any
misclassification, the budget is shared exactly, and the mode is refused where it has no
meaning. The class ranking (:func:`ranked_class`) is checked against a brute-force sort on
every backend."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest
import torch

from alma_plugin import ALMAParams, ProxParams, StepInfo, alma
from alma_plugin.core.constraints import dlr_plus, ranked_class
from tests.utils import CountingModel

pytestmark = pytest.mark.usefixtures("single_thread")

K = 6


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, K)).eval()


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=gen), torch.randint(0, K, (n,), generator=gen)


def _attack(distance: str, model: torch.nn.Module | None = None, **options: Any) -> Any:
    x, y = _batch()
    restarts = {k: options.pop(k) for k in ("restarts", "restart_mode") if k in options}
    params = (ProxParams if distance == "linf" else ALMAParams)(**restarts)
    return alma(model or _model(), x, y, distance=distance, params=params, **options)


def _brute_force_rank(logits: np.ndarray, labels: np.ndarray, rank: int) -> np.ndarray:
    out = []
    for z, y in zip(logits, labels, strict=True):
        others = [k for k in np.argsort(-z, kind="stable") if k != y]
        out.append(others[rank - 1])
    return np.array(out)


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
@pytest.mark.parametrize("rank", [1, 2, K - 1])
def test_ranked_class_matches_a_brute_force_sort(backend: str, rank: int) -> None:
    rng = np.random.default_rng(rank)
    logits = rng.standard_normal((32, K)).astype(np.float32)
    labels = rng.integers(0, K, 32)
    if backend == "torch":
        z, y = ep.astensor(torch.from_numpy(logits)), ep.astensor(torch.from_numpy(labels))
    elif backend == "jax":
        jnp = pytest.importorskip("jax.numpy")
        z, y = ep.astensor(jnp.asarray(logits)), ep.astensor(jnp.asarray(labels))
    else:
        z, y = ep.astensor(logits), ep.astensor(labels)
    got = ranked_class(z, y, rank).numpy()
    np.testing.assert_array_equal(got, _brute_force_rank(logits, labels, rank))
    assert got.dtype == y.numpy().dtype


@pytest.mark.parametrize("rank", [0, K])
def test_ranked_class_outside_the_classes_is_a_clear_error(rank: int) -> None:
    z, y = ep.astensor(torch.zeros(2, K)), ep.astensor(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"restarts=R needs at least R \+ 1 classes.*K={K}"):
        ranked_class(z, y, rank)


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
def test_run_k_starts_at_x_aimed_at_the_class_ranked_k_plus_one(distance: str) -> None:
    """At the first step of run k the iterate is x (D = 0) and the constraint is tDLR⁺(z(x),
    π_{k+1}); run 0's is DLR⁺(z(x), y)."""
    seen: list[StepInfo] = []
    _attack(distance, steps=30, restarts=3, restart_mode="classes", callback=seen.append)
    x, y = _batch()
    with torch.no_grad():
        z = ep.astensor(_model()(x))
    labels = ep.astensor(y)
    expected = {0: dlr_plus(z, labels).raw}
    for k in (1, 2):
        expected[10 * k] = dlr_plus(z, ranked_class(z, labels, k + 1), targeted=True).raw
    for step, constraint in expected.items():
        assert seen[step].distance.abs().max() == 0, step
        torch.testing.assert_close(seen[step].constraint.reshape(-1), constraint)


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
def test_exactly_one_forward_and_backward_per_step(distance: str) -> None:
    model = CountingModel(_model())
    result = _attack(distance, model=model, steps=11, restarts=3, restart_mode="classes")
    assert (model.forwards, model.backwards) == (11, 11)
    assert result.steps_run == 11


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_success_is_any_misclassification_and_is_real(distance: str) -> None:
    """A run aimed at class π_{k+1} also keeps iterates that fool the model into another
    class: the result is the best adversarial the callback saw over all runs, and every sample
    reported fooled is misclassified when the model is evaluated on the returned input."""
    seen: list[StepInfo] = []
    result = _attack(distance, steps=60, restarts=3, restart_mode="classes",
                     callback=seen.append)  # fmt: skip
    x, y = _batch()
    with torch.no_grad():
        predicted = _model()(result.adversarials).argmax(1)
    assert bool(result.success.all())
    assert (predicted != y).all()
    distances = torch.stack([info.distance for info in seen])
    success = torch.stack([info.success for info in seen])
    best = torch.where(success, distances, torch.inf).amin(0)
    torch.testing.assert_close(result.distances, best)
    # Runs 1 and 2 count iterates that fool the model without reaching their goal class
    # (tDLR⁺ ≥ 0): here dozens of them (91 for ℓ2, 27 for ℓ∞ when written).
    missed_goal = [(info.success & (info.constraint.reshape(-1) >= 0)).sum() for info in seen]
    assert sum(missed_goal[20:]) >= 10 and sum(missed_goal[:20]) == 0


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_one_run_ignores_the_mode(distance: str) -> None:
    plain = _attack(distance, steps=20)
    one = _attack(distance, steps=20, restarts=1, restart_mode="classes")
    assert torch.equal(plain.adversarials, one.adversarials)


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_a_targeted_attack_refuses_class_restarts(distance: str) -> None:
    with pytest.raises(ValueError, match=r"restart_mode='classes'.*untargeted.*targeted=True"):
        _attack(distance, steps=10, restarts=2, restart_mode="classes", targeted=True)


def test_dense_outputs_refuse_class_restarts() -> None:
    model = torch.nn.Conv2d(1, 3, 1)
    x = torch.rand(2, 1, 4, 4)
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    params = ProxParams(restarts=2, restart_mode="classes")
    with pytest.raises(ValueError, match=r"restart_mode='classes' needs one label per sample"):
        alma(model, x, y, distance="linf", steps=10, params=params)


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_more_restarts_than_other_classes_is_a_clear_error(distance: str) -> None:
    with pytest.raises(ValueError, match=rf"restarts=R needs at least R \+ 1 classes.*K={K}"):
        _attack(distance, steps=12, restarts=K, restart_mode="classes")


@pytest.mark.parametrize("params", [ALMAParams, ProxParams])
def test_an_unknown_mode_is_a_clear_error(params: type) -> None:
    with pytest.raises(ValueError, match=r"restart_mode must be one of \['random', 'classes'\]"):
        params(restart_mode="targets")
    assert params(restart_mode="Classes").restart_mode == "classes"
