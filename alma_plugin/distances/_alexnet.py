"""AlexNet's convolutional trunk, laid out like torchvision's ``alexnet().features``.

Defined here so that LPIPS needs no torchvision (which cannot be imported next to the CPU torch
wheel this project pins). The module indices match torchvision's, so a torchvision-format state
dict (``features.0.weight``, ``features.3.bias``, …; e.g. the hub file
``alexnet-owt-7be5be79.pth``) loads unchanged; its ``classifier.*`` entries are ignored.

Krizhevsky, "One weird trick for parallelizing convolutional neural networks", 2014 (the
single-tower variant torchvision ships).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

#: Indices in ``features`` of the ReLUs whose outputs LPIPS compares (relu1 … relu5).
LPIPS_TAPS: tuple[int, ...] = (1, 4, 7, 9, 11)
#: Channels of those five feature maps.
LPIPS_CHANNELS: tuple[int, ...] = (64, 192, 384, 256, 256)


def alexnet_features() -> nn.Sequential:
    """The 13 layers of torchvision's ``alexnet().features`` (ReLUs not in-place)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
        nn.ReLU(),  # 1  relu1
        nn.MaxPool2d(kernel_size=3, stride=2),  # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
        nn.ReLU(),  # 4  relu2
        nn.MaxPool2d(kernel_size=3, stride=2),  # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
        nn.ReLU(),  # 7  relu3
        nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
        nn.ReLU(),  # 9  relu4
        nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
        nn.ReLU(),  # 11 relu5
        nn.MaxPool2d(kernel_size=3, stride=2),  # 12
    )


class AlexNetFeatures(nn.Module):
    """Holds ``features`` under that name so torchvision state-dict keys line up."""

    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()

    def load_torchvision_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the ``features.*`` entries of a torchvision AlexNet state dict (strictly)."""
        features = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        if not features:
            raise ValueError(
                "the AlexNet state dict has no 'features.*' entries (torchvision format "
                f"expected); its first keys are {list(state_dict)[:5]}"
            )
        self.load_state_dict(features, strict=True)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps after relu1 … relu5, for an input already scaled for AlexNet."""
        outputs = []
        last = LPIPS_TAPS[-1]
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LPIPS_TAPS:
                outputs.append(x)
            if index == last:
                break
        return outputs
