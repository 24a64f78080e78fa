"""The Lagrangian-trained embedded model (``mnist_lagrangian``) for
:mod:`alma_plugin.bench.train_mnist`: the loader of its training runs and the run itself,
through :func:`alma_plugin.training.adversarial_training` and
:class:`alma_plugin.torchattacks.Lagrangian`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..torchattacks import Lagrangian
from ..training import adversarial_training
from ..zoo.models import weights_filename
from .train_mnist import TrainConfig, load_weights, random_shift

__all__ = ["ShiftedBatches", "train_lagrangian"]


class ShiftedBatches:
    """Shuffled batches of ``(x, y)`` with random ±``shift`` px translations, re-drawn from
    ``generator`` at every iteration (one epoch): the loader of :func:`train`, for
    :func:`alma_plugin.training.adversarial_training`."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, generator: torch.Generator
    ) -> None:
        self.x, self.y, self.config, self.generator = x, y, config, generator

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.config.batch_size)

    def __iter__(self) -> Any:
        order = torch.randperm(len(self.x), generator=self.generator)
        size = self.config.batch_size
        for i in range(len(self)):
            idx = order[i * size : (i + 1) * size]
            yield random_shift(self.x[idx], self.config.shift, self.generator), self.y[idx]


def train_lagrangian(
    out: Path, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, progress: bool = False
) -> nn.Module:
    """Lagrangian adversarial training from the stored regular weights (see the module doc)."""
    torch.manual_seed(config.seed + 2)  # the attack's noise and dropout: torch's generator
    generator = torch.Generator().manual_seed(config.seed + 2)
    model = load_weights(out / weights_filename("mnist_regular"))
    attack = Lagrangian(model, init_lr=config.lag_init_lr, multiplier=config.lag_multiplier)
    adversarial_training(
        model,
        ShiftedBatches(x, y, config, generator),
        attack=attack,
        epochs=config.lag_epochs,
        lr=config.adv_lr,
        progress=progress,
        log=lambda line: print(f"[lagrangian] {line}", flush=True),
    )
    return model
