"""ALMA ℓ1/ℓ2 on a small CNN trained in the test session: success, validity, side effects."""

from __future__ import annotations

import pytest
import torch

from alma_plugin import alma
from tests.utils import assert_unchanged, snapshot

STEPS = 100


def _targets(labels: torch.Tensor) -> torch.Tensor:
    return (labels + 1) % 10


@pytest.mark.parametrize("distance", ["l1", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_full_success_and_reported_successes_are_real(
    mnist_cnn: torch.nn.Module,
    mnist_samples: tuple[torch.Tensor, torch.Tensor],
    distance: str,
    targeted: bool,
) -> None:
    x, y = mnist_samples
    goal = _targets(y) if targeted else y
    x_before, y_before = x.clone(), goal.clone()
    before = snapshot(mnist_cnn)

    result = alma(mnist_cnn, x, goal, distance=distance, steps=STEPS, targeted=targeted)

    assert result.success.all(), f"{distance} targeted={targeted}: {result.success.float().mean()}"
    with torch.no_grad():
        predicted = mnist_cnn(result.adversarials).argmax(1)
    assert ((predicted == goal) if targeted else (predicted != goal)).all()
    assert result.adversarials.min() >= 0 and result.adversarials.max() <= 1
    norm = 1 if distance == "l1" else 2
    measured = (result.adversarials - x).flatten(1).norm(p=norm, dim=1)
    torch.testing.assert_close(result.distances, measured, rtol=1e-4, atol=1e-5)
    assert torch.equal(x, x_before) and torch.equal(goal, y_before)
    assert_unchanged(mnist_cnn, before)


def test_same_seed_same_output(
    mnist_cnn: torch.nn.Module, mnist_samples: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = mnist_samples[0][:8], mnist_samples[1][:8]
    first = alma(mnist_cnn, x, y, steps=50, seed=3)
    second = alma(mnist_cnn, x, y, steps=50, seed=3)
    assert torch.equal(first.adversarials, second.adversarials)
    assert torch.equal(first.distances, second.distances)


def test_train_mode_and_requires_grad_flags_left_alone(
    mnist_cnn: torch.nn.Module, mnist_samples: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = mnist_samples[0][:4], mnist_samples[1][:4]
    mnist_cnn.train()
    frozen = next(mnist_cnn.parameters())
    frozen.requires_grad_(False)
    before = snapshot(mnist_cnn)
    try:
        alma(mnist_cnn, x, y, steps=5)
        assert_unchanged(mnist_cnn, before)
    finally:
        frozen.requires_grad_(True)
        mnist_cnn.eval()


@pytest.mark.parametrize("bounds", [(0.0, 255.0), (-1.0, 1.0)])
def test_other_bounds_give_the_same_attack(
    mnist_cnn: torch.nn.Module,
    mnist_samples: tuple[torch.Tensor, torch.Tensor],
    bounds: tuple[float, float],
) -> None:
    lower, upper = bounds
    x, y = mnist_samples[0][:8], mnist_samples[1][:8]

    class Rescaled(torch.nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return mnist_cnn((inputs - lower) / (upper - lower))

    reference = alma(mnist_cnn, x, y, steps=60)
    scaled = alma(Rescaled(), x * (upper - lower) + lower, y, steps=60, bounds=bounds)
    assert scaled.success.all() == reference.success.all()
    assert scaled.adversarials.min() >= lower and scaled.adversarials.max() <= upper
    # Distances are reported in the [0, 1]-normalised space: the same numbers for any bounds.
    torch.testing.assert_close(scaled.distances, reference.distances, rtol=2e-2, atol=1e-3)
