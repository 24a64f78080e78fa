"""Algorithm 5.1's ternary search when δ lies far outside the box: its interval is
[0, ‖P_Λ(δ)‖∞] (eq. 5.15), so a host bound ``radius`` on ‖P_Λ(δ)‖∞ gives the precision Δβ
whatever the size of δ itself."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import torch

from alma_plugin.core.prox import linf_box_prox


def _enumerated_beta(delta: np.ndarray, lam: float, lo: np.ndarray, hi: np.ndarray) -> float:
    """β* of eq. 5.14 (Euclidean metric) in float64 by enumeration: Φ is piecewise quadratic
    with breakpoints |δ_Λ,i|, so β* is 0, a breakpoint or a root of Φ′ inside its piece."""
    box = np.clip(delta, lo, hi)
    c = np.sort(np.abs(box))[::-1]
    a = np.abs(delta)[np.argsort(-np.abs(box), kind="stable")]
    roots = (np.cumsum(a) - lam) / np.arange(1, len(c) + 1)
    candidates = np.concatenate([[0.0], c, roots[(roots >= 0) & (roots <= c[0])]])

    def phi(beta: float) -> float:
        return 0.5 * float(np.sum((np.clip(box, -beta, beta) - delta) ** 2)) + lam * beta

    return float(min(candidates, key=phi))


def test_ternary_search_with_a_radius_is_precise_for_a_delta_far_outside_the_box() -> None:
    """δ up to ±50 on the box [−x, 1 − x]: radius = 1 bounds ‖P_Λ(δ)‖∞, and the ternary β
    is within Δβ = 1e-5 of the float64 enumeration (a search started on [0, ‖δ‖∞] would
    keep 50 times that width after the iterations the radius allows)."""
    rng = np.random.default_rng(5)
    n, d = 16, 40
    x = rng.uniform(0, 1, size=(n, d))
    delta = rng.uniform(-50, 50, size=(n, d))
    lam = 10 ** rng.uniform(0, 2.5, size=n)
    args = [ep.astensor(torch.from_numpy(a)) for a in (delta, lam, -x, 1 - x)]
    _, beta = linf_box_prox(*args, precision=1e-5, radius=1.0)
    expected = np.array([_enumerated_beta(delta[i], lam[i], -x[i], 1 - x[i]) for i in range(n)])
    assert (expected > 0).all() and (expected < 1).all()  # interior optima, not the ends
    np.testing.assert_allclose(beta.numpy(), expected, rtol=0, atol=1e-5)
