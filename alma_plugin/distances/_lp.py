"""Per-sample ℓp distances, with gradients that are finite and framework-independent at zero.

``|·|`` is written as ``d · sign(d)`` (:func:`._common.abs0`), whose sub-gradient at a zero
coordinate is 0 on every backend (``jax.grad(jnp.abs)(0.)`` is 1, PyTorch's is 0), and the
ℓ2 root is a :func:`._common.safe_sqrt` (gradient 0, not NaN, where x̃ = x).
"""

from __future__ import annotations

import eagerpy as ep

from ._common import abs0, distance_function, flatten, safe_sqrt


def _flat_difference(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """x̃ − x as (N, features); shape (N,) counts as one feature per sample."""
    return flatten(x_adv - x)


@distance_function
def l1(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """‖x̃ − x‖₁ per sample, shape (N,). The sub-gradient at a zero coordinate is 0."""
    return abs0(_flat_difference(x_adv, x)).sum(axis=1)


@distance_function
def l2(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """‖x̃ − x‖₂ per sample, shape (N,), with gradient 0 (not NaN) where x̃ = x."""
    return safe_sqrt(_flat_difference(x_adv, x).square().sum(axis=1))


@distance_function
def linf(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """‖x̃ − x‖∞ per sample, shape (N,); gradient 0 where x̃ = x, and split evenly among
    the coordinates tied at the maximum (the same on every backend)."""
    difference = _flat_difference(x_adv, x)
    if difference.shape[1] == 0:
        return difference.sum(axis=1)  # no features: distance 0 (max of nothing)
    magnitude = abs0(difference)
    if isinstance(magnitude, ep.PyTorchTensor):
        # amax splits a tie's gradient evenly among the tied coordinates, as JAX's and
        # TensorFlow's max do; eagerpy's max (torch.max(dim)) gives it all to one of them.
        return ep.astensor(magnitude.raw.amax(dim=1))
    return magnitude.max(axis=1)
