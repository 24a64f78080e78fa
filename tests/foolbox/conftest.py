"""Fixtures shared by the Foolbox adapter tests."""

from __future__ import annotations

import foolbox as fb
import pytest
import torch


@pytest.fixture(scope="module")
def fmodel(mnist_cnn: torch.nn.Module) -> fb.PyTorchModel:
    """The session's MNIST CNN as a Foolbox model on (0, 1)."""
    return fb.PyTorchModel(mnist_cnn, bounds=(0, 1), device="cpu")


@pytest.fixture(scope="module")
def few(mnist_samples: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """8 of the 32 session samples: enough for behaviour tests, cheap on a loaded machine."""
    return mnist_samples[0][:8], mnist_samples[1][:8]
