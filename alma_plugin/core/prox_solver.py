"""The ALMA prox loop (thesis Algorithm IV-2, §5.4) on eagerpy tensors.

Minimal ℓ∞ perturbations under many constraints: one DLR⁺ constraint per pixel in semantic
segmentation (logits (N, K, H, W)), one per sample in classification (logits (N, K)). Both
cases share one loop on constraints flattened to (N, M). Per step t = 1, …, N, with exactly one
forward and one backward model propagation:

* d⁽ᵗ⁾ = DLR⁺ (or tDLR⁺) of every constraint at x̃⁽ᵗ⁾ = x + δ⁽ᵗ⁻¹⁾ (steps 3–4);
* scale w⁽ᵗ⁾ ∈ [w_min, 1] updated by eq. 5.8 (steps 5–9; Algorithm IV-2 writes τ in step 5,
  we follow the text of eq. 5.8: the comparison is with ν);
* mask m̃⁽ᵗ⁾ = m ∧ [d⁽ᵗ⁾ ≤ ξ⁽ᵗ⁾], ξ⁽ᵗ⁾ the (1 − (1 − ν)(t − 1)/(N − 1))-percentile of the
  constraints inside the user mask m (eq. 5.6, steps 10–11);
* multipliers μ by the EMA of ∂/∂d (m̃ᵀ P(w d, ρ, μ)) (steps 12–13) with the modified P2 of
  eq. 5.9; penalty parameters ρ ← γρ every M steps for the constraints of m̃ neither satisfied
  during the last M steps nor improved by a factor τ (steps 14–19, read as in ALMA: ρ only
  changes at check steps; the first check compares with d⁽¹⁾);
* VMFB step (eq. 5.17–5.18, steps 21–25): g = ∇_δ m̃ᵀ P(w d, ρ, μ), Adam-like diagonal metric
  s = √(v / (1 − αᵗ)) + ε with β₁ = 0, δ ← prox^{Diag(s)}_{λ⁽ᵗ⁾‖·‖∞+ι_Λ}(δ − λ⁽ᵗ⁾ g / s);
* step size λ⁽ᵗ⁾ decayed geometrically from λ⁽⁰⁾ = 10⁻³ to λ⁽ᴺ⁾ = 10⁻⁴ (§5.5.5.3);
* best tracking (step 27): the smallest ‖δ‖∞ among iterates with APSR ≥ ν (eq. 5.19).

All hyperparameters live in the [0, 1]-normalised input space: δ is a perturbation of
u = (x − lower) / (upper − lower), and the model sees x + δ·(upper − lower).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Generic, TypeVar

import eagerpy as ep
import numpy as np

from .autodiff import stop_gradient, value_aux_and_grad
from .constraints import dlr_plus
from .penalties import p2_prox, p2_prox_derivative
from .prox import linf_box_prox
from .validation import (
    as_tensor,
    check_bounds,
    check_early_stop,
    check_in_range,
    check_inputs,
    check_positive_int,
    check_success,
    working_dtype,
)

__all__ = [
    "CLASSIFICATION_PARAMS",
    "ProxParams",
    "ProxResult",
    "alma_prox_dense_solve",
    "alma_prox_solve",
    "p2_prox",
    "p2_prox_derivative",
]

T = TypeVar("T")
ModelFn = Callable[[ep.Tensor], ep.Tensor]
Criterion = Callable[[ep.Tensor, ep.Tensor], ep.Tensor]


@dataclass(frozen=True)
class ProxParams:
    """Hyperparameters of ALMA prox; defaults from §5.5.5.3 (500-step budget) and Algorithm IV-2.

    τ and M are not given for ALMA prox in the thesis: we keep ALMA's 0.95 and 10 (as μ_min,
    μ_max). ε of eq. 5.18 is Adam's 10⁻⁸.
    """

    init_lr: float = 1e-3  # λ⁽⁰⁾
    final_lr: float = 1e-4  # λ⁽ᴺ⁾
    mu_init: float = 1.0  # μ⁽⁰⁾
    rho_init: float = 0.01  # ρ⁽⁰⁾
    mu_min: float = 1e-6
    mu_max: float = 1e12
    rho_max: float = 1e15  # float32 safeguard, beyond the thesis (500 steps reach ≈ 1.1e13)
    gamma: float = 2.0  # ρ increase rate γ
    tau: float = 0.95  # constraint improvement rate τ
    check_steps: int = 10  # M
    alpha: float = 0.8  # α of steps 13 and 23
    metric_eps: float = 1e-8  # ε of eq. 5.18
    scale_min: float = 0.1  # w_min
    scale_init: float = 1.0  # w⁽⁰⁾
    scale_rate: float = 0.02  # γ_w of eq. 5.8
    constraint_masking: bool = True  # m̃⁽ᵗ⁾ of eq. 5.6 (False: the user mask m only)
    mask_decay: bool = True  # percentile decays 100% → ν; False: ν from the first step
    prox_precision: float = 1e-5  # Δβ of Algorithm 5.1

    def __post_init__(self) -> None:
        rules: dict[str, tuple[Callable[[float], bool], str]] = {
            "gamma": (lambda v: v > 1, "> 1"),
            "alpha": (lambda v: 0 <= v < 1, "in [0, 1)"),
            "scale_rate": (lambda v: 0 < v < 1, "in (0, 1)"),
            "scale_init": (lambda v: self.scale_min <= v <= 1, "in [scale_min, 1]"),
            "mu_max": (lambda v: v >= self.mu_min, ">= mu_min"),
            "check_steps": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                continue
            check, text = rules.get(f.name, (lambda v: v > 0, "positive"))
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{f.name} must be a number, got {value!r}")
            if not (math.isfinite(value) and check(value)):
                raise ValueError(f"{f.name} must be finite and {text}, got {value!r}")


#: Defaults for classification (one constraint per sample). §5.5.5.3's λ⁽⁰⁾ = 10⁻³ → λ⁽ᴺ⁾ = 10⁻⁴
#: were tuned for segmentation, where minimal ℓ∞ norms are ≈ 0.3/255; with them ALMA prox
#: fools only 4/32 MNIST samples in 100 steps. Classification norms are ~100× larger, so the
#: steps are too (same 10× decay): 10⁻¹ → 10⁻². Measured on the embedded SmallCNNs (100
#: samples, 500 steps): median ℓ∞ 0.118 vs FMN's 0.126 (regular), 0.300 vs 0.313 (adversarial).
CLASSIFICATION_PARAMS = ProxParams(init_lr=1e-1, final_lr=1e-2)


def make_params(
    params: ProxParams | None, overrides: dict[str, Any], *, classification: bool = False
) -> ProxParams:
    """``params`` (default: the thesis' §5.5.5.3 values, or :data:`CLASSIFICATION_PARAMS`)
    with keyword ``overrides``, validated; unknown names raise a TypeError listing the valid
    ones."""
    if params is not None and not isinstance(params, ProxParams):
        raise TypeError(f"params must be a ProxParams or None, got {type(params).__name__}")
    names = [f.name for f in fields(ProxParams)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown} for ALMA prox; valid: {names}")
    if params is None:
        params = CLASSIFICATION_PARAMS if classification else ProxParams()
    return replace(params, **overrides)


@dataclass(frozen=True)
class ProxResult(Generic[T]):
    """Outcome of ALMA prox for a batch of N inputs.

    ``adversarials``: per input, the adversarial iterate with the smallest ℓ∞ norm, or the
    original where none reached APSR ≥ ν; same type, device and shape as the inputs.
    ``apsr``: (N,) attack pixel success rate of eq. 5.19 of the returned inputs (0 or 1 in
    classification). ``norms``: (N,) ‖x̃ − x‖∞ in the [0, 1]-normalised space (0 on failure).
    ``success``: (N,) bool, APSR ≥ ν was reached.
    """

    adversarials: T
    apsr: T
    norms: T
    success: T


def check_arguments(
    inputs: Any, labels: Any, masks: Any, bounds: Any, steps: Any, adv_threshold: Any
) -> tuple[float, float]:
    """Validate the common arguments; return the bounds as floats. Raises TypeError/ValueError
    naming the argument and its value."""
    for name, value in (("inputs", inputs), ("labels", labels)):
        if not isinstance(value, ep.Tensor):
            raise TypeError(f"{name} must be an eagerpy tensor, got {type(value).__name__}")
    inputs = as_tensor("inputs", inputs)
    lower, upper = check_bounds(bounds)
    check_positive_int("steps", steps)
    check_in_range("adv_threshold", adv_threshold, 0.0, 1.0, open_low=True)
    check_inputs(inputs, (lower, upper))
    if inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty batch (N, ...), got shape {inputs.shape}")
    if "int" not in str(labels.dtype) or "bool" in str(labels.dtype):
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.ndim < 1 or labels.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"labels must have shape (N, ...) with N = {inputs.shape[0]}, got {labels.shape}"
        )
    if masks is not None:
        if not isinstance(masks, ep.Tensor):
            raise TypeError(f"masks must be an eagerpy tensor, got {type(masks).__name__}")
        if masks.shape != labels.shape:
            raise ValueError(f"masks must have the labels' shape {labels.shape}, got {masks.shape}")
    return lower, upper


def alma_prox_solve(
    model_fn: ModelFn,
    inputs: ep.Tensor,
    labels: ep.Tensor,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    targeted: bool = False,
    steps: int = 500,
    is_adversarial: Criterion | None = None,
    early_stop: float | None = None,
    params: ProxParams | None = None,
    **overrides: Any,
) -> ProxResult[ep.Tensor]:
    """ALMA prox for classification: one constraint per sample, logits (N, K).

    Args:
        model_fn: maps a batch in the host's raw input space to logits (N, K).
        inputs: (N, ...) inputs within ``bounds``. labels: (N,) true classes, or targets.
        is_adversarial: optional success criterion ``(x̃, logits) → (N,) bool`` (e.g. a
            Foolbox criterion) used for best tracking; default argmax ≠ y (= t if targeted).
        early_stop: stop once every sample has an adversarial with ‖δ‖∞ (normalised) below
            this; None or 0: run every step.
        params / overrides: :class:`ProxParams` and keyword overrides of its fields.
    """
    check_arguments(inputs, labels, None, bounds, steps, 1.0)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {labels.shape}")
    return _solve(model_fn, inputs, labels, None, bounds, targeted, steps, 1.0,
                  make_params(params, overrides, classification=True),
                  is_adversarial, check_early_stop(early_stop))  # fmt: skip


def alma_prox_dense_solve(
    model_fn: ModelFn,
    inputs: ep.Tensor,
    labels: ep.Tensor,
    *,
    masks: ep.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    targeted: bool = False,
    adv_threshold: float = 0.99,
    steps: int = 500,
    early_stop: float | None = None,
    params: ProxParams | None = None,
    **overrides: Any,
) -> ProxResult[ep.Tensor]:
    """ALMA prox for dense prediction: one constraint per pixel, logits (N, K, H, W).

    ``labels`` (N, H, W) are the true classes (or targets); ``masks`` (N, H, W), bool or 0/1,
    selects the labelled pixels m (labels elsewhere are ignored, e.g. 255); success is
    APSR ≥ ``adv_threshold`` (ν, eq. 5.19); ``early_stop`` ends the run once every sample has
    such an iterate with normalised ‖δ‖∞ below it.
    """
    check_arguments(inputs, labels, masks, bounds, steps, adv_threshold)
    if labels.ndim < 2:
        raise ValueError(f"labels must have shape (N, H, W), got {labels.shape}")
    return _solve(model_fn, inputs, labels, masks, bounds, targeted, steps, adv_threshold,
                  make_params(params, overrides), None, check_early_stop(early_stop))  # fmt: skip


def _solve(
    model_fn: ModelFn,
    x: ep.Tensor,
    labels: ep.Tensor,
    masks: ep.Tensor | None,
    bounds: tuple[float, float],
    targeted: bool,
    steps: int,
    nu: float,
    p: ProxParams,
    is_adversarial: Criterion | None,
    early_stop: float | None,
) -> ProxResult[ep.Tensor]:
    lower, upper = float(bounds[0]), float(bounds[1])
    span = upper - lower
    x = as_tensor("inputs", x)  # detached: no graph into the caller's tensor
    model_dtype = x.dtype
    # float16/bfloat16: the state (ρ up to 1e15, Adam averages) is float32, the model is called
    # in its own dtype and the rounded input it saw is what is tracked and returned.
    x = x.astype(working_dtype(x))
    rounds = x.dtype != model_dtype
    n = x.shape[0]
    dense = masks is not None or labels.ndim > 1
    label_shape = labels.shape
    y = labels.reshape((n, -1))  # (N, M)
    if masks is None:
        m_bool = ep.ones(y, y.shape).astype(bool)
    else:
        values = masks.astype(x.dtype).reshape((n, -1))
        if not bool(ep.logical_or(values == 0, values == 1).all().item()):
            raise ValueError("masks must hold only 0/1 (or boolean) values")
        m_bool = values > 0
    counts = m_bool.astype(x.dtype).sum(axis=1).numpy().astype(np.int64)
    if (counts == 0).any():
        raise ValueError(f"masks must select at least one pixel per sample; empty: "
                         f"{np.flatnonzero(counts == 0).tolist()}")  # fmt: skip
    y = ep.where(m_bool, y, 0)  # labels of unmasked pixels (e.g. 255) are ignored
    y = y.astype(ep.arange(y, 1).dtype)  # the framework's index dtype, for the gather
    if int(y.min().item()) < 0:
        raise ValueError(f"labels must be >= 0 on masked pixels, got {int(y.min().item())}")
    label_max = int(y.max().item())
    m = m_bool.astype(x.dtype)
    # success (APSR ≥ ν) ⇔ #satisfied ≥ ⌈ν‖m‖₁⌉, decided on integers (eq. 5.19)
    needed = ep.from_numpy(x, np.ceil(nu * counts - 1e-9).astype(np.float32)).astype(x.dtype)
    count_t = m.sum(axis=1)

    u = (x - lower) / span  # the [0, 1]-normalised input; Λ = [−u, 1 − u] (eq. 5.2)
    box_low, box_high = -u, 1 - u
    delta = ep.zeros_like(x)
    v = ep.zeros_like(x)
    mu = ep.full(m, m.shape, p.mu_init)
    rho = ep.full(m, m.shape, p.rho_init)
    w = ep.full(m, (n, 1), p.scale_init)
    d_ref = ep.zeros_like(m)
    recent_sat = ep.zeros_like(m) > 0
    best_delta, best_norm = delta, ep.full(m, (n,), math.inf)
    best_apsr = ep.zeros(m, (n,))

    for t in range(1, steps + 1):
        progress = (t - 1) / (steps - 1) if steps > 1 else 0.0
        fraction = 1 - (1 - nu) * (progress if p.mask_decay else 1.0)  # eq. 5.6
        kept = counts - np.floor((1 - fraction) * counts + 1e-9).astype(np.int64)
        xi_index = ep.from_numpy(y, (kept - 1).reshape(n, 1))
        check = t % p.check_steps == 0
        state = (mu, rho, w, d_ref, recent_sat)

        def loss_fn(
            delta_: ep.Tensor,
            state: tuple[ep.Tensor, ...] = state,
            check: bool = check,
            first: bool = t == 1,
            xi_index: ep.Tensor = xi_index,
        ) -> tuple[ep.Tensor, Any]:
            mu_, rho_, w_, d_ref_, recent_ = state
            x_adv = (x + delta_ * span).clip(lower, upper)  # step 3
            if rounds:
                x_adv = x_adv.astype(model_dtype)
            logits = model_fn(x_adv)
            z = _constraint_logits(logits, n, label_shape, dense, label_max)
            if rounds:
                z = z.astype(x.dtype)
            d = dlr_plus(z, y, targeted)  # step 4
            satisfied = d < 0  # the denominator is positive: same sign as the margin
            d_c = stop_gradient(d)
            sat_count = (m * satisfied.astype(m.dtype)).sum(axis=1, keepdims=True)
            # eq. 5.8 / steps 5–9: grow w while the success rate is below ν
            grow = sat_count < needed.reshape((n, 1))
            w_new = ep.where(grow, w_ / (1 - p.scale_rate), w_ / (1 + p.scale_rate))
            w_new = w_new.clip(p.scale_min, 1.0)
            # eq. 5.6 / steps 10–11: drop the largest constraints above the percentile ξ⁽ᵗ⁾
            m_tilde = m_bool
            if p.constraint_masking and d_c.shape[1] > 1:
                ranked = ep.where(m_bool, d_c, ep.inf).sort(axis=-1)
                xi = ranked.take_along_axis(xi_index, axis=-1)
                m_tilde = ep.logical_and(m_bool, d_c <= xi)
            mt = m_tilde.astype(m.dtype)
            # steps 12–13: μ ← P_[μmin, μmax](α μ + (1 − α) ∂/∂d m̃ᵀP(w d, ρ, μ))
            mu_hat = mt * w_new * p2_prox_derivative(w_new * d_c, rho_, mu_)
            mu_new = (p.alpha * mu_ + (1 - p.alpha) * mu_hat).clip(p.mu_min, p.mu_max)
            # steps 14–19: at check steps, ρ ← γρ for constraints of m̃ neither satisfied in the
            # last M steps nor improved by the factor τ
            recent_new = ep.logical_or(recent_, d_c <= 0)
            rho_new, d_ref_new = rho_, (d_c if first else d_ref_)  # d⁽¹⁾ is the first reference
            if check:
                stalled = ep.logical_not(ep.logical_or(recent_new, d_c <= p.tau * d_ref_new))
                grown = (p.gamma * rho_).minimum(p.rho_max)
                rho_new = ep.where(ep.logical_and(m_tilde, stalled), grown, rho_)
                recent_new, d_ref_new = ep.zeros_like(recent_new) > 0, d_c
            # step 21: L = m̃ᵀ P(w d, ρ, μ)
            loss = (mt * p2_prox(w_new * d, rho_new, mu_new)).sum()
            if is_adversarial is not None:
                success = check_success(is_adversarial(x_adv, logits), n)
                # NaN or infinite logits are never an adversarial, whatever the criterion says
                finite = ep.logical_not(ep.logical_or(logits.isnan(), logits.isinf()))
                success = ep.logical_and(success, finite.reshape((n, -1)).all(axis=1))
                sat_count = success.astype(m.dtype).reshape((n, 1))
            return loss, (sat_count, mu_new, rho_new, w_new, d_ref_new, recent_new, x_adv)

        _, aux, grad = value_aux_and_grad(loss_fn, delta)  # one forward, one backward
        sat_count, mu, rho, w, d_ref_out, recent_sat, x_seen = aux
        d_ref = d_ref_out
        if rounds:  # the perturbation the model saw, after rounding to its dtype
            delta = (x_seen.astype(x.dtype) - x) / span

        # best tracking (step 27) on x̃⁽ᵗ⁾ = x + δ⁽ᵗ⁻¹⁾: APSR ≥ ν and a smaller ‖δ‖∞
        sat_count = sat_count.reshape((n,))
        apsr = sat_count / count_t
        norm = delta.flatten(start=1).abs().max(axis=1)
        if t == 1:
            best_apsr = apsr
        better = ep.logical_and(sat_count >= needed, norm < best_norm)
        best_norm = ep.where(better, norm, best_norm)
        best_apsr = ep.where(better, apsr, best_apsr)
        best_delta = ep.where(_expand(better, x), delta, best_delta)

        # steps 23–25: VMFB with the Adam-like diagonal metric (eq. 5.17–5.18). Safeguard (not
        # in the thesis): |g| ≤ 10¹⁸ keeps g² finite in float32 when μ and ρ have grown large.
        grad = ep.where(ep.isnan(grad), 0, grad).clip(-1e18, 1e18)
        lr = p.init_lr * (p.final_lr / p.init_lr) ** progress
        v = p.alpha * v + (1 - p.alpha) * grad.square()
        s = (v / (1 - p.alpha**t)).sqrt() + p.metric_eps
        delta = linf_box_prox(delta - lr * grad / s, lr, box_low, box_high, s, p.prox_precision)
        if early_stop is not None and (best_norm < early_stop).all().item():
            break

    success = best_norm < math.inf
    x_best = (x + best_delta * span).clip(lower, upper)
    adversarials = ep.where(_expand(success, x), x_best, x)
    norms = ((adversarials - x) / span).flatten(start=1).abs().max(axis=1)
    if rounds:
        adversarials = adversarials.astype(model_dtype)
    return ProxResult(adversarials, best_apsr, norms, success)


def _expand(flags: ep.Tensor, like: ep.Tensor) -> ep.Tensor:
    return flags.reshape((-1,) + (1,) * (like.ndim - 1))


def _constraint_logits(
    logits: ep.Tensor, n: int, label_shape: tuple[int, ...], dense: bool, label_max: int
) -> ep.Tensor:
    """Logits (N, K) or (N, K, *S) as (N, M, K), checking them against the labels."""
    if dense:
        if logits.ndim < 3 or (logits.shape[0],) + logits.shape[2:] != label_shape:
            raise ValueError(
                f"the model must return logits (N, K, *labels.shape[1:]) = (N, K, "
                f"{', '.join(map(str, label_shape[1:]))}), got {logits.shape}"
            )
    elif logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"the model must return logits of shape (N={n}, K), got {logits.shape}")
    num_classes = logits.shape[1]
    if label_max >= num_classes:
        raise ValueError(f"labels must be < the number of classes {num_classes}, got {label_max}")
    if not dense:
        return logits.expand_dims(1)
    return logits.reshape((n, num_classes, -1)).transpose((0, 2, 1))
