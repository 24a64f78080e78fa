"""The ALMA prox solver against a plain-PyTorch transcription of Algorithm IV-2 (Rony's thesis,
Appendix IV) for classification, in float64, step by step.

Written from the thesis, not from the solver: DLR⁺ (eq. 4) from a sort, the scale w (eq. 5.8,
steps 5–9), μ̂ as autograd of the modified P2 (eq. 5.9, max(1, ρ) in the negative branch)
with respect to d (step 12), the ρ rule of steps 14–19, L's gradient by autograd (steps 21–22),
the diagonal Adam-like metric (steps 23–24), and the prox of step 25 found by bisection on
the derivative of the convex one-dimensional problem in β (p = clip(z, max(−β, Λ⁻),
min(β, Λ⁺))). One constraint per sample, so the masking of steps 10–11 keeps it (m̃ = 1).
Where the thesis is loose the package's documented reading is used: the scale compares with ν
(eq. 5.8's text; the algorithm writes τ), success is d < 0 (DLR⁺ carries the tie tolerance),
the first ρ check compares with d⁽¹⁾, ρ ≤ ρ_max and |g| ≤ 10¹⁸ (safeguards),
λ⁽ᵗ⁾ = λ⁽⁰⁾·r^((t−1)/(N−1)) (§5.5.5.3).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import pytest
import torch
from torch import nn

from alma_plugin import ProxParams, StepInfo, alma_prox

pytestmark = pytest.mark.usefixtures("single_thread")

_TIE_TOLERANCE = 1e-6


def _dlr_plus(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 4, DLR⁺ of logits z (B, K) for labels y (B,), from a sort (K ≥ 3)."""
    others = z.masked_fill(nn.functional.one_hot(y, z.shape[1]).bool(), -math.inf)
    ranked = z.sort(dim=1, descending=True).values
    margin = z.gather(1, y[:, None])[:, 0] - others.max(dim=1).values + _TIE_TOLERANCE
    return margin / (ranked[:, 0] - ranked[:, 2])


def _p2_prox(y: torch.Tensor, rho: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Eq. 5.9: P2 with max(1, ρ) in the negative branch."""
    yp, yn = y.clamp(min=0), y.clamp(max=0)
    positive = mu * yp + mu * rho * yp**2 + rho**2 * yp**3 / 6
    return torch.where(y >= 0, positive, mu * yn / (1 - rho.clamp(min=1) * yn))


def _prox(z: torch.Tensor, lam: float, s: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """argmin_p λ‖p‖∞ + ½ Σ sᵢ (pᵢ − zᵢ)² over p ∈ [low, high] (low ≤ 0 ≤ high), per sample:
    p = clip(z, max(−β, low), min(β, high)) with β minimising the convex
    Φ(β) = λβ + ½ Σ sᵢ (pᵢ(β) − zᵢ)², i.e. where Φ′(β) = λ − Σ_{pᵢ = ±β} sᵢ (|zᵢ| − β) turns
    positive; bisection on the sign of Φ′ (exact to rounding, unlike a search on Φ's values)."""
    z, s, low, high = (t.flatten(1) for t in (z, s, low, high))

    def at(beta: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(z, torch.maximum(-beta, low)), torch.minimum(beta, high))

    def slope(beta: torch.Tensor) -> torch.Tensor:
        b = beta[:, None]
        on_bound = ((z > b) & (b < high)) | ((z < -b) & (-b > low))
        return lam - (s * (z.abs() - b) * on_bound).sum(dim=1)

    a = torch.zeros(len(z), dtype=z.dtype)
    b = z.abs().amax(dim=1)
    for _ in range(200):
        middle = (a + b) / 2
        rising = slope(middle) > 0
        a, b = torch.where(rising, a, middle), torch.where(rising, middle, b)
    return at(((a + b) / 2)[:, None])


def _forward_backward_step(
    delta: torch.Tensor,
    g: torch.Tensor,
    v: torch.Tensor,
    t: int,
    steps: int,
    p: ProxParams,
    low: torch.Tensor,
    high: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Steps 23–25 at step t: the Adam-like metric of |g| ≤ 10¹⁸ and the prox step in it onto
    Λ = [low, high], with λ⁽ᵗ⁾ = λ⁽⁰⁾·r^((t−1)/(N−1)). Returns δ⁽ᵗ⁾, the second moment, λ⁽ᵗ⁾."""
    assert p.init_lr is not None
    g = g.clamp(-1e18, 1e18)
    lam = p.init_lr * p.lr_reduction ** ((t - 1) / (steps - 1))
    v = p.alpha * v + (1 - p.alpha) * g**2  # 23.
    s = (v / (1 - p.alpha**t)).sqrt() + p.metric_eps  # 24.
    return _prox(delta - lam * g / s, lam, s, low, high).reshape(delta.shape), v, lam  # 25.


def _transcription(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: ProxParams, steps: int
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    assert p.init_lr is not None and p.rho_init is not None
    n = len(x)
    ones = torch.ones(n, dtype=x.dtype)
    delta, v, w = torch.zeros_like(x), torch.zeros_like(x), ones * p.scale_init  # 1.
    mu, rho = ones * p.mu_init, ones * p.rho_init
    low, high = -x, 1 - x  # Λ
    best, best_norm = torch.zeros_like(x), torch.full((n,), math.inf, dtype=x.dtype)
    recent, d_ref = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=x.dtype)
    records = []
    for t in range(1, steps + 1):  # 2.
        leaf = delta.clone().requires_grad_(True)
        z = model((x + leaf).clamp(0, 1))  # 3. x̃ ∈ [0, 1]
        d = _dlr_plus(z, y)  # 4.
        d_c = d.detach()
        satisfied = d_c < 0
        w = torch.where(satisfied, w / (1 + p.scale_rate), w / (1 - p.scale_rate))  # 5–8.
        w = w.clamp(p.scale_min, 1.0)  # 9.
        y_c = (w * d_c).requires_grad_(True)  # 12. μ̂ = ∇_d P(w d, ρ, μ) = w P′(w d)
        (mu_hat,) = torch.autograd.grad(_p2_prox(y_c, rho, mu).sum(), y_c)
        mu = (p.alpha * mu + (1 - p.alpha) * w * mu_hat).clamp(p.mu_min, p.mu_max)  # 13.
        recent = recent | (d_c <= 0)
        if t == 1:
            d_ref = d_c
        if t % p.check_steps == 0:  # 14–20.
            stalled = ~(recent | (d_c <= p.tau * d_ref))
            rho = torch.where(stalled, (p.gamma * rho).clamp(max=p.rho_max), rho)
            recent, d_ref = torch.zeros_like(recent), d_c
        loss = _p2_prox(w * d, rho, mu).sum()  # 21.
        (g,) = torch.autograd.grad(loss, leaf)  # 22.
        norm = delta.flatten(1).abs().amax(dim=1)  # 27. x̃⁽ᵗ⁾ = x + δ⁽ᵗ⁻¹⁾ was judged
        better = satisfied & (norm < best_norm)
        best = torch.where(better[:, None, None, None], delta, best)
        best_norm = torch.where(better, norm, best_norm)
        delta, v, lam = _forward_backward_step(delta, g, v, t, steps, p, low, high)  # 23–25.
        records.append((norm, d_c, mu, rho, lam, satisfied))
    return best_norm, records


@pytest.mark.parametrize("scale", [0.4, 1.0])
def test_solver_is_algorithm_iv2(scale: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    with torch.no_grad():  # 0.4: a flat model, where some samples stay unsolved and ρ grows
        model[1].weight.mul_(scale)
    x = torch.rand(16, 3, 2, 2, dtype=torch.float64)
    y = model(x).argmax(dim=1)
    # smooth_max=0: DLR⁺'s own gradient, as Algorithm IV-2 (classification's default smooths it)
    params = ProxParams(init_lr=0.1, check_steps=4, alpha=0.7, scale_rate=0.1, smooth_max=0.0)
    steps = 30
    records: list[StepInfo] = []
    result = alma_prox(model, x, y, steps=steps, params=params, callback=records.append)
    best_norm, expected = _transcription(model, x, y, params.for_task("classification"), steps)
    assert len(records) == steps
    # Rounding only: the two agree to ~1e-14 here.
    for t, (info, reference) in enumerate(zip(records, expected, strict=True)):
        got = (info.distance, info.constraint, info.mu, info.rho)
        for name, a, b in zip(("‖δ‖∞", "d", "μ", "ρ"), got, reference, strict=False):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"step {t}: {name}")
        torch.testing.assert_close(info.step_size, torch.full_like(info.mu, reference[4]))
        assert torch.equal(info.success, reference[5]), f"step {t}: success"
    found = best_norm.isfinite()
    assert torch.equal(result.success, found)
    torch.testing.assert_close(result.distances[found], best_norm[found], rtol=1e-9, atol=1e-12)
    if scale < 1:
        assert not found.all() and bool(
            (expected[-1][3] > params.for_task("classification").rho_init).any()
        )
    else:
        assert found.all()


class _DenseStep(NamedTuple):
    """One step of the dense transcription: what StepInfo reports (d NaN outside the masks),
    then what the test checks the problem exercises."""

    norm: torch.Tensor  # (N,) ‖δ⁽ᵗ⁻¹⁾‖∞, the iterate judged
    d: torch.Tensor  # (N, M)
    mu: torch.Tensor  # (N, M)
    rho: torch.Tensor  # (N, M)
    step_size: float  # λ⁽ᵗ⁾
    success: torch.Tensor  # (N,) APSR ≥ ν
    apsr: torch.Tensor  # (N,)
    w: torch.Tensor  # (N,) eq. 5.8
    kept: torch.Tensor  # (N, M) m̃⁽ᵗ⁾
    stalled: torch.Tensor  # (N, M) ρ check: neither satisfied lately nor improved (else False)


def _dense_transcription(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    nu: Fraction,
    p: ProxParams,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor, list[_DenseStep]]:
    """Algorithm IV-2 for logits (N, K, H, W): one DLR⁺ constraint per pixel of the user mask m,
    the best ‖δ‖∞ and its APSR per sample (+inf and the clean input's APSR where none)."""
    assert p.init_lr is not None and p.rho_init is not None
    n = len(x)
    m = masks.reshape(n, -1)  # the user mask, (N, M) with M = H·W row-major
    count = m.sum(dim=1)  # ‖m‖₁
    delta, v = torch.zeros_like(x), torch.zeros_like(x)  # 1.
    w = torch.full((n, 1), p.scale_init, dtype=x.dtype)
    mu = torch.full(m.shape, p.mu_init, dtype=x.dtype)
    rho = torch.full(m.shape, p.rho_init, dtype=x.dtype)
    low, high = -x, 1 - x  # Λ
    best_norm = torch.full((n,), math.inf, dtype=x.dtype)
    best_apsr = torch.zeros(n, dtype=x.dtype)
    recent, d_ref = torch.zeros_like(m), torch.zeros(m.shape, dtype=x.dtype)
    records = []
    for t in range(1, steps + 1):  # 2.
        leaf = delta.clone().requires_grad_(True)
        z = model((x + leaf).clamp(0, 1))  # 3. x̃ ∈ [0, 1]
        pixels = z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1])  # (N·M, K)
        d = _dlr_plus(pixels, y.reshape(-1)).reshape(n, -1)  # 4. one constraint per pixel
        d_c = d.detach()
        satisfied = (m & (d_c < 0)).sum(dim=1)  # APSR⁽ᵗ⁾ = satisfied / ‖m‖₁
        reached = satisfied * nu.denominator >= nu.numerator * count  # APSR ≥ ν, in integers
        w = torch.where(reached[:, None], w / (1 + p.scale_rate), w / (1 - p.scale_rate))  # 5–8.
        w = w.clamp(p.scale_min, 1.0)  # 9.
        kept_fraction = 1 - (1 - nu) * Fraction(t - 1, steps - 1)  # 10. 100% → ν, exact
        kept = torch.zeros_like(m)
        for i in range(n):
            k = max(math.ceil(kept_fraction * int(count[i])), 1)
            xi = d_c[i][m[i]].sort().values[k - 1]  # ξ⁽ᵗ⁾: the k-th smallest masked d
            kept[i] = m[i] & (d_c[i] <= xi)  # 11. m̃ = m ∧ [d ≤ ξ⁽ᵗ⁾]
        d_leaf = d_c.clone().requires_grad_(True)  # 12. μ̂ = ∂/∂d m̃ᵀ P(w d, ρ, μ)
        (mu_hat,) = torch.autograd.grad((kept * _p2_prox(w * d_leaf, rho, mu)).sum(), d_leaf)
        mu = (p.alpha * mu + (1 - p.alpha) * mu_hat).clamp(p.mu_min, p.mu_max)  # 13.
        recent = recent | (d_c <= 0)
        if t == 1:
            d_ref = d_c
        stalled = torch.zeros_like(m)
        if t % p.check_steps == 0:  # 14–20. ρ grows on the stalled constraints of m̃ only
            stalled = ~(recent | (d_c <= p.tau * d_ref))
            rho = torch.where(kept & stalled, (p.gamma * rho).clamp(max=p.rho_max), rho)
            recent, d_ref = torch.zeros_like(recent), d_c
        loss = (kept * _p2_prox(w * d, rho, mu)).sum()  # 21. L = m̃ᵀ P(w d, ρ, μ)
        (g,) = torch.autograd.grad(loss, leaf)  # 22.
        norm = delta.flatten(1).abs().amax(dim=1)  # 27. x̃⁽ᵗ⁾ = x + δ⁽ᵗ⁻¹⁾ was judged
        apsr = satisfied.to(x.dtype) / count
        if t == 1:
            best_apsr = apsr
        better = reached & (norm < best_norm)
        best_norm = torch.where(better, norm, best_norm)
        best_apsr = torch.where(better, apsr, best_apsr)
        delta, v, lam = _forward_backward_step(delta, g, v, t, steps, p, low, high)  # 23–25.
        reported = d_c.masked_fill(~m, math.nan)  # no constraint outside the masks
        records.append(_DenseStep(norm, reported, mu, rho, lam, reached, apsr, w[:, 0], kept,
                                  stalled))  # fmt: skip
    return best_norm, best_apsr, records


def test_dense_solver_is_algorithm_iv2() -> None:
    """Segmentation: logits (N, K, H, W), a user mask m, ν = 0.75. On top of the classification
    case, the transcription has one DLR⁺, μ and ρ per pixel, the masking of eq. 5.6 (steps
    10–11: m̃ = m ∧ [d ≤ ξ⁽ᵗ⁾], ξ⁽ᵗ⁾ the k-th smallest d over m, k = max(⌈f‖m‖₁⌉, 1) in exact
    fractions, f decaying linearly from 1 at t = 1 to ν at t = N), ρ grown only on the stalled
    constraints of m̃ (steps 14–19), μ̂ = ∂/∂d m̃ᵀP(w d, ρ, μ) by autograd with respect to d (so
    the chain-rule factor w comes from autograd), the scale w of eq. 5.8 driven by
    APSR = #{m ∧ [d < 0]} / ‖m‖₁ against ν, and success as APSR ≥ ν decided in integers
    (ν = 3/4 exactly). The module docstring's readings, and: satisfied is d < 0 (for APSR, w and
    success; DLR⁺ carries the tie tolerance) where the thesis writes d ≤ 0, kept for the "recent"
    set of the ρ rule; w compares with ν (eq. 5.8's text), not τ (step 5). The problem is made
    to exercise all of it (asserted): m̃ drops masked pixels, some stalled masked pixel is left
    out of m̃ at a check (ρ not grown there) while others grow, w falls below 1, and an APSR
    lies in [ν, τ) (where comparing with τ would differ)."""
    torch.manual_seed(0)
    model = nn.Conv2d(2, 4, 3, padding=1).double()  # K = 4, pixels coupled by the 3 × 3 kernel
    x = torch.rand(2, 2, 3, 4, dtype=torch.float64)
    y = model(x).argmax(dim=1)
    masks = torch.ones(2, 3, 4, dtype=torch.bool)
    masks[0, 0, :3] = False  # ‖m‖₁ = 9 and 11
    masks[1, 2, 1] = False
    nu, steps = 0.75, 40
    params = ProxParams(init_lr=0.03, check_steps=4, alpha=0.7, scale_rate=0.1, rho_init=0.5)
    p = params.for_task("segmentation")
    assert p.rho_init is not None
    records: list[StepInfo] = []
    result = alma_prox(model, x, y, masks=masks, adv_threshold=nu, steps=steps, params=params,
                       callback=records.append)  # fmt: skip
    best_norm, best_apsr, expected = _dense_transcription(model, x, y, masks, Fraction(nu), p,
                                                          steps)  # fmt: skip
    assert len(records) == steps
    for t, (info, step) in enumerate(zip(records, expected, strict=True), start=1):
        got = (info.distance, info.constraint, info.mu, info.rho)
        for name, a, b in zip(("‖δ‖∞", "d", "μ", "ρ"), got, step, strict=False):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, equal_nan=True,
                                       msg=f"step {t}: {name}")  # fmt: skip
        torch.testing.assert_close(info.step_size, torch.full_like(info.distance, step.step_size),
                                   rtol=1e-9, atol=1e-12)  # fmt: skip
        assert torch.equal(info.success, step.success), f"step {t}: success"
    found = best_norm.isfinite()
    assert torch.equal(result.success, found)
    torch.testing.assert_close(result.distances[found], best_norm[found], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.apsr, best_apsr, rtol=1e-9, atol=1e-12)

    m = masks.reshape(2, -1)
    assert any(bool((m & ~step.kept).any()) for step in expected)  # 11. m̃ ≠ m
    assert any(bool((step.stalled & m & ~step.kept).any()) for step in expected)
    assert bool((expected[-1].rho[m] > p.rho_init).any())  # 19. ρ grew on masked pixels
    assert any(bool((step.w < 1).any()) for step in expected)  # 5–9. w shrank
    assert any(bool(((step.apsr >= nu) & (step.apsr < p.tau)).any()) for step in expected)
    assert found.any() and not found.all()
