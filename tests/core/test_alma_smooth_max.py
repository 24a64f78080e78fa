"""ALMA's smoothed max (``ALMAParams.smooth_max``, not in the paper): the default is the
distance's κ (``DISTANCES[name].smooth_max``), κ = 0 is Algorithm 2 as published, κ > 0
changes the gradient of untargeted DLR⁺ only, and what it reports holds.
Step by step against a transcription: ``tests/core/test_algorithm2.py``; the quality is
measured in docs/performance.md, not asserted here."""

from __future__ import annotations

import math

import pytest
import torch

from alma_plugin import DISTANCES, ALMAParams, alma
from alma_plugin.zoo import load_mnist_heldout, load_smallcnn

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    "value, error",
    [(-0.1, ValueError), (-1e-300, ValueError), (math.inf, ValueError), (math.nan, ValueError),
     ("0.1", TypeError)],
)  # fmt: skip
def test_smooth_max_is_validated(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="smooth_max"):
        ALMAParams(smooth_max=value)  # type: ignore[arg-type]


def test_default_is_the_distances_kappa() -> None:
    """None until resolved for a distance; then the distance's κ, where one was measured to help
    (0.1), else 0 (docs/performance.md, "ALMA with a smoothed max"); a given κ is kept."""
    assert ALMAParams().smooth_max is None
    assert ALMAParams(smooth_max=0).smooth_max == 0.0
    kappas = {name: spec.smooth_max for name, spec in DISTANCES.items()}
    assert kappas == {"l1": 0.1, "l2": 0.1, "ciede2000": 0.1, "lpips": 0.1, "ssim": 0.0,
                      "msssim": 0.1}  # fmt: skip
    for name, spec in DISTANCES.items():
        resolved = spec.alma_params(ALMAParams(), 100)
        assert resolved.smooth_max == kappas[name]
        assert ALMAParams(smooth_max=0).for_budget(100, 1.0, spec.smooth_max).smooth_max == 0


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = load_smallcnn("mnist_adversarial")
    images, labels = load_mnist_heldout()
    x, y = images[940:960], labels[940:960]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return model, x[correct][:10], y[correct][:10]


@pytest.mark.parametrize("distance, kappa", [("l2", 0.1), ("l1", 0.1), ("ssim", 0.0)])
def test_the_default_runs_the_distances_kappa(mnist, distance: str, kappa: float) -> None:
    """The default gives the bits of the distance's κ given explicitly, not those of the other
    value (so this fails if a distance's entry changes); the successes of κ > 0 hold."""
    model, x, y = mnist
    default = alma(model, x, y, distance=distance, steps=40)
    same = alma(model, x, y, distance=distance, steps=40, smooth_max=kappa)
    other = alma(model, x, y, distance=distance, steps=40, smooth_max=0.1 - kappa)
    assert torch.equal(default.adversarials, same.adversarials)
    assert not torch.equal(default.adversarials, other.adversarials)
    smooth = same if kappa else other
    assert bool(smooth.success.all())
    with torch.no_grad():
        assert (model(smooth.adversarials).argmax(1) != y).all()
    assert 0 <= float(smooth.adversarials.min()) and float(smooth.adversarials.max()) <= 1


def test_targeted_runs_keep_the_published_gradient(mnist) -> None:
    """tDLR⁺ (eq. 18) is left as it is: a targeted attack gives the same bits with κ."""
    model, x, y = mnist
    targets = (y + 1) % 10
    plain = alma(model, x, targets, targeted=True, distance="l2", steps=20)
    smooth = alma(model, x, targets, targeted=True, distance="l2", steps=20, smooth_max=0.1)
    assert torch.equal(plain.adversarials, smooth.adversarials)


def test_class_restarts_smooth_run_0_only(mnist, monkeypatch) -> None:
    """With ``restart_mode="classes"``, κ smooths run 0 (untargeted) only; the aimed runs keep
    tDLR⁺'s gradient: the smoothed constraint is built at each of run 0's 10 steps, not after."""
    import alma_plugin.core.constraints as constraints

    model, x, y = mnist
    calls: list[int] = []
    smoothed = constraints.smoothed_dlr_plus

    def counted(*args: object) -> object:
        calls.append(len(steps_seen))
        return smoothed(*args)  # type: ignore[arg-type]

    steps_seen: list[int] = []
    monkeypatch.setattr(constraints, "smoothed_dlr_plus", counted)
    result = alma(model, x, y, distance="l2", steps=20, restarts=2, restart_mode="classes",
                  smooth_max=0.1, callback=lambda info: steps_seen.append(1))  # fmt: skip
    assert calls == list(range(10)) and len(steps_seen) == 20
    with torch.no_grad():
        assert (model(result.adversarials[result.success]).argmax(1) != y[result.success]).all()
