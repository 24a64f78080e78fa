"""ALMA's step-size schedules (``ALMAParams.schedule``): the paper's Algorithm 2 stays exactly
what it was, and the schedules that decay from the first step honour every invariant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alma_plugin import ALMAParams, alma
from alma_plugin.core.params import SCHEDULES
from alma_plugin.zoo import load_mnist_heldout, load_smallcnn
from tests.utils import CountingModel, predict

STEPS = 30


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = load_smallcnn("mnist_adversarial").eval()
    images, labels = load_mnist_heldout()
    return model, images[:8], labels[:8]


def _step_sizes(model, x, y, distance: str, steps: int, **params) -> tuple[np.ndarray, np.ndarray]:
    """(η⁽ᵗ⁾ per step and sample, success per step and sample), read by the callback."""
    etas, successes = [], []

    def callback(info) -> None:
        etas.append(info.step_size.detach().double().numpy().copy())
        successes.append(info.success.detach().numpy().copy())

    alma(model, x, y, distance=distance, steps=steps, callback=callback, **params)
    return np.stack(etas), np.stack(successes)


def test_default_is_the_paper_schedule() -> None:
    assert ALMAParams().schedule == "paper"
    assert SCHEDULES[0] == "paper"
    assert ALMAParams(schedule="Cosine").schedule == "cosine"


@pytest.mark.parametrize("bad", ["linear", "", 3, None])
def test_unknown_schedule_is_a_clear_error(bad) -> None:
    with pytest.raises((ValueError, TypeError), match="^schedule must be"):  # None: TypeError
        ALMAParams(schedule=bad)


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_paper_schedule_follows_fig3(mnist, distance: str) -> None:
    """η⁽ᵗ⁾ of schedule="paper" against the paper's rule written out here (§3.2.3, Fig. 3):
    η⁽⁰⁾ up to and including the first success t*, then η⁽⁰⁾·r^((t − t*)/(N − 1 − t*))."""
    model, x, y = mnist
    etas, successes = _step_sizes(model, x, y, distance, STEPS, schedule="paper")
    eta0, r = etas[0], 0.01
    for i in range(len(x)):
        hits = np.flatnonzero(successes[:, i])
        start = hits[0] if len(hits) else None
        for t in range(STEPS):
            if start is None or t <= start:
                expected = eta0[i]
            else:
                expected = eta0[i] * r ** ((t - start) / max(STEPS - 1 - start, 1))
            assert etas[t, i] == pytest.approx(expected, rel=1e-5), (i, t)


def test_paper_schedule_is_the_default_bit_for_bit(mnist) -> None:
    model, x, y = mnist
    default = alma(model, x, y, distance="l2", steps=STEPS)
    explicit = alma(model, x, y, distance="l2", steps=STEPS, schedule="paper")
    assert torch.equal(default.adversarials, explicit.adversarials)
    assert torch.equal(default.distances, explicit.distances)


@pytest.mark.parametrize("schedule", ["exponential", "cosine"])
def test_global_schedules_decay_from_the_first_step(mnist, schedule: str) -> None:
    model, x, y = mnist
    r = 0.05
    etas, _ = _step_sizes(model, x, y, "l2", STEPS, schedule=schedule, lr_reduction=r)
    progress = np.arange(STEPS) / (STEPS - 1)
    if schedule == "exponential":
        factor = r**progress
    else:
        factor = r + (1 - r) * (1 + np.cos(math.pi * progress)) / 2
    np.testing.assert_allclose(etas, etas[:1] * factor[:, None], rtol=1e-5)
    assert (np.diff(etas, axis=0) < 0).all()  # strictly decreasing for every sample
    np.testing.assert_allclose(etas[-1], etas[0] * r, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["exponential", "cosine"])
@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_global_schedules_keep_the_invariants(mnist, schedule: str, distance: str) -> None:
    """One forward and one backward per step, nothing of the caller's touched, successes
    re-verified, results in bounds, distances as reported, deterministic."""
    model, x, y = mnist
    x_before, params_before = x.clone(), [p.clone() for p in model.parameters()]
    grads_before = [p.requires_grad for p in model.parameters()]
    counted = CountingModel(model)
    result = alma(counted, x, y, distance=distance, steps=STEPS, schedule=schedule)
    assert counted.forwards == STEPS and counted.backwards == STEPS
    assert torch.equal(x, x_before) and not x.requires_grad
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params_before, strict=True))
    assert [p.requires_grad for p in model.parameters()] == grads_before
    assert not model.training
    adv = result.adversarials
    assert adv.min() >= 0 and adv.max() <= 1 and adv.grad_fn is None
    fooled = predict(model, adv) != y
    assert torch.equal(fooled, result.success) and result.success.float().mean() >= 0.5
    order = 1 if distance == "l1" else 2
    measured = (adv - x).flatten(1).norm(p=order, dim=1)
    success = result.success
    torch.testing.assert_close(result.distances[success], measured[success], rtol=1e-4, atol=1e-5)
    assert torch.equal(adv[~success], x[~success])
    again = alma(model, x, y, distance=distance, steps=STEPS, schedule=schedule)
    assert torch.equal(again.adversarials, adv)


def test_schedule_is_a_keyword_of_every_entry_point() -> None:
    import inspect

    from alma_plugin.foolbox import L2ALMA
    from alma_plugin.torchattacks import ALMA

    for entry in (alma, L2ALMA.__init__, ALMA.__init__):
        parameter = inspect.signature(entry).parameters["schedule"]
        assert parameter.default == "paper"
    assert L2ALMA(steps=5, schedule="cosine").params.schedule == "cosine"
