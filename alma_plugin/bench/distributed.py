"""Sharding the benchmark over processes with ``torch.distributed`` (launched by torchrun).

``torchrun --nproc_per_node=N -m alma_plugin.bench ...`` starts N processes with ``RANK`` and
``WORLD_SIZE`` in their environment. The samples are cut into fixed batches (the same whatever
the number of processes, so are their results and their per-batch files); each process attacks
a contiguous run of batches, and the per-sample results are gathered on rank 0, which writes
the report. The gloo backend runs
on CPU (and carries Python objects for CUDA runs too), so no extra setup is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.distributed as dist

__all__ = ["Context", "batches", "gather", "setup", "shard", "teardown"]


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the report (rank 0)."""
        return self.rank == 0


def setup() -> Context:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size())


def teardown(context: Context) -> None:
    """Leave the process group joined by :func:`setup`."""
    if context.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(count: int, context: Context) -> np.ndarray:
    """Indices (of ``range(count)``) attacked by this process: a contiguous chunk."""
    return np.array_split(np.arange(count), context.world_size)[context.rank]


def batches(count: int, batch_size: int, context: Context) -> list[np.ndarray]:
    """The batches (index arrays of ``range(count)``) attacked by this process: the fixed
    slices ``[0, batch_size), [batch_size, 2·batch_size), …`` shared out in contiguous runs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    slices = [np.arange(i, min(i + batch_size, count)) for i in range(0, count, batch_size)]
    runs = np.array_split(np.arange(len(slices)), context.world_size)[context.rank]
    return [slices[i] for i in runs]


def gather(value: Any, context: Context) -> list[Any]:
    """The ``value`` of every process, in rank order (a one-element list without a group)."""
    if context.world_size <= 1:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values
