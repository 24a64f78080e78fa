"""Step-size schedule of ALMA (§3.2.3): the initial step size η⁽⁰⁾ and its decay.

η⁽⁰⁾ is chosen per sample so that the first gradient step increases the distance by exactly ε:
D(P_[0,1](x − η⁽⁰⁾ g), x) = ε, found by a doubling/halving line search that brackets the
solution followed by a bisection. Only the distance is evaluated, never the model.

The step size stays at η⁽⁰⁾ while a sample explores; from the step t* at which it first becomes
adversarial it decays exponentially to η⁽⁰⁾·r at the last step (Fig. 3; r is ``lr_reduction``).
"""

from __future__ import annotations

import math

import eagerpy as ep
import numpy as np

from ..distances import DistanceFunction
from .tensors import expand

_BRACKET_STEPS = 64  # η ranges over 2^±64: far beyond any gradient scale met in practice
_BISECTION_STEPS = 40
_RELATIVE_TOLERANCE = 1e-3


def random_unit_directions(like: ep.Tensor, rng: np.random.Generator) -> ep.Tensor:
    """Per-sample random directions of unit ℓ2 norm, drawn from a seeded numpy generator so the
    attack is deterministic in every framework."""
    noise = rng.standard_normal(like.shape)
    noise /= np.linalg.norm(noise.reshape(len(noise), -1), axis=1).reshape(
        (-1,) + (1,) * (noise.ndim - 1)
    )
    return ep.from_numpy(like, noise).astype(like.dtype)


def initial_step_size(
    distance: DistanceFunction,
    inputs: ep.Tensor,
    direction: ep.Tensor,
    target_distance: float,
) -> ep.Tensor:
    """Per-sample η⁽⁰⁾ with D(P_[0,1](x − η⁽⁰⁾·g), x) = ε (to 0.1 %), shape (N,).

    ``inputs`` lie in [0, 1]. Where the box caps D below ε for every η, the largest bracketed
    η is returned (the step then saturates the box).
    """

    def distance_at(eta: ep.Tensor) -> ep.Tensor:
        return distance((inputs - expand(eta, inputs) * direction).clip(0, 1), inputs)

    ones = ep.ones(inputs, len(inputs)).astype(inputs.dtype)
    first = distance_at(ones)
    # 1. Line search: double `upper` until D ≥ ε, or halve `lower` until D < ε.
    lower = ep.where(first < target_distance, ones, ones / 2)
    upper = ep.where(first < target_distance, ones * 2, ones)
    for _ in range(_BRACKET_STEPS):
        too_short = distance_at(upper) < target_distance
        too_long = distance_at(lower) >= target_distance
        if not (too_short.any() or too_long.any()):
            break
        lower = ep.where(too_short, upper, ep.where(too_long, lower / 2, lower))
        upper = ep.where(too_short, upper * 2, ep.where(too_long, lower * 2, upper))
    # 2. Bisection inside [lower, upper].
    eta = upper
    for _ in range(_BISECTION_STEPS):
        eta = (lower + upper) / 2
        value = distance_at(eta)
        if ((value - target_distance).abs() <= _RELATIVE_TOLERANCE * target_distance).all():
            break
        short = value < target_distance
        lower = ep.where(short, eta, lower)
        upper = ep.where(short, upper, eta)
    return eta


def decayed_step_size(
    initial: ep.Tensor,
    step: int,
    first_success_step: ep.Tensor,
    steps: int,
    final_ratio: float,
) -> ep.Tensor:
    """η⁽ᵗ⁾ = η⁽⁰⁾ before the first success, then η⁽⁰⁾·r^((t − t*)/(N − 1 − t*)), so the last
    step t = N − 1 uses exactly η⁽⁰⁾·r. ``first_success_step`` is −1 where none yet."""
    found = first_success_step >= 0
    start = first_success_step.astype(initial.dtype)
    remaining = (steps - 1 - start).maximum(1)
    progress = ((step - start) / remaining).clip(0, 1)
    return ep.where(found, initial * ep.exp(progress * math.log(final_ratio)), initial)
