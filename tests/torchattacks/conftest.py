"""Fixtures shared by the torchattacks adapter tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch import nn


@pytest.fixture
def cnn(mnist_cnn: nn.Module) -> Iterator[nn.Module]:
    """The session CNN; gradients that torchattacks' own attacks (DeepFool, CW) leave in its
    parameters are cleared afterwards so other tests see it untouched."""
    yield mnist_cnn
    for parameter in mnist_cnn.parameters():
        parameter.grad = None
