"""Property-based tests (issue 10): random small models, bounds, batch sizes, labels, targeted
or not, ℓ1 / ℓ2 ALMA and the ℓ∞ ALMA prox, checked with the contract table's one checker
(:func:`tests.contract.check`: successes re-verify, finite, in bounds, inputs, model and
attack untouched) plus determinism under the same seed.

The hypothesis profile "ci" (registered and loaded here: fixed, derandomised, no deadline) keeps
the file to a few seconds; ``HYPOTHESIS_PROFILE=dev`` (more examples, random) explores further.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contract import (
    NO_SUCCESS_NEEDED,
    Case,
    alma_case,
    check,
    foolbox_case,
    on_device,
    prox_case,
)

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Each property on the CPU and, where there is one, on a CUDA device (the caller's tensors and
#: model there; see ``tests.contract.on_device``).
DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")))  # fmt: skip

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.parametrize("device", DEVICES)]

SHAPES = ((1, 4, 4), (2, 3, 3), (3, 2, 5))


@st.composite
def problems(draw: Any) -> dict[str, Any]:
    """A random small classification problem: model seed, K, shape, bounds, batch, labels,
    steps and restarts (random, or aimed at the next classes where that is defined)."""
    k = draw(st.integers(2, 10))
    n = draw(st.integers(0, 4))
    lower = draw(st.sampled_from((-255.0, -1.0, -0.5, 0.0, 0.25, 3.0)))
    span = draw(st.sampled_from((0.5, 1.0, 2.0, 255.0)))
    own_labels = draw(st.booleans())  # the model's predictions, or arbitrary classes
    labels = None if own_labels else draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    steps = draw(st.integers(1, 8))
    targeted = draw(st.booleans())
    restarts = draw(st.integers(1, min(steps, 3)))  # R runs share the steps
    # restarts aimed at the next classes: untargeted, with a class for every run (K ≥ R) and
    # one besides the class run 0 heads for (K ≥ 3; with K = 2 they are refused)
    classes_allowed = not targeted and 1 < restarts <= k and k >= 3
    mode = draw(st.sampled_from(("random", "classes"))) if classes_allowed else "random"
    # run 0's share of the steps (None: the even split); any p leaves every run a step
    share = draw(st.one_of(st.none(), st.floats(0.01, 0.99))) if restarts > 1 else None
    return {
        "seed": draw(st.integers(0, 2**16)),
        "k": k,
        "n": n,
        "shape": draw(st.sampled_from(SHAPES)),
        "bounds": (lower, lower + span),
        "spread": draw(st.sampled_from((0.01, 0.05, 0.3, 0.5))),  # 0.5: touches the bounds
        "targeted": targeted,
        "labels": labels,
        "steps": steps,
        "restarts": restarts,
        "restart_mode": mode,
        "first_run_share": share,
    }


def _run(case_id: str, build: Any, device: str) -> None:
    # A generated problem (one step, a model flat over its box...) may admit no success in its
    # budget: the properties are the invariants; the contract table requires the successes.
    case = Case(case_id, build, NO_SUCCESS_NEEDED)
    with on_device(device):
        check(case)  # the contract's invariants, determinism under the seeds included


@given(problem=problems(), distance=st.sampled_from(("l1", "l2")))
def test_alma_invariants(problem: dict[str, Any], distance: str, device: str) -> None:
    _run(f"alma-{distance}-{problem}", lambda: alma_case(distance=distance, **problem), device)


@given(problem=problems())
def test_linf_prox_invariants(problem: dict[str, Any], device: str) -> None:
    """The ℓ∞ ALMA prox for classification, through Foolbox's ``LinfALMAProx`` (any bounds)."""
    _run(
        f"LinfALMAProx-{problem}",
        lambda: foolbox_case("LinfALMAProx", epsilons=(0.0, 0.05, None), **problem),
        device,
    )


@given(problem=problems(), distance=st.sampled_from(("L1ALMA", "L2ALMA")))
def test_foolbox_alma_invariants(problem: dict[str, Any], distance: str, device: str) -> None:
    _run(
        f"{distance}-{problem}",
        lambda: foolbox_case(distance, epsilons=(0.0, 0.5), **problem),
        device,
    )


@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 3),
    k=st.integers(2, 10),
    size=st.integers(2, 5),
    lower=st.sampled_from((0.0, -1.0, 10.0)),
    span=st.sampled_from((1.0, 2.0, 255.0)),
    targeted=st.booleans(),
    masked=st.booleans(),
    steps=st.integers(1, 6),
    adv_threshold=st.sampled_from((0.3, 0.6, 0.99, 1.0)),
)
def test_segmentation_prox_invariants(
    seed: int,
    n: int,
    k: int,
    size: int,
    lower: float,
    span: float,
    targeted: bool,
    masked: bool,
    steps: int,
    adv_threshold: float,
    device: str,
) -> None:
    """Dense ALMA prox (``segmentation.alma_prox``): APSR re-verifies per pixel."""
    _run(
        f"alma_prox-{seed}-{n}-{k}-{size}",
        lambda: prox_case(
            seed=seed,
            n=n,
            k=k,
            size=size,
            bounds=(lower, lower + span),
            targeted=targeted,
            masked=masked and size >= 2,
            steps=steps,
            adv_threshold=adv_threshold,
        ),  # fmt: skip
        device,
    )


@given(
    seed=st.integers(0, 2**16),
    k=st.integers(2, 6),
    steps=st.sampled_from((99, 100, 130)),
    targeted=st.booleans(),
    distance=st.sampled_from(("l1", "l2")),
)
def test_default_runs_follow_the_class_count_budget_and_goal(
    seed: int, k: int, steps: int, targeted: bool, distance: str, device: str
) -> None:
    """ALMA's default is, bit for bit, the explicit runs ``for_budget`` gives for the model's K
    (known only at the first forward), the budget and the goal: two runs aimed at classes for
    K ≥ CLASS_RESTARTS_MIN_CLASSES, untargeted, from CLASS_RESTARTS_MIN_STEPS; else one."""
    from alma_plugin import DISTANCES, ALMAParams, alma

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, k)).to(device).eval()
    x = torch.rand(3, 3, 2, 2, device=device)
    with torch.no_grad():
        labels = (model(x).argmax(1) + (1 if targeted else 0)) % k
    resolved = DISTANCES[distance].alma_params(ALMAParams(), steps, targeted, classes=k)
    runs = {"restarts": resolved.restarts, "restart_mode": resolved.restart_mode,
            "first_run_share": resolved.first_run_share}  # fmt: skip
    default = alma(model, x, labels, distance=distance, steps=steps, targeted=targeted)
    explicit = alma(model, x, labels, distance=distance, steps=steps, targeted=targeted, **runs)
    assert torch.equal(default.distances, explicit.distances)
    assert torch.equal(default.adversarials, explicit.adversarials)
    planned = k >= 4 and not targeted and steps >= 100
    assert resolved.restarts == (2 if planned else 1)
