"""The ALMA loop: Algorithm 2 of Rony et al. (ICCV 2021) with the modifications of §3.2.

Everything is batched: μ, ρ, η and the best iterate are per sample. The solver works on the
normalised iterate x̃ ∈ [0, 1] (distances and ε live there) and calls the model on
lower + x̃·(upper − lower), so the same hyperparameters hold for any host bounds.
Each step costs exactly one forward and one backward model propagation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import eagerpy as ep
import numpy as np

from ..distances import DistanceFunction
from ..distances._common import unchecked
from .autodiff import check_differentiable, stop_gradient, value_aux_and_grad
from .constraints import check_class_restarts, descent_constraint, is_satisfied, restart_goal
from .graphs import run_steps
from .model_checks import call_model, check_logits, judge_success, warn_if_probabilities
from .params import ALMAParams
from .penalties import get_penalty
from .restarts import Place, check_restart_mode, restart_rng, run_restarts, uniform_noise
from .result import AttackResult, StepInfo
from .schedules import initial_step_size, random_unit_directions, scheduled_step_size
from .tensors import (
    bounded_gradient,
    expand,
    finite_rows,
    full,
    judged_logits,
    model_space,
    valid_logit_rows,
)
from .validation import Bounds, as_tensor, check_params_fit, working_dtype

ModelFn = Callable[[ep.Tensor], Any]
#: success(model_inputs, logits) -> bool (N,); model_inputs are in the host's bounds.
SuccessFn = Callable[[ep.Tensor, ep.Tensor], ep.Tensor]

_RMS_EPSILON = 1e-8
_VANISHING_GRADIENT = 1e-12


class _State(NamedTuple):
    """What one step of Algorithm 2 hands to the next, per sample."""

    x_adv: ep.Tensor  # x̃⁽ᵗ⁾ in [0, 1]
    mu: ep.Tensor  # μ, the multiplier (eq. 9)
    rho: ep.Tensor  # ρ, the penalty parameter
    square_avg: ep.Tensor  # RMSProp's average of g² (starts at 1, §3.2.4)
    velocity: ep.Tensor  # the momentum buffer
    step_size0: ep.Tensor  # η⁽⁰⁾, set by the §3.2.3 search at step 0
    goals: ep.Tensor  # the labels (or targets; a "classes" restart's class from step 0 on)
    constraint_at_last_check: ep.Tensor  # d at the last ρ check (steps 10–14)
    best_adv: ep.Tensor  # the smallest adversarial so far, in the host's bounds
    best_distance: ep.Tensor  # its D (+inf where none)
    best_prediction: ep.Tensor  # its class (−1 where none)
    first_success: ep.Tensor  # t* (−1 where none yet)
    ever_adversarial: ep.Tensor
    stopped: ep.Tensor  # 0-d: the early-stop condition has held


def _quantize(x: ep.Tensor, levels: int) -> ep.Tensor:
    return ((x * (levels - 1) + 0.5) // 1) / (levels - 1)


def alma_solve(
    model: ModelFn,
    inputs: ep.Tensor,
    labels: ep.Tensor,
    *,
    distance: DistanceFunction,
    params: ALMAParams,
    steps: int,
    bounds: Bounds = (0.0, 1.0),
    targeted: bool = False,
    is_adversarial: SuccessFn | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    early_stop: float | None = None,
    seed: int = 0,
    place: Place | None = None,
    cuda_graphs: bool = False,
    params_for_classes: Callable[[int], ALMAParams] | None = None,
) -> AttackResult[ep.Tensor]:
    """Run ALMA on a validated batch. ``inputs`` lie in ``bounds``; ``labels`` are the true
    classes, or the targets when ``targeted``. ``params`` are resolved for the budget
    (:meth:`ALMAParams.for_budget`). ``early_stop`` (in D's normalised units) ends the run once
    every sample has an adversarial with D < early_stop. The callback sees eagerpy tensors.

    Host synchronisation: after step 0 (input checks, η⁽⁰⁾ search) the loop reads nothing back
    from the device, except one boolean every M = ``check_steps`` steps when ``early_stop`` is
    set (the user's ``is_adversarial`` and ``callback`` may synchronise on their own). The stop
    condition is tracked on the device at every step and the best iterates are frozen from the
    step it first holds, so the result is the one of a check at every step; the run only goes
    on for up to M − 1 more steps, which ``steps_run`` counts.

    ``params.restarts`` = R > 1 splits the steps into R runs (:mod:`.restarts`): run 0 from x;
    run k ≥ 1 with ``restart_mode="random"`` from a random point at D =
    ``params.restart_distance`` from x (uniform noise scaled by the §3.2.3 search, with its
    own generator ``restart_rng(seed, k)``), with ``"classes"`` from x under tDLR⁺ towards
    the most likely class at x that no earlier run aimed at or returned (success: any
    misclassification; :func:`.constraints.restart_goal`); each sample keeps its best
    adversarial. ``first_success_step`` and the callback's step count from the start of run
    0. ``place`` (given by :func:`.restarts.run_restarts` only) makes this call one run of
    ``place.steps`` steps. ``params_for_classes(K)`` (the entry points': ``params`` resolved
    for a model with K classes) is asked at run 0's first forward, where K becomes known;
    where it is one run (the default class restarts on a model with fewer than
    ``CLASS_RESTARTS_MIN_CLASSES`` classes), run 0 takes those params and the whole budget,
    the same attack as ``restarts=1`` bit for bit.

    ``cuda_graphs`` (PyTorch on CUDA): after 3 warm-up steps, each step is replayed as a CUDA
    graph (:mod:`.graphs`): the same kernels, launched at once. The model's Python code then
    runs for the warm-up and the capture only."""
    # The runs, resolved for the budget, the distance and the goal (ALMAParams.for_budget).
    assert params.restarts is not None and params.restart_mode is not None
    runs = params.restarts
    if place is None:
        check_restart_mode(params.restart_mode, params.restarts, targeted)

        def run(place: Place) -> AttackResult[ep.Tensor]:
            return alma_solve(model, inputs, labels, distance=distance, params=params,
                              steps=place.steps, bounds=bounds, targeted=targeted,
                              is_adversarial=is_adversarial, callback=callback,
                              early_stop=early_stop, seed=seed, place=place,
                              cuda_graphs=cuda_graphs,
                              params_for_classes=params_for_classes)  # fmt: skip

        return run_restarts(run, steps, params.restarts, early_stop, params.first_run_share)
    restart, step_offset, solved, reached = place.index, place.offset, place.solved, place.reached
    c = params
    penalty = get_penalty(c.penalty)
    assert c.alpha is not None and c.rmsprop_decay is not None and c.momentum is not None
    assert c.smooth_max is not None  # κ, resolved for the distance (ALMAParams.for_budget)
    alpha, rmsprop_decay, momentum, smooth_max = c.alpha, c.rmsprop_decay, c.momentum, c.smooth_max
    lower, upper = bounds
    scale = upper - lower
    inputs = as_tensor("inputs", inputs)  # detached: no graph into the caller's tensor
    batch = len(inputs)
    # The state (μ up to 1e12, RMSProp averages) needs at least float32; the model is called on
    # its own dtype (float16/bfloat16 models included) and that rounded input is what is judged.
    dtype = working_dtype(inputs)
    x = (inputs.astype(dtype) - lower) / scale  # the original input in [0, 1]
    check_params_fit(c, x)
    to_model_space, remeasures = model_space(inputs, x, bounds, dtype, c.levels)
    start = inputs.astype(dtype)  # the inputs in the working dtype, in their own space

    def per_sample(value: float) -> ep.Tensor:
        return full(x, (batch,), value).astype(dtype)

    # The iterates stay in the box and x was validated: D needs no finiteness checks per step.
    objective = unchecked(distance)
    rng = restart_rng(seed, restart)
    random_start = restart > 0 and c.restart_mode == "random"
    # A "classes" restart aims at the most likely class at x that no earlier run aimed at or
    # returned; the ranking comes from its own first forward, at x.
    aims_at_class = restart > 0 and c.restart_mode == "classes"
    # 1. x̃⁽⁰⁾ ← x; μ⁽⁰⁾, ρ⁽⁰⁾; RMSProp average at 1 (§3.2.4); empty momentum.
    x_adv = x
    if random_start:
        # A restart: x̃⁽⁰⁾ = P_[0,1](x − η n), n ~ U(−1, 1)ⁿ, with D(x̃⁽⁰⁾, x) = restart_distance.
        assert c.restart_distance is not None
        noise = uniform_noise(x, rng)
        x_adv = (x - expand(initial_step_size(distance, x, noise, c.restart_distance), x)
                 * noise).clip(0, 1)  # fmt: skip
        if c.levels is not None:  # every iterate the model judges lies on the grid
            x_adv = _quantize(x_adv, c.levels)
    # Carried from step to step; a NamedTuple so that :class:`.graphs.Steps` can keep it in
    # buffers of its own when the steps are replayed as CUDA graphs.
    state = _State(
        x_adv=x_adv,
        mu=per_sample(c.mu_init),
        rho=per_sample(c.rho_init),
        square_avg=ep.ones_like(x),
        velocity=ep.zeros_like(x),
        step_size0=per_sample(c.init_lr or 0.0),
        goals=labels,
        constraint_at_last_check=per_sample(np.inf),
        best_adv=inputs,
        best_distance=per_sample(np.inf),
        best_prediction=full(labels, (batch,), -1),
        first_success=full(labels, (batch,), -1),
        ever_adversarial=ep.zeros(x, (batch,)) > 0,  # all False
        stopped=ep.zeros(x, ()) > 0,  # the early-stop condition has held, on the device
    )

    def fit_to_classes(num_classes: int) -> None:
        """At run 0's first forward: the params for K classes, and where they are one run
        (the default class restarts need K ≥ CLASS_RESTARTS_MIN_CLASSES), the whole budget
        for run 0. Nothing the step has computed so far depends on what this changes."""
        nonlocal c, alpha, rmsprop_decay, momentum, smooth_max, runs, steps
        assert params_for_classes is not None and place is not None
        fitted = params_for_classes(num_classes)
        if fitted == c:
            return
        assert fitted.restarts == 1, "only the default class restarts depend on K"
        assert place.budget >= place.steps, "run_restarts gives run 0 the whole budget"
        assert fitted.alpha is not None and fitted.smooth_max is not None
        assert fitted.rmsprop_decay is not None and fitted.momentum is not None
        c, runs, steps = fitted, 1, place.budget
        alpha, rmsprop_decay, momentum = fitted.alpha, fitted.rmsprop_decay, fitted.momentum
        smooth_max = fitted.smooth_max

    def advance(s: _State, t: int, clock: Any) -> tuple[_State, tuple[ep.Tensor, ...]]:
        """Iteration t of Algorithm 2 from ``s``. ``t`` takes the decisions made in Python
        (step 0, a ρ check); ``clock`` is t for the arithmetic (a device tensor in a graph)."""
        x_adv, mu, rho, square_avg, velocity = s.x_adv, s.mu, s.rho, s.square_avg, s.velocity
        step_size0, constraint_at_last_check = s.step_size0, s.constraint_at_last_check

        def loss_fn(u: ep.Tensor) -> tuple[ep.Tensor, tuple[ep.Tensor, ...]]:
            model_inputs = to_model_space(u)
            if remeasures:  # D measures what the model sees, as rounded in its space and dtype
                # x + (what moved), not (model input − lower) / scale: where nothing moved the
                # difference is an exact 0, so u = x bit for bit and D = 0 with gradient 0 there.
                # (Under jax.value_and_grad the division rounds differently from the one that
                # made x: u − x was ±1 ulp, and ∇D of ℓ1 / ℓ2 / CIEDE2000 O(1) rounding noise.)
                u = x + (model_inputs.astype(dtype) - start) / scale
            logits = call_model(model, model_inputs)  # 3. z ← f(x̃)
            if t == 0:  # the class count K is only known once the model has answered
                check_logits(logits, labels, "targets" if targeted else "labels")
                check_differentiable(logits)
                if restart == 0 and params_for_classes is not None:
                    fit_to_classes(logits.shape[-1])
                if restart == 0 and c.restart_mode == "classes":
                    check_class_restarts(logits.shape[-1], runs)
            logits = judged_logits(logits, dtype)  # float16 ones in float32; float64 kept
            goals = s.goals
            if aims_at_class and t == 0:  # the logits at x̃⁽⁰⁾ = x rank the other classes
                goals = restart_goal(stop_gradient(logits), labels, reached)
            # 4. d ← DLR⁺(z, y), or tDLR⁺ (κ > 0: the gradient of a smoothed max, not in the paper)
            d = descent_constraint(logits, goals, targeted or aims_at_class, smooth_max)
            # DLR⁺'s denominator is positive: d < 0 is exactly the tolerant argmax test (and
            # False for NaN logits); a run aimed at a class counts any other class too.
            hit = is_satisfied(stop_gradient(logits), labels) if aims_at_class else d < 0
            if d.dtype != dtype:  # float64 logits: d in the state's dtype, or d would promote x̃
                d = d.astype(dtype)
            # 5–6. μ̂ = ∂P/∂d and its clipped EMA (eq. 9); μ is a constant for the gradient.
            d_value = stop_gradient(d)
            mu_hat = penalty.derivative(d_value, rho, mu)
            new_mu = (alpha * mu + (1 - alpha) * mu_hat).clip(c.mu_min, c.mu_max)
            dist = objective(u, x)
            loss = dist + penalty.value(d, rho, new_mu)  # 7. L ← D + P(d, ρ, μ)
            return loss.sum(), (model_inputs, logits, d, dist, new_mu, goals, hit)

        # 8. g ← ∇L (one forward, one backward).
        _, aux, grad = value_aux_and_grad(loss_fn, x_adv)
        model_inputs, logits, d, dist, mu, goals, hit = aux
        if t == 0 and restart == 0:
            warn_if_probabilities(logits)

        # 17. Keep the adversarial iterate with the smallest D.
        if is_adversarial is None:
            success = hit
        else:
            success = judge_success(is_adversarial, model_inputs, logits, batch)
        # a NaN or +∞ logit is no success, whatever d says (K = 2: the plain margin, d = −∞)
        success = ep.logical_and(success, valid_logit_rows(logits))
        success = ep.logical_and(success, finite_rows(dist))
        improved = ep.logical_and(success, dist < s.best_distance)
        if early_stop is not None:  # nothing changes once the early-stop condition held
            improved = ep.logical_and(improved, s.stopped.logical_not())
        # The tensor the model judged is the one returned: no re-mapping that could round.
        best_adv = ep.where(expand(improved, x), model_inputs, s.best_adv)
        best_distance = ep.where(improved, dist, s.best_distance)
        best_prediction = ep.where(improved, logits.argmax(axis=-1).astype(labels.dtype),
                                   s.best_prediction)  # fmt: skip
        first_success = ep.where(ep.logical_and(success, s.first_success < 0), clock,
                                 s.first_success)  # fmt: skip
        ever_adversarial = ep.logical_or(s.ever_adversarial, success)

        # A NaN region of the model (e.g. logits overflowing beyond some radius) gives NaN
        # gradients: no step from them; an infinite one (a float16 model's backward once μ has
        # grown) is bounded (not in the paper): the iterate and RMSProp's average stay finite.
        grad = bounded_gradient(grad)

        if t == 0:
            # §3.2.3 searches along g = ∇DLR⁺. At t = 0 of run 0, D ≡ 0 and ∇L = P′(d)·∇d, so
            # the constraint's gradient is ∇L / P′ per sample: no extra backward propagation.
            # A random restart starts away from x: ∇D is taken out first (D only, no model call).
            search = grad
            if random_start:
                search = grad - value_aux_and_grad(lambda u: (distance(u, x).sum(), ()), x_adv)[2]
            # A vanishing gradient gets a random unit direction so every sample moves (not in
            # the paper, whose §3.2.3 search needs a direction; as the authors' code does).
            norms = search.flatten(start=1).square().sum(axis=1).sqrt()
            vanishing = expand(norms <= _VANISHING_GRADIENT, x)
            if vanishing.any():
                directions = random_unit_directions(grad, rng)
                grad = ep.where(vanishing, directions, grad)
                search = ep.where(vanishing, directions, search)
            if c.init_lr is None:  # §3.2.3: η⁽⁰⁾ such that the first step adds ε to D
                assert c.init_lr_distance is not None
                slope = penalty.derivative(d, rho, mu)
                usable = expand(ep.logical_and(slope > 0, vanishing.logical_not().flatten()), x)
                direction = ep.where(usable, search / expand(slope.maximum(1e-30), x), search)
                step_size0 = initial_step_size(distance, x, direction, c.init_lr_distance)
            constraint_at_last_check = d

        # Constant η while exploring, exponential decay after the first success (Fig. 3).
        # (schedule="paper"; "exponential" / "cosine" decay from the first step instead.)
        step_size = scheduled_step_size(
            c.schedule, step_size0, clock, first_success, steps, c.lr_reduction
        )

        # 9. RMSProp + momentum step, projection on the box, optional quantisation.
        square_avg = rmsprop_decay * square_avg + (1 - rmsprop_decay) * grad.square()
        velocity = momentum * velocity + grad / (square_avg.sqrt() + _RMS_EPSILON)
        x_adv = (x_adv - expand(step_size, x) * velocity).clip(0, 1)
        if c.levels is not None:
            x_adv = _quantize(x_adv, c.levels)

        # 10–14. Every M steps: ρ ← γρ where no adversarial was ever found and d did not drop
        # below τ times its value at the previous check.
        if (t + 1) % c.check_steps == 0:
            stalled = ep.logical_and(
                ever_adversarial.logical_not(), d > c.tau * constraint_at_last_check
            )
            rho = ep.where(stalled, (c.gamma * rho).minimum(c.rho_max), rho)
            constraint_at_last_check = d

        stopped = s.stopped
        if early_stop is not None:
            below = best_distance < early_stop
            if solved is not None:  # found below early_stop by an earlier run
                below = ep.logical_or(below, solved)
            stopped = ep.logical_or(stopped, below.all())
        new_state = _State(x_adv, mu, rho, square_avg, velocity, step_size0, goals,
                           constraint_at_last_check, best_adv, best_distance, best_prediction,
                           first_success, ever_adversarial, stopped)  # fmt: skip
        return new_state, (dist, d, mu, rho, step_size, success)

    s, steps_run = run_steps(advance, state, lambda: steps, check_steps=c.check_steps,
                             graphs=cuda_graphs,
                             offset=step_offset, callback=callback,
                             early_stop=early_stop is not None)  # fmt: skip
    return AttackResult(
        adversarials=s.best_adv,
        distances=s.best_distance,
        success=s.ever_adversarial,
        first_success_step=s.first_success,
        steps_run=steps_run,
        predictions=s.best_prediction,
    )
