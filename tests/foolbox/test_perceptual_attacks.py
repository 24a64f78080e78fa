"""The perceptual ALMA attacks (CIEDE2000, SSIM, MS-SSIM, LPIPS) in Foolbox and torchattacks, on
a tiny colour CNN trained in the tests on Foolbox's CIFAR-10 sample images. LPIPS uses seeded
random weights (the real ones are not available offline)."""

from __future__ import annotations

import math

import eagerpy as ep
import foolbox as fb
import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin import alma
from alma_plugin.distances import LPIPS, LPIPS_CHANNELS, AlexNetFeatures
from alma_plugin.foolbox import (
    CIEDE2000ALMA,
    LPIPSALMA,
    MSSSIMALMA,
    SSIMALMA,
    NormalisedDistance,
)
from alma_plugin.torchattacks import ALMA
from tests.utils import predict

SAMPLES = 8
STEPS = 200


@pytest.fixture(scope="module")
def cifar() -> tuple[torch.Tensor, torch.Tensor]:
    """Foolbox's 20 CIFAR-10 sample images, (20, 3, 32, 32) in [0, 1], and their labels."""
    x, y = fb.utils._samples("cifar10", 0, 20, (32, 32), "channels_first", (0, 1))
    return torch.as_tensor(x), torch.as_tensor(y).long()


@pytest.fixture(scope="module")
def color_cnn(cifar: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """A tiny colour CNN fit to the 20 images with flips and noise (a few seconds)."""
    x, y = cifar
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        flip = torch.rand(len(x), 1, 1, 1, generator=generator) < 0.5
        batch = torch.where(flip, x.flip(3), x)
        batch = (batch + 0.1 * torch.randn(batch.shape, generator=generator)).clamp(0, 1)
        loss = nn.functional.cross_entropy(net(batch), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def samples(cifar: tuple, color_cnn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = cifar
    correct = predict(color_cnn, x) == y
    return x[correct][:SAMPLES], y[correct][:SAMPLES]


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    torch.manual_seed(0)
    backbone = AlexNetFeatures().state_dict()
    linear = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)
    }
    return LPIPS(backbone, linear)


def _runner_up(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).scatter(1, y[:, None], -torch.inf).argmax(1)


# --- Fast checks ----------------------------------------------------------------------------


def test_defaults_from_table_3(lpips: LPIPS) -> None:
    for attack, epsilon in [(CIEDE2000ALMA(), 0.4), (SSIMALMA(), 3e-5), (MSSSIMALMA(), 3e-5),
                            (LPIPSALMA(lpips=lpips), 1e-3)]:  # fmt: skip
        # CIEDE2000: the paper's 0.05 re-derived for the standard CIELAB scale
        assert attack.resolved_params().init_lr_distance == epsilon
    assert LPIPSALMA(lpips=lpips).distance.function is lpips
    with pytest.raises(TypeError, match="lpips must be"):
        LPIPSALMA(lpips="alex")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["ciede2000", "ssim", "lpips"])
def test_clip_perturbation_really_clips(name: str, lpips: LPIPS, cifar: tuple) -> None:
    x = cifar[0][:6] * 255
    torch.manual_seed(1)
    scale = torch.tensor([0.5, 2, 8, 20, 40, 80]).view(-1, 1, 1, 1)
    xp = (x + scale * torch.randn_like(x)).clamp(0, 255)
    distance = NormalisedDistance(
        name, bounds=(0, 255), function=lpips if name == "lpips" else None
    )
    d = distance(x, xp)
    epsilon = d.median().item()
    clipped = distance.clip_perturbation(x, xp, epsilon)
    after = distance(x, clipped)
    assert (after <= epsilon).all()
    inside = d <= epsilon
    assert inside.any() and (~inside).any()
    assert torch.equal(clipped[inside], xp[inside])  # unchanged where already inside
    assert (after[~inside] > 0.9 * epsilon).all()  # shrunk, not collapsed to x
    assert clipped.min() >= 0 and clipped.max() <= 255
    # Foolbox hands each epsilon of a tensor of epsilons over as a 0-d tensor (before: a
    # TypeError, raised once the attack had run); a 0-d array is read the same way.
    for same in (torch.tensor(epsilon), np.array(epsilon)):
        assert torch.equal(distance.clip_perturbation(x, xp, same), clipped)  # type: ignore[arg-type]


def test_epsilons_as_a_tensor(color_cnn: nn.Module, samples: tuple) -> None:
    """``epsilons`` as a tensor, as with DDN: the same results as the list."""
    x, y = samples
    fmodel = fb.PyTorchModel(color_cnn, bounds=(0, 1))
    attack = CIEDE2000ALMA(steps=20)
    epsilons = torch.tensor([1.0, 5.0])
    _, from_tensor, success = attack(fmodel, x, y, epsilons=epsilons)
    _, from_list, expected = attack(fmodel, x, y, epsilons=epsilons.tolist())
    assert all(torch.equal(a, b) for a, b in zip(from_tensor, from_list, strict=True))
    assert torch.equal(success, expected)


@pytest.mark.parametrize("epsilon", [-1.0, math.nan])
def test_clip_perturbation_refuses_an_epsilon_no_point_satisfies(epsilon: float) -> None:
    """It returned x (D = 0, not ≤ −1) without a word; its docstring promises D ≤ ε."""
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="epsilon must be a number >= 0"):
        NormalisedDistance("ssim").clip_perturbation(x, x.flip(0), epsilon)


@pytest.mark.parametrize("epsilon", [None, "0.1", True])
def test_clip_perturbation_names_an_epsilon_that_is_not_a_number(epsilon: object) -> None:
    """Before: Python's "'>=' not supported between 'NoneType' and 'int'" (True: read as 1)."""
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(TypeError, match="epsilon must be a number"):
        NormalisedDistance("ssim").clip_perturbation(x, x.flip(0), epsilon)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [CIEDE2000ALMA, SSIMALMA])
def test_distance_of_the_attack_refuses_inputs_outside_its_bounds(cls: type, cifar: tuple) -> None:
    """``attack.distance`` measures inputs in (0, 1): raw inputs of a (0, 255) or (-1, 1) model
    are a ValueError pointing to ``attack.for_model(model).distance`` (it measured them as if
    they were in [0, 1]: wrong values, silently); valid inputs give the same values as ever."""
    x = cifar[0][:3]
    torch.manual_seed(0)
    xp = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    attack = cls(steps=5)
    expected = attack.distance_function(ep.astensor(xp), ep.astensor(x)).raw
    torch.testing.assert_close(attack.distance(x, xp), expected, rtol=0, atol=0)
    for bounds in ((0.0, 255.0), (-1.0, 1.0)):
        lower, upper = bounds
        host, host_p = x * (upper - lower) + lower, xp * (upper - lower) + lower
        message = r"outside \[0, 1\].*attack\.for_model\(model\)\.distance"
        with pytest.raises(ValueError, match=message):
            attack.distance(host, host_p)
        with pytest.raises(ValueError, match=message):
            attack.distance.clip_perturbation(host, host_p, 0.01)
        model = fb.PyTorchModel(nn.Flatten(), bounds=bounds)
        measured = attack.for_model(model).distance(host, host_p)
        torch.testing.assert_close(measured, expected, rtol=1e-4, atol=1e-6)
    # Rounding outside [0, 1] (up to 1e-6 of the range, as for the attacks' inputs) is accepted.
    edge = x.clone()
    edge[:, 0, 0, 0], edge[:, 0, 0, 1] = 1 + 5e-7, -5e-7
    attack.distance(edge, xp)
    below = xp.clone()
    below[0, 0, 0, 0] = -2e-6
    with pytest.raises(ValueError, match=r"values in \[-2e-06, "):
        attack.distance(x, below)
    empty = x[:0]
    assert attack.distance(empty, empty).shape == (0,)


def test_input_errors(color_cnn: nn.Module, samples: tuple, lpips: LPIPS) -> None:
    x, y = samples
    fmodel = fb.PyTorchModel(color_cnn, bounds=(0, 1))
    with pytest.raises(ValueError, match=r"MSSSIMALMA needs images .* >= 176.*\(8, 3, 32, 32\)"):
        MSSSIMALMA(steps=5)(fmodel, x, y, epsilons=None)
    gray = fb.PyTorchModel(nn.Sequential(nn.Flatten(), nn.Linear(1024, 10)).eval(), bounds=(0, 1))
    for attack in (CIEDE2000ALMA(steps=5), LPIPSALMA(steps=5, lpips=lpips)):
        with pytest.raises(ValueError, match=r"needs RGB inputs .*\(8, 1, 32, 32\)"):
            attack.run(gray, x[:, :1], y)
    with pytest.raises(ValueError, match="lpips= is only used with distance='lpips'"):
        ALMA(color_cnn, distance="ssim", lpips=lpips)


# --- 100% success within 200 steps, untargeted and targeted (Foolbox) -------------------------


@pytest.mark.slow
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("cls", [CIEDE2000ALMA, SSIMALMA, LPIPSALMA])
def test_success_on_color_cnn(
    cls: type, targeted: bool, color_cnn: nn.Module, samples: tuple, lpips: LPIPS
) -> None:
    x, y = samples
    fmodel = fb.PyTorchModel(color_cnn, bounds=(0, 1))
    attack = cls(steps=STEPS, **({"lpips": lpips} if cls is LPIPSALMA else {}))
    goal = y
    criterion: object = y
    if targeted:
        goal = _runner_up(color_cnn, x, y)
        criterion = fb.criteria.TargetedMisclassification(goal)
    adv, _, success = attack(fmodel, x, criterion, epsilons=None)
    distances = attack.distance(x, adv)
    mode = "targeted" if targeted else "untargeted"
    rate, median = success.float().mean().item(), distances.median().item()
    print(f"\n{cls.__name__} {mode}: ASR {rate:.3f}, median {median:.6g}")
    assert success.all()
    predictions = predict(color_cnn, adv)
    assert torch.equal(predictions, goal) if targeted else (predictions != y).all()
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.slow
def test_msssim_on_upsampled_images(color_cnn: nn.Module, samples: tuple) -> None:
    """MS-SSIM needs 176 px: the CIFAR images upsampled 6×, the model averages them back."""
    x, y = samples[0][:4], samples[1][:4]
    big = nn.functional.interpolate(x, scale_factor=6, mode="nearest")
    model = nn.Sequential(nn.AvgPool2d(6), color_cnn).eval()
    adv, _, success = MSSSIMALMA(steps=100)(
        fb.PyTorchModel(model, bounds=(0, 1)), big, y, epsilons=None
    )
    print(f"\nMSSSIMALMA untargeted (4 samples, 100 steps): ASR {success.float().mean():.3f}")
    assert success.all()


# --- torchattacks -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("distance", ["ciede2000", "lpips"])
def test_torchattacks_perceptual(
    distance: str, color_cnn: nn.Module, samples: tuple, lpips: LPIPS
) -> None:
    x, y = samples
    kwargs = {"lpips": lpips} if distance == "lpips" else {}
    attack = ALMA(color_cnn, distance=distance, steps=STEPS, **kwargs)
    adv = attack(x, y)
    assert (predict(color_cnn, adv) != y).all() and adv.min() >= 0 and adv.max() <= 1
    # Same core, same defaults, same success rule (a logit margin of 1e-6) as alma(): the same
    # bits. (The Foolbox classes judge success by the caller's criterion, argmax ≠ label, and
    # differ where a margin is below 1e-6: docs/foolbox.md, "Success".)
    expected = alma(color_cnn, x, y, distance=distance, steps=STEPS, **kwargs).adversarials
    assert torch.equal(adv, expected)
