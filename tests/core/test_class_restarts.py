"""Restarts aimed at other classes (``restart_mode="classes"``): run k ≥ 1 starts at x under
tDLR⁺ towards the most likely class at x that neither y nor an earlier run aimed at or returned,
success stays any misclassification, the budget is shared exactly, and the mode is refused
where it has no meaning. The class choice (:func:`restart_goal`) is checked against a
brute-force search on every backend; ``AttackResult.predictions`` against the model."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest
import torch

from alma_plugin import ALMAParams, ProxParams, StepInfo, alma, alma_prox
from alma_plugin.core.constraints import dlr_plus, restart_goal
from alma_plugin.core.prox_solver import alma_prox_solve
from alma_plugin.core.restarts import Place
from alma_plugin.core.solver import alma_solve
from alma_plugin.distances import l2
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


def _brute_force_goal(logits: np.ndarray, labels: np.ndarray, reached: list) -> np.ndarray:
    """The rule of :func:`restart_goal`, one sample at a time."""
    out = []
    for i, (z, y) in enumerate(zip(logits, labels, strict=True)):
        goals: list[int] = []
        for run in range(1, len(reached) + 1):
            returned = {int(r[i]) for r in reached[:run]}
            left = [k for k in range(len(z)) if k != y and k not in goals and k not in returned]
            if not left:
                left = [k for k in range(len(z)) if k != y and k not in goals]
            goals.append(max(left, key=lambda k: z[k]))
        out.append(goals[-1])
    return np.array(out)


def _as_backend(backend: str, *arrays: np.ndarray) -> list[ep.Tensor]:
    if backend == "torch":
        return [ep.astensor(torch.from_numpy(a)) for a in arrays]
    if backend == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return [ep.astensor(jnp.asarray(a)) for a in arrays]
    return [ep.astensor(a) for a in arrays]


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
@pytest.mark.parametrize("runs", [1, 2, K - 2, K - 1])
def test_restart_goal_matches_a_brute_force_search(backend: str, runs: int) -> None:
    """Run k skips the label, the goals of runs 1 … k − 1 and the classes runs 0 … k − 1
    returned (−1: that run found nothing for the sample), and takes the largest logit among
    the rest; where nothing is left (runs = K − 2 leaves none for some samples), it skips the
    label and the earlier goals only."""
    rng = np.random.default_rng(runs)
    logits = rng.standard_normal((64, K)).astype(np.float32)
    labels = rng.integers(0, K, 64)
    reached = [rng.integers(-1, K, 64) for _ in range(runs)]
    z, y, *earlier = _as_backend(backend, logits, labels, *reached)
    got = restart_goal(z, y, tuple(earlier)).numpy()
    np.testing.assert_array_equal(got, _brute_force_goal(logits, labels, reached))
    assert got.dtype == y.numpy().dtype
    assert (got != labels).all()


def test_restart_goal_without_a_class_left_is_a_clear_error() -> None:
    z, y = ep.astensor(torch.zeros(2, K)), ep.astensor(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"restarts=R needs at least R classes.*K={K}"):
        restart_goal(z, y, (y,) * K)


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
def test_too_few_classes_are_refused_at_the_first_forward(distance: str) -> None:
    """R runs need K ≥ R classes: refused when K is first known (run 0's first forward),
    not after runs 0 … R − 2 have spent their model calls."""
    model = CountingModel(_model())
    with pytest.raises(ValueError, match=rf"restarts=R needs at least R classes.*K={K}"):
        _attack(distance, model, steps=40, restarts=K + 1, restart_mode="classes")
    assert model.forwards == 1


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
def test_run_one_starts_at_x_aimed_at_a_class_run_zero_did_not_return(distance: str) -> None:
    """At the first step of run 1 the iterate is x (D = 0) and the constraint is tDLR⁺(z(x),
    c₁), c₁ the most likely class other than y and than run 0's returned class (run 0 of R = 2
    is the one-run attack with half the steps, bit for bit); run 0's constraint is DLR⁺(z(x),
    y)."""
    seen: list[StepInfo] = []
    _attack(distance, steps=20, restarts=2, restart_mode="classes", callback=seen.append)
    first = _attack(distance, steps=10).predictions
    x, y = _batch()
    with torch.no_grad():
        z = ep.astensor(_model()(x))
    labels = ep.astensor(y)
    goal = restart_goal(z, labels, (ep.astensor(first),))
    expected = {0: dlr_plus(z, labels).raw, 10: dlr_plus(z, goal, targeted=True).raw}
    for step, constraint in expected.items():
        assert seen[step].distance.abs().max() == 0, step
        torch.testing.assert_close(seen[step].constraint.reshape(-1), constraint)
    assert (goal.raw != first).all() and (goal.raw != y).all()


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_run_k_skips_every_class_earlier_runs_aimed_at_or_returned(distance: str) -> None:
    """The solver reads the earlier runs' classes from its place: run 2 told (p₀, p₁) aims at
    :func:`restart_goal` of them (the most likely class other than y, p₀, p₁ and run 1's
    goal)."""
    x, y = (ep.astensor(t) for t in _batch())
    model = _model()
    rng = np.random.default_rng(0)
    reached = tuple(ep.astensor(torch.from_numpy(rng.integers(-1, K, 8))) for _ in range(2))
    place = Place(index=2, steps=5, offset=10, solved=None, reached=reached)
    seen: list[StepInfo] = []
    if distance == "linf":
        params = ProxParams(restarts=3, restart_mode="classes").for_task("classification")
        alma_prox_solve(lambda u: model(u.raw), x, y, params=params, steps=5, place=place,
                        callback=seen.append)  # fmt: skip
    else:
        alma_params = ALMAParams(restarts=3, restart_mode="classes").for_budget(15, 0.1, 0.0)
        alma_solve(lambda u: model(u.raw), x, y, distance=l2, params=alma_params, steps=5,
                   place=place, callback=seen.append)  # fmt: skip
    with torch.no_grad():
        z = ep.astensor(model(x.raw))
    expected = dlr_plus(z, restart_goal(z, y, reached), targeted=True).raw
    torch.testing.assert_close(seen[0].constraint.raw.reshape(-1), expected)


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
@pytest.mark.parametrize("restarts", [1, 3])
def test_predictions_are_the_models_classes_of_the_adversarials(
    distance: str, restarts: int
) -> None:
    """``AttackResult.predictions``: the model's argmax on each returned adversarial where one
    was found, −1 elsewhere (float64: the re-evaluation is exact). With 10 classes and 64
    samples some samples pass through several classes, so the class of the best iterate and
    that of the last adversarial one differ (1–11 samples here when written)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10)).double().eval()
    x, y = torch.rand(64, 1, 4, 4).double(), torch.randint(0, 10, (64,))
    mode = "classes" if restarts > 1 else "random"
    kind = ProxParams if distance == "linf" else ALMAParams
    params = kind(restarts=restarts, restart_mode=mode)
    steps = 10 if distance == "linf" else 30  # ALMA prox changes class in its first steps
    result = alma(model, x, y, distance=distance, steps=steps, params=params)
    with torch.no_grad():
        predicted = model(result.adversarials).argmax(1)
    assert torch.equal(result.predictions, torch.where(result.success, predicted, -1))
    assert result.success.float().mean() > 0.5


def test_predictions_of_unfooled_samples_empty_batches_and_dense_outputs() -> None:
    x, y = _batch()
    with torch.no_grad():
        clean = _model()(x).argmax(1)
    one_step = alma(_model(), x, y, steps=1)  # step 0 is at x: only the misclassified
    assert torch.equal(one_step.predictions, torch.where(clean != y, clean, -1))
    empty = alma(_model(), x[:0], y[:0])
    assert empty.predictions is not None and empty.predictions.shape == (0,)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    segmentation = alma_prox(torch.nn.Conv2d(1, 3, 1), torch.rand(2, 1, 4, 4), labels, steps=3)
    assert segmentation.predictions is None


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
        alma_prox(model, x, y, steps=10, params=params)


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_as_many_runs_as_classes_aim_at_every_other_class(distance: str) -> None:
    """R = K: runs 1 … K − 1 take the K − 1 classes other than y, one each, so every class is
    aimed at; the attack makes exactly its N forwards and each returned adversarial fools the
    model."""
    seen: list[StepInfo] = []
    model = CountingModel(_model())
    result = _attack(distance, model, steps=3 * K, restarts=K, restart_mode="classes",
                     callback=seen.append)  # fmt: skip
    assert model.forwards == 3 * K
    x, y = _batch()
    with torch.no_grad():
        z = ep.astensor(_model()(x))
        fooled = _model()(result.adversarials).argmax(1) != y
    assert (fooled == result.success).all()
    # tDLR⁺(z(x), c) for every class c; each run starts at x, so its first constraint is one
    # of them per sample: the run's goal.
    towards = torch.stack([
        dlr_plus(z, ep.astensor(torch.full_like(y, c)), targeted=True).raw for c in range(K)
    ])  # fmt: skip
    goals = []
    for run in range(1, K):
        first = seen[3 * run].constraint.reshape(1, -1)
        assert seen[3 * run].distance.abs().max() == 0
        matches = (towards - first).abs() < 1e-6
        assert (matches.sum(0) == 1).all()  # exactly one class per sample
        goals.append(matches.float().argmax(0))
    aimed = torch.stack(goals, 1).sort(1).values  # (N, K − 1): every class but y, once each
    others = torch.stack([torch.tensor([c for c in range(K) if c != label]) for label in y])
    assert torch.equal(aimed, others)


@pytest.mark.parametrize("distance", ["l2", "linf"])
def test_more_restarts_than_other_classes_is_a_clear_error(distance: str) -> None:
    with pytest.raises(ValueError, match=rf"restarts=R needs at least R classes.*K={K}"):
        _attack(distance, steps=14, restarts=K + 1, restart_mode="classes")


@pytest.mark.parametrize("params", [ALMAParams, ProxParams])
def test_an_unknown_mode_is_a_clear_error(params: type) -> None:
    with pytest.raises(ValueError, match=r"restart_mode must be one of \['random', 'classes'\]"):
        params(restart_mode="targets")
    assert params(restart_mode="Classes").restart_mode == "classes"


def test_predictions_are_the_best_iterates_class_not_the_last_adversarial_ones() -> None:
    """A discriminating case for ``predictions``: samples whose best iterate and last
    adversarial iterate have different classes (found by a mutation audit: with the linear
    model above none differ any more, and a solver that updated the prediction on every
    success, not only on improvement, passed the suite)."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 20)).double().eval()  # fmt: skip
    x = torch.rand(64, 3, 4, 4).double()
    with torch.no_grad():
        y = mlp(x).argmax(1)
    classes: list[torch.Tensor] = []
    successes: list[torch.Tensor] = []

    def model(batch: torch.Tensor) -> torch.Tensor:
        logits = mlp(batch)
        classes.append(logits.detach().argmax(1))
        return logits

    result = alma(model, x, y, distance="l2", steps=200, smooth_max=0.0,
                  callback=lambda info: successes.append(info.success))  # fmt: skip
    with torch.no_grad():
        predicted = mlp(result.adversarials).argmax(1)
    assert torch.equal(result.predictions, torch.where(result.success, predicted, -1))
    last_step = torch.stack(successes).double().cumsum(0).argmax(0)  # last successful step
    last_class = torch.stack(classes).gather(0, last_step[None]).squeeze(0)
    # the case is present (3 of 64 samples when written)
    assert (last_class != result.predictions)[result.success].any()
