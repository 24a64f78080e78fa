"""torchattacks edge behaviours that no other test pinned (each found by mutation testing): inputs
a rounding error outside [0, 1], state restored after set_model_training_mode, a member or a
failed call, and MinimalEnsemble's choice (NaN logits, targets, clipping, normalisations)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.utils import linear_classifier

pytestmark = pytest.mark.usefixtures("single_thread")


def test_torchattacks_inputs_a_rounding_error_outside_0_1_come_back_inside() -> None:
    """Images up to 1e-6 outside [0, 1] are accepted and clipped onto it: a sample that no
    member fools comes back clipped, not as given."""
    from alma_plugin.torchattacks import ALMA, MinimalEnsemble

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    with torch.no_grad():  # ignores its input: nothing is ever fooled
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([3.0, 1.0, 0.0, -1.0, -2.0]))
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 1 + 5e-7, -5e-7
    y = torch.zeros(2, dtype=torch.long)
    for attack in (ALMA(model, steps=3), MinimalEnsemble([ALMA(model, steps=3)])):
        out = attack(x, y)
        assert float(out.min()) >= 0 and float(out.max()) <= 1, type(attack).__name__
        torch.testing.assert_close(out, x.clamp(0, 1), rtol=0, atol=0)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 5)
    ).eval()


def test_torchattacks_batchnorm_training_leaves_the_running_statistics_as_they_were() -> None:
    """``set_model_training_mode(batchnorm_training=True)``: batch norm uses batch statistics
    during the attack and updates its running averages at every forward; afterwards they are
    the caller's again."""
    from alma_plugin.torchattacks import ALMA

    model = _bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    seen: list[bool] = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    attack = ALMA(model, steps=3)
    attack.set_model_training_mode(model_training=True, batchnorm_training=True)
    attack(x, torch.zeros(4, dtype=torch.long))
    assert seen and all(seen)  # the running statistics were updated during the call
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.training and not model[1].training


def test_minimal_ensemble_restores_requires_grad_a_member_changed() -> None:
    """A member that freezes the parameters (as some attacks do for speed) leaves them as the
    caller set them after the ensemble's call."""
    from torchattacks.attack import Attack

    from alma_plugin.torchattacks import ALMA, MinimalEnsemble

    class Freezing(Attack):
        def __init__(self, model: nn.Module) -> None:
            super().__init__("Freezing", model)

        def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            for p in self.model.parameters():
                p.requires_grad_(False)
            return images.clone()

    model = linear_classifier()
    model[1].bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    MinimalEnsemble([Freezing(model), ALMA(model, steps=2)])(x, torch.tensor([0, 1]))
    assert [p.requires_grad for p in model.parameters()] == flags == [True, False]


def test_torchattacks_normalisation_survives_a_failed_call() -> None:
    """After a call that raises (bad labels), ``set_normalization_used`` still holds: the next
    call de-normalises its inputs as before, and equals the call of a fresh attack."""
    from alma_plugin.torchattacks import ALMA

    mean, std = [0.5], [0.25]
    net = linear_classifier()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    normalised = (x - 0.5) / 0.25
    y = net(normalised).argmax(1)
    attack = ALMA(net, steps=5)
    attack.set_normalization_used(mean, std)
    with pytest.raises(ValueError):
        attack(normalised, torch.tensor([0, 1]))  # wrong shape
    fresh = ALMA(net, steps=5)
    fresh.set_normalization_used(mean, std)
    torch.testing.assert_close(attack(normalised, y), fresh(normalised, y), rtol=0, atol=0)


def test_minimal_ensemble_never_selects_an_output_with_nan_or_inf_logits() -> None:
    """A member output on which the model answers NaN or +Inf is no success, whatever argmax
    makes of such logits."""
    from torchattacks.attack import Attack

    from alma_plugin.torchattacks import MinimalEnsemble

    net = linear_classifier()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5

    class Broken(nn.Module):  # NaN / +Inf logits away from x (bright images)
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            logits = net(inputs)
            away = inputs.flatten(1).amax(1) > 0.75
            bad = torch.tensor([torch.nan, torch.inf])[: len(inputs)].reshape(-1, 1)
            column = torch.where(away[:, None], bad.expand(-1, 1), logits[:, 1:2])
            return torch.cat([logits[:, :1], column, logits[:, 2:]], 1)

    model = Broken().eval()

    class Brighten(Attack):
        def __init__(self, model: nn.Module) -> None:
            super().__init__("Brighten", model)

        def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return (images + 0.5).clamp(0, 1)

    y = torch.zeros(2, dtype=torch.long)  # class 1 holds the NaN / +Inf: argmax picks it
    out = MinimalEnsemble([Brighten(model)])(x, y)
    assert torch.equal(out, x)


class _Fixed:
    """A torchattacks member that returns ``images + shift`` (unclamped)."""

    @staticmethod
    def make(model: nn.Module, shift: float) -> Any:
        from torchattacks.attack import Attack

        class Shift(Attack):
            def __init__(self) -> None:
                super().__init__("Shift", model)
                self.supported_mode = ["default", "targeted"]

            def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                return images + shift

        return Shift()


def test_minimal_ensemble_targeted_needs_the_target_class() -> None:
    """In a targeted mode a member output counts only where the model predicts the target,
    not any class other than the label."""
    from alma_plugin.torchattacks import MinimalEnsemble

    model = linear_classifier()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    member = _Fixed.make(model, 0.4)
    with torch.no_grad():
        clean, moved = model(x).argmax(1), model((x + 0.4).clamp(0, 1)).argmax(1)
    changed = moved != clean
    assert changed.any()
    targets = (moved + 1) % 5  # never the class the member's output reaches
    targets = torch.where(targets == clean, (targets + 1) % 5, targets)
    ensemble = MinimalEnsemble([member])
    ensemble.set_mode_targeted_by_label(quiet=True)
    assert torch.equal(ensemble(x, targets), x)
    ensemble.set_mode_default()
    out = ensemble(x, clean)  # untargeted, the same outputs are successes where they changed
    assert torch.equal(out[changed], (x + 0.4).clamp(0, 1)[changed])


def test_minimal_ensemble_returns_member_outputs_clipped_to_0_1() -> None:
    from alma_plugin.torchattacks import MinimalEnsemble

    model = linear_classifier()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    out = MinimalEnsemble([_Fixed.make(model, 0.6)])(x, y)
    assert float(out.max()) <= 1 and float(out.min()) >= 0
    assert not torch.equal(out, x)  # some output was selected


def test_minimal_ensemble_refuses_members_with_other_normalisations() -> None:
    """Means or stds that differ beyond float32 rounding (here by 0.2 %) are other
    normalisations: refused, naming both."""
    from alma_plugin.torchattacks import ALMA, MinimalEnsemble

    model = linear_classifier()
    a, b = ALMA(model, steps=2), ALMA(model, steps=2)
    a.set_normalization_used([0.5], [0.25])
    b.set_normalization_used([0.501], [0.25])
    with pytest.raises(ValueError, match="same set_normalization_used"):
        MinimalEnsemble([a, b])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_with_set_normalization_used(dtype: torch.dtype) -> None:
    """torchattacks' float32 mean and std promoted the batch to float32 inside get_logits, and
    a float16 / bfloat16 model refused it ("Input type (float) and bias type (c10::Half)");
    torchattacks' PGD still does. Ours normalise in the inputs' dtype."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(64, 3)).to(dtype).eval()
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    shift, scale = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    images = ((torch.rand(4, 3, 4, 4) - shift) / scale).to(dtype)
    labels = torch.tensor([0, 1, 2, 0])
    for adversarials in _every_attack_normalised(model, images, labels, mean, std, steps=20):
        assert adversarials.dtype == dtype and adversarials.shape == images.shape
        unit = adversarials.float() * scale + shift  # back in [0, 1], up to the dtype's rounding
        assert unit.min() >= -0.02 and unit.max() <= 1.02


def _every_attack_normalised(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    steps: int,
) -> list[torch.Tensor]:
    """The outputs of ALMA ℓ2, ALMA ℓ∞, Lagrangian and a MinimalEnsemble, each after
    ``set_normalization_used(mean, std)``, on normalised ``images``."""
    from alma_plugin.torchattacks import ALMA, Lagrangian, MinimalEnsemble

    attacks = [ALMA(model, "l2", steps), ALMA(model, "linf", steps), Lagrangian(model, seed=0)]
    attacks.append(MinimalEnsemble(attacks[:2]))
    outputs = []
    for attack in attacks:
        attack.set_normalization_used(mean, std)
        outputs.append(attack(images, labels))
    return outputs


def test_inputs_that_are_not_tensors_and_members_that_are_not_attacks_are_named() -> None:
    import numpy as np

    from alma_plugin.torchattacks import ALMA, MinimalEnsemble

    model = linear_classifier()
    with pytest.raises(TypeError, match=r"must be a torch.Tensor, got ndarray"):
        ALMA(model, "l2", 5)(np.zeros((2, 1, 4, 4)), torch.tensor([0, 1]))
    with pytest.raises(
        TypeError, match=r"attacks\[1\] must be a torchattacks.attack.Attack, got str"
    ):
        MinimalEnsemble([ALMA(model), "PGD"])  # type: ignore[list-item]


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_grey_level_survives_the_normalisation_round_trip(dtype: torch.dtype) -> None:
    """Images holding all 256 levels (black and white included), normalised with ImageNet's
    mean and std in the model's dtype: torchattacks' inverse normalisation brings them back
    up to the dtype's rounding outside [0, 1] (bfloat16: a black pixel as −0.00195), which is
    accepted and clamped; an image truly outside [0, 1] is still refused, with the hint."""
    from alma_plugin.torchattacks import ALMA

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(1024, 3)).to(dtype).eval()
    shift = torch.tensor(IMAGENET_MEAN)[:, None, None]
    scale = torch.tensor(IMAGENET_STD)[:, None, None]
    levels = torch.arange(256.0).reshape(1, 1, 16, 16) / 255
    images = levels.expand(2, 3, 16, 16).clone()
    images[1] = images[1].flip(-1)
    normalised = ((images - shift) / scale).to(dtype)
    labels = torch.tensor([0, 1])
    outputs = _every_attack_normalised(model, normalised, labels, IMAGENET_MEAN, IMAGENET_STD, 5)
    for adversarials in outputs:
        assert adversarials.dtype == dtype and adversarials.shape == images.shape
    outside = ((images - 0.05 - shift) / scale).to(dtype)  # a black pixel at −0.05
    attack = ALMA(model, "l2", 5)
    attack.set_normalization_used(IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match=r"within bounds \(0.0, 1.0\).*set_normalization_used"):
        attack(outside, labels)


def test_a_nan_input_is_named_without_the_bounds_hint() -> None:
    from alma_plugin.torchattacks import ALMA

    x = torch.rand(2, 1, 4, 4)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf values, in 1 of 2 samples") as error:
        ALMA(linear_classifier(), "l2", 5)(x, torch.tensor([0, 1]))
    assert "set_normalization_used" not in str(error.value)


class _CountingLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x.flatten(1))


def _l1_as_lpips(x_adv: Any, x: Any) -> Any:  # a custom "LPIPS": one distance per sample
    return (x_adv - x).flatten(1).abs().mean(1)


def test_minimal_ensemble_checks_what_its_distance_needs_before_any_member_runs() -> None:
    """Before: MS-SSIM on 32-px images and LPIPS without weights failed only after every
    member had run (6 model calls), and the ensemble had no ``lpips=`` to pass weights."""
    from alma_plugin.distances import LPIPSWeightsNotFoundError
    from alma_plugin.distances._lpips import default_lpips
    from alma_plugin.torchattacks import ALMA, MinimalEnsemble

    torch.manual_seed(0)
    net = _CountingLinear().eval()
    x = torch.rand(2, 3, 32, 32)
    y = net(x).argmax(1)
    with pytest.raises(ValueError, match=r"distance='msssim' needs inputs .* H, W >= 176"):
        MinimalEnsemble([ALMA(net, "l2", steps=5)], distance="msssim")(x, y)
    with pytest.raises(ValueError, match="lpips= is only used with distance='lpips'"):
        MinimalEnsemble([ALMA(net, "l2", steps=5)], lpips=_l1_as_lpips)
    try:
        default_lpips()
    except LPIPSWeightsNotFoundError:  # this machine has no weights: the error comes first
        net.calls = 0
        member = ALMA(net, "lpips", steps=5, lpips=_l1_as_lpips)
        with pytest.raises(LPIPSWeightsNotFoundError):
            MinimalEnsemble([member], distance="lpips")(x, y)
    assert net.calls <= 1  # at most torchattacks' own look at the model, no member's run

    net.calls = 0
    member = ALMA(net, "lpips", steps=20, lpips=_l1_as_lpips)
    ensemble = MinimalEnsemble([member], distance="lpips", lpips=_l1_as_lpips)
    outputs = ensemble(x, y)
    torch.testing.assert_close(outputs, member(x, y))  # one member: its output, deterministic
    with torch.no_grad():
        assert (net(outputs).argmax(1) != y).all()
