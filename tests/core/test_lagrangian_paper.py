"""Algorithm 1 of Azizmalayeri & Rohban (2021), iterate by iterate, in float64: every
hyperparameter (α, λ, σ², c, κ) and N away from its default, so that a hard-coded c = 0.1 (as in
the authors' code), a schedule over the default N, a fixed κ or a fixed σ cannot pass.
test_lagrangian.py checks the final iterate at the defaults of c, σ² and N in float32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin import LagrangianParams, lagrangian

pytestmark = pytest.mark.usefixtures("single_thread")


class Recorder(nn.Module):
    """The model, recording every input it is called on: the iterates x + δ⁽ⁱ⁾, i < N."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        self.seen.append(u.detach().clone())
        return self.model(u)


def algorithm_1(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, p: LagrangianParams,
    steps: int,
) -> list[torch.Tensor]:  # fmt: skip
    """x + δ⁽ⁱ⁾ for i = 0..N: δ ~ N(0, σ²); for i = 0 to N − 1: λ′ = λc^(1−i/N), α′ = αc^(i/N),
    g = ∇(ℓ − λ′‖δ‖₂), g ← g / max|g| (per sample), δ ← δ + α′g; with the package's documented
    departures: x + δ projected on [0, 1] after the draw and after every step, ℓ = min(margin, κ).
    """
    delta = (x + math.sqrt(p.init_variance) * noise).clamp(0, 1) - x
    iterates = [x + delta]
    for i in range(steps):
        lam = p.multiplier * p.decay ** (1 - i / steps)
        alpha = p.init_lr * p.decay ** (i / steps)
        delta = delta.detach().requires_grad_(True)
        logits = model(x + delta)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), -math.inf)
        loss = (other.amax(1) - true).clamp(max=p.kappa)
        (g,) = torch.autograd.grad((loss - lam * delta.flatten(1).norm(dim=1)).sum(), delta)
        g = g / g.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
        delta = ((x + delta + alpha * g).clamp(0, 1) - x).detach()
        iterates.append(x + delta)
    return iterates


@pytest.mark.parametrize(
    ("kwargs", "steps"),
    [
        ({}, 5),
        ({"decay": 0.5, "kappa": 0.3, "init_variance": 1e-4, "init_lr": 0.07}, 3),
        ({"decay": 0.25, "multiplier": 8.0, "kappa": math.inf, "init_variance": 0.04}, 7),
    ],
)
def test_every_iterate_is_algorithm_1s_in_float64(kwargs: dict[str, float], steps: int) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    model = Recorder(net.eval())
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    p = LagrangianParams(**kwargs)
    result = lagrangian(model, x, y, steps=steps, seed=7, params=p)
    noise = torch.from_numpy(np.random.default_rng(7).standard_normal(x.shape))  # the seed's draw
    expected = algorithm_1(net, x, y, noise, p, steps)
    got = [*model.seen, result.perturbed]
    assert len(got) == steps + 1  # N forwards; the N-th iterate is returned without evaluation
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=f"iterate {i}")
    torch.testing.assert_close(result.norms, (expected[-1] - x).flatten(1).norm(dim=1),
                               atol=1e-12, rtol=0)  # fmt: skip


def test_schedule_follows_c_and_n() -> None:
    p = LagrangianParams(init_lr=0.3, multiplier=5.0, decay=0.5)
    for steps in (1, 3, 8):
        for i in range(steps):
            assert p.schedule(i, steps) == pytest.approx(
                (5.0 * 0.5 ** (1 - i / steps), 0.3 * 0.5 ** (i / steps)), rel=1e-15
            )
