"""Foolbox edge behaviours that no other test pinned (each found by mutation testing): the
caller's criterion untouched, early_stop in the model's raw units (ALMA and ALMA prox), colour
attacks on non-RGB inputs, models without or with an unknown ``data_format``, a channels-last
model's criterion, SSIM at one window and its ``padding``, ALMA prox's clipping."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import foolbox as fb
import pytest
import torch
from torch import nn

from alma_plugin import alma
from alma_plugin.foolbox import CIEDE2000ALMA, L2ALMA, SSIMALMA, LinfALMAProx
from tests.utils import CountingModel, linear_classifier

pytestmark = pytest.mark.usefixtures("single_thread")


class _Scaled(nn.Module):
    """``inner`` on inputs in [0, 255]."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x / 255)


def test_a_foolbox_criterion_is_not_changed_by_the_call() -> None:
    """The criterion object the caller passes keeps its labels (tensor, dtype): the attack
    converts a copy."""
    model = linear_classifier()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = model(x).argmax(1).to(torch.uint8)
    criterion = fb.criteria.Misclassification(labels)
    before = criterion.labels
    L2ALMA(steps=3)(fmodel, x, criterion, epsilons=None)
    L2ALMA(steps=3).run(fmodel, x, criterion)
    assert criterion.labels is before and criterion.labels.raw.dtype == torch.uint8


@pytest.mark.parametrize("attack", [L2ALMA(steps=40), LinfALMAProx(steps=40)], ids=repr)
def test_foolbox_early_stop_is_in_the_raw_units_of_the_model_bounds(attack: Any) -> None:
    """With bounds (0, 255), Foolbox's early_stop (min(epsilons)) is in raw units: 1.0 is 1/255
    of the normalised distance the solver measures (ℓ2 for ALMA, ℓ∞ for ALMA prox), below any
    distance this model allows, so the run never stops early and equals the run without early
    stop (same seed, deterministic)."""
    model = _Scaled(linear_classifier(dtype=torch.float64)).eval()
    fmodel = fb.PyTorchModel(model, bounds=(0, 255))
    x = 255 * torch.rand(
        4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    y = model(x).argmax(1)
    plain = attack.run(fmodel, x, y)
    assert (model(plain).argmax(1) != y).all() and (attack.distance(x, plain) > 1.0).all()
    stopped = attack.run(fmodel, x, y, early_stop=1.0)
    assert torch.equal(stopped, plain)


def test_colour_attacks_refuse_other_than_three_channels_before_any_model_call() -> None:
    """CIEDE2000 needs RGB: 4 channels are a ValueError naming the inputs, before the model
    runs (not a distance error after a first forward)."""
    model = CountingModel(linear_classifier(4 * 16 * 16, 10)).eval()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    x = torch.rand(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"needs RGB inputs .*\(2, 4, 16, 16\)"):
        CIEDE2000ALMA(steps=2).run(fmodel, x, torch.tensor([0, 1]))
    assert model.forwards == 0


class _NoLayout(fb.models.Model):
    """A Foolbox model that states no ``data_format`` (as ``JAXModel(data_format=None)`` or a
    user's own ``Model``): taken as channels first."""

    def __init__(self, inner: fb.models.Model) -> None:
        self.inner = inner

    @property
    def bounds(self) -> fb.types.Bounds:
        return self.inner.bounds

    def __call__(self, inputs: fb.models.base.T) -> fb.models.base.T:
        return self.inner(inputs)


def test_a_foolbox_model_without_data_format_is_channels_first() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    fmodel = _NoLayout(fb.PyTorchModel(net, bounds=(0, 1)))
    assert getattr(fmodel, "data_format", None) is None
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    adversarials = CIEDE2000ALMA(steps=3).run(fmodel, x, y)
    assert adversarials.shape == x.shape


class _Layout(fb.models.Model):
    """A Foolbox model stating ``data_format``; for "channels_last" it takes (N, H, W, C)
    inputs and hands them to ``inner`` channels first."""

    def __init__(self, inner: fb.models.Model, data_format: str) -> None:
        self.inner = inner
        self.data_format = data_format

    @property
    def bounds(self) -> fb.types.Bounds:
        return self.inner.bounds

    def __call__(self, inputs: fb.models.base.T) -> fb.models.base.T:
        x, restore = ep.astensor_(inputs)
        return restore(ep.astensor(self.inner(x.raw.permute(0, 3, 1, 2))))


def test_an_unknown_data_format_is_refused_before_any_model_call() -> None:
    """``model.data_format`` other than channels_first / channels_last (e.g. "NHWC") is a
    ValueError naming it, not silently read as channels first."""
    net = CountingModel(linear_classifier(3 * 16 * 16, 4)).eval()
    fmodel = _Layout(fb.PyTorchModel(net, bounds=(0, 1)), "NHWC")
    x = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"model\.data_format must be .*'NHWC'"):
        CIEDE2000ALMA(steps=2).run(fmodel, x, torch.tensor([0, 1]))
    assert net.forwards == 0


class _ShapeRecording(fb.criteria.Misclassification):
    """Misclassification that records the shape of every input it judges."""

    def __init__(self, labels: Any) -> None:
        super().__init__(labels)
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        self.shapes.append(tuple(perturbed.shape))
        return super().__call__(perturbed, outputs)


def test_a_channels_last_models_criterion_judges_inputs_in_the_callers_layout() -> None:
    """The perceptual attacks work channels first inside; the criterion, like the model, gets
    the inputs (N, H, W, C) of a channels-last model (a criterion may read them)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 14, 4)).eval()
    fmodel = _Layout(fb.PyTorchModel(net, bounds=(0, 1)), "channels_last")
    x = torch.rand(2, 12, 14, 3, generator=torch.Generator().manual_seed(0))
    labels = fmodel(x).argmax(1)
    criterion = _ShapeRecording(labels)
    adversarials = CIEDE2000ALMA(steps=3).run(fmodel, x, criterion)
    assert adversarials.shape == x.shape
    assert criterion.shapes and set(criterion.shapes) == {tuple(x.shape)}


def test_ssim_images_of_exactly_one_window_are_attacked() -> None:
    """SSIM needs H, W >= 11 (one window): 11x11 images are attacked, 10x11 refused."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(11 * 11, 3)).eval()
    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    x = torch.rand(2, 1, 11, 11, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    assert SSIMALMA(steps=2).run(fmodel, x, y).shape == x.shape
    with pytest.raises(ValueError, match=r"H, W >= 11"):
        SSIMALMA(steps=2).run(fmodel, x[:, :, :10], y)


@pytest.mark.parametrize("padding", ["symmetric", "valid"])
def test_ssim_alma_descends_the_padding_it_is_given(padding: str) -> None:
    """``SSIMALMA(padding=...)`` is ``alma(distance="ssim", padding=...)``: symmetric (default)
    descends the full-coverage gradient, valid the exact SSIM's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    via_foolbox = SSIMALMA(steps=8, padding=padding).run(fmodel, x, y)
    direct = alma(net, x, y, distance="ssim", steps=8, padding=padding).adversarials
    assert torch.equal(via_foolbox, direct)


def test_alma_prox_returns_samples_within_epsilon_exactly_and_inside_the_bounds() -> None:
    """Foolbox's ℓ∞ clipping x + clip(x̃ − x, ±ε) rounds: x̃ came back an ulp away from itself,
    on a bound an ulp outside it. ``__call__`` clips with ``for_model``'s WithinSegment(linf):
    a sample within ε is x̃ exactly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    lower, upper = -0.42421290278434753, 2.821486473083496  # float32 values inside MNIST's
    fmodel = fb.PyTorchModel(net, bounds=(lower, upper))
    x = lower + (upper - lower) * torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    attack = LinfALMAProx(steps=20)
    raw, clipped, success = attack(fmodel, x, y, epsilons=100.0)
    assert success.all() and torch.equal(clipped, raw)
    assert clipped.min() >= lower and clipped.max() <= upper
    assert attack.distance is fb.distances.linf  # the attack itself is left unchanged


def test_the_exported_base_class_is_refused_with_the_attacks_to_use() -> None:
    """ALMAAttack is exported for isinstance checks; built directly it has no distance
    (before: AttributeError 'ALMAAttack' object has no attribute 'distance_name')."""
    from alma_plugin.foolbox import ALMAAttack

    with pytest.raises(TypeError, match=r"ALMAAttack is the base class.*use L1ALMA, L2ALMA"):
        ALMAAttack(steps=10)


def test_perceptual_attacks_name_inputs_that_are_not_image_batches() -> None:
    """CIEDE2000, SSIM and the other perceptual distances measure images: a (N, D) batch is
    refused before any model call, naming the layout expected."""
    model = CountingModel(nn.Sequential(nn.Linear(12, 3)))
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    for attack in (CIEDE2000ALMA(steps=2), SSIMALMA(steps=2)):
        with pytest.raises(ValueError, match=r"needs a batch of images \(N, C, H, W\).*\(4, 12\)"):
            attack(fmodel, torch.rand(4, 12), torch.tensor([0, 1, 2, 0]), epsilons=None)
    assert model.forwards == 0
