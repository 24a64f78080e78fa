"""The ALMA loop: exact model-call count, the ρ rule, callback, quantisation, memory."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from alma_plugin import StepInfo, alma
from tests.utils import CountingModel


def _linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=gen), torch.randint(0, 5, (n,), generator=gen)


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_exactly_one_forward_and_backward_per_step(steps: int) -> None:
    model = CountingModel(_linear_model())
    x, y = _batch()
    alma(model, x, y, steps=steps)
    assert (model.forwards, model.backwards) == (steps, steps)
    assert model.forward_samples == steps * len(x)


def test_rho_grows_only_when_never_adversarial_and_constraint_stalls() -> None:
    model = _linear_model()
    x, y = _batch(32)
    records: list[StepInfo] = []
    alma(model, x, y, steps=200, check_steps=10, gamma=1.2, tau=0.95, callback=records.append)
    ever = torch.zeros(32, dtype=torch.bool)
    reference = records[0].constraint.raw
    for info in records:
        ever |= info.success.raw
        if (info.step + 1) % 10 == 0:
            before = records[info.step - 1].rho.raw if info.step else torch.ones(32)
            expected = (~ever) & (info.constraint.raw > 0.95 * reference)
            torch.testing.assert_close(info.rho.raw, torch.where(expected, 1.2 * before, before))
            reference = info.constraint.raw
        elif info.step:
            assert torch.equal(info.rho.raw, records[info.step - 1].rho.raw)
    assert ever.all()


def test_rho_grows_geometrically_when_the_model_ignores_its_input() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([3.0, 1.0, 0.0, -1.0, -2.0]))
    x, _ = _batch(4)
    y = torch.zeros(4, dtype=torch.long)
    records: list[StepInfo] = []
    result = alma(model, x, y, steps=45, callback=records.append)
    assert not result.success.any()
    torch.testing.assert_close(records[-1].rho.raw, torch.full((4,), 1.2**4))
    assert torch.equal(result.adversarials, x)


def test_mu_stays_in_safeguard_interval() -> None:
    model = _linear_model()
    x, y = _batch(16)
    mus: list[torch.Tensor] = []
    alma(model, x, y, steps=60, mu_min=1e-3, mu_max=5.0, callback=lambda i: mus.append(i.mu.raw))
    stacked = torch.stack(mus)
    assert stacked.min() >= 1e-3 and stacked.max() <= 5.0


def test_levels_quantise_the_returned_images() -> None:
    model = _linear_model()
    x, y = _batch(8)
    x = (x * 255).round() / 255
    result = alma(model, x, y, steps=100, levels=256)
    scaled = result.adversarials * 255
    torch.testing.assert_close(scaled, scaled.round(), atol=1e-4, rtol=0)
    assert result.success.any()


def test_early_stop_ends_the_run() -> None:
    model = _linear_model()
    x, y = _batch(8)
    result = alma(model, x, y, steps=500, early_stop=1e3)
    assert result.success.all() and result.steps_run < 500


def test_live_tensors_do_not_grow_with_steps() -> None:
    model = _linear_model()
    x, y = _batch(8)
    counts: dict[int, int] = {}

    def count_tensors(info: StepInfo) -> None:
        if info.step in (20, 200):
            gc.collect()
            counts[info.step] = sum(isinstance(o, torch.Tensor) for o in gc.get_objects())

    alma(model, x, y, steps=201, callback=count_tensors)
    assert counts[200] <= counts[20]
