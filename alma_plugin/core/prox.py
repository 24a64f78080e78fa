"""Proximity operator of λ‖·‖∞ + ι_Λ (thesis §5.4.2.1): exactly, or by Algorithm 5.1.

For a perturbation δ and a box Λ = {p : a ≤ p ≤ b} with a ≤ 0 ≤ b (for images in [0, 1],
a = −x and b = 1 − x), the operator solves, in the metric H = Diag(s) (s = 1 is the Euclidean
case of eq. 5.11; a diagonal s is the variable metric of eq. 5.16, §5.4.2.2)

    prox^H_{λ‖·‖∞+ι_Λ}(δ) = argmin_p ½‖p − δ‖²_H + λ‖p‖∞ + ι_Λ(p).

Following eq. 5.12–5.14, the problem is rewritten with β = ‖p‖∞: for a fixed β the minimiser is
the projection p_β = P_{[−β, β] ∩ Λ}(δ) = clip(P_Λ(δ), −β, β) (separable, hence the same in
the Euclidean and the diagonal metric), and β* minimises the convex scalar function
Φ(β) = ½‖p_β − δ‖²_H + λβ on [0, ‖P_Λ(δ)‖∞] (Proposition 5.1, eq. 5.15). Two solvers of this
scalar problem give the same operator:

- exact (the default): Φ is piecewise quadratic with breakpoints at the |δ_Λ,i|, so Φ′ is
  piecewise linear and increasing; one sort of the breakpoints and two cumulative sums give
  the root of Φ′ on every piece, and β* is read off the piece where Φ′ changes sign. About
  twenty tensor operations, whatever the precision (:func:`exact_beta`).
- Algorithm 5.1: a ternary search on [0, ‖δ_Λ‖∞] to an absolute precision Δβ (the thesis'
  10⁻⁵: 29 iterations of about 25 operations each), for the thesis' exact procedure.

Everything is batched over the first axis with a per-sample λ and vectorised: the number of
ternary iterations is the same for the whole batch (the worst case of Algorithm 5.1, step 4).
"""

from __future__ import annotations

import math

import eagerpy as ep

from .prox_params import ProxParams
from .tensors import full

__all__ = ["exact_beta", "linf_box_prox", "ternary_iterations"]


def ternary_iterations(upper: float, precision: float) -> int:
    """n = ⌈log(Δβ / u) / log(2/3)⌉ (Algorithm 5.1, step 4), at least 0."""
    if upper <= precision:
        return 0
    return max(0, math.ceil(math.log(precision / upper) / math.log(2.0 / 3.0)))


def _per_sample(value: ep.Tensor | float, like: ep.Tensor) -> ep.Tensor:
    """A per-sample scalar (float, shape (N,) or (N, 1)) as an (N, 1) tensor of like's dtype."""
    if isinstance(value, ep.Tensor):
        return value.astype(like.dtype).reshape((-1, 1)) + ep.zeros(like, (like.shape[0], 1))
    return full(like, (like.shape[0], 1), float(value))


def _flat(value: ep.Tensor | float, like: ep.Tensor) -> ep.Tensor:
    """Broadcast ``value`` against ``like`` (N, ...) and flatten to (N, D)."""
    if isinstance(value, ep.Tensor):
        value = value.astype(like.dtype) + ep.zeros_like(like)
    else:
        value = ep.full_like(like, float(value))
    return value.flatten(start=1)


def _clip(values: ep.Tensor, beta: ep.Tensor) -> ep.Tensor:
    """P_{[−β, β]} per sample: β has shape (N, 1)."""
    return ep.minimum(ep.maximum(values, -beta), beta)


def exact_beta(
    z: ep.Tensor, z_box: ep.Tensor, lam: ep.Tensor, weights: ep.Tensor | None
) -> ep.Tensor:
    """β* = argmin Φ exactly, shape (N, 1), for flattened δ = ``z`` (N, D), δ_Λ = ``z_box``,
    λ = ``lam`` (N, 1) and the metric's diagonal ``weights`` (N, D; None: Euclidean).

    With the breakpoints c = |δ_Λ| sorted in decreasing order (c₁ ≥ … ≥ c_D, c_{D+1} = 0),
    on piece k, β ∈ [c_{k+1}, c_k], the coordinates 1..k are clipped to ±β and
    Φ′(β) = λ − Σ_{i≤k} sᵢ(|δᵢ| − β), with root r_k = (Σ_{i≤k} sᵢ|δᵢ| − λ) / Σ_{i≤k} sᵢ
    (|δᵢ|, not cᵢ: where the box clips δ, Φ′ jumps at the breakpoint). Φ′ increases with β,
    so the pieces right of β* are those where Φ′ ≥ 0 at the left end, r_k ≤ c_{k+1}: the
    first k of them. β* is then r clipped to the next piece, [c_{k+1}, c_k] — its root, or
    the breakpoint where Φ′ jumps over 0 — and 0 when every piece lies right of it
    (Φ′(0) ≥ 0: λ ≥ Σ sᵢ|δᵢ| over the coordinates the box lets move).
    """
    size = z_box.shape[1]
    breakpoints = z_box.abs()
    order = (-breakpoints).argsort(axis=1)
    c = ep.take_along_axis(breakpoints, order, axis=1)
    magnitude = ep.take_along_axis(z.abs(), order, axis=1)
    if weights is None:
        weighted, total_weight = magnitude.cumsum(axis=1), ep.arange(z, 1, size + 1)
        total_weight = total_weight.astype(z.dtype).reshape((1, -1))
    else:
        w = ep.take_along_axis(weights, order, axis=1)
        weighted, total_weight = (w * magnitude).cumsum(axis=1), w.cumsum(axis=1)
    roots = (weighted - lam) / total_weight
    c_next = ep.concatenate([c[:, 1:], ep.zeros_like(c[:, :1])], axis=1)
    pieces_right = (roots <= c_next).sum(axis=1, keepdims=True)
    piece = pieces_right.minimum(size - 1)
    root = ep.take_along_axis(roots, piece, axis=1)
    beta = ep.minimum(
        ep.maximum(root, ep.take_along_axis(c_next, piece, axis=1)),
        ep.take_along_axis(c, piece, axis=1),
    )
    return ep.where(pieces_right >= size, ep.zeros_like(beta), beta)


def linf_box_prox(
    delta: ep.Tensor,
    lam: ep.Tensor | float,
    lower: ep.Tensor | float,
    upper: ep.Tensor | float,
    metric: ep.Tensor | None = None,
    precision: float | None = ProxParams.prox_precision,
    radius: float | None = None,
) -> tuple[ep.Tensor, ep.Tensor]:
    """``(p*, β*)``: the prox of λ‖·‖∞ + ι_Λ at ``delta`` and the optimal β* = ‖p*‖∞.

    Args:
        delta: the point δ, shape (N, ...).
        lam: λ ≥ 0, a float or one value per sample (shape (N,)).
        lower, upper: the box Λ = [lower, upper] on δ, broadcastable to ``delta``; it must
            contain 0 (as Λ = [0, 1]^{Cd} − x does).
        metric: the diagonal s of H = Diag(s) (positive, same shape as ``delta``), or None for
            the Euclidean metric (eq. 5.11). With a metric, the norms of steps 10–11 of
            Algorithm 5.1 are the weighted ones (§5.4.2.2).
        precision: None: β* exactly (:func:`exact_beta`); a float Δβ: Algorithm 5.1's ternary
            search to that absolute precision on β*.
        radius: for the ternary search, a bound on ‖P_Λ(δ)‖∞ known on the host (1 for
            Λ = [0, 1]^d − x), from which the iteration count of step 4 is computed. None:
            from ‖P_Λ(δ)‖∞ itself, which reads a value back from the device (a synchronisation
            on a GPU). The bound gives the same precision Δβ with at most
            ⌈log(radius / ‖P_Λ(δ)‖∞) / log(3/2)⌉ more iterations.

    Returns:
        p* with the shape of ``delta``, and β* with shape (N,).
    """
    if precision is not None and not precision > 0:
        raise ValueError(f"precision must be None (exact) or positive, got {precision!r}")
    shape = delta.shape
    z = delta.flatten(start=1)
    lam_ = _per_sample(lam, z)
    # Step 1: δ_Λ = P_Λ(δ), separable and identical in any diagonal metric (§5.4.2.2).
    z_box = ep.minimum(ep.maximum(z, _flat(lower, delta)), _flat(upper, delta))
    weights = None if metric is None else _flat(metric, delta)
    if precision is None:
        beta = exact_beta(z, z_box, lam_, weights)
        return _clip(z_box, beta).reshape(shape), beta.reshape((-1,))

    # Steps 2–3: l = 0, u = ‖δ_Λ‖∞ (eq. 5.15).
    low = ep.zeros(z, (z.shape[0], 1))
    high = z_box.abs().max(axis=1, keepdims=True)
    if radius is None:
        radius = float(high.max().item()) if z.shape[0] else 0.0
    n_iter = ternary_iterations(radius, precision)

    for _ in range(n_iter):  # steps 5–16, for the whole batch at once
        third = (high - low) / 3
        beta_l, beta_u = low + third, high - third
        p_l, p_u = _clip(z_box, beta_l), _clip(z_box, beta_u)
        # f_l − f_u of steps 10–12, written coordinate-wise as
        #   ½ Σ s_i (p_l,i − δ_i)² − ½ Σ s_i (p_u,i − δ_i)²
        #     = ½ Σ s_i (p_l,i − p_u,i)(p_l,i + p_u,i − 2δ_i)
        # so that coordinates where both projections agree contribute an exact 0 and the
        # comparison keeps its precision when the two objective values are close.
        terms = (p_l - p_u) * (p_l + p_u - 2 * z)
        if weights is not None:
            terms = weights * terms
        diff = 0.5 * terms.sum(axis=1, keepdims=True) + lam_ * (beta_l - beta_u)
        go_up = diff >= 0  # step 12: f_l ≥ f_u ⇒ l ← β_l, else u ← β_u
        low = ep.where(go_up, beta_l, low)
        high = ep.where(go_up, high, beta_u)

    beta = (low + high) / 2  # step 17
    prox = _clip(z_box, beta)  # step 18, using δ_Λ
    return prox.reshape(shape), beta.reshape((-1,))
