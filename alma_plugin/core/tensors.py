"""Small batch helpers shared by both solvers."""

from __future__ import annotations

import eagerpy as ep

from ..distances._common import finite_rows

__all__ = ["expand", "finite_rows"]


def expand(per_sample: ep.Tensor, like: ep.Tensor) -> ep.Tensor:
    """A per-sample tensor (N,) reshaped to broadcast against ``like`` (N, ...)."""
    return per_sample.reshape((-1,) + (1,) * (like.ndim - 1))
