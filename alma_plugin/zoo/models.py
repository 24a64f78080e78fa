"""The embedded models: the SmallCNN of the paper's MNIST experiments (regular, adversarial,
Lagrangian).

The architecture is the one used by Carlini & Wagner and by TRADES (and by DDN, FMN and the
ALMA paper, §4 "Models"). Three sets of weights ship with the package, all trained by
:mod:`alma_plugin.bench.train_mnist` on MNIST test images 0–8999:

- ``"mnist_regular"``: regular (clean) training;
- ``"mnist_adversarial"``: PGD-ℓ∞ adversarial training;
- ``"mnist_lagrangian"``: adversarial training with the Lagrangian attack of Azizmalayeri &
  Rohban (2021), :class:`alma_plugin.torchattacks.Lagrangian`.

Weights are stored as float16 arrays in a compressed ``.npz`` file and converted to float32 at
load time, so no pickle is involved.
"""

from __future__ import annotations

import io
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .data import read_asset

__all__ = ["MODEL_NAMES", "SmallCNN", "load_smallcnn", "weights_filename"]

#: Names accepted by :func:`load_smallcnn`.
MODEL_NAMES: tuple[str, ...] = ("mnist_regular", "mnist_adversarial", "mnist_lagrangian")


class SmallCNN(nn.Module):
    """The C&W / TRADES MNIST convolutional network.

    Input: ``(N, 1, 28, 28)`` images with values in ``[0, 1]``. Output: ``(N, 10)`` logits.

    Args:
        drop: dropout probability before the second fully-connected layer (TRADES uses 0.5);
            inactive in eval mode.
    """

    def __init__(self, drop: float = 0.5) -> None:
        super().__init__()
        self.num_channels = 1
        self.num_labels = 10
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(1, 32, 3)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU()),
                    ("maxpool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(64 * 4 * 4, 200)),
                    ("relu1", nn.ReLU()),
                    ("drop", nn.Dropout(drop)),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(200, 10)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of ``(N, 1, 28, 28)`` images in ``[0, 1]``."""
        features = self.feature_extractor(x)
        return self.classifier(features.flatten(1))


def weights_filename(name: str) -> str:
    """File name (inside ``alma_plugin/zoo/assets``) of the weights of model ``name``."""
    return f"smallcnn_{name}.npz"


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(
            f"unknown model name {name!r}; valid names are: {', '.join(map(repr, MODEL_NAMES))}"
        )


def state_dict_to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Convert a model's state dict to float16 numpy arrays (the stored format)."""
    return {k: v.detach().cpu().numpy().astype(np.float16) for k, v in model.state_dict().items()}


def load_smallcnn(name: str) -> SmallCNN:
    """Load one of the embedded SmallCNN models, in eval mode, on the CPU, in float32.

    Args:
        name: ``"mnist_regular"``, ``"mnist_adversarial"`` or ``"mnist_lagrangian"``.

    Raises:
        ValueError: if ``name`` is not one of :data:`MODEL_NAMES`.
    """
    _check_name(name)
    data = read_asset(weights_filename(name))
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        state = {k: torch.from_numpy(arrays[k].astype(np.float32)) for k in arrays.files}
    model = SmallCNN()
    model.load_state_dict(state)
    model.eval()
    return model
