"""The torchattacks adapter: ALMA and MinimalEnsemble as ``torchattacks.attack.Attack``s."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torchattacks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from alma_plugin.torchattacks import ALMA, MinimalEnsemble
from tests.utils import assert_unchanged, snapshot

MEAN, STD = (0.1307,), (0.3081,)


@pytest.fixture
def cnn(mnist_cnn: nn.Module) -> Iterator[nn.Module]:
    """The session CNN; gradients that torchattacks' own attacks (DeepFool) leave in its
    parameters are cleared afterwards so other tests see it untouched."""
    yield mnist_cnn
    for parameter in mnist_cnn.parameters():
        parameter.grad = None


@pytest.fixture
def few(mnist_samples: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_samples[0][:6], mnist_samples[1][:6]


def predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs).argmax(1)


def l2(adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (adv - x).flatten(1).norm(dim=1)


def median_l2(model: nn.Module, adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Median ℓ2 with failed samples counted as +inf (the paper's convention)."""
    distances = l2(adv, x)
    failed = predict(model, adv) == y
    return distances.masked_fill(failed, float("inf")).median().item()


class Normalized(nn.Module):
    """A model that expects inputs normalised with MEAN, STD."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * STD[0] + MEAN[0])


def test_default_mode(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = few
    before, inputs = snapshot(cnn), (x.clone(), y.clone())
    attack = ALMA(cnn, steps=50)
    adv = attack(x, y)
    assert adv.shape == x.shape and adv.device == attack.device
    assert adv.min() >= 0 and adv.max() <= 1
    assert (predict(cnn, adv) != y).all()
    assert torch.equal(x, inputs[0]) and torch.equal(y, inputs[1])
    assert_unchanged(cnn, before)
    assert attack.get_mode() == "default"
    assert attack.alpha is None and attack.init_lr_distance == "default"  # as given
    config = attack.config()
    assert config.alpha == 0.5 and config.init_lr_distance == 0.1  # paper defaults


@pytest.mark.parametrize("mode", ["function", "random", "least_likely", "label"])
def test_targeted_modes(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], mode: str) -> None:
    x, y = few
    attack = ALMA(cnn, steps=60)
    labels = y
    if mode == "function":
        attack.set_mode_targeted_by_function(lambda inputs, labels: (labels + 1) % 10, quiet=True)
        targets = (y + 1) % 10
    elif mode == "random":
        attack.set_mode_targeted_random(quiet=True)
        torch.manual_seed(3)
        targets = attack.get_random_target_label(x, y)
        torch.manual_seed(3)
    elif mode == "least_likely":
        attack.set_mode_targeted_least_likely(quiet=True)
        targets = attack.get_least_likely_label(x, y)
    else:
        attack.set_mode_targeted_by_label(quiet=True)
        targets = labels = (y + 3) % 10
    adv = attack(x, labels)
    assert attack.targeted and adv.min() >= 0 and adv.max() <= 1
    assert (targets != y).all()
    assert (predict(cnn, adv) == targets).float().mean() >= 5 / 6


def test_normalization_used(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = few
    model = Normalized(cnn)
    attack = ALMA(model, steps=50)
    attack.set_normalization_used(MEAN, STD)
    z = (x - MEAN[0]) / STD[0]
    adv_z = attack(z, y)
    adv = adv_z * STD[0] + MEAN[0]  # distances and bounds live in [0, 1] image space
    assert adv.min() >= -1e-6 and adv.max() <= 1 + 1e-6
    assert (predict(model, adv_z) != y).all()
    plain = ALMA(cnn, steps=50)(x, y)
    assert torch.allclose(l2(adv, x), l2(plain, x), rtol=1e-2)  # float rounding only
    assert attack._normalization_applied is True
    assert "normalization_used=True" in repr(attack)


def test_model_mode_follows_torchattacks_and_is_restored(
    few: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = few
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Dropout(0.5), nn.Linear(32, 10))
    seen: list[bool] = []
    model.register_forward_hook(lambda module, i, o: seen.append(module.training))
    model.train()
    model[2].eval()  # a mixed mode must come back exactly
    before = snapshot(model)
    ALMA(model, steps=5)(x, y)
    assert seen and not any(seen)  # evaluated in eval mode, as torchattacks does
    assert_unchanged(model, before)

    attack = ALMA(model, steps=5)
    attack.set_model_training_mode(model_training=True, dropout_training=False)
    seen.clear()
    attack(x, y)
    assert all(seen)
    assert_unchanged(model, before)

    with pytest.raises(ValueError, match="labels"):  # restored after an error, too
        attack(x, y[:2])
    assert_unchanged(model, before)


@pytest.mark.parametrize("distance", ["l1", "ssim"])
def test_registry_distances(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], distance: str
) -> None:
    x, y = few[0][:3], few[1][:3]
    attack = ALMA(cnn, distance=distance, steps=20)
    assert attack.distance == distance  # ε from Table 3 (ℓ1 0.5, SSIM 3e-5)
    assert attack.config().init_lr_distance == {"l1": 0.5, "ssim": 3e-5}[distance]
    adv = attack(x, y)
    changed = (adv != x).flatten(1).any(1)
    assert changed.any() and (predict(cnn, adv)[changed] != y[changed]).all()
    with pytest.raises(ValueError, match="needs RGB images"):
        ALMA(cnn, distance="ciede2000", steps=5)(x, y)


def test_bad_input(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = few
    attack = ALMA(cnn, steps=5)
    with pytest.raises(ValueError, match="needs labels"):
        attack(x)
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        attack(x, y[:, None])
    with pytest.raises(TypeError, match="labels must be an integer"):
        attack(x, y.float())
    with pytest.raises(ValueError, match=r"within bounds \(0.0, 1.0\).*set_normalization_used"):
        attack(x * 255, y)
    with pytest.raises(ValueError, match="distance must be one of"):
        ALMA(cnn, distance="l3")
    with pytest.raises(ValueError, match="does not apply to distance='linf'"):
        ALMA(cnn, distance="linf", penalty="P1")  # ℓ∞ goes to ALMA prox (modified P2)
    with pytest.raises(ValueError, match="alpha"):
        ALMA(cnn, alpha=1.5)
    with pytest.raises(TypeError, match="steps must be an integer"):
        ALMA(cnn, steps=10.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        ALMA(cnn, gama=1.2)
    with pytest.raises(ValueError, match="Targeted mode is not supported"):
        MinimalEnsemble([torchattacks.DeepFool(cnn)]).set_mode_targeted_random(quiet=True)
    with pytest.raises(TypeError, match="non-empty list"):
        MinimalEnsemble([])
    with pytest.raises(ValueError, match="same model"):
        MinimalEnsemble([ALMA(cnn), ALMA(Normalized(cnn))])


def test_repr(cnn: nn.Module) -> None:
    text = repr(ALMA(cnn, distance="l1", steps=100, gamma=1.5))
    assert text.startswith("ALMA(") and "distance=l1" in text and "steps=100" in text
    # the arguments as given: α and ε are resolved at each call from steps and distance
    assert "alpha=None" in text and "init_lr_distance=default" in text and "'gamma': 1.5" in text
    assert " at 0x" not in text
    ensemble = repr(MinimalEnsemble([ALMA(cnn), torchattacks.DeepFool(cnn)]))
    assert ensemble.startswith("MinimalEnsemble(") and "DeepFool(" in ensemble


def test_multiattack(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = few[0][:4], few[1][:4]
    calls: list[int] = []

    class RecordingALMA(ALMA):
        def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            calls.append(len(images))
            return super().forward(images, labels)

    alma = RecordingALMA(cnn, steps=30)
    for attacks in (
        [alma, torchattacks.CW(cnn, c=1, steps=5), torchattacks.FAB(cnn, norm="L2", steps=3)],
        [  # weak settings leave work for ALMA, last
            torchattacks.CW(cnn, c=0.01, steps=1),
            torchattacks.FAB(cnn, norm="L2", steps=1, eps=0.1),
            torchattacks.DeepFool(cnn, steps=1),
            alma,
        ],
    ):
        calls.clear()
        multi = torchattacks.MultiAttack(attacks)
        adv = multi(x, y)
        assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
        assert (predict(cnn, adv) != y).all()
        assert calls  # ALMA ran, on the samples the attacks before it left
    multi.set_normalization_used(MEAN, STD)  # propagates to ALMA
    assert alma.normalization_used is not None


def test_save_with_dataloader(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], tmp_path: object
) -> None:
    x, y = few
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    attacks: list[tuple[str, ALMA | MinimalEnsemble]] = [
        ("alma", ALMA(cnn, steps=30)),
        ("ensemble", MinimalEnsemble([ALMA(cnn, steps=30), ALMA(cnn, distance="l1", steps=30)])),
    ]
    for name, attack in attacks:
        path = tmp_path / f"{name}.pt"  # type: ignore[operator]
        rob_acc, mean_l2, _ = attack.save(
            loader, save_path=path, verbose=False, return_verbose=True
        )
        saved = torch.load(path)
        assert saved["adv_inputs"].shape == x.shape and torch.equal(saved["labels"], y)
        assert rob_acc == 0.0 and 0 < mean_l2 < 5
        assert (predict(cnn, saved["adv_inputs"]) != y).all()


def test_minimal_ensemble_modes(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = few[0][:4], few[1][:4]
    members = [ALMA(cnn, steps=40), torchattacks.CW(cnn, c=10, steps=20, lr=0.05)]
    ensemble = MinimalEnsemble(members)
    assert ensemble.supported_mode == ["default", "targeted"]
    ensemble.set_mode_targeted_random(quiet=True)
    torch.manual_seed(5)
    targets = ensemble.get_random_target_label(x, y)
    torch.manual_seed(5)
    adv = ensemble(x, y)  # one draw of targets, shared by both members
    assert (predict(cnn, adv) == targets).all()
    assert all(m.get_mode() == "targeted(random)" for m in members)  # members' modes restored

    ensemble.set_mode_default()
    model = Normalized(cnn)
    normalized = MinimalEnsemble([ALMA(model, steps=40), ALMA(model, "l1", steps=40)])
    normalized.set_normalization_used(MEAN, STD)
    before = snapshot(model)
    adv_z = normalized((x - MEAN[0]) / STD[0], y)
    assert (predict(model, adv_z) != y).all()
    assert_unchanged(model, before)


@pytest.fixture(scope="module")
def comparison(
    mnist_cnn: nn.Module, mnist_samples: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """ALMA ℓ2 (100 steps), torchattacks FAB (ℓ2, default 10 steps) and DeepFool (3 steps:
    torchattacks' DeepFool is slow on MNIST) and their MinimalEnsemble, on 32 samples."""
    x, y = mnist_samples
    outputs = {
        "ALMA": ALMA(mnist_cnn, "l2", steps=100)(x, y),
        "FAB": torchattacks.FAB(mnist_cnn, norm="L2", eps=10.0)(x, y),
        "DeepFool": torchattacks.DeepFool(mnist_cnn, steps=3)(x, y),
    }
    members = [ALMA(mnist_cnn, "l2", steps=100), torchattacks.FAB(mnist_cnn, norm="L2", eps=10.0)]
    outputs["MinimalEnsemble(ALMA, FAB)"] = MinimalEnsemble(members)(x, y)
    for parameter in mnist_cnn.parameters():
        parameter.grad = None  # DeepFool backpropagates into the parameters
    return outputs


def test_alma_vs_fab_and_deepfool(
    mnist_cnn: nn.Module,
    mnist_samples: tuple[torch.Tensor, torch.Tensor],
    comparison: dict[str, torch.Tensor],
) -> None:
    x, y = mnist_samples
    medians = {name: median_l2(mnist_cnn, adv, x, y) for name, adv in comparison.items()}
    fooled = {name: (predict(mnist_cnn, adv) != y) for name, adv in comparison.items()}
    deepfool_ok = fooled["DeepFool"]
    alma_on_deepfool = l2(comparison["ALMA"], x)[deepfool_ok].median().item()
    deepfool_on_own = l2(comparison["DeepFool"], x)[deepfool_ok].median().item()
    print(
        "\n32 MNIST samples, median l2 (inf = failures): "
        + ", ".join(f"{k} {v:.4f} ({fooled[k].float().mean():.0%})" for k, v in medians.items())
        + f"; on the {int(deepfool_ok.sum())} samples DeepFool fools: ALMA "
        f"{alma_on_deepfool:.4f}, DeepFool {deepfool_on_own:.4f}"
    )
    assert fooled["ALMA"].all()
    assert comparison["ALMA"].min() >= 0 and comparison["ALMA"].max() <= 1
    # FAB with the same budget in iterations or less; 2% slack: the session model's training
    # is not bit-reproducible across processes and the two medians lie within ~1%.
    assert medians["ALMA"] <= medians["FAB"] * 1.02
    assert medians["ALMA"] <= medians["DeepFool"]
    if deepfool_ok.any():
        assert alma_on_deepfool <= deepfool_on_own


def test_minimal_ensemble_beats_members(
    mnist_cnn: nn.Module,
    mnist_samples: tuple[torch.Tensor, torch.Tensor],
    comparison: dict[str, torch.Tensor],
) -> None:
    x, y = mnist_samples
    ensemble = comparison["MinimalEnsemble(ALMA, FAB)"]
    assert (predict(mnist_cnn, ensemble) != y).all()
    best_member = min(median_l2(mnist_cnn, comparison[k], x, y) for k in ("ALMA", "FAB"))
    assert median_l2(mnist_cnn, ensemble, x, y) <= best_member + 1e-6
    # per sample: never worse than either member (both are deterministic)
    members = [
        l2(comparison[k], x).masked_fill(predict(mnist_cnn, comparison[k]) == y, float("inf"))
        for k in ("ALMA", "FAB")
    ]
    per_sample = torch.minimum(*members)
    assert (l2(ensemble, x) <= per_sample + 1e-5).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inputs_moved_to_the_model_device(few: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = few  # on the CPU
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).cuda().eval()
    attack = ALMA(model, steps=10)
    assert attack.device.type == "cuda"
    adv = attack(x, y)
    assert adv.device.type == "cuda" and adv.shape == x.shape  # as torchattacks returns
    assert x.device.type == "cpu"


# --- attributes are read at each call (issue 10) --------------------------------------------


def test_attributes_set_after_construction_are_used(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Setting ``steps``, ``distance``, ``alpha``, ``init_lr_distance``, ``penalty`` or a
    hyperparameter after construction gives exactly the attack constructed with it: α and ε
    are resolved at call time from the current attributes, as ``config()`` reports."""
    x, y = few[0][:3], few[1][:3]
    attack = ALMA(cnn, steps=1000)
    assert attack.config().alpha == pytest.approx(0.9)  # Appendix E: 1000 steps
    attack.steps = 20
    assert attack.config() == ALMA(cnn, steps=20).config()
    assert attack.config().alpha == 0.5
    assert torch.equal(attack(x, y), ALMA(cnn, steps=20)(x, y))

    attack.distance = "l1"
    assert attack.config().init_lr_distance == 0.5  # Table 3's ε for ℓ1, not ℓ2's 0.1
    assert torch.equal(attack(x, y), ALMA(cnn, "l1", steps=20)(x, y))

    attack.alpha, attack.init_lr_distance, attack.penalty = 0.7, 0.3, "P1"
    attack.hyperparameters["gamma"] = 1.5
    same = ALMA(cnn, "l1", 20, alpha=0.7, init_lr_distance=0.3, penalty="P1", gamma=1.5)
    assert attack.config() == same.config() and repr(attack) == repr(same)
    assert torch.equal(attack(x, y), same(x, y))

    linf = ALMA(cnn, steps=20)
    linf.distance = "linf"
    assert linf.prox_params() == ALMA(cnn, "linf", steps=20).prox_params()
    assert torch.equal(linf(x, y), ALMA(cnn, "linf", steps=20)(x, y))
    with pytest.raises(ValueError, match="runs ALMA prox"):
        linf.config()


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("steps", 10.5, TypeError, "steps must be an integer"),
        ("steps", 0, ValueError, "steps must be >= 1"),
        ("distance", "l3", ValueError, "distance must be one of"),
        ("alpha", 1.5, ValueError, "alpha must lie in"),
        ("init_lr_distance", "auto", ValueError, "init_lr_distance must be"),
        ("init_lr_distance", -1.0, ValueError, "init_lr_distance must lie in"),
        ("penalty", "P9", ValueError, "P9"),
        ("early_stop", -1.0, ValueError, "early_stop must be None or a number >= 0"),
        ("seed", "x", TypeError, "seed must be an integer"),
        ("hyperparameters", {"gama": 1.2}, TypeError, r"unexpected keyword.*\['gama'\]"),
        ("hyperparameters", {"gamma": 0.5}, ValueError, "gamma must lie in"),
    ],
)
def test_invalid_attribute_set_later_is_refused_at_call_time(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], name: str, value: object,
    error: type, match: str,
) -> None:  # fmt: skip
    x, y = few[0][:2], few[1][:2]
    attack = ALMA(cnn, steps=5)
    setattr(attack, name, value)
    with pytest.raises(error, match=match):
        attack(x, y)
    with pytest.raises(error, match=match):
        attack.settings()


def test_linf_attributes_checked_at_call_time(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = few[0][:2], few[1][:2]
    attack = ALMA(cnn, "l2", steps=5, init_lr_distance=0.2)
    attack.distance = "linf"  # ε does not apply to ALMA prox: said at the call
    with pytest.raises(ValueError, match=r"init_lr_distance=0.2 does not apply to distance='linf'"):
        attack(x, y)
    attack = ALMA(cnn, "linf", steps=5, init_lr=0.01)
    attack.distance = "l2"  # an ALMA prox name given to ALMA
    with pytest.raises(TypeError, match=r"unexpected keyword.*\['init_lr'\]"):
        attack(x, y)


# --- MinimalEnsemble never selects non-finite outputs (issue 10) -----------------------------


class NaNForSome(torchattacks.attack.Attack):
    """A member that returns a (wrong-class looking) NaN image for the even samples and the
    image itself for the others: what torchattacks' DeepFool returns on a model whose
    gradients vanish (see test_minimal_ensemble_with_deepfool_on_a_gradient_masked_model)."""

    def __init__(self, model: nn.Module, one_pixel: bool = False) -> None:
        super().__init__("NaNForSome", model)
        self.one_pixel = one_pixel

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out = images.clone().detach()
        if self.one_pixel:
            out[::2, :, 0, 0] = float("nan")
        else:
            out[::2] = float("nan")
        return out


class NaNBeyond(nn.Module):
    """The model, but its logits are NaN for inputs farther than ``radius`` (ℓ2) from the
    clean images ``center`` (a model that breaks down away from the data)."""

    def __init__(self, model: nn.Module, center: torch.Tensor, radius: float) -> None:
        super().__init__()
        self.model, self.radius = model, radius
        self.register_buffer("center", center)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if x.shape != self.center.shape:
            return logits
        far = (x - self.center).flatten(1).norm(dim=1) > self.radius
        return logits.masked_fill(far[:, None], float("nan"))


class FarAway(torchattacks.attack.Attack):
    """A member returning finite images far from the inputs (ℓ2 ≈ 8)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__("FarAway", model)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return (1 - images).clone().detach()


@pytest.mark.parametrize("one_pixel", [False, True])
def test_minimal_ensemble_never_selects_nan_outputs(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], one_pixel: bool
) -> None:
    x, y = few[0][:4], few[1][:4]
    alma = ALMA(cnn, steps=30)
    reference = alma(x, y)
    for members in ([NaNForSome(cnn, one_pixel), alma], [alma, NaNForSome(cnn, one_pixel)]):
        out = MinimalEnsemble(members)(x, y)
        assert torch.isfinite(out).all()
        assert torch.equal(out, reference)  # ALMA's outputs, never the NaN ones
    alone = MinimalEnsemble([NaNForSome(cnn, one_pixel)])(x, y)
    assert torch.equal(alone, x)  # nothing selected: the inputs come back


def test_minimal_ensemble_ignores_outputs_where_logits_are_nan(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = few[0][:4], few[1][:4]
    model = NaNBeyond(cnn, x, radius=3.0).eval()
    with torch.no_grad():
        assert torch.isnan(model(1 - x)).all()  # argmax of NaN logits would be 0 ≠ labels
    assert (y != 0).any()
    alone = MinimalEnsemble([FarAway(model)])(x, y)
    assert torch.equal(alone, x)
    alma = ALMA(model, steps=30)
    out = MinimalEnsemble([FarAway(model), alma])(x, y)
    assert torch.equal(out, alma(x, y))
    with torch.no_grad():
        logits = model(out)
    changed = (out != x).flatten(1).any(1)
    assert torch.isfinite(logits[changed]).all() and (logits.argmax(1)[changed] != y[changed]).all()


class Rounded(nn.Module):
    """Gradient masking: the model sees its input rounded to 8 bits (zero gradient almost
    everywhere), so torchattacks' DeepFool divides by a zero gradient norm."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)


def test_minimal_ensemble_with_deepfool_on_a_gradient_masked_model(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = few[0][:4], few[1][:4]
    model = Rounded(cnn).eval()
    deepfool = torchattacks.DeepFool(model, steps=3)
    assert not torch.isfinite(deepfool(x, y)).all()  # the failure seen in issue 10
    out = MinimalEnsemble([deepfool, ALMA(model, steps=10)])(x, y)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    changed = (out != x).flatten(1).any(1)
    assert (predict(model, out)[changed] != y[changed]).all()


# --- inputs of every kind; nothing of the caller's changes (issue 10) ------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_integer_label_dtypes(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype
) -> None:
    x, y = few[0][:3], few[1][:3]
    expected = ALMA(cnn, steps=10)(x, y)
    labels = y.to(dtype)
    assert torch.equal(ALMA(cnn, steps=10)(x, labels), expected)
    assert labels.dtype == dtype
    ensemble = MinimalEnsemble([ALMA(cnn, steps=10)])
    assert torch.equal(ensemble(x, labels), expected)
    targeted = ALMA(cnn, steps=10)
    targeted.set_mode_targeted_by_function(lambda i, t: ((t + 1) % 10).to(dtype), quiet=True)
    reference = ALMA(cnn, steps=10)
    reference.set_mode_targeted_by_function(lambda i, t: (t + 1) % 10, quiet=True)
    assert torch.equal(targeted(x, labels), reference(x, y))


def test_early_stop_zero_and_linf_early_stop(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """early_stop=0 is accepted and never triggers; ℓ∞ (ALMA prox) takes an early stop."""
    x, y = few[0][:3], few[1][:3]
    assert torch.equal(ALMA(cnn, steps=10, early_stop=0)(x, y), ALMA(cnn, steps=10)(x, y))
    for early_stop in (0, 0.0, None):
        ALMA(cnn, "linf", steps=5, early_stop=early_stop)
    from tests.utils import CountingModel

    counting = CountingModel(cnn).eval()
    adv = ALMA(counting, "linf", steps=200, early_stop=1.0)(x, y)
    assert 0 < counting.forwards < 200  # every sample fooled with ℓ∞ < 1 long before
    assert (predict(cnn, adv) != y).all()
    counting.forwards = 0
    ALMA(counting, "linf", steps=20, early_stop=0.0)(x, y)
    assert counting.forwards == 20


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype
) -> None:
    """``model.half()`` with half images: the model is called in its dtype, the output has
    it, and every changed sample is adversarial as the half model sees it."""
    x, y = few[0][:3], few[1][:3]
    model = copy.deepcopy(cnn).to(dtype)
    images = x.to(dtype)
    assert (predict(model, images) == y).all()
    for attack in (
        ALMA(model, steps=20),
        ALMA(model, "linf", steps=20),
        MinimalEnsemble([ALMA(model, "l1", steps=20)]),
    ):
        adv = attack(images, y)
        assert adv.dtype == dtype and adv.shape == images.shape
        assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
        changed = (adv != images).flatten(1).any(1)
        assert changed.sum() >= 2, attack
        assert (predict(model, adv)[changed] != y[changed]).all(), attack
    assert all(p.dtype == dtype for p in model.parameters())


def test_requires_grad_and_inference_mode_inputs(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = few[0][:3], few[1][:3]
    expected = ALMA(cnn, steps=10)(x, y)
    images = x.clone().requires_grad_(True)
    adv = ALMA(cnn, steps=10)(images, y)
    assert torch.equal(adv, expected) and not adv.requires_grad and adv.grad_fn is None
    assert images.requires_grad and images.grad is None
    with torch.inference_mode():
        frozen_x, frozen_y = x.clone(), y.clone()
    assert torch.equal(ALMA(cnn, steps=10)(frozen_x, frozen_y), expected)
    with torch.inference_mode():  # called from an evaluation loop
        inside = ALMA(cnn, steps=10)(x, y)
        ensemble = MinimalEnsemble([ALMA(cnn, steps=10), torchattacks.DeepFool(cnn, steps=1)])
        ensemble(x, y)
    assert torch.equal(inside, expected)
    with torch.no_grad():
        assert torch.equal(ALMA(cnn, steps=10)(x, y), expected)


def test_batch_norm_statistics_and_model_untouched_in_training_mode(
    few: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """With ``set_model_training_mode(batchnorm_training=True)`` the attack sees batch
    statistics, as asked, but the running statistics, parameters and modes come back."""
    x, y = few
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
    )
    model.train()
    before = snapshot(model)
    for attack in (ALMA(model, steps=5), MinimalEnsemble([ALMA(model, steps=5)])):
        attack.set_model_training_mode(model_training=True, batchnorm_training=True)
        attack(x, y)
        assert_unchanged(model, before)
    model.eval()
    before = snapshot(model)
    ALMA(model, steps=5)(x, y)
    assert_unchanged(model, before)


def test_seeded_calls_repeat(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    """No ``repeat`` in torchattacks: a second call returns the same result (documented);
    ``seed`` is an attribute like the others."""
    x, y = few[0][:3], few[1][:3]
    attack = ALMA(cnn, steps=10, seed=3)
    assert torch.equal(attack(x, y), attack(x, y))
    attack.seed = 4
    assert attack.settings().seed == 4


def test_empty_batch(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = few[0][:0], few[1][:0]
    for attack in (ALMA(cnn, steps=5), ALMA(cnn, "linf", steps=5), MinimalEnsemble([ALMA(cnn)])):
        assert attack(x, y).shape == x.shape
