"""The caller's context, as an audit found it mishandled (each test failed before its fix):
``torch.autocast`` reaching the distances (SSIM / MS-SSIM crashed, LPIPS rounded D), LPIPS's
construction drawing from torch's global generator, TorchScript models in training mode
unwarned, and adversarial training on inference tensors."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import foolbox as fb
import pytest
import torch
from torch import nn

import alma_plugin as ap
from alma_plugin.bench.throughput import make_distance
from alma_plugin.distances import msssim, ssim
from alma_plugin.foolbox import SSIMALMA
from alma_plugin.torchattacks import ALMA, Lagrangian
from alma_plugin.training import adversarial_training

pytestmark = pytest.mark.usefixtures("single_thread")


class AutocastProbe(nn.Module):
    """A linear classifier on (N, C, S, S) images that records whether it ran under autocast."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        features = channels * size * size
        self.weight = nn.Parameter(torch.randn(features, 4, generator=generator) / features**0.5)
        self.under_autocast: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.under_autocast.append(torch.is_autocast_enabled("cpu"))
        return x.flatten(1) @ self.weight * 20


def bfloat16_autocast() -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def images(channels: int, size: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("name", "shape"), [("ssim", (1, 16)), ("msssim", (1, 176)), ("lpips", (3, 32))]
)
def test_the_distances_ignore_the_callers_autocast(name: str, shape: tuple[int, int]) -> None:
    """Bit for bit the value outside autocast (SSIM / MS-SSIM raised "Can only calculate the
    mean of floating types. Got torch.bfloat16"; LPIPS was up to 0.9 % off)."""
    distance = make_distance("lpips", torch.device("cpu")) if name == "lpips" else None
    function = distance or {"ssim": ssim, "msssim": msssim}[name]
    x = images(*shape)
    x_adv = (x + 0.05 * images(*shape, n=2).sub(0.5)).clamp(0, 1)
    expected = function(x_adv, x)
    with bfloat16_autocast():
        got = function(x_adv, x)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


ATTACKS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "alma-ssim": lambda m, x, y: ap.alma(m, x, y, distance="ssim", steps=10).adversarials,
    "SSIMALMA": lambda m, x, y: SSIMALMA(steps=10)(fb.PyTorchModel(m, (0, 1)), x, y, epsilons=None)[
        0
    ],
    "torchattacks-ALMA-ssim": lambda m, x, y: ALMA(m, "ssim", steps=10)(x, y),
}


@pytest.mark.parametrize("entry", list(ATTACKS))
def test_ssim_attacks_run_under_autocast_with_the_model_in_it(entry: str) -> None:
    model = AutocastProbe(1, 16).eval()
    x = images(1, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    model.under_autocast.clear()
    with bfloat16_autocast():
        adversarials = ATTACKS[entry](model, x, y)
    assert adversarials.dtype == x.dtype and adversarials.shape == x.shape
    # the model still ran in the caller's autocast: only the attack's own arithmetic left it
    assert model.under_autocast and all(model.under_autocast)


def test_lpips_distances_reported_under_autocast_are_those_of_the_adversarials() -> None:
    metric = make_distance("lpips", torch.device("cpu"))
    model = AutocastProbe(3, 32).eval()
    x = images(3, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    with bfloat16_autocast():
        result = ap.alma(model, x, y, distance="lpips", lpips=metric, steps=10)
    assert result.success.any()
    remeasured = metric(result.adversarials, x)
    assert torch.equal(result.distances[result.success], remeasured[result.success])


def test_building_an_lpips_metric_leaves_torchs_generator_alone() -> None:
    """AlexNet's layers were initialised from torch's global generator, then overwritten by
    the weights: the first LPIPS attack of a process moved the caller's random stream."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_distance("lpips", torch.device("cpu"))  # its weights come from a generator of its own
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("compile_with", ["script", "trace"])
def test_torchscript_models_in_training_mode_are_warned_about(compile_with: str) -> None:
    """A scripted / traced module's type is RecursiveScriptModule: it hid the dropout and batch
    norm layers it was compiled from, which behave as in training mode all the same."""
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, 3)
    ).train()
    x, y = images(1, 8, n=4), torch.zeros(4, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warning about dropout
        model = torch.jit.script(net) if compile_with == "script" else torch.jit.trace(net, x)
    with pytest.warns(ap.TrainingModeWarning, match="BatchNorm1d, Dropout"):
        ap.alma(model, x, y, steps=2)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ap.TrainingModeWarning)
        ap.alma(model, x, y, steps=2)


@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_adversarial_training_takes_batches_made_in_inference_mode(warmup_epochs: int) -> None:
    """A loader whose tensors were made under ``torch.inference_mode()`` (cached in an
    evaluation pipeline): the attacks accepted them, the training step failed with PyTorch's
    "Inference tensors cannot be saved for backward"."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.inference_mode():
        loader = [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    before = [p.detach().clone() for p in model.parameters()]
    adversarial_training(model, loader, attack=Lagrangian(model, seed=0), epochs=1 + warmup_epochs,
                         warmup_epochs=warmup_epochs, progress=False, log=None)  # fmt: skip
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
