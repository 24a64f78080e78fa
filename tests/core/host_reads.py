"""Count the reads of device values by the host (a synchronisation on a GPU) per solver step.

On a CPU nothing waits, so the tests count the Python-level operations that would wait on a
GPU: ``Tensor.item()``, ``bool()``, ``float()``, ``int()``, ``.tolist()``, ``.numpy()`` of a
torch tensor, and host → device copies made through eagerpy's ``from_numpy``. The solvers'
``callback`` marks the end of each step, so every read lands in the step it follows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import pytest
import torch

READS = ("item", "__bool__", "__float__", "__int__", "tolist", "numpy")


class HostReads:
    """``reads[t]``: the reads made after the callback of step t − 1 and up to that of step t
    (so the early-stop check after step t − 1 counts for step t); ``reads[-1]``: after the
    last callback."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step = 0
        self.reads: Counter[int] = Counter()
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        monkeypatch.setattr(
            ep.PyTorchTensor, "from_numpy", self._counting(ep.PyTorchTensor.from_numpy)
        )

    def _counting(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.reads[self.step] += 1
            return method(*args, **kwargs)

        return counted

    def callback(self, info: Any) -> None:
        self.step = info.step + 1

    def after_step_zero(self) -> dict[int, int]:
        """The steps after step 0 with reads (the last key, ``steps``, is after the loop)."""
        return {t: n for t, n in sorted(self.reads.items()) if t >= 1 and n}
