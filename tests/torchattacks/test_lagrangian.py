"""torchattacks ``Lagrangian``: the functional attack behind torchattacks' conventions (modes,
normalisation, ``MultiAttack``, model state)."""

from __future__ import annotations

import inspect

import pytest
import torch
import torchattacks
from torch import nn

from alma_plugin import LagrangianParams, lagrangian
from alma_plugin.torchattacks import Lagrangian

pytestmark = pytest.mark.usefixtures("single_thread")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, 4)).eval()  # fmt: skip


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 6, 6, generator=generator), torch.arange(n) % 4


def test_same_as_functional() -> None:
    model = small_model()
    x, y = batch()
    attack = Lagrangian(model, steps=6, seed=2, multiplier=4.0, init_lr=0.05)
    expected = lagrangian(model, x, y, steps=6, seed=2, multiplier=4.0, init_lr=0.05).perturbed
    assert torch.equal(attack(x, y), expected)
    assert attack.params == LagrangianParams(multiplier=4.0, init_lr=0.05)


def test_signature_shows_every_hyperparameter() -> None:
    parameters = inspect.signature(Lagrangian).parameters
    for name in ("steps", "seed", "params", "init_lr", "multiplier", "init_variance", "decay",
                 "kappa"):  # fmt: skip
        assert name in parameters


def test_normalisation_is_applied_inside() -> None:
    model = small_model()
    x, y = batch()
    mean, std = [0.5], [0.25]
    normalised = nn.Sequential(Normalise(mean, std), model).eval()
    plain = Lagrangian(normalised, seed=0)(x, y)
    attack = Lagrangian(model, seed=0)
    attack.set_normalization_used(mean=mean, std=std)
    with_norm = attack((x - 0.5) / 0.25, y)  # torchattacks takes normalised inputs then
    torch.testing.assert_close(with_norm * 0.25 + 0.5, plain, atol=1e-5, rtol=0)


class Normalise(nn.Module):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean, self.std = mean[0], std[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def test_targeted_mode_moves_towards_the_target() -> None:
    model = small_model()
    x, _ = batch(32)
    with torch.no_grad():
        targets = (model(x).argmax(1) + 1) % 4
        before = model(x).gather(1, targets[:, None])
    attack = Lagrangian(model, seed=0, init_variance=0.0, init_lr=0.2)
    attack.set_mode_targeted_by_label(quiet=True)
    adv = attack(x, targets)
    with torch.no_grad():
        after = model(adv).gather(1, targets[:, None])
    assert float((after - before).mean()) > 0


def test_least_likely_mode_attacks_the_least_likely_class() -> None:
    """In targeted(least-likely) mode the targets are torchattacks' least-likely classes, not
    the labels: the same attack as by_label mode given those classes."""
    model = small_model()
    x, y = batch()
    least_likely = Lagrangian(model, seed=0)
    least_likely.set_mode_targeted_least_likely(quiet=True)
    targets = least_likely.get_least_likely_label(x, y)
    assert (targets != y).all()
    by_label = Lagrangian(model, seed=0)
    by_label.set_mode_targeted_by_label(quiet=True)
    assert torch.equal(least_likely(x, y), by_label(x, targets))


def test_model_mode_and_grads_are_restored() -> None:
    model = small_model().train()
    x, y = batch()
    Lagrangian(model, seed=0)(x, y)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_inside_multiattack() -> None:
    model = small_model()
    x, y = batch()
    multi = torchattacks.MultiAttack([Lagrangian(model, seed=0), Lagrangian(model, seed=1)])
    adv = multi(x, y)
    assert adv.shape == x.shape and 0 <= float(adv.min()) and float(adv.max()) <= 1


def test_attributes_are_read_at_each_call() -> None:
    model = small_model()
    x, y = batch()
    attack = Lagrangian(model, seed=0)
    attack.steps = 3
    assert torch.equal(attack(x, y), lagrangian(model, x, y, steps=3, seed=0).perturbed)
    attack.steps = 0
    with pytest.raises(ValueError, match="steps"):
        attack(x, y)


def test_a_plain_function_is_refused_at_construction() -> None:
    """torchattacks reads the model's mode and device: a function failed only at the call."""
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        Lagrangian(lambda x: x.flatten(1))


def test_an_empty_float16_batch_has_the_norms_dtype_of_a_non_empty_one() -> None:
    from alma_plugin import lagrangian

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).half()
    x = torch.rand(2, 1, 2, 2).half()
    empty = lagrangian(model, x[:0], torch.tensor([], dtype=torch.long), seed=0)
    full = lagrangian(model, x, torch.tensor([0, 1]), seed=0)
    assert empty.norms.dtype == full.norms.dtype == torch.float32
