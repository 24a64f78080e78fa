"""The ℓ∞ + box proximity operator (Algorithm 5.1) against independent solvers."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from alma_plugin.core.prox import linf_box_prox, ternary_iterations


def exact_beta(
    delta: np.ndarray, lam: float, lo: np.ndarray, hi: np.ndarray, s: np.ndarray
) -> float:
    """β* of eq. 5.14 in closed form (float64), independent of the ternary search.

    Φ(β) = ½‖p_β − δ‖²_H + λβ is convex and piecewise quadratic with breakpoints at |δ_Λ,i|:
    on each piece its derivative λ − Σ_{|δ_Λ,i| > β} s_i (|δ_i| − β) is linear, with root
    (Σ s_i|δ_i| − λ) / Σ s_i over the active set; the derivative jumps at a breakpoint where
    the box clips δ. The minimiser is thus a root inside its piece or a breakpoint: take the
    best of these candidates.
    """
    box = np.clip(delta, lo, hi)
    c = np.abs(box)
    order = np.argsort(-c)
    c, a, w = c[order], np.abs(delta)[order], s[order]
    nxt = np.append(c[1:], 0.0)
    roots = (np.cumsum(w * a) - lam) / np.cumsum(w)
    inside = (roots >= nxt) & (roots <= c)
    candidates = np.concatenate([[0.0], c, roots[inside]])

    def phi(beta: float) -> float:
        return 0.5 * np.sum(s * (np.clip(box, -beta, beta) - delta) ** 2) + lam * beta

    return float(min(candidates, key=phi))


def reference_prox(delta, lam, lo, hi, s):
    beta = exact_beta(delta, lam, lo, hi, s)
    return np.clip(np.clip(delta, lo, hi), -beta, beta), beta


def objective(p, delta, lam, s):
    return 0.5 * np.sum(s * (p - delta) ** 2) + lam * np.max(np.abs(p))


def _random_problem(rng, n, d, scale, metric):
    x = rng.uniform(0, 1, size=(n, d))
    delta = rng.normal(0, scale, size=(n, d))
    lam = 10 ** rng.uniform(-3, 1, size=n)
    s = rng.uniform(0.05, 3.0, size=(n, d)) if metric else np.ones((n, d))
    return x, delta, lam, s


@pytest.mark.parametrize("metric", [False, True])
@pytest.mark.parametrize("scale", [0.05, 0.3, 2.0])
def test_prox_matches_closed_form(metric, scale):
    rng = np.random.default_rng(int(scale * 100) + metric)
    n, d = 16, 300
    x, delta, lam, s = _random_problem(rng, n, d, scale, metric)
    p, beta = linf_box_prox(
        ep.astensor(torch.from_numpy(delta)),
        ep.astensor(torch.from_numpy(lam)),
        ep.astensor(torch.from_numpy(-x)),
        ep.astensor(torch.from_numpy(1 - x)),
        ep.astensor(torch.from_numpy(s)) if metric else None,
    )
    p, beta = p.numpy(), beta.numpy()
    worst = 0.0
    for i in range(n):
        ref_p, ref_beta = reference_prox(delta[i], lam[i], -x[i], 1 - x[i], s[i])
        worst = max(worst, np.abs(p[i] - ref_p).max(), abs(beta[i] - ref_beta))
        # the box is honoured and the objective cannot beat the exact optimum
        assert np.all(p[i] >= -x[i] - 1e-12) and np.all(p[i] <= 1 - x[i] + 1e-12)
        assert (
            objective(p[i], delta[i], lam[i], s[i])
            >= objective(ref_p, delta[i], lam[i], s[i]) - 1e-12
        )
    assert worst < 1e-5, worst
    if scale == 2.0:  # the projection onto Λ is active for many coordinates
        assert np.mean(np.abs(delta) > np.maximum(x, 1 - x)) > 0.3


def test_prox_float32_precision():
    rng = np.random.default_rng(7)
    x, delta, lam, s = _random_problem(rng, 4, 3 * 32 * 32, 0.1, True)
    lam = lam * 100
    to32 = lambda a: ep.astensor(torch.from_numpy(a).float())  # noqa: E731
    p = linf_box_prox(to32(delta), to32(lam), to32(-x), to32(1 - x), to32(s))[0].numpy()
    for i in range(len(x)):
        ref_p, _ = reference_prox(delta[i], lam[i], -x[i], 1 - x[i], s[i])
        assert np.abs(p[i] - ref_p).max() < 1e-5


@pytest.mark.parametrize("metric", [False, True])
def test_prox_matches_generic_solver(metric):
    """The (p, β) formulation of eq. 5.12 solved by SLSQP, without the ternary search."""
    rng = np.random.default_rng(3)
    x, delta, lam, s = _random_problem(rng, 6, 8, 0.6, metric)
    p = linf_box_prox(
        ep.astensor(torch.from_numpy(delta)),
        ep.astensor(torch.from_numpy(lam)),
        ep.astensor(torch.from_numpy(-x)),
        ep.astensor(torch.from_numpy(1 - x)),
        ep.astensor(torch.from_numpy(s)) if metric else None,
    )[0].numpy()
    for i in range(len(x)):
        d = delta.shape[1]
        fun = lambda v: 0.5 * np.sum(s[i] * (v[:d] - delta[i]) ** 2) + lam[i] * v[d]  # noqa: B023,E731
        jac = lambda v: np.append(s[i] * (v[:d] - delta[i]), lam[i])  # noqa: B023,E731
        cons = [
            {"type": "ineq", "fun": lambda v: v[d] - v[:d]},  # noqa: B023
            {"type": "ineq", "fun": lambda v: v[d] + v[:d]},  # noqa: B023
        ]
        bounds = [(-xi, 1 - xi) for xi in x[i]] + [(0, 1)]
        start = np.append(np.zeros(d), 0.5)
        res = minimize(
            fun,
            start,
            jac=jac,
            bounds=bounds,
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert res.success
        assert np.abs(p[i] - res.x[:d]).max() < 1e-5
        # and a fine grid over β with the closed-form inner solution (eq. 5.14)
        box = np.clip(delta[i], -x[i], 1 - x[i])
        grid = np.linspace(0, np.abs(box).max(), 2001)
        values = [objective(np.clip(box, -b, b), delta[i], lam[i], s[i]) for b in grid]
        assert objective(p[i], delta[i], lam[i], s[i]) <= min(values) + 1e-5


def test_prox_special_cases():
    delta = ep.astensor(torch.tensor([[0.5, -0.2, 0.1], [0.0, 0.0, 0.0], [2.0, -3.0, 0.2]]))
    x = ep.astensor(torch.tensor([[0.2, 0.5, 0.9], [0.3, 0.3, 0.3], [0.1, 0.4, 0.5]]))
    # λ = 0: the prox is the projection onto Λ (eq. 5.13), up to Δβ
    p, _ = linf_box_prox(delta, 0.0, -x, 1 - x)
    assert np.allclose(p.numpy(), np.clip(delta.numpy(), -x.numpy(), 1 - x.numpy()), atol=1e-5)
    # a huge λ: the prox is 0
    p, _ = linf_box_prox(delta, 1e6, -x, 1 - x)
    assert np.abs(p.numpy()).max() < 1e-5
    # per-sample λ: only the first sample is shrunk to 0
    lam = ep.astensor(torch.tensor([1e6, 0.0, 0.0]))
    p = linf_box_prox(delta, lam, -x, 1 - x)[0].numpy()
    assert np.abs(p[0]).max() < 1e-5 and np.abs(p[2]).max() > 0.5


def test_prox_keeps_shape_and_inputs():
    torch.manual_seed(0)
    delta = torch.randn(2, 3, 4, 5)
    x = torch.rand(2, 3, 4, 5)
    before = delta.clone(), x.clone()
    p, _ = linf_box_prox(ep.astensor(delta), 0.1, ep.astensor(-x), ep.astensor(1 - x))
    assert p.shape == delta.shape and isinstance(p.raw, torch.Tensor)
    assert torch.equal(delta, before[0]) and torch.equal(x, before[1])
    assert ((x + p.raw) >= 0).all() and ((x + p.raw) <= 1).all()


def test_ternary_iterations():
    assert ternary_iterations(1.0, 1e-5) == 29  # the thesis' worst case (§5.4.2.1)
    assert ternary_iterations(0.0, 1e-5) == 0
    with pytest.raises(ValueError, match="precision"):
        linf_box_prox(ep.astensor(torch.zeros(1, 2)), 1.0, -1.0, 1.0, precision=0.0)
