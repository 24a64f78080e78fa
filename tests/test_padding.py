"""``padding``: the SSIM windows whose gradient the attack descends, one keyword with one
meaning in ``alma()``, the Foolbox ``SSIMALMA`` / ``MSSSIMALMA`` and torchattacks' ``ALMA``.

"symmetric" (the default, also meant by None in ``alma()`` and ``ALMA``) descends
``ssim_objective`` (exact value, full-coverage gradient); "valid" descends the exact
scikit-image SSIM itself. The three entry points run the same solver, so for the same seed
they must return bit-identical adversarials for the same ``padding``.
"""

from __future__ import annotations

import foolbox as fb
import pytest
import torch
from torch import nn

from alma_plugin import alma
from alma_plugin.distances import PADDINGS, ssim
from alma_plugin.foolbox import L2ALMA, MSSSIMALMA, SSIMALMA
from alma_plugin.torchattacks import ALMA, MinimalEnsemble

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 20
PADDED = {"ssim": SSIMALMA, "msssim": MSSSIMALMA}


def _case(shape: tuple[int, ...], n: int = 6) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A random linear classifier (its gradient favours no image region) and its labels."""
    generator = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(n, *shape, generator=generator)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(model[1].weight.shape, generator=generator) * 0.1)
        y = model(x).argmax(1)
    return model, x, y


@pytest.fixture(scope="module")
def gray() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return _case((1, 12, 12))  # the smallest SSIM images: 11×11 window, 2×2 valid windows


@pytest.fixture(scope="module")
def color() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return _case((3, 16, 16))


@pytest.mark.parametrize("images", ["gray", "color"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_same_adversarials_from_every_entry_point(
    images: str, padding: str, request: pytest.FixtureRequest
) -> None:
    """alma(padding=p), ALMA(padding=p) and SSIMALMA(padding=p): bit for bit the same run."""
    model, x, y = request.getfixturevalue(images)
    result = alma(model, x, y, distance="ssim", steps=STEPS, padding=padding)
    via_torchattacks = ALMA(model, "ssim", STEPS, padding=padding)(x, y)
    via_foolbox = SSIMALMA(steps=STEPS, padding=padding).run(fb.PyTorchModel(model, (0, 1)), x, y)
    assert torch.equal(via_torchattacks, result.adversarials)
    assert torch.equal(via_foolbox, result.adversarials)
    assert result.success.all()
    # The reported distance is the exact (valid-window) SSIM whatever the descent.
    exact = ssim(result.adversarials, x)
    torch.testing.assert_close(result.distances, exact, rtol=0, atol=1e-6)


def test_none_is_symmetric_and_valid_differs(
    gray: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = gray
    runs = {
        p: alma(model, x, y, distance="ssim", steps=STEPS, padding=p) for p in (None, *PADDINGS)
    }
    assert torch.equal(runs[None].adversarials, runs["symmetric"].adversarials)
    assert torch.equal(runs[None].distances, runs["symmetric"].distances)
    assert torch.equal(alma(model, x, y, distance="ssim", steps=STEPS).adversarials,
                       runs[None].adversarials)  # fmt: skip
    assert torch.equal(
        ALMA(model, "ssim", STEPS)(x, y), ALMA(model, "ssim", STEPS, padding="symmetric")(x, y)
    )
    # Foolbox's classes too (before: padding=None was a ValueError there only)
    assert SSIMALMA(steps=2, padding=None).padding == "symmetric"
    assert MSSSIMALMA(steps=2, padding=None).padding == "symmetric"
    # Another objective, another descent (on 12×12 images the gradients differ everywhere).
    assert not torch.equal(runs["valid"].adversarials, runs["symmetric"].adversarials)


def test_msssim_takes_padding_too() -> None:
    """MS-SSIM (176 px, the smallest size for five scales): the same keyword, the same runs.
    (30 steps: D's gradient is exactly 0 at x̃ = x, and for the first ~20 steps the penalty's
    gradient decides the iterates of this linear model, whatever the padding.)"""
    model, x, y = _case((1, 176, 176), n=2)
    adversarials = {}
    for padding in PADDINGS:
        result = alma(model, x, y, distance="msssim", steps=30, padding=padding)
        via_torchattacks = ALMA(model, "msssim", 30, padding=padding)(x, y)
        fmodel = fb.PyTorchModel(model, (0, 1))
        via_foolbox = MSSSIMALMA(steps=30, padding=padding).run(fmodel, x, y)
        assert torch.equal(via_torchattacks, result.adversarials)
        assert torch.equal(via_foolbox, result.adversarials)
        adversarials[padding] = result.adversarials
    assert not torch.equal(adversarials["valid"], adversarials["symmetric"])


def test_torchattacks_padding_is_a_plain_attribute(
    gray: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = gray
    attack = ALMA(model, "ssim", STEPS)
    assert attack.padding is None and "padding=None" in repr(attack)
    # torchattacks' repr writes str(value), as "distance=ssim"
    assert ", padding=valid, " in repr(ALMA(model, "ssim", padding="valid"))
    # Read at each call, as the other attributes: the same as constructing with it.
    attack.padding = "valid"
    assert torch.equal(attack(x, y), ALMA(model, "ssim", STEPS, padding="valid")(x, y))
    attack.padding = "same"  # refused at the next call, naming the attribute
    with pytest.raises(ValueError, match=r"padding must be one of \['valid', 'symmetric'\]"):
        attack(x, y)
    # The ensemble compares members with the exact distance, whatever each member descends.
    ensemble = MinimalEnsemble([ALMA(model, "ssim", 5, padding=p) for p in PADDINGS], "ssim")
    assert ensemble(x, y).shape == x.shape


NOT_PADDED = "padding= is only used with distance='ssim' or 'msssim', got padding='valid'"


@pytest.mark.parametrize("distance", ["l2", "l1", "ciede2000", "lpips", "linf", "L_inf"])
def test_padding_with_another_distance_is_refused(distance: str) -> None:
    model, x, y = _case((3, 12, 12), n=2)
    functional_distance = "linf" if distance == "L_inf" else distance
    with pytest.raises(ValueError, match=f"{NOT_PADDED} with distance='{functional_distance}"):
        alma(model, x, y, distance=functional_distance, steps=2, padding="valid")
    resolved = distance.lower().replace("l_inf", "linf")
    with pytest.raises(ValueError, match=f"{NOT_PADDED} with distance='{resolved}'"):
        ALMA(model, distance, 2, padding="valid")  # at construction, before any call
    with pytest.raises(TypeError):  # and the Foolbox classes of other distances have none
        L2ALMA(steps=2, padding="valid")  # type: ignore[call-arg]


def test_padding_is_case_folded_as_every_option_name(
    gray: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """As distance="L2", penalty="p2" or schedule="Paper": "VALID" is "valid" everywhere
    (before, the three entry points refused it, unlike every other option name)."""
    model, x, y = gray
    exact = alma(model, x, y, distance="ssim", steps=3, padding="valid").adversarials
    assert torch.equal(alma(model, x, y, distance="ssim", steps=3, padding="VALID").adversarials,
                       exact)  # fmt: skip
    assert ALMA(model, "ssim", 3, padding="Valid").padding == "valid"
    assert SSIMALMA(steps=3, padding="VALID").padding == "valid"
    torch.testing.assert_close(ssim(x.flip(0), x, padding="Symmetric"),
                               ssim(x.flip(0), x, padding="symmetric"), rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize("padding", ["same", "reflect", "valid windows", 0])
@pytest.mark.parametrize("distance", ["ssim", "msssim"])
def test_bad_padding_is_refused(distance: str, padding: object) -> None:
    model, x, y = _case((1, 12, 12), n=2)
    message = rf"padding must be one of \['valid', 'symmetric'\], got {padding!r}"
    error = ValueError if isinstance(padding, str) else TypeError  # a number: the wrong type
    with pytest.raises(error, match=message):
        alma(model, x, y, distance=distance, steps=2, padding=padding)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        ALMA(model, distance, 2, padding=padding)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        PADDED[distance](steps=2, padding=padding)  # type: ignore[arg-type]
