"""Step-size schedule of ALMA (§3.2.3): the initial step size η⁽⁰⁾ and its decay.

η⁽⁰⁾ is chosen per sample so that a plain step along the constraint's gradient g = ∇DLR⁺
moves the distance by exactly ε: D(P_[0,1](x − η⁽⁰⁾ g), x) = ε (to 0.1 %), the paper's recipe.
(The paper also states D(x̃⁽¹⁾, x) = ε, which the first real step, RMSProp and momentum on
∇L, does not meet exactly; the recipe is what is implemented.) The paper finds η⁽⁰⁾ by a line
search that brackets the solution followed by a bisection (36 to 59 evaluations of D); here
ℓ1 and ℓ2 are solved in closed form (no evaluation of D) and the other distances by a
safeguarded secant on log D against log η (3 to 5 evaluations), with the bracketing search
kept as the fallback for the samples these leave unsolved. Only the distance is evaluated,
never the model.

The step size stays at η⁽⁰⁾ while a sample explores; from the step t* at which it first becomes
adversarial it decays exponentially to η⁽⁰⁾·r at the last step (Fig. 3; r is ``lr_reduction``).
"""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import numpy as np

from ..distances import DistanceFunction, l1, l2
from .tensors import expand

_BRACKET_STEPS = 64  # η ranges over 2^±64: far beyond any gradient scale met in practice
_BISECTION_STEPS = 40
_RELATIVE_TOLERANCE = 1e-3
_LP_UPDATES = 32  # ℓp closed form: majorise-minimise updates, exact once the clipped set is stable
_SECANT_EVALUATIONS = 5  # other distances: evaluations of the safeguarded log–log secant
_RESOLUTION_TOLERANCE = 0.05  # accepted after them, for distances that cannot resolve 0.1 % of ε
_FIRST_L2_STEP = 1.0  # the secant's first η moves x by ‖η g‖₂ = 1
_FIRST_SLOPE = 2.0  # d log D / d log η of the local quadratic model D(η g) ≈ η² D(g)
_SLOPE_RANGE = (0.25, 8.0)
_OPEN_BRACKET_STEP = 2.0  # log-η step when the secant leaves a one-sided bracket


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

    ``inputs`` lie in [0, 1]. ℓ1 and ℓ2 are solved in closed form, box included
    (:func:`lp_step_size`, no distance evaluation); any other distance by a safeguarded secant
    on log D against log η (:func:`secant_step_size`, 3–5 evaluations for a distance that grows
    like a power of η). Samples either leaves unsolved — the box caps D below ε for every η, or
    D is far from a power law — get the doubling/bisection search (:func:`bracket_step_size`),
    which returns the largest bracketed η where the box caps D (the step then saturates it).
    The check for such samples reads one boolean on the host per iteration: the solver only
    calls this at step 0.
    """
    if distance is l2 or distance is l1:
        eta, done = lp_step_size(2 if distance is l2 else 1, inputs, direction, target_distance)
    else:
        eta, done = secant_step_size(distance, inputs, direction, target_distance)
    if not done.all():
        fallback = bracket_step_size(distance, inputs, direction, target_distance)
        eta = ep.where(done, eta, fallback)
    return eta


def lp_step_size(
    p: int, inputs: ep.Tensor, direction: ep.Tensor, target_distance: float
) -> tuple[ep.Tensor, ep.Tensor]:
    """η⁽⁰⁾ for D = ‖·‖ₚ (p = 1, 2) without evaluating D, and where it is within tolerance.

    Coordinate i moves by min(η|gᵢ|, cᵢ), cᵢ its room in the box along −gᵢ (xᵢ if gᵢ > 0,
    1 − xᵢ if gᵢ < 0), so D(η)ᵖ = Σ_{clipped} cᵢᵖ + ηᵖ Σ_{free} |gᵢ|ᵖ. Without clipping
    η = ε/‖g‖ₚ exactly. With it, each update solves this equation with the clipped set of the
    current η: from η = 0 the updates increase monotonically to the root (the equation of a
    smaller η over-estimates D) and stop changing once the clipped set is that of the root, so
    the result is exact up to rounding; a handful of updates suffice in practice. ``done`` is
    False where the box caps D below ε.
    """
    magnitude = direction.abs().flatten(start=1)
    room = ep.where(direction > 0, inputs, 1 - inputs).flatten(start=1)
    room_p, magnitude_p = (room, magnitude) if p == 1 else (room.square(), magnitude.square())
    target = target_distance**p
    eta = ep.zeros(inputs, len(inputs)).astype(inputs.dtype)
    done = eta > 0
    for _ in range(_LP_UPDATES):
        clipped = expand(eta, magnitude) * magnitude >= room
        capped = ep.where(clipped, room_p, 0).sum(axis=1)
        free = ep.where(clipped, 0, magnitude_p).sum(axis=1)
        reached = (capped + eta**p * free) ** (1 / p)  # D(η) = the distance the step adds
        done = (reached - target_distance).abs() <= _RELATIVE_TOLERANCE * target_distance
        has_free = free > 0
        update = ((target - capped).maximum(0) / ep.where(has_free, free, 1)) ** (1 / p)
        # The update lies between η and the root: it keeps a converged η within tolerance.
        eta = ep.where(has_free, update.maximum(eta), eta)
        if done.all():
            break
    return eta, done


def secant_step_size(
    distance: DistanceFunction, inputs: ep.Tensor, direction: ep.Tensor, target_distance: float
) -> tuple[ep.Tensor, ep.Tensor]:
    """η⁽⁰⁾ by a secant on f(s) = log D(eˢ) − log ε, s = log η, and where it is within tolerance.

    Many perceptual distances grow like a power of η for small steps (1 − SSIM and LPIPS like
    η², CIEDE2000 like η), where f is linear in s and the secant exact. The first step assumes
    the quadratic model D(η g) ≈ η² D(g) from an ℓ2 step of length 1; later slopes come from the
    last two evaluations, clipped to [0.25, 8], and every iterate stays inside the bracket of
    the evaluations on either side of ε (bisected when the secant leaves it).

    A sample is done at |D − ε| ≤ 0.1 % ε (or a bracket narrower than 0.1 % in η), or, within
    5 % of ε, once an evaluation no longer halves its error; the search stops when every sample
    is done or after 5 evaluations, and returns the evaluated η closest to ε (done within 5 %
    of ε). That looser tolerance is for distances computed in float32 that cannot resolve
    0.1 % of a small ε, such as a user's 1 − index formed by subtraction (one float32 ulp of an
    index ≈ 1 is 0.4 % of ε = 3·10⁻⁵); the bracketing search cannot meet 0.1 % there either.
    The package's SSIM and MS-SSIM are formed without that cancellation and resolve it.
    """
    log_target = math.log(target_distance)
    norms = direction.flatten(start=1).square().sum(axis=1).sqrt()
    s = (_FIRST_L2_STEP / norms.maximum(1e-30)).log()

    def evaluate(s: ep.Tensor) -> ep.Tensor:
        eta = expand(s.exp(), inputs)
        value = distance((inputs - eta * direction).clip(0, 1), inputs)
        return value.maximum(1e-30).log() - log_target

    tolerance = math.log1p(_RELATIVE_TOLERANCE)
    resolution = math.log1p(_RESOLUTION_TOLERANCE)
    f = evaluate(s)
    best_s, best_f = s, f
    low, high = ep.full_like(s, -math.inf), ep.full_like(s, math.inf)
    s_prev, f_prev = s, f
    done = f.abs() <= tolerance
    for evaluation in range(1, _SECANT_EVALUATIONS):
        if done.all():
            break
        low = ep.where(f < 0, s.maximum(low), low)
        high = ep.where(f > 0, s.minimum(high), high)
        if evaluation == 1:
            slope = ep.full_like(s, _FIRST_SLOPE)
        else:
            slope = (f - f_prev) / ep.where(s == s_prev, 1, s - s_prev)
            slope = ep.where(slope.isnan(), _FIRST_SLOPE, slope).clip(*_SLOPE_RANGE)
        proposal = s - f / slope
        closed = ep.logical_and(low > -math.inf, high < math.inf)
        outside = ep.logical_or(proposal <= low, proposal >= high)
        open_step = ep.where(high < math.inf, high - _OPEN_BRACKET_STEP, low + _OPEN_BRACKET_STEP)
        proposal = ep.where(outside, ep.where(closed, (low + high) / 2, open_step), proposal)
        s_prev, f_prev = s, f
        s = ep.where(done, s, proposal)
        f = ep.where(done, f, evaluate(s))
        previous_best = best_f.abs()
        closer = f.abs() < previous_best
        best_s, best_f = ep.where(closer, s, best_s), ep.where(closer, f, best_f)
        narrow = ep.logical_and(closed, high - low <= tolerance)
        # No longer halving the error near ε: the distance's own resolution is reached.
        stalled = ep.logical_and(best_f.abs() > previous_best / 2, best_f.abs() <= resolution)
        done = ep.logical_or(done, ep.logical_or(f.abs() <= tolerance, narrow))
        done = ep.logical_or(done, stalled)
    done = ep.logical_or(done, best_f.abs() <= resolution)
    return best_s.exp(), done


def bracket_step_size(
    distance: DistanceFunction,
    inputs: ep.Tensor,
    direction: ep.Tensor,
    target_distance: float,
) -> ep.Tensor:
    """η⁽⁰⁾ by a doubling/halving line search that brackets ε, then a bisection (§3.2.3): 2 to
    ~170 evaluations of D. Where the box caps D below ε for every η, the largest bracketed η."""

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
    step: int | ep.Tensor,
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


def scheduled_step_size(
    schedule: str,
    initial: ep.Tensor,
    step: int | ep.Tensor,
    first_success_step: ep.Tensor,
    steps: int,
    final_ratio: float,
) -> ep.Tensor:
    """η⁽ᵗ⁾ of ``schedule`` (:data:`~alma_plugin.core.params.SCHEDULES`), from η⁽⁰⁾ to η⁽⁰⁾·r.

    "paper": :func:`decayed_step_size` (constant until the first success t*, Fig. 3).
    "exponential": η⁽⁰⁾·r^(t/(N−1)); "cosine": η⁽⁰⁾·(r + (1 − r)(1 + cos(πt/(N−1)))/2). These two
    decay from the first step whatever the samples do, and end at η⁽⁰⁾·r at t = N − 1.

    ``step`` is t, or a 0-d tensor holding t (a step replayed as a CUDA graph, :mod:`.graphs`):
    the factor of "exponential" / "cosine" is then computed on the device in float64, which
    gives the Python float's float32 rounding except at a float32 rounding tie.
    """
    if schedule == "paper":
        return decayed_step_size(initial, step, first_success_step, steps, final_ratio)
    if schedule not in ("exponential", "cosine"):
        raise ValueError(f"schedule must be 'paper', 'exponential' or 'cosine', got {schedule!r}")
    if isinstance(step, ep.Tensor):  # only in a CUDA graph, so a PyTorch tensor
        import torch

        progress_t = (step.raw.double() / max(steps - 1, 1)).clamp(max=1.0)
        factor_t = _decay_factor(schedule, progress_t, final_ratio, torch.cos)
        return initial * ep.astensor(factor_t).astype(initial.dtype)
    progress = min(step / max(steps - 1, 1), 1.0)
    return initial * _decay_factor(schedule, progress, final_ratio, math.cos)


def _decay_factor(schedule: str, progress: Any, final_ratio: float, cos: Any) -> Any:
    """r^p ("exponential") or r + (1 − r)(1 + cos πp)/2 ("cosine") at progress p ∈ [0, 1]."""
    if schedule == "exponential":
        return final_ratio**progress
    return final_ratio + (1 - final_ratio) * (1 + cos(math.pi * progress)) / 2
