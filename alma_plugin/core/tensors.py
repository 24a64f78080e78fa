"""Small batch helpers shared by both solvers."""

from __future__ import annotations

import math

import eagerpy as ep

from ..distances._common import finite_rows

__all__ = ["class_indices", "expand", "finite_rows", "full", "nan_to_zero"]


def class_indices(labels: ep.Tensor, num_classes: int) -> ep.Tensor:
    """0 … K − 1 in the labels' framework and dtype, to compare with them: eagerpy's
    ``arange`` is int32 in TensorFlow, whose labels (argmax's dtype) are int64, and eagerpy's
    TensorFlow promotion of mixed dtypes calls ``np.find_common_type``, removed in NumPy 2."""
    return ep.arange(labels, num_classes).astype(labels.dtype)


def full(like: ep.Tensor, shape: tuple[int, ...], value: float) -> ep.Tensor:
    """``ep.full`` in ``like``'s dtype on every framework: eagerpy's TensorFlow ``full`` fills
    float32 (int32 for an integer value) whatever ``like`` is, and TensorFlow does not
    promote a float32 operand against float64 ones."""
    return ep.full(like, shape, value).astype(like.dtype)


def expand(per_sample: ep.Tensor, like: ep.Tensor) -> ep.Tensor:
    """A per-sample tensor (N,) reshaped to broadcast against ``like`` (N, ...)."""
    return per_sample.reshape((-1,) + (1,) * (like.ndim - 1))


def nan_to_zero(values: ep.Tensor) -> ep.Tensor:
    """``values`` with every NaN replaced by 0 (±Inf kept). PyTorch and JAX use their fused
    ``nan_to_num``, one pass over the gradient: ``isnan`` + ``where`` is two passes and a
    boolean image (PyTorch, 128 × 784 float32, 1 thread: 19 µs against 134 µs). Elsewhere the
    0 is a 0-d tensor broadcast by ``where``: eagerpy would turn a Python scalar into a full
    tensor of ``values``' shape."""
    if isinstance(values, ep.PyTorchTensor):
        import torch

        return ep.astensor(torch.nan_to_num(values.raw, nan=0.0, posinf=math.inf,
                                            neginf=-math.inf))  # fmt: skip
    if isinstance(values, ep.JAXTensor):
        import jax.numpy as jnp

        return ep.astensor(jnp.nan_to_num(values.raw, nan=0.0, posinf=jnp.inf, neginf=-jnp.inf))
    return ep.where(values.isnan(), ep.zeros(values, ()), values)
