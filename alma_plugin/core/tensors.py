"""Small batch helpers shared by both solvers."""

from __future__ import annotations

import eagerpy as ep

from ..distances._common import finite_rows

__all__ = ["expand", "finite_rows", "nan_to_zero"]


def expand(per_sample: ep.Tensor, like: ep.Tensor) -> ep.Tensor:
    """A per-sample tensor (N,) reshaped to broadcast against ``like`` (N, ...)."""
    return per_sample.reshape((-1,) + (1,) * (like.ndim - 1))


def nan_to_zero(values: ep.Tensor) -> ep.Tensor:
    """``values`` with every NaN replaced by 0. The 0 is a 0-d tensor broadcast by ``where``:
    eagerpy turns a Python scalar into a full tensor of ``values``' shape, which for a
    gradient is one more image-sized allocation and pass at every step."""
    return ep.where(values.isnan(), ep.zeros(values, ()), values)
