"""The Lagrangian training attack (Azizmalayeri & Rohban, Algorithm 1): checked against an
independent plain-PyTorch transcription of the algorithm, its cost, its invariances and the
paper's Fig. 2 claim (‖δ‖₂ grows with the classifier's confidence)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from alma_plugin import LagrangianParams, lagrangian
from alma_plugin.bench.counting import CountingModel
from alma_plugin.core.lagrangian import margin_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def small_model(seed: int = 0, k: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, k)).eval()


def reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, p: LagrangianParams,
    steps: int,
) -> torch.Tensor:  # fmt: skip
    """Algorithm 1 written out with autograd on the whole objective (with C&W's κ and the
    projection on [0, 1] after every step, as in the authors' code, and after the initial draw,
    the package's own choice)."""
    delta = ((x + math.sqrt(p.init_variance) * noise).clamp(0, 1) - x).double()
    x = x.double()
    for i in range(steps):
        lam = p.multiplier * p.decay ** (1 - i / steps)
        alpha = p.init_lr * p.decay ** (i / steps)
        delta.requires_grad_(True)
        logits = model.double()(x + delta)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), -math.inf)
        loss = (other.max(1).values - true).clamp(max=p.kappa)
        objective = loss - lam * delta.flatten(1).norm(dim=1)
        (g,) = torch.autograd.grad(objective.sum(), delta)
        g = g / g.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
        delta = ((x + delta + alpha * g).clamp(0, 1) - x).detach()
    model.float()
    return (x + delta).float()


def inputs(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=generator), torch.arange(n) % 4


@pytest.mark.parametrize("kwargs", [{}, {"multiplier": 8.0, "init_lr": 0.05, "kappa": math.inf}])
def test_matches_a_plain_transcription_of_algorithm_1(kwargs: dict[str, float]) -> None:
    model = small_model()
    x, y = inputs()
    p = LagrangianParams(**kwargs)
    noise = torch.from_numpy(np.random.default_rng(3).standard_normal(x.shape)).float()
    expected = reference(model, x, y, noise, p, steps=5)
    result = lagrangian(model, x, y, seed=3, params=p)
    torch.testing.assert_close(result.perturbed, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.norms, (expected - x).flatten(1).norm(dim=1), atol=1e-5,
                               rtol=0)  # fmt: skip


def test_schedule_is_the_papers() -> None:
    p = LagrangianParams(init_lr=0.2, multiplier=3.0, decay=0.1)
    assert p.schedule(0, 5) == pytest.approx((0.3, 0.2))
    assert p.schedule(4, 5) == pytest.approx((3.0 * 0.1**0.2, 0.2 * 0.1**0.8))
    defaults = LagrangianParams()
    assert (defaults.init_variance, defaults.decay) == (0.01, 0.1)  # the paper's σ², c


@pytest.mark.parametrize(
    "step, steps, message",
    [(0, 0, "steps must be an integer >= 1"),
     (5, 5, r"step must be an integer in \[0, steps\) = \[0, 5\), got 5"),
     (-1, 5, r"step must be"), (0.5, 5, r"step must be"), (0, 2.0, "steps must be")],
)  # fmt: skip
def test_schedule_names_a_step_outside_the_run(step: Any, steps: Any, message: str) -> None:
    """Before: (0, 0) was a ZeroDivisionError, (5, 5) values beyond Algorithm 1's range."""
    with pytest.raises(ValueError, match=message):
        LagrangianParams().schedule(step, steps)


@pytest.mark.parametrize("steps", [1, 5, 7])
def test_costs_exactly_n_forwards_and_backwards(steps: int) -> None:
    model = CountingModel(small_model())
    x, y = inputs(8)
    lagrangian(model, x, y, steps=steps, seed=0)
    assert (model.forwards, model.backwards) == (steps * 8, steps * 8)


def test_bounds_are_a_change_of_units() -> None:
    model = small_model()
    x, y = inputs()
    scaled = nn.Sequential(Scale(1 / 255), model)
    a = lagrangian(model, x, y, seed=1)
    b = lagrangian(scaled, x * 255, y, bounds=(0, 255), seed=1)
    torch.testing.assert_close(b.perturbed / 255, a.perturbed, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.norms, a.norms, atol=1e-5, rtol=0)


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_seeded_is_deterministic_and_none_follows_torch_seed() -> None:
    model = small_model()
    x, y = inputs()
    assert torch.equal(lagrangian(model, x, y, seed=5).perturbed,
                       lagrangian(model, x, y, seed=5).perturbed)  # fmt: skip
    torch.manual_seed(11)
    first = lagrangian(model, x, y).perturbed
    second = lagrangian(model, x, y).perturbed
    torch.manual_seed(11)
    again = lagrangian(model, x, y).perturbed
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_no_noise_and_no_gradient_leaves_the_input() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    nn.init.zeros_(model[1].weight)
    x, y = inputs()
    y = y % 3
    result = lagrangian(model.eval(), x, y, init_variance=0.0, seed=0)
    assert torch.equal(result.perturbed, x)
    assert torch.equal(result.norms, torch.zeros(len(x)))


def test_targeted_raises_the_target_margin() -> None:
    model = small_model()
    x, _ = inputs(32)
    with torch.no_grad():
        targets = (model(x).argmax(1) + 1) % 4
        before = margin_loss_t(model(x), targets)
    result = lagrangian(model, x, targets, targeted=True, seed=0, init_variance=0.0,
                        kappa=math.inf)  # fmt: skip
    with torch.no_grad():
        after = margin_loss_t(model(result.perturbed), targets)
    assert float((after - before).mean()) > 0


def margin_loss_t(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    import eagerpy as ep

    return margin_loss(ep.astensor(logits), ep.astensor(targets), True, math.inf).raw


def test_larger_multiplier_gives_smaller_perturbations() -> None:
    model = small_model()
    x, y = inputs(32)
    norms = [float(lagrangian(model, x, y, seed=0, init_variance=1e-4, multiplier=lam).norms
                   .mean()) for lam in (0.0, 2.0, 20.0)]  # fmt: skip
    assert norms[0] > norms[1] > norms[2]


def test_norm_grows_with_the_classifiers_confidence(
    mnist_cnn: nn.Module, mnist_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The paper's Fig. 2: with a fixed λ, confidently classified samples get larger δ."""
    images, labels = mnist_data[0][800:1000], mnist_data[1][800:1000]
    torch.manual_seed(0)
    result = lagrangian(mnist_cnn, images, labels, seed=0, init_variance=1e-4)
    with torch.no_grad():
        confidence = mnist_cnn(images).softmax(1).gather(1, labels[:, None]).squeeze(1)
    rho = spearmanr(result.norms.numpy(), confidence.numpy()).statistic
    assert rho > 0.2, rho


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"init_lr": 0.0}, "init_lr"),
        ({"multiplier": -1.0}, "multiplier"),
        ({"init_variance": math.nan}, "init_variance"),
        ({"decay": 1.5}, "decay"),
        ({"kappa": 0.0}, "kappa"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"bounds": (1, 0)}, "bounds"),
    ],
)
def test_invalid_arguments_are_named(kwargs: dict[str, object], name: str) -> None:
    x, y = inputs(2)
    with pytest.raises((ValueError, TypeError), match=name):
        lagrangian(small_model(), x, y, **kwargs)


def test_params_keywords_are_in_the_signature() -> None:
    import inspect

    parameters = inspect.signature(lagrangian).parameters
    for name in ("init_lr", "multiplier", "init_variance", "decay", "kappa"):
        assert parameters[name].default == getattr(LagrangianParams(), name)
