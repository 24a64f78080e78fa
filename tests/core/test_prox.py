"""The ℓ∞ + box proximity operator, exact (the default) and by Algorithm 5.1's ternary search,
against independent solvers: a float64 candidate enumeration, SLSQP and a grid over β."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from alma_plugin.core.prox import linf_box_prox, ternary_iterations

#: (precision, tolerance on p and β against the float64 reference): the exact solver agrees to
#: rounding, the thesis' ternary search to its Δβ.
SOLVERS = {"exact": (None, 1e-12), "ternary": (1e-5, 1e-5)}


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


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("metric", [False, True])
@pytest.mark.parametrize("scale", [0.05, 0.3, 2.0])
def test_prox_matches_closed_form(metric, scale, solver):
    precision, tolerance = SOLVERS[solver]
    rng = np.random.default_rng(int(scale * 100) + metric)
    n, d = 16, 300
    x, delta, lam, s = _random_problem(rng, n, d, scale, metric)
    p, beta = linf_box_prox(
        ep.astensor(torch.from_numpy(delta)),
        ep.astensor(torch.from_numpy(lam)),
        ep.astensor(torch.from_numpy(-x)),
        ep.astensor(torch.from_numpy(1 - x)),
        ep.astensor(torch.from_numpy(s)) if metric else None,
        precision,
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
    assert worst < tolerance, worst
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


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("metric", [False, True])
def test_prox_matches_generic_solver(metric, solver):
    """The (p, β) formulation of eq. 5.12 solved by SLSQP, without the ternary search."""
    rng = np.random.default_rng(3)
    x, delta, lam, s = _random_problem(rng, 6, 8, 0.6, metric)
    p = linf_box_prox(
        ep.astensor(torch.from_numpy(delta)),
        ep.astensor(torch.from_numpy(lam)),
        ep.astensor(torch.from_numpy(-x)),
        ep.astensor(torch.from_numpy(1 - x)),
        ep.astensor(torch.from_numpy(s)) if metric else None,
        SOLVERS[solver][0],
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


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_prox_special_cases(solver):
    precision = SOLVERS[solver][0]
    delta = ep.astensor(torch.tensor([[0.5, -0.2, 0.1], [0.0, 0.0, 0.0], [2.0, -3.0, 0.2]]))
    x = ep.astensor(torch.tensor([[0.2, 0.5, 0.9], [0.3, 0.3, 0.3], [0.1, 0.4, 0.5]]))
    # λ = 0: the prox is the projection onto Λ (eq. 5.13), up to Δβ
    p, _ = linf_box_prox(delta, 0.0, -x, 1 - x, precision=precision)
    assert np.allclose(p.numpy(), np.clip(delta.numpy(), -x.numpy(), 1 - x.numpy()), atol=1e-5)
    # a huge λ: the prox is 0
    p, _ = linf_box_prox(delta, 1e6, -x, 1 - x, precision=precision)
    assert np.abs(p.numpy()).max() < 1e-5
    # per-sample λ: only the first sample is shrunk to 0
    lam = ep.astensor(torch.tensor([1e6, 0.0, 0.0]))
    p = linf_box_prox(delta, lam, -x, 1 - x, precision=precision)[0].numpy()
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
    for bad in (0.0, -1e-5, float("nan")):
        with pytest.raises(ValueError, match="precision must be None .exact. or positive"):
            linf_box_prox(ep.astensor(torch.zeros(1, 2)), 1.0, -1.0, 1.0, precision=bad)


def test_ternary_search_is_within_its_precision_of_the_exact_beta():
    """Algorithm 5.1 (Δβ = 10⁻⁵, 29 iterations for ‖δ_Λ‖∞ ≤ 1) brackets the exact β*."""
    rng = np.random.default_rng(11)
    x, delta, lam, s = _random_problem(rng, 64, 200, 0.2, True)
    args = [ep.astensor(torch.from_numpy(a)) for a in (delta, lam, -x, 1 - x, s)]
    exact = linf_box_prox(*args)[1].numpy()
    ternary = linf_box_prox(*args, precision=1e-5, radius=1.0)[1].numpy()
    assert np.abs(exact - ternary).max() <= 1e-5
    assert np.abs(exact - ternary).max() > 0  # the two solvers are different computations


def test_one_ternary_step_by_hand():
    """Algorithm 5.1 with one iteration (Δβ = 2 for u = ‖δ_Λ‖∞ = 3, step 4), worked by hand on
    δ = 3, λ = 1.5: β_l = 1, β_u = 2 and f_l = ½·2² + 1.5 = f_u = ½·1² + 3 = 3.5, a tie, so step
    12 (f_l ≥ f_u) sets l ← β_l, and step 17 returns the midpoint β = (1 + 3)/2 = 2. Dyadic
    values: every quantity is exact in float64."""
    delta = ep.astensor(torch.tensor([[3.0]], dtype=torch.float64))
    assert ternary_iterations(3.0, 2.0) == 1
    p, beta = linf_box_prox(delta, 1.5, -4.0, 4.0, precision=2.0)
    assert beta.raw.tolist() == [2.0] and p.raw.tolist() == [[2.0]]


def _backend_tensor(backend: str, array: np.ndarray) -> ep.Tensor:
    if backend == "torch":
        return ep.astensor(torch.from_numpy(array).float())
    if backend == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return ep.astensor(jnp.asarray(array, dtype=jnp.float32))
    return ep.astensor(array.astype(np.float32))


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
@pytest.mark.parametrize("metric", [False, True])
def test_exact_prox_on_every_backend(backend, metric):
    """The exact solver sorts, gathers and accumulates: framework primitives whose behaviour
    (ties, index dtypes, float32 cumulative sums) could differ. Ties, zeros, box-clipped
    coordinates, λ = 0 and λ beyond Σ sᵢ|δᵢ| are all in the batch."""
    rng = np.random.default_rng(5)
    x, delta, lam, s = _random_problem(rng, 12, 3 * 32 * 32, 0.1, metric)
    delta[0, :50] = 0.05  # ties among the largest breakpoints
    delta[1] = np.round(delta[1], 2)  # many ties everywhere
    delta[2] = 0.0  # δ = 0: p = 0
    delta[3] *= 30  # the box clips most coordinates
    lam[4], lam[5] = 0.0, 1e9  # p = P_Λ(δ); p = 0
    args = [_backend_tensor(backend, a) for a in (delta, lam, -x, 1 - x)]
    metric_tensor = _backend_tensor(backend, s) if metric else None
    p, beta = linf_box_prox(*args, metric_tensor)
    assert type(p.raw) is type(args[0].raw) and p.dtype == args[0].dtype
    p, beta = p.numpy(), beta.numpy()
    for i in range(len(x)):
        ref_p, ref_beta = reference_prox(delta[i], lam[i], -x[i], 1 - x[i], s[i])
        assert abs(beta[i] - ref_beta) < 1e-5 * max(1.0, ref_beta), (i, beta[i], ref_beta)
        assert np.abs(p[i] - ref_p).max() < 1e-5, i
    assert np.all(p[2] == 0) and np.all(p[5] == 0)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    values=st.lists(
        st.sampled_from([-2.0, -0.5, -0.25, 0.0, 0.1, 0.25, 0.3, 0.7, 1.5]), min_size=1, max_size=12
    ),
    origin=st.floats(0.0, 1.0),
    lam=st.sampled_from([0.0, 1e-3, 0.1, 0.4, 1.0, 3.0, 100.0]),
    weighted=st.booleans(),
)
def test_exact_prox_minimises_the_objective(values, origin, lam, weighted):
    """On small problems full of ties and box-clipped coordinates, in float64: p is in the box,
    ‖p‖∞ = β, and no β on a fine grid (nor any breakpoint) gives a smaller objective."""
    delta = np.array(values)
    x = np.full_like(delta, origin)
    s = np.linspace(0.2, 2.0, len(delta)) if weighted else np.ones_like(delta)
    tensor = lambda a: ep.astensor(torch.from_numpy(np.asarray(a)[None]))  # noqa: E731
    p, beta = linf_box_prox(tensor(delta), lam, tensor(-x), tensor(1 - x), tensor(s))
    p, beta = p.numpy()[0], float(beta.numpy()[0])
    assert np.all(p >= -x) and np.all(p <= 1 - x)
    assert np.isclose(np.abs(p).max(initial=0.0), beta, rtol=0, atol=1e-15)
    box = np.clip(delta, -x, 1 - x)
    grid = np.concatenate([np.linspace(0, np.abs(box).max(), 401), np.abs(box)])
    best = min(objective(np.clip(box, -b, b), delta, lam, s) for b in grid)
    assert objective(p, delta, lam, s) <= best + 1e-12
