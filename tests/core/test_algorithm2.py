"""The ALMA solver against a plain-PyTorch transcription of Algorithm 2 (Rony et al., ICCV 2021)
in float64, step by step: every quantity the callback reports and the returned adversarials.

The transcription is written from the paper, not from the solver: L = D + P(d, ρ, μ) of step 7
differentiated by autograd through P's written-out value (eq. 10 / 19), DLR⁺ (eq. 4) from a
sort, D from ``torch.linalg.vector_norm``, RMSProp with momentum as three lines (§3.2.4), the
paper's step-size schedule (Fig. 3). The solver's own machinery (eagerpy on any backend, the
safe ℓp primitives, the distances' checks skipped inside the loop, the best-iterate
bookkeeping) must not change the algorithm: the two agree to rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alma_plugin import ALMAParams, StepInfo, alma

pytestmark = pytest.mark.usefixtures("single_thread")

_TIE_TOLERANCE = 1e-6  # our DLR⁺ adds it to the margin so that an exact tie never succeeds


def _p2(y: torch.Tensor, rho: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Eq. 10, written with ``torch.where`` on branches that stay finite."""
    yp, yn = y.clamp(min=0), y.clamp(max=0)
    positive = mu * yp + mu * rho * yp**2 + rho**2 * yp**3 / 6
    return torch.where(y >= 0, positive, mu * yn / (1 - rho * yn))


def _phr(y: torch.Tensor, rho: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Eq. 19."""
    return ((mu + rho * y).clamp(min=0) ** 2 - mu**2) / (2 * rho)


def _derivative(penalty: str, y: torch.Tensor, rho: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """∂P/∂y by autograd of the value, for μ̂ of eq. 9."""
    y = y.detach().requires_grad_(True)
    value = (_p2 if penalty == "P2" else _phr)(y, rho, mu)
    return torch.autograd.grad(value.sum(), y)[0]


def _transcription(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: ALMAParams, steps: int, norm: float
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """Algorithm 2; with ``p.smooth_max`` = κ > 0, L's gradient through d is that of
    (z_y − T·log Σ_{i≠y} exp(z_i / T)) / s with T = κ·s and s = z_π1 − z_π3 held (the value
    stays DLR⁺'s)."""
    assert p.alpha is not None and p.init_lr is not None
    assert p.rmsprop_decay is not None and p.momentum is not None
    n = len(x)
    ones = torch.ones(n, dtype=x.dtype)
    mu, rho = ones * p.mu_init, ones * p.rho_init
    x_adv, v, m = x.clone(), torch.ones_like(x), torch.zeros_like(x)
    best, best_distance = x.clone(), torch.full((n,), math.inf, dtype=x.dtype)
    ever = torch.zeros(n, dtype=torch.bool)
    first = torch.full((n,), -1)
    d_ref = torch.zeros(n, dtype=x.dtype)
    records = []
    for t in range(steps):
        u = x_adv.clone().requires_grad_(True)
        z = model(u)  # 3.
        others = z.masked_fill(nn.functional.one_hot(y, z.shape[1]).bool(), -math.inf)
        ranked = z.sort(dim=1, descending=True).values
        margin = z.gather(1, y[:, None])[:, 0] - others.max(dim=1).values + _TIE_TOLERANCE
        d = margin / (ranked[:, 0] - ranked[:, 2])  # 4. DLR⁺ (eq. 4)
        if p.smooth_max > 0:
            s = (ranked[:, 0] - ranked[:, 2]).detach()
            temperature = p.smooth_max * s
            smooth = temperature * torch.logsumexp(others / temperature[:, None], dim=1)
            direction = (z.gather(1, y[:, None])[:, 0] - smooth) / s
            d = d.detach() + (direction - direction.detach())
        mu_hat = _derivative(p.penalty, d, rho, mu)  # 5.
        mu = (p.alpha * mu + (1 - p.alpha) * mu_hat).clamp(p.mu_min, p.mu_max)  # 6. (eq. 9)
        distance = torch.linalg.vector_norm((u - x).flatten(1), ord=norm, dim=1)
        loss = distance + (_p2 if p.penalty == "P2" else _phr)(d, rho, mu)  # 7.
        (g,) = torch.autograd.grad(loss.sum(), u)  # 8.
        d, distance = d.detach(), distance.detach()
        success = d < 0  # 17.
        improved = success & (distance < best_distance)
        best = torch.where(improved[:, None, None, None], u.detach(), best)
        best_distance = torch.where(improved, distance, best_distance)
        first = torch.where(success & (first < 0), t, first)
        ever |= success
        # Fig. 3: η⁽⁰⁾ until the first success t*, then η⁽⁰⁾·r^((t − t*)/(N − 1 − t*))
        start = first.to(x.dtype)
        progress = ((t - start) / (steps - 1 - start).clamp(min=1)).clamp(0, 1)
        eta = torch.where(first >= 0, p.init_lr * p.lr_reduction**progress, p.init_lr * ones)
        v = p.rmsprop_decay * v + (1 - p.rmsprop_decay) * g**2  # 9. RMSProp with momentum
        m = p.momentum * m + g / (v.sqrt() + 1e-8)
        x_adv = (x_adv - eta[:, None, None, None] * m).clamp(0, 1)
        if t == 0:
            d_ref = d
        if (t + 1) % p.check_steps == 0:  # 10–14.
            rho = torch.where(~ever & (d > p.tau * d_ref), p.gamma * rho, rho)
            d_ref = d
        records.append((distance, d, mu, rho, eta, success))
    return best, best_distance, records


@pytest.mark.parametrize(
    ("penalty", "smooth_max"), [("P2", 0.0), ("PHR", 0.0), ("P2", 0.1)]
)  # κ > 0: ALMAParams.smooth_max, not in the paper
@pytest.mark.parametrize(("distance", "norm"), [("l2", 2.0), ("l1", 1.0)])
def test_solver_is_algorithm_2(penalty: str, smooth_max: float, distance: str, norm: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    with torch.no_grad():  # a flat model: some samples stay unsolved and ρ grows
        model[1].weight.mul_(0.4)
    x = torch.rand(16, 3, 2, 2, dtype=torch.float64)
    y = model(x).argmax(dim=1)
    # α ≠ 0.5, so that swapping α and 1 − α in the μ average (eq. 9) is caught
    params = ALMAParams(alpha=0.7, init_lr=0.1 if distance == "l2" else 0.05, check_steps=4,
                        penalty=penalty, gamma=2.0, rmsprop_decay=0.8, momentum=0.6,
                        smooth_max=smooth_max)  # fmt: skip
    steps = 30
    records: list[StepInfo] = []
    result = alma(model, x, y, distance=distance, steps=steps, params=params,
                  callback=records.append)  # fmt: skip
    best, best_distance, expected = _transcription(model, x, y, params, steps, norm)
    assert len(records) == steps
    # The two differ by rounding only (~1e-16), which the dynamics amplify to ~1e-10 in 30 steps.
    for t, (info, reference) in enumerate(zip(records, expected, strict=True)):
        got = (info.distance, info.constraint, info.mu, info.rho, info.step_size)
        for name, a, b in zip(("D", "d", "μ", "ρ", "η"), got, reference, strict=False):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10, msg=f"step {t}: {name}")
        assert torch.equal(info.success, reference[5]), f"step {t}: success"
    rho = torch.stack([r[3] for r in expected])
    if smooth_max == 0:
        assert result.success.any() and not result.success.all()  # both outcomes are exercised
        assert bool((rho > 2).any())  # so is the ρ rule
    else:  # the smoothed gradient solves every sample of this flat model, ρ grows once
        assert result.success.all() and bool((rho > 1).any())
    torch.testing.assert_close(result.adversarials, best, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(result.distances, best_distance, rtol=1e-7, atol=1e-10)
