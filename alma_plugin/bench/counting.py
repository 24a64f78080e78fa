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

    On a CUDA device the counts are kept in a device tensor and incremented by kernels queued
    with the model's: a replayed CUDA graph (``cuda_graphs=True``) runs those kernels again
    without running the Python code, so its propagations are counted too. Reading the counts
    there waits for the device. Setting :attr:`forwards` or :attr:`backwards` (e.g. to 0)
    resets them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # mirror the mode, without touching the submodules
        self._host = [0, 0]  # forwards, backwards counted in Python (CPU outputs)
        self._devices: dict[torch.device, torch.Tensor] = {}  # (2,) int64 counts per device

    def _device_counts(self, device: torch.device) -> torch.Tensor:
        counts = self._devices.get(device)
        if counts is None:
            if torch.cuda.is_current_stream_capturing():
                # A tensor made during a capture is filled at replay only: counts would be lost.
                raise RuntimeError(
                    "CountingModel must run once on a CUDA device before a CUDA graph captures "
                    "it (its device counter cannot be created during the capture)"
                )
            counts = torch.zeros(2, dtype=torch.int64, device=device)
            self._devices[device] = counts
        return counts

    def _add(self, device: torch.device, index: int, n: int) -> None:
        """Adds n to count ``index`` (0: forwards, 1: backwards) of an output on ``device``."""
        if device.type == "cuda":
            self._device_counts(device)[index].add_(n)  # a kernel: replayed with the graph
        else:
            self._host[index] += n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's output, counted."""
        out = self.model(x)
        n = int(out.shape[0]) if out.ndim else 1
        self._add(out.device, 0, n)
        if out.requires_grad:

            def count(grad: torch.Tensor, n: int = n, device: torch.device = out.device) -> None:
                self._add(device, 1, n)

            out.register_hook(count)
        return out

    def _total(self, index: int) -> int:
        total = self._host[index]
        for device, counts in self._devices.items():
            torch.cuda.synchronize(device)  # every stream: graphs may replay on another one
            total += int(counts[index].item())
        return total

    def _reset(self, index: int, value: int) -> None:
        self._host[index] = value
        for counts in self._devices.values():
            counts[index].zero_()

    @property
    def forwards(self) -> int:
        """Samples propagated forward so far."""
        return self._total(0)

    @forwards.setter
    def forwards(self, value: int) -> None:
        self._reset(0, value)

    @property
    def backwards(self) -> int:
        """Samples propagated backward so far (once per backward pass through an output)."""
        return self._total(1)

    @backwards.setter
    def backwards(self, value: int) -> None:
        self._reset(1, value)
