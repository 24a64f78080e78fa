"""Foolbox edge behaviours that no other test pinned (each found by mutation testing): the
caller's criterion untouched, early_stop in the model's raw units, colour attacks on non-RGB
inputs, models without ``data_format``."""

from __future__ import annotations

import foolbox as fb
import pytest
import torch
from torch import nn

from alma_plugin.foolbox import CIEDE2000ALMA, L2ALMA
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


def test_foolbox_early_stop_is_in_the_raw_units_of_the_model_bounds() -> None:
    """With bounds (0, 255), Foolbox's early_stop (min(epsilons)) is in raw units: 1.0 is 1/255
    of the normalised ℓ2 the solver measures, below any distance this model allows, so the run
    never stops early and equals the run without early stop (same seed, deterministic)."""
    model = _Scaled(linear_classifier(dtype=torch.float64)).eval()
    fmodel = fb.PyTorchModel(model, bounds=(0, 255))
    x = 255 * torch.rand(
        4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    y = model(x).argmax(1)
    attack = L2ALMA(steps=40)
    plain = attack.run(fmodel, x, y)
    distances = (plain - x).flatten(1).norm(dim=1)
    assert (model(plain).argmax(1) != y).all() and (distances > 1.0).all()
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
