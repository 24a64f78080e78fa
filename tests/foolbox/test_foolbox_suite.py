"""Foolbox's own checks for minimisation attacks, on ALMA next to Foolbox's DDN and FMN.

Foolbox's sdist ships no tests. This module is our version of the checks that the
bethgelab/foolbox repository applies to every minimisation attack (``tests/test_attacks.py``:
untargeted and targeted success; ``tests/test_attacks_base.py``: one epsilon, tensor types,
``model.bounds``, ``.repeat``; ``tests/test_fast_minimum_norm_attack.py``: norms and the
criterion; ``tests/conftest.py``: a PyTorch model and a channels-last JAX model on Foolbox's
sample images, moved to bounds (0, 1) with ``transform_bounds``; here also a channels-last
TensorFlow model where TensorFlow is installed), plus what Foolbox's base
classes promise about ``epsilons`` and ``early_stop``. Every check runs on every attack and
backend, so the pass counts compare side by side. Ids are the attacks' ``repr`` (as in
Foolbox), which must be stable across processes.

Deliberate departures are ``xfail(strict=True)`` with their reason:

* out-of-bounds inputs: ALMA raises a ``ValueError`` naming the bounds where Foolbox's
  attacks raise a bare ``AssertionError`` (docs/foolbox.md);
* early stop: Foolbox's DDN and FMN accept ``early_stop`` and ignore it (foolbox 3.3.4), so
  their cost does not drop; ALMA and ALMA prox stop;
* ``starting_points`` (FMN's warm start): ALMA starts from the inputs and refuses them with
  a ``TypeError``, as DDN does.

The attacks' results are computed once per (attack, backend) and shared by the checks, so
the module stays fast on one thread.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any, NamedTuple

import eagerpy as ep
import foolbox as fb
import foolbox.attacks as fa
import numpy as np
import pytest
import torch

from alma_plugin.foolbox import L1ALMA, L2ALMA, SSIMALMA, LinfALMAProx

STEPS = 10
CLASSES = 4
BATCH = 6
SIZE = 12  # SSIM needs 11×11 images


class Case(NamedTuple):
    attack: Any
    #: [None, 0.0, small, large] in the attack's distance, bounds (0, 1); the large one
    #: exceeds every minimal perturbation of the test models.
    epsilons: tuple[float | None, ...]
    ours: bool


def _cases() -> list[Case]:
    l2, l1, linf = (None, 0.0, 0.05, 3.0), (None, 0.0, 0.5, 60.0), (None, 0.0, 0.002, 0.2)
    ssim = (None, 0.0, 1e-4, 0.5)
    return [
        Case(fa.DDNAttack(init_epsilon=2.0, steps=STEPS), l2, False),  # Foolbox's settings
        Case(fa.L2FMNAttack(steps=STEPS), l2, False),
        Case(fa.L1FMNAttack(steps=STEPS), l1, False),
        Case(fa.LInfFMNAttack(steps=STEPS), linf, False),
        Case(L1ALMA(steps=STEPS), l1, True),
        Case(L2ALMA(steps=STEPS), l2, True),
        Case(LinfALMAProx(steps=STEPS), linf, True),
        # Table 3's ε = 3e-5 is tuned for 1000 steps; 10 steps need a larger first step.
        Case(SSIMALMA(steps=STEPS, init_lr_distance=3e-4), ssim, True),
    ]


CASES = _cases()
IDS = [repr(case.attack) for case in CASES]
#: Each attack's state at import: no check may change it.
STATES = [dict(vars(case.attack)) for case in CASES]
BACKENDS = ["pytorch", "jax"] + (["tensorflow"] if importlib.util.find_spec("tensorflow") else [])


def cases(**departures: str) -> Any:
    """Parametrise over CASES; ``ours=reason`` / ``foolbox=reason`` / ``<class name>=reason``
    marks those cases ``xfail(strict=True)`` as documented departures."""
    params = []
    for case, case_id in zip(CASES, IDS, strict=True):
        reason = departures.get(type(case.attack).__name__) or departures.get(
            "ours" if case.ours else "foolbox"
        )
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, id=case_id, marks=marks))
    return pytest.mark.parametrize("case", params)


# --- Models (as Foolbox's conftest: tiny models on its sample images) ------------------------


class Problem(NamedTuple):
    model: Any  # Foolbox model, bounds (0, 1)
    x: ep.Tensor  # eagerpy inputs in the model's layout
    y: ep.Tensor
    calls: list[int]  # model calls so far
    x_copy: np.ndarray  # the inputs as created, to check nothing writes into them


def _weights() -> np.ndarray:
    """A linear colour classifier on 12×12 images, (C, H, W, K), centred at grey 0.5."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, SIZE, SIZE, CLASSES)).astype(np.float32) / SIZE


def _pytorch_problem() -> Problem:
    weights = torch.as_tensor(_weights()).reshape(-1, CLASSES)
    calls = [0]

    class Linear(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # NCHW
            calls[0] += 1
            return (x - 0.5).flatten(1) @ weights

    # Built on (0, 255) with preprocessing, moved to (0, 1) as Foolbox's tests do.
    model = fb.PyTorchModel(Linear().eval(), bounds=(0, 255), preprocessing=dict(std=255))
    images, _ = fb.samples(model, dataset="cifar10", batchsize=BATCH, bounds=(0, 255))
    model = model.transform_bounds((0, 1))
    x = ep.astensor(images[:, :, :SIZE, :SIZE].contiguous() / 255)
    return Problem(model, x, model(x).argmax(axis=-1), calls, x.numpy().copy())


def _jax_problem() -> Problem:
    jnp = pytest.importorskip("jax.numpy")
    weights = jnp.asarray(_weights().transpose(1, 2, 0, 3).reshape(-1, CLASSES))
    calls = [0]

    def linear(x: Any) -> Any:  # NHWC, as Foolbox's JAX fixture: the same classifier
        calls[0] += 1
        return (x - 0.5).reshape(x.shape[0], -1) @ weights

    model = fb.JAXModel(linear, bounds=(0, 1), data_format="channels_last")
    images, _ = fb.samples(model, dataset="cifar10", batchsize=BATCH, data_format="channels_last")
    x = ep.astensor(images[:, :SIZE, :SIZE, :])
    return Problem(model, x, model(x).argmax(axis=-1), calls, x.numpy().copy())


def _tensorflow_problem() -> Problem:
    import tensorflow as tf

    weights = tf.constant(_weights().transpose(1, 2, 0, 3).reshape(-1, CLASSES))
    calls = [0]

    def linear(x: Any) -> Any:  # NHWC (Keras' default layout): the same classifier
        calls[0] += 1
        return tf.reshape(x - 0.5, (x.shape[0], -1)) @ weights

    model = fb.TensorFlowModel(linear, bounds=(0, 1))
    images, _ = fb.samples(model, dataset="cifar10", batchsize=BATCH, data_format="channels_last")
    x = ep.astensor(images[:, :SIZE, :SIZE, :])
    return Problem(model, x, model(x).argmax(axis=-1), calls, x.numpy().copy())


@pytest.fixture(scope="module", params=BACKENDS)
def problem(request: Any) -> Problem:
    make = {"pytorch": _pytorch_problem, "jax": _jax_problem, "tensorflow": _tensorflow_problem}
    return make[request.param]()


# --- Results shared by the checks ---------------------------------------------------------


class Results(NamedTuple):
    #: raw framework tensors in: (raws, clippeds, success) for epsilons=[None, 0, small, large]
    untargeted: tuple
    untargeted_calls: int
    #: eagerpy in, one epsilon (the large one, so Foolbox passes it as early_stop)
    single: tuple
    single_calls: int
    targets: ep.Tensor
    targeted: ep.Tensor  # adversarials, epsilons=None


#: Results per model object, then per attack. Keyed by the (weakly held) model, not by
#: ``id(problem)``: a module-scoped problem rebuilt for another backend (tests in a shuffled
#: order) can reuse a freed object's id and would get that backend's results.
_CACHE: weakref.WeakKeyDictionary[Any, dict[str, Results]] = weakref.WeakKeyDictionary()


def _results(problem: Problem, case: Case) -> Results:
    cache = _CACHE.setdefault(problem.model, {})
    key = repr(case.attack)
    if key not in cache:
        fmodel, x, y, calls, _ = problem
        before = calls[0]
        untargeted = case.attack(fmodel, x.raw, y.raw, epsilons=list(case.epsilons))
        untargeted_calls, before = calls[0] - before, calls[0]
        single = case.attack(fmodel, x, y, epsilons=case.epsilons[-1])
        single_calls = calls[0] - before
        targets = (y + 1) % CLASSES
        criterion = fb.criteria.TargetedMisclassification(targets)
        targeted, _, _ = case.attack(fmodel, x, criterion, epsilons=None)
        cache[key] = Results(untargeted, untargeted_calls, single, single_calls, targets, targeted)
    return cache[key]


def _distance(case: Case, model: Any) -> Any:
    """The distance Foolbox clips with: ``attack.distance``, or for ALMA's perceptual attacks
    the per-model one (:meth:`ALMAAttack.for_model`, docs/foolbox.md)."""
    for_model = getattr(case.attack, "for_model", None)
    return case.attack.distance if for_model is None else for_model(model).distance


def _predict(problem: Problem, inputs: Any) -> np.ndarray:
    return problem.model(ep.astensor(inputs)).argmax(axis=-1).numpy()


def _accuracy(problem: Problem, inputs: Any, labels: ep.Tensor) -> float:
    return float((_predict(problem, inputs) == labels.numpy()).mean())


# --- Checks ---------------------------------------------------------------------------------


@cases()
def test_untargeted(problem: Problem, case: Case) -> None:
    """test_attacks.py: the accuracy on the attack's outputs is below the clean accuracy"""
    (raws, _, _), clean = (
        _results(problem, case).untargeted,
        _accuracy(problem, problem.x, problem.y),
    )
    assert clean == 1
    assert _accuracy(problem, raws[0], problem.y) < clean


@cases()
def test_targeted(problem: Problem, case: Case) -> None:
    """test_attacks.py: the targeted success rate rises above the clean one."""
    results = _results(problem, case)
    before = (_predict(problem, problem.x) == results.targets.numpy()).mean()
    after = (_predict(problem, results.targeted) == results.targets.numpy()).mean()
    assert after > before


@cases()
def test_one_epsilon_keeps_eagerpy(problem: Problem, case: Case) -> None:
    """test_attacks_base.py: one epsilon, eagerpy in, eagerpy out; shapes (N, ...) and (N,)."""
    raw, clipped, success = _results(problem, case).single
    x = problem.x
    assert ep.istensor(raw) and ep.istensor(clipped) and ep.istensor(success)
    assert raw.shape == x.shape and clipped.shape == x.shape and success.shape == (len(x),)


@cases()
def test_raw_tensors_restored(problem: Problem, case: Case) -> None:
    """Raw framework tensors in, the same type out (Foolbox's ``restore_type``)."""
    raws, clippeds, success = _results(problem, case).untargeted
    kind = type(problem.x.raw)
    assert all(type(t) is kind for t in (*raws, *clippeds, success))


@cases()
def test_epsilons_list(problem: Problem, case: Case) -> None:
    """Foolbox's MinimizationAttack contract for ``epsilons=[None, 0, ε₁, ε₂]``: one output
    per epsilon, in bounds; clipped outputs within ε; success is the criterion's verdict on
    the clipped output; ε = 0 fools nothing (clean accuracy 1); larger ε, no fewer."""
    fmodel, x, y, _, _ = problem
    raws, clippeds, success_raw = _results(problem, case).untargeted
    success = ep.astensor(success_raw)
    epsilons = case.epsilons
    assert len(raws) == len(clippeds) == len(epsilons) and success.shape == (len(epsilons), len(x))
    distance = _distance(case, fmodel)
    for epsilon, raw, clipped, ok in zip(epsilons, raws, clippeds, success, strict=True):
        raw, clipped = ep.astensor(raw), ep.astensor(clipped)
        for output in (raw, clipped):
            assert output.shape == x.shape
            assert output.min().item() >= 0 and output.max().item() <= 1
        if epsilon is not None:
            assert (distance(x, clipped) <= epsilon * (1 + 1e-5) + 1e-6).all().item()
        np.testing.assert_array_equal(ok.numpy(), _predict(problem, clipped) != y.numpy())
    assert not success[1].any().item()
    assert (success[2].numpy() <= success[3].numpy()).all()  # (TF casts to no Python int)


@cases(
    ours="deliberate: ALMA raises a ValueError naming the bounds and the values found, not "
    "Foolbox's bare AssertionError (docs/foolbox.md)",
    L2FMNAttack="Foolbox's FMN run() does not check the input bounds (only __call__ does)",
    L1FMNAttack="Foolbox's FMN run() does not check the input bounds (only __call__ does)",
    LInfFMNAttack="Foolbox's FMN run() does not check the input bounds (only __call__ does)",
)
def test_out_of_bounds_inputs_raise(problem: Problem, case: Case) -> None:
    """test_attacks_base.py::test_model_bounds: ``run`` refuses inputs outside ``model.bounds``
    with an AssertionError (Foolbox's ``verify_input_bounds``)."""
    fmodel, x, y, _, _ = problem
    with pytest.raises(AssertionError):
        case.attack.run(fmodel, x * 0.0 - 0.1, y)
    with pytest.raises(AssertionError):
        case.attack.run(fmodel, x * 0.0 + 1.1, y)


@cases()
def test_out_of_bounds_inputs_refused(problem: Problem, case: Case) -> None:
    """The same inputs refused by ``__call__`` of any attack (either error type), before any
    model call."""
    fmodel, x, y, calls, _ = problem
    before = calls[0]
    for bad in (x * 0.0 - 0.1, x * 0.0 + 1.1):
        with pytest.raises((AssertionError, ValueError)):
            case.attack(fmodel, bad, y, epsilons=None)
    assert calls[0] == before


@cases()
def test_early_stop_never_costs_success(problem: Problem, case: Case) -> None:
    """Foolbox passes ``early_stop = min(epsilons)``: the outputs at a single ε are adversarial
    within ε wherever the full run's are."""
    results = _results(problem, case)
    full = ep.astensor(results.untargeted[2])[3]
    assert (full.numpy() <= ep.astensor(results.single[2]).numpy()).all()


@cases(foolbox="Foolbox's DDN and FMN accept early_stop and ignore it (foolbox 3.3.4)")
def test_early_stop_saves_model_calls(problem: Problem, case: Case) -> None:
    """With every sample fooled far within ε, ``early_stop`` ends the run early. The solvers
    read the early-stop flag from the device every M = ``check_steps`` steps only (no host
    synchronisation per step), so the run here is longer than M."""
    fmodel, x, y, calls, _ = problem
    attack = type(case.attack)(steps=4 * case.attack.params.check_steps, params=case.attack.params)
    before = calls[0]
    _, _, full_success = attack(fmodel, x, y, epsilons=None)
    full_calls, before = calls[0] - before, calls[0]
    _, _, success = attack(fmodel, x, y, epsilons=case.epsilons[-1])
    assert success.all().item() and full_success.all().item()
    assert calls[0] - before < full_calls


class _DummyCriterion(fb.criteria.Criterion):
    """A criterion with no functionality, to be rejected (test_attacks_raise.py)."""

    def __repr__(self) -> str:
        return "DummyCriterion()"

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        return perturbed


@cases()
def test_unsupported_criteria_raise_value_errors(problem: Problem, case: Case) -> None:
    """test_attacks_raise.py::test_targeted_attacks_call_raises_exception: target classes of
    the wrong length and any criterion but the two supported ones are a ``ValueError`` (ours:
    an error that is both a ``TypeError`` and a ``ValueError``), before any model call."""
    fmodel, x, y, calls, _ = problem
    before = calls[0]
    targets = ep.concatenate(((y + 1) % CLASSES, (y + 1) % CLASSES), 0)
    with pytest.raises(ValueError):
        case.attack(fmodel, x, fb.criteria.TargetedMisclassification(targets), epsilons=1000.0)
    with pytest.raises(ValueError):
        case.attack(fmodel, x, _DummyCriterion(), epsilons=1000.0)
    if case.ours:
        with pytest.raises(TypeError, match="criterion"):
            case.attack(fmodel, x, _DummyCriterion(), epsilons=1000.0)
    assert calls[0] == before


@cases(
    ours="deliberate: ALMA starts from the inputs (Algorithm 2, step 1); a TypeError naming "
    "starting_points and restarts (docs/foolbox.md)",
    DDNAttack="Foolbox's DDN takes no starting_points",
)
def test_starting_points(problem: Problem, case: Case) -> None:
    """test_fast_minimum_norm_attack.py: ``run(..., starting_points=adversarials)`` returns
    adversarials no farther than the starting points (FMN's warm start)."""
    fmodel, x, y, _, _ = problem
    init = fb.attacks.DatasetAttack()
    init.feed(fmodel, x)
    starts = init.run(fmodel, x, y)
    advs = case.attack.run(fmodel, x, y, starting_points=starts)
    assert fb.accuracy(fmodel, advs, y) <= fb.accuracy(fmodel, starts, y)


def test_starting_points_are_refused_with_a_clear_error(problem: Problem) -> None:
    fmodel, x, y, calls, _ = problem
    before = calls[0]
    for case in CASES:
        if case.ours:
            with pytest.raises(TypeError, match="starting_points.*restarts"):
                case.attack.run(fmodel, x, y, starting_points=x)
    assert calls[0] == before


@cases()
def test_repeat(problem: Problem, case: Case) -> None:
    """test_attacks_base.py: ``.repeat`` composes (3 then 2: 6 runs) and returns the same
    structure. These attacks are deterministic: twice the model calls, exactly the single-call
    result (documented for ALMA and ALMA prox)."""
    fmodel, x, y, calls, _ = problem
    assert case.attack.repeat(3).repeat(2).times == 6
    results = _results(problem, case)
    before = calls[0]
    raws, clippeds, success = case.attack.repeat(2)(
        fmodel, x.raw, y.raw, epsilons=list(case.epsilons)
    )
    assert calls[0] - before == 2 * results.untargeted_calls
    single_raws, single_clippeds, single_success = results.untargeted
    np.testing.assert_array_equal(np.asarray(success), np.asarray(single_success))
    for a, b in zip((*raws, *clippeds), (*single_raws, *single_clippeds), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@cases()
def test_inputs_and_attack_untouched(problem: Problem, case: Case) -> None:
    """The caller's tensors and the attack are unchanged by calls (Foolbox's attacks are
    immutable after ``__init__``, and its test ids use ``repr``)."""
    _results(problem, case)
    np.testing.assert_array_equal(problem.x.numpy(), problem.x_copy)
    assert vars(case.attack) == STATES[CASES.index(case)]
    assert repr(case.attack) == IDS[CASES.index(case)]


@pytest.fixture(scope="module")
def fresh_process_ids() -> list[str]:
    code = "from tests.foolbox.test_foolbox_suite import IDS; print(repr(IDS))"
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return list(ast.literal_eval(out.stdout))


@cases()
def test_stable_id(case: Case, fresh_process_ids: list[str]) -> None:
    """The pytest id (``repr``, as Foolbox's tests use) has no memory address and is the same
    in a fresh process."""
    text = repr(case.attack)
    assert "0x" not in text
    assert text == fresh_process_ids[CASES.index(case)]
