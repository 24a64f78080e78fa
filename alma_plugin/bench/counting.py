"""The model wrapper that counts what an attack really costs, in model propagations."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CountingModel"]


class CountingModel(nn.Module):
    """Wraps a model and counts the samples it propagates forward and backward.

    A forward of a batch of n adds n to :attr:`forwards`; each backward pass through that output
    (a hook on the output fires once per pass) adds n to :attr:`backwards`. Per-sample costs are
    these totals divided by the number of attacked samples.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # mirror the mode, without touching the submodules
        self.forwards = 0
        self.backwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's output, counted."""
        out = self.model(x)
        n = int(out.shape[0]) if out.ndim else 1
        self.forwards += n
        if out.requires_grad:

            def count(grad: torch.Tensor, n: int = n) -> None:
                self.backwards += n

            out.register_hook(count)
        return out
