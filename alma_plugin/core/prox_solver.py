"""The ALMA prox loop (thesis Algorithm IV-2, §5.4) on eagerpy tensors.

Minimal ℓ∞ perturbations under many constraints: one DLR⁺ constraint per pixel in semantic
segmentation (logits (N, K, H, W)), one per sample in classification (logits (N, K)), both
flattened to (N, M) by :mod:`.prox_constraints`. Per step t = 1, …, N, with exactly one forward
and one backward model propagation:

* d⁽ᵗ⁾ = DLR⁺ (or tDLR⁺) of every constraint at x̃⁽ᵗ⁾ = x + δ⁽ᵗ⁻¹⁾ (steps 3–4);
* scale w⁽ᵗ⁾ by eq. 5.8 (steps 5–9) and mask m̃⁽ᵗ⁾ by eq. 5.6 (steps 10–11), :mod:`.prox_schedule`;
* multipliers μ by the EMA of ∂/∂d (m̃ᵀ P(w d, ρ, μ)) (steps 12–13) with the modified P2 of
  eq. 5.9; ρ ← γρ every M steps for the constraints of m̃ neither satisfied during the last M
  steps nor improved by a factor τ (steps 14–19, read as in ALMA: ρ only changes at check
  steps; the first check compares with d⁽¹⁾);
* VMFB step (eq. 5.17–5.18, steps 21–25): g = ∇_δ m̃ᵀ P(w d, ρ, μ), Adam-like diagonal metric
  s = √(v / (1 − αᵗ)) + ε with β₁ = 0, δ ← prox^{Diag(s)}_{λ⁽ᵗ⁾‖·‖∞+ι_Λ}(δ − λ⁽ᵗ⁾ g / s);
* best tracking (step 27): the smallest ‖δ‖∞ among iterates with APSR ≥ ν (eq. 5.19).

All hyperparameters live in the [0, 1]-normalised input space: δ is a perturbation of
u = (x − lower) / (upper − lower), and the model sees x + δ·(upper − lower).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import eagerpy as ep
import numpy as np

from .autodiff import check_differentiable, stop_gradient, value_aux_and_grad
from .constraints import check_class_restarts, descent_constraint, is_satisfied, restart_goal
from .graphs import pick, run_steps
from .model_checks import as_model_output, judge_success, versions, warn_if_probabilities
from .penalties import p2_prox, p2_prox_derivative
from .prox import linf_box_prox
from .prox_constraints import constraint_logits, make_constraints
from .prox_params import ProxParams
from .prox_schedule import constraint_mask, masking_rank, scale_update, step_size
from .restarts import Place, check_restart_mode, restart_rng, run_restarts, uniform_noise
from .result import AttackResult, StepInfo
from .tensors import (
    bounded_gradient,
    clip_rounding,
    expand,
    full,
    judged_logits,
    representable_bounds,
    valid_logit_rows,
)
from .validation import as_tensor, check_params_fit, working_dtype

__all__ = ["alma_prox_solve"]


class _State(NamedTuple):
    """What one step of Algorithm IV-2 hands to the next."""

    delta: ep.Tensor  # δ in the [0, 1]-normalised space
    v: ep.Tensor  # the Adam-like average of g² (β₁ = 0)
    mu: ep.Tensor  # μ, one per constraint (N, M)
    rho: ep.Tensor  # ρ, one per constraint
    w: ep.Tensor  # the constraint scale w (N, 1), eq. 5.8
    d_ref: ep.Tensor  # d at the last ρ check
    recent_sat: ep.Tensor  # satisfied since the last ρ check
    goals: ep.Tensor  # the labels (a "classes" restart's class from the first step on)
    best_delta: ep.Tensor
    best_norm: ep.Tensor  # its ‖δ‖∞ (+inf where none)
    best_apsr: ep.Tensor
    first_success: ep.Tensor  # −1 where none yet
    best_prediction: ep.Tensor  # classification only
    stopped: ep.Tensor  # 0-d: the early-stop condition has held


ModelFn = Callable[[ep.Tensor], Any]
SuccessFn = Callable[[ep.Tensor, ep.Tensor], Any]


def alma_prox_solve(
    model: ModelFn,
    inputs: ep.Tensor,
    labels: ep.Tensor,
    *,
    params: ProxParams,
    steps: int,
    bounds: tuple[float, float] = (0.0, 1.0),
    targeted: bool = False,
    masks: ep.Tensor | None = None,
    adv_threshold: float = 1.0,
    is_adversarial: SuccessFn | None = None,
    early_stop: float | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    seed: int = 0,
    place: Place | None = None,
    cuda_graphs: bool = False,
) -> AttackResult[ep.Tensor]:
    """Run ALMA prox on a validated batch within ``bounds``.

    ``labels`` (N,) (one constraint per sample, logits (N, K)) or (N, *S) (one per pixel,
    logits (N, K, *S)) are the true classes, or the targets when ``targeted``; ``masks`` (the
    labels' shape, bool or 0/1) selects the constrained pixels m. Success is APSR ≥ ν
    (``adv_threshold``); ``is_adversarial(model_inputs, logits) → (N,) bool`` (e.g. a Foolbox
    criterion) replaces the per-sample success test in classification. ``params`` has its
    ``init_lr``, ``rho_init`` and ``smooth_max`` resolved (:meth:`ProxParams.for_task`).
    ``early_stop`` ends the run once every sample has an adversarial with normalised ‖δ‖∞
    below it. The callback sees eagerpy tensors.

    Host synchronisation: after the first step (input and output checks) the loop reads
    nothing back from the device, except one boolean every M = ``check_steps`` steps when
    ``early_stop`` is set (the user's ``is_adversarial`` and ``callback`` may synchronise on
    their own). As in :func:`~alma_plugin.core.solver.alma_solve`, the stop condition is
    tracked on the device and the best iterates are frozen from the step it first holds: the
    result is that of a check at every step, after up to M − 1 more steps (``steps_run``
    counts them). The masking percentiles (eq. 5.6) go to the device once, before the loop.

    ``params.restarts`` = R > 1 splits the steps into R runs (:mod:`.restarts`): run 0 from
    δ = 0; run k ≥ 1 with ``restart_mode="random"`` from δ⁽⁰⁾ ~ U(−r, r)ⁿ ∩ Λ
    (r = ``params.restart_distance``, generator ``restart_rng(seed, k)``), with ``"classes"``
    (classification) from δ = 0 under tDLR⁺ towards the most likely class at x that no
    earlier run aimed at or returned (:func:`.constraints.restart_goal`); each sample keeps
    its best adversarial. ``place`` (given by :func:`.restarts.run_restarts` only) makes this
    call one run of ``place.steps`` steps. ``cuda_graphs``: as in
    :func:`~alma_plugin.core.solver.alma_solve` (the replayed steps divide by 1 − αᵗ read from
    the device rather than by a host number: results equal to the last bits).
    """
    if place is None:
        dense = masks is not None or labels.ndim > 1
        check_restart_mode(params.restart_mode, params.restarts, targeted, dense)

        def run(place: Place) -> AttackResult[ep.Tensor]:
            return alma_prox_solve(model, inputs, labels, params=params, steps=place.steps,
                                   bounds=bounds, targeted=targeted, masks=masks,
                                   adv_threshold=adv_threshold, is_adversarial=is_adversarial,
                                   early_stop=early_stop, callback=callback, seed=seed,
                                   place=place, cuda_graphs=cuda_graphs)  # fmt: skip

        return run_restarts(run, steps, params.restarts, early_stop, params.first_run_share)
    restart, step_offset, solved = place.index, place.offset, place.solved
    p = params
    assert p.init_lr is not None and p.rho_init is not None and p.smooth_max is not None
    smooth_max = p.smooth_max  # κ, resolved for the task
    lower, upper = bounds
    span = upper - lower
    x0 = as_tensor("inputs", inputs)  # detached: no graph into the caller's tensor
    # float16/bfloat16: the state (ρ up to 1e15, Adam averages) is float32, the model is called
    # in its own dtype and the rounded input it saw is what is tracked and returned.
    x = x0.astype(working_dtype(x0))
    check_params_fit(p, x)
    rounds = x.dtype != x0.dtype
    n = x.shape[0]
    c = make_constraints(labels, masks, adv_threshold, x, "targets" if targeted else "labels")
    # the classes earlier runs returned, (N, M = 1) in the constraints' index dtype (int32
    # in TensorFlow, where mixed integer dtypes cannot be compared)
    reached = tuple(e.reshape((-1, 1)).astype(c.labels.dtype) for e in place.reached)
    m = c.mask.astype(x.dtype)
    count = m.sum(axis=1)

    u = (x - lower) / span  # the [0, 1]-normalised input; Λ = [−u, 1 − u] (eq. 5.2)
    # Bounds a dtype cannot represent (0.3 in float32) round: clip to values inside them.
    inner, inner_cast = representable_bounds(x, bounds), representable_bounds(x0, bounds)
    box_low, box_high = -u, 1 - u
    delta = ep.zeros_like(x)
    # A "classes" restart aims at the most likely class at x that no earlier run aimed at or
    # returned; the ranking comes from its own first forward, at x.
    aims_at_class = restart > 0 and p.restart_mode == "classes"
    if restart > 0 and not aims_at_class:  # a random restart: δ⁽⁰⁾ ~ U(−r, r)ⁿ, onto Λ
        assert p.restart_distance is not None
        noise = p.restart_distance * uniform_noise(x, restart_rng(seed, restart))
        delta = ep.minimum(ep.maximum(noise, box_low), box_high)
    # Carried from step to step; a NamedTuple so that :class:`.graphs.Steps` can keep it in
    # buffers of its own when the steps are replayed as CUDA graphs.
    state = _State(
        delta=delta,
        v=ep.zeros_like(x),
        mu=full(m, m.shape, p.mu_init),
        rho=full(m, m.shape, p.rho_init),
        w=full(m, (n, 1), p.scale_init),
        d_ref=ep.zeros_like(m),
        recent_sat=ep.zeros_like(m) > 0,
        goals=c.labels,
        best_delta=delta,
        best_norm=full(m, (n,), math.inf),
        best_apsr=ep.zeros(m, (n,)),
        # the caller's label dtype (c.labels holds the framework's index dtype: int32 in TF)
        first_success=full(labels, (n,), -1),
        best_prediction=full(labels, (n,), -1),  # classification only
        stopped=ep.zeros(m, ()) > 0,  # the early-stop condition has held, on the device
    )
    # Eq. 5.6's percentile rank of every step, copied to the device once (a copy per step
    # would synchronise); only dense outputs have more than one constraint to mask.
    progresses = [(t - 1) / (steps - 1) if steps > 1 else 0.0 for t in range(1, steps + 1)]
    ranks = None
    if p.constraint_masking and c.dense:
        ranks = ep.from_numpy(c.labels, np.stack(
            [masking_rank(c.counts, adv_threshold, t, steps, p.mask_decay)
             for t in range(1, steps + 1)]
        ))  # fmt: skip
    step_sizes = [step_size(p.init_lr, p.lr_reduction, q) for q in progresses]  # λ⁽ᵗ⁾
    corrections = [1 - p.alpha**t for t in range(1, steps + 1)]  # Adam's 1 − αᵗ
    if cuda_graphs:  # a replayed step reads its numbers from the device
        tables = [ep.from_numpy(x, np.asarray(v)).astype(x.dtype)
                  for v in (step_sizes, corrections)]  # fmt: skip

    def model_input(delta_: ep.Tensor) -> ep.Tensor:
        """x̃ = x + δ in the model's dtype, inside the bounds as that dtype rounds them."""
        x_adv = clip_rounding(x + delta_ * span, *inner)
        if rounds:
            x_adv = x_adv.astype(x0.dtype)
            if inner_cast != (0.0, 1.0):  # the cast may round past a bound
                x_adv = clip_rounding(x_adv, *inner_cast)
        return x_adv

    def advance(s_: _State, i: int, clock: Any) -> tuple[_State, tuple[ep.Tensor, ...]]:
        """Step t = i + 1 of Algorithm IV-2 from ``s_``. ``i`` takes the decisions made in
        Python (the first step, a ρ check); ``clock`` is i for the arithmetic (a device tensor
        in a graph, from which the step's λ⁽ᵗ⁾, 1 − αᵗ and masking rank are read)."""
        t = i + 1
        check = t % p.check_steps == 0
        lr: float | ep.Tensor
        correction: float | ep.Tensor
        if isinstance(clock, int):
            lr, correction = step_sizes[i], corrections[i]
            rank = None if ranks is None else ranks[i]
        else:
            lr, correction = (pick(table, clock) for table in tables)
            rank = None if ranks is None else pick(ranks, clock)
        mu, rho, w, d_ref, recent_sat, goals = (s_.mu, s_.rho, s_.w, s_.d_ref, s_.recent_sat,
                                                s_.goals)  # fmt: skip
        delta = s_.delta
        model_wrote: list[bool] = []  # the model wrote into x̃ (PyTorch's version counter)

        def loss_fn(delta_: ep.Tensor) -> tuple[ep.Tensor, Any]:
            goals_ = goals
            x_adv = model_input(delta_)  # 3. x̃ = x + δ
            version = versions(x_adv)
            logits = as_model_output(model(x_adv), x_adv)
            if versions(x_adv) != version:
                model_wrote.append(True)
            if t == 1:
                check_differentiable(logits)
                if restart == 0 and p.restart_mode == "classes":
                    check_class_restarts(logits.shape[1], p.restarts)
            # 16-bit logits in the state's dtype, float64 ones kept (TF mixes no dtypes)
            z = judged_logits(constraint_logits(logits, c, check=t == 1), x.dtype)
            z_c = stop_gradient(z)
            if aims_at_class and t == 1:  # the logits at x + δ⁽⁰⁾ = x rank the other classes
                goals_ = restart_goal(z_c, c.labels, reached)
            # 4. d = DLR⁺ (tDLR⁺); κ > 0: the gradient of a smoothed max (not in the thesis)
            d = descent_constraint(z, goals_, targeted or aims_at_class, smooth_max)
            # the denominator is positive: d < 0 is the argmax test (False for NaN logits); a
            # run aimed at a class counts any other class too. Eq. 5.8's [d ≤ 0] is read as
            # d < 0: DLR⁺ carries the 1e-6 tie tolerance, so d = 0 is a tie, not a success.
            d_c = stop_gradient(d)
            hit = is_satisfied(z_c, c.labels) if aims_at_class else d_c < 0
            if d.dtype != x.dtype:  # float64 logits: d in the state's dtype once judged
                d = d.astype(x.dtype)
                d_c = stop_gradient(d)
            satisfied = (m * hit.astype(m.dtype)).sum(axis=1, keepdims=True)
            w_new = scale_update(w, satisfied, c.needed, p.scale_rate, p.scale_min)  # 5–9
            m_tilde = c.mask  # 10–11. m̃ = m ∧ [d ≤ ξ⁽ᵗ⁾]
            if rank is not None:
                m_tilde = constraint_mask(d_c, c.mask, rank)
            mt = m_tilde.astype(m.dtype)
            # 12–13. μ ← P_[μmin, μmax](α μ + (1 − α) ∂/∂d m̃ᵀP(w d, ρ, μ))
            mu_hat = mt * w_new * p2_prox_derivative(w_new * d_c, rho, mu)
            mu_new = (p.alpha * mu + (1 - p.alpha) * mu_hat).clip(p.mu_min, p.mu_max)
            # 14–19. At check steps, ρ ← γρ for the constraints of m̃ neither satisfied in the
            # last M steps nor improved by the factor τ; d⁽¹⁾ is the first reference.
            recent_new = ep.logical_or(recent_sat, d_c <= 0)
            rho_new, d_ref_new = rho, (d_c if t == 1 else d_ref)
            if check:
                stalled = ep.logical_not(ep.logical_or(recent_new, d_c <= p.tau * d_ref_new))
                grown = (p.gamma * rho).minimum(p.rho_max)
                rho_new = ep.where(ep.logical_and(m_tilde, stalled), grown, rho)
                recent_new, d_ref_new = ep.zeros_like(d_c) > 0, d_c  # all False (of a float: TF)
            loss = (mt * p2_prox(w_new * d, rho_new, mu_new)).sum()  # 21. L = m̃ᵀ P(w d, ρ, μ)
            predicted = None if c.dense else z_c.argmax(axis=-1)  # classification only
            aux = (satisfied, mu_new, rho_new, w_new, d_ref_new, recent_new, x_adv, d_c, goals_,
                   predicted, logits)  # fmt: skip
            return loss, aux

        _, aux, grad = value_aux_and_grad(loss_fn, delta)  # one forward, one backward
        satisfied, mu, rho, w, d_ref, recent_sat, x_seen, d, goals, predicted, logits = aux
        if t == 1 and restart == 0:
            warn_if_probabilities(logits)
        if model_wrote:  # x̃ is the model's own tensor: the one judged is rebuilt from δ
            x_seen = model_input(delta)
        if is_adversarial is not None:  # outside the gradient: concrete values (JAX: no tracers)
            success = judge_success(is_adversarial, x_seen, logits, n)
            satisfied = success.astype(m.dtype).reshape((n, 1))
        # The perturbation the model saw, after rounding to its dtype, is the one judged and
        # kept; the step goes on from δ itself. (Stepping from the rounded δ lost every move
        # smaller than half a 16-bit ulp: a bfloat16 segmentation model, λ⁽⁰⁾ = 10⁻³ against
        # ulps of 2⁻⁹ near 0.5, stalled at ‖δ‖∞ = 0.027 with 0.5 % of its pixels fooled.)
        seen = (x_seen.astype(x.dtype) - x) / span if rounds else delta

        # 27. Best tracking on x̃⁽ᵗ⁾ = x + δ⁽ᵗ⁻¹⁾: APSR ≥ ν and a smaller ‖δ‖∞.
        satisfied = satisfied.reshape((n,))
        apsr = satisfied / count
        norm = seen.flatten(start=1).abs().max(axis=1)
        # a NaN or +∞ logit (at any pixel) is no success, whatever d says (K = 2: d = −∞)
        success = ep.logical_and(satisfied >= c.needed, valid_logit_rows(logits))
        best_apsr = apsr if t == 1 else s_.best_apsr
        better = ep.logical_and(success, norm < s_.best_norm)
        if early_stop is not None:  # nothing changes once the early-stop condition held
            better = ep.logical_and(better, s_.stopped.logical_not())
        best_norm = ep.where(better, norm, s_.best_norm)
        best_apsr = ep.where(better, apsr, best_apsr)
        best_delta = ep.where(expand(better, x), seen, s_.best_delta)
        best_prediction = s_.best_prediction
        if predicted is not None:
            predicted = predicted.reshape((n,)).astype(best_prediction.dtype)
            best_prediction = ep.where(better, predicted, best_prediction)
        first_success = ep.where(ep.logical_and(success, s_.first_success < 0), clock,
                                 s_.first_success)  # fmt: skip

        # 23–25. VMFB with the Adam-like diagonal metric (eq. 5.17–5.18). NaN gradients (a NaN
        # region of the model) take no step; |g| ≤ 10¹⁸ (not in the thesis) keeps g² finite in
        # float32 once μ and ρ have grown large.
        grad = bounded_gradient(grad)
        v = p.alpha * s_.v + (1 - p.alpha) * grad.square()
        metric = (v / correction).sqrt() + p.metric_eps
        # Λ = [−u, 1 − u] ⊂ [−1, 1]: ‖P_Λ(·)‖∞ ≤ 1 fixes the ternary iteration count on the host.
        delta, _ = linf_box_prox(delta - lr * grad / metric, lr, box_low, box_high, metric,
                                 p.prox_precision, radius=1.0)  # fmt: skip

        stopped = s_.stopped
        if early_stop is not None:
            below = best_norm < early_stop
            if solved is not None:  # found below early_stop by an earlier run
                below = ep.logical_or(below, solved)
            stopped = ep.logical_or(stopped, below.all())
        new_state = _State(delta, v, mu, rho, w, d_ref, recent_sat, goals, best_delta,
                           best_norm, best_apsr, first_success, best_prediction,
                           stopped)  # fmt: skip
        if callback is None:  # no StepInfo to report: no per-step λ tensor to fill
            return new_state, ()
        shape = (n,) if not c.dense else (n, -1)
        if masks is not None:  # pixels outside the masks are no constraints: no d to report
            d = ep.where(c.mask, d, math.nan)
        lrs = lr + ep.zeros_like(norm) if isinstance(lr, ep.Tensor) else full(norm, (n,), lr)
        return new_state, (norm, d.reshape(shape), mu.reshape(shape), rho.reshape(shape), lrs,
                           success)  # fmt: skip

    final, steps_run = run_steps(advance, state, steps, check_steps=p.check_steps,
                                 graphs=cuda_graphs, offset=step_offset, callback=callback,
                                 early_stop=early_stop is not None)  # fmt: skip
    best_delta, best_norm, best_apsr = final.best_delta, final.best_norm, final.best_apsr
    first_success, best_prediction = final.first_success, final.best_prediction
    predictions = None if c.dense else best_prediction
    return _result(x0, x, best_delta, best_norm, best_apsr, first_success, steps_run, bounds,
                   (inner, inner_cast), predictions)  # fmt: skip


def _result(
    inputs: ep.Tensor,
    x: ep.Tensor,
    best_delta: ep.Tensor,
    best_norm: ep.Tensor,
    best_apsr: ep.Tensor,
    first_success: ep.Tensor,
    steps_run: int,
    bounds: tuple[float, float],
    inner_bounds: tuple[tuple[float, float], tuple[float, float]],
    predictions: ep.Tensor | None,
) -> AttackResult[ep.Tensor]:
    """The best iterate per sample (the input where none), in the inputs' dtype."""
    lower, upper = bounds
    success = best_norm < math.inf
    inner, inner_cast = inner_bounds  # in x's dtype, then in the inputs' (16-bit) dtype
    best = (x + best_delta * (upper - lower)).clip(*inner).astype(inputs.dtype)
    if inner_cast != (0.0, 1.0):  # a cast to a 16-bit dtype may round past a bound
        best = best.clip(*inner_cast)
    adversarials = ep.where(expand(success, inputs), best, inputs)
    measured = ((adversarials.astype(x.dtype) - x) / (upper - lower)).flatten(start=1)
    distances = ep.where(success, measured.abs().max(axis=1), math.inf)
    return AttackResult(adversarials, distances, success, first_success, steps_run, best_apsr,
                        predictions)  # fmt: skip
