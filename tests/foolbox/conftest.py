"""Fixtures shared by the Foolbox adapter tests."""

from __future__ import annotations

import foolbox as fb
import pytest
import torch


@pytest.fixture(scope="module")
def fmodel(mnist_cnn: torch.nn.Module) -> fb.PyTorchModel:
    """The session's MNIST CNN as a Foolbox model on (0, 1)."""
    return fb.PyTorchModel(mnist_cnn, bounds=(0, 1), device="cpu")
