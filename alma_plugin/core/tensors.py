"""Small batch helpers shared by both solvers."""

from __future__ import annotations

import eagerpy as ep

__all__ = ["expand", "finite_rows"]


def expand(per_sample: ep.Tensor, like: ep.Tensor) -> ep.Tensor:
    """A per-sample tensor (N,) reshaped to broadcast against ``like`` (N, ...)."""
    return per_sample.reshape((-1,) + (1,) * (like.ndim - 1))


def finite_rows(values: ep.Tensor) -> ep.Tensor:
    """Per sample (first axis): True where every value is finite. A sample whose logits or
    distance are NaN or infinite is never an adversarial, whatever a criterion says of it."""
    bad = ep.logical_or(values.isnan(), values.isinf())
    return bad.reshape((len(values), -1)).any(axis=1).logical_not()
