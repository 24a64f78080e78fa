"""The torchattacks adapter: ALMA and MinimalEnsemble as ``torchattacks.attack.Attack``s."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from alma_plugin import DISTANCES, ALMAParams, ProxParams
from alma_plugin.torchattacks import ALMA, Lagrangian, MinimalEnsemble
from tests.utils import assert_unchanged, predict, snapshot

MEAN, STD = (0.1307,), (0.3081,)


@pytest.fixture
def few(mnist_samples: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_samples[0][:6], mnist_samples[1][:6]


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
    assert attack.params is None  # nothing given: the distance's defaults at each call
    spec = DISTANCES["l2"]
    resolved = spec.alma_params(ALMAParams(), attack.steps)
    assert resolved.alpha == 0.5 and resolved.init_lr_distance == 0.1  # paper defaults
    assert resolved.smooth_max == 0.1  # not in the paper: ℓ2's κ


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
    assert DISTANCES[distance].init_lr_distance == {"l1": 0.5, "ssim": 3e-5}[distance]
    adv = attack(x, y)
    changed = (adv != x).flatten(1).any(1)
    assert changed.any() and (predict(cnn, adv)[changed] != y[changed]).all()
    with pytest.raises(ValueError, match="needs RGB inputs"):
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
    with pytest.raises(TypeError, match="do not apply to distance='linf'"):
        ALMA(cnn, distance="linf", penalty="P1")  # ℓ∞ goes to ALMA prox (modified P2)
    with pytest.raises(ValueError, match="alpha"):
        ALMA(cnn, alpha=1.5)
    with pytest.raises(TypeError, match="steps must be an integer"):
        ALMA(cnn, steps=10.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        ALMA(cnn, gama=1.2)
    with pytest.raises(ValueError, match="Targeted mode is not supported"):
        MinimalEnsemble([torchattacks.DeepFool(cnn)]).set_mode_targeted_random(quiet=True)
    with pytest.raises(ValueError, match="non-empty list"):  # the right type: a list
        MinimalEnsemble([])
    with pytest.raises(TypeError, match="non-empty list"):
        MinimalEnsemble(ALMA(cnn))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"same model: attacks\[0\] attacks a .*attacks\[1\] a "):
        MinimalEnsemble([ALMA(cnn), ALMA(Normalized(cnn))])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        ALMA(lambda inputs: cnn(inputs))  # torchattacks reads its mode: refused at construction


def test_minimal_ensemble_compares_normalisations_by_value(cnn: nn.Module) -> None:
    """torchattacks keeps the dtype a normalisation was given in (NumPy float64, a list's
    float32): the same constants must still make one ensemble; other constants must not."""
    as_numpy, as_list, other = ALMA(cnn), ALMA(cnn), ALMA(cnn)
    as_numpy.set_normalization_used(np.array([0.1307]), np.array([0.3081]))
    as_list.set_normalization_used([0.1307], [0.3081])
    assert as_numpy.normalization_used["mean"].dtype != as_list.normalization_used["mean"].dtype
    ensemble = MinimalEnsemble([as_numpy, as_list])
    assert torch.allclose(
        ensemble.normalization_used["std"].double(), torch.tensor(0.3081).double()
    )
    other.set_normalization_used([0.1307], [0.3])
    with pytest.raises(ValueError, match=r"same set_normalization_used.*attacks\[1\] uses mean"):
        MinimalEnsemble([as_list, other])
    with pytest.raises(ValueError, match=r"attacks\[0\] uses none"):
        MinimalEnsemble([ALMA(cnn), other])


def test_repr(cnn: nn.Module) -> None:
    text = repr(ALMA(cnn, distance="l1", steps=100, gamma=1.5))
    assert text.startswith("ALMA(") and "distance=l1" in text and "steps=100" in text
    # the arguments as given: α and ε are resolved at each call from steps and distance
    assert "params=ALMAParams(alpha=None, init_lr_distance=None" in text and "gamma=1.5" in text
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


def test_save_int_keeps_levels_under_normalisation(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], tmp_path: Any
) -> None:
    """``levels=256`` adversarials saved with ``save_type="int"`` after
    ``set_normalization_used``: the saved uint8 image is the grid image the attack returned
    (torchattacks truncated x_n·std + mean, 1 ulp below k/255, to k − 1), so every saved
    adversarial still fools the model after loading, and the clean MNIST images come back
    exactly."""
    x, y = few[0][:8], few[1][:8]
    model = Normalized(cnn)
    attack = ALMA(model, steps=40, levels=256)
    attack.set_normalization_used(MEAN, STD)
    normalised = (x - MEAN[0]) / STD[0]
    loader = DataLoader(TensorDataset(normalised, y), batch_size=4)
    path = tmp_path / "adv.pt"  # type: ignore[operator]
    attack.save(loader, save_path=path, verbose=False, save_type="int", save_clean_inputs=True)
    saved = torch.load(path)
    assert saved["adv_inputs"].dtype == torch.uint8
    assert torch.equal(saved["clean_inputs"], (x * 255).round().to(torch.uint8))
    in_memory = attack(normalised, y) * STD[0] + MEAN[0]
    assert torch.equal(saved["adv_inputs"], (in_memory * 255).round().to(torch.uint8))
    fooled = predict(cnn, in_memory) != y
    assert fooled.all()
    assert (predict(cnn, saved["adv_inputs"].float() / 255) != y).all()


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


def test_minimal_ensemble_with_an_untargetable_member_has_no_targeted_mode(cnn: nn.Module) -> None:
    """A member without a targeted mode (torchattacks' DeepFool) leaves the ensemble without
    one: set_mode_targeted_* is refused and the ensemble stays in the default mode, instead of
    judging success against targets that member never aims for."""
    ensemble = MinimalEnsemble([ALMA(cnn, steps=10), torchattacks.DeepFool(cnn, steps=5)])
    assert ensemble.supported_mode == ["default"]
    with pytest.raises(ValueError, match="not supported"):
        ensemble.set_mode_targeted_by_label(quiet=True)
    assert ensemble.get_mode() == "default" and not ensemble.targeted


@pytest.mark.parametrize("ensemble_training", [False, True])
def test_minimal_ensemble_judges_in_its_own_mode(
    few: tuple[torch.Tensor, torch.Tensor], ensemble_training: bool
) -> None:
    """Each member runs in its own ``set_model_training_mode``, the ensemble judges in its own.
    torchattacks applies every registered member's mode after the ensemble's, the last one
    winning: a last member with dropout on made the ensemble judge under dropout (outputs
    judged adversarial under dropout that fool nothing in eval)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(64, 10)).eval()  # fmt: skip
    x = few[0]
    y = predict(net, x)
    pgd = torchattacks.PGD(net, eps=0.05, steps=3)
    ensemble = MinimalEnsemble([ALMA(net, steps=30), pgd])
    # torchattacks passes an ensemble's setting on to its members; a member's own comes after
    ensemble.set_model_training_mode(model_training=ensemble_training, dropout_training=False)
    pgd.set_model_training_mode(model_training=True, dropout_training=True)
    modes: list[bool] = []
    net[3].register_forward_hook(lambda module, inputs, output: modes.append(module.training))
    adv = ensemble(x, y)
    # ALMA's 30 forwards, then its judging; PGD's forwards (4: its steps and torchattacks'
    # label check), then the judging of its output: dropout off wherever the ensemble judges.
    assert modes[30] is False and modes[-1] is False
    assert any(modes[31:-1])  # PGD ran with its dropout on
    assert (predict(net, adv) != y).all()  # judged as the ensemble's user evaluates
    assert net.training is False


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
    """Setting ``steps``, ``distance`` or ``params`` after construction gives exactly the
    attack constructed with it: α and ε are resolved at call time from the current
    attributes (before, they kept the values chosen for the old ones)."""
    x, y = few[0][:3], few[1][:3]
    attack = ALMA(cnn, steps=1000)
    attack.steps = 20
    assert torch.equal(attack(x, y), ALMA(cnn, steps=20)(x, y))

    attack.distance = "l1"  # Table 3's ε for ℓ1, not ℓ2's 0.1
    assert torch.equal(attack(x, y), ALMA(cnn, "l1", steps=20)(x, y))

    assert attack.params is None  # no hyperparameter given: the distance's defaults
    attack.params = ALMAParams(alpha=0.7, init_lr_distance=0.3, penalty="P1")
    same = ALMA(cnn, "l1", 20, alpha=0.7, init_lr_distance=0.3, penalty="P1")
    assert attack.params == same.params and repr(attack) == repr(same)
    assert torch.equal(attack(x, y), same(x, y))

    linf = ALMA(cnn, steps=20)
    linf.distance = "linf"  # default ALMAParams: ALMA prox runs with its own defaults
    assert torch.equal(linf(x, y), ALMA(cnn, "linf", steps=20)(x, y))


@pytest.mark.parametrize("name", ["inf", "l_inf", "LInf"])
def test_linf_names_set_after_construction(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor], name: str
) -> None:
    """Every ℓ∞ name the constructor takes also works as ``attack.distance`` (the call used
    to pass the raw attribute on, which only knew "linf")."""
    x, y = few[0][:2], few[1][:2]
    attack = ALMA(cnn, steps=5)
    attack.distance = name
    assert torch.equal(attack(x, y), ALMA(cnn, name, steps=5)(x, y))
    assert ALMA(cnn, name).distance == "linf"


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("steps", 10.5, TypeError, "steps must be an integer"),
        ("steps", 0, ValueError, "steps must be >= 1"),
        ("distance", "l3", ValueError, "distance must be one of"),
        ("early_stop", -1.0, ValueError, "early_stop must be None or a number >= 0"),
        ("seed", "x", TypeError, "seed must be an integer"),
        ("params", {"gamma": 1.2}, TypeError, "params must be"),
        ("lpips", 3, ValueError, "lpips= is only used with distance='lpips'"),
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


def test_arguments_checked_at_construction(cnn: nn.Module) -> None:
    """Values given to the constructor are refused there (docs/torchattacks.md), as ALMA
    keywords with "linf" are: ProxParams with an ALMA distance, an lpips that is no callable."""
    with pytest.raises(TypeError, match=r"params must be an ALMAParams for distance='l2'"):
        ALMA(cnn, "l2", params=ProxParams())
    with pytest.raises(TypeError, match="lpips must be an alma_plugin.distances.LPIPS"):
        ALMA(cnn, "lpips", lpips="alexnet")
    with pytest.raises(ValueError, match="restarts=5 with steps=3"):
        ALMA(cnn, "l2", steps=3, restarts=5)


def test_linf_params_checked_at_call_time(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = few[0][:2], few[1][:2]
    attack = ALMA(cnn, "l2", steps=5, init_lr_distance=0.2)
    attack.distance = "linf"  # ALMA's hyperparameters do not apply to ALMA prox
    with pytest.raises(TypeError, match=r"do not apply to distance='linf'"):
        attack(x, y)
    attack = ALMA(cnn, "linf", steps=5, params=ProxParams(init_lr=0.01))
    attack.distance = "l2"  # ALMA prox parameters given to ALMA
    with pytest.raises(TypeError, match=r"params must be an ALMAParams"):
        attack(x, y)
    with pytest.raises(ValueError, match=r"gamma must lie in"):
        ProxParams(gamma=0.5)


def test_seeded_calls_repeat(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    """No ``repeat`` in torchattacks: a second call returns the same result (documented);
    ``seed`` is an attribute like the others."""
    x, y = few[0][:3], few[1][:3]
    attack = ALMA(cnn, steps=10, seed=3)
    assert torch.equal(attack(x, y), attack(x, y))
    attack.seed = 4
    assert torch.equal(attack(x, y), ALMA(cnn, steps=10, seed=4)(x, y))


def test_targeted_random_repeats_after_the_same_manual_seed(
    cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The documented exception to "a seeded attack is deterministic": random targets come
    from torch's global generator, as in torchattacks, so only ``torch.manual_seed`` makes a
    call repeat."""
    x, y = few[0][:4], few[1][:4]
    attack = ALMA(cnn, steps=10, seed=3)
    attack.set_mode_targeted_random(quiet=True)
    torch.manual_seed(0)
    first = attack(x, y)
    torch.manual_seed(0)
    assert torch.equal(attack(x, y), first)
    assert not torch.equal(attack(x, y), first)  # other targets from the generator's state


def test_empty_batch(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = few[0][:0], few[1][:0]
    for attack in (ALMA(cnn, steps=5), ALMA(cnn, "linf", steps=5), MinimalEnsemble([ALMA(cnn)])):
        assert attack(x, y).shape == x.shape


# --- the model's state: lazy modules, .grad tensors ------------------------------------------


def lazy_model() -> nn.Module:
    """Lazy modules that have not run: their parameters and buffers are uninitialised."""
    torch.manual_seed(0)
    return nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(10)).eval()  # fmt: skip


@pytest.mark.parametrize("name", ["ALMA", "Lagrangian", "MinimalEnsemble"])
def test_lazy_modules_are_materialised(few: tuple[torch.Tensor, torch.Tensor], name: str) -> None:
    """As torchattacks' PGD, the call materialises the lazy modules (saving the state used to
    copy their uninitialised buffers first and fail); they stay materialised, with their
    modes, ``requires_grad`` and initial running statistics restored as for other modules."""
    x, y = few[0][:3], few[1][:3]
    model = lazy_model()
    make = {
        "ALMA": lambda: ALMA(model, steps=5),
        "Lagrangian": lambda: Lagrangian(model, seed=0),  # its noise off the global generator
        "MinimalEnsemble": lambda: MinimalEnsemble(
            [torchattacks.PGD(model, random_start=False), ALMA(model, steps=5)]
        ),
    }
    attack = make[name]()
    # batch norm in training mode updates the running statistics at each step
    attack.set_model_training_mode(model_training=True, batchnorm_training=True)
    assert attack(x, y).shape == x.shape
    state = model.state_dict()
    assert not any(nn.parameter.is_lazy(value) for value in state.values())
    assert torch.equal(state["1.running_mean"], torch.zeros(4))
    assert torch.equal(state["1.running_var"], torch.ones(4))
    assert state["1.num_batches_tracked"] == 0
    assert not any(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    reference = lazy_model()
    reference(x)  # the same initialisation as a first forward outside an attack
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key


def test_grad_tensors_are_kept(cnn: nn.Module, few: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Each parameter's ``.grad`` is the same tensor object after the call, with its values:
    code holding it (DDP's gradient_as_bucket_view, hooks) is not cut off. DeepFool, as a
    member, backpropagates into the parameters and changes their ``.grad`` in place."""
    x, y = few[0][:3], few[1][:3]
    nn.functional.cross_entropy(cnn(x), y).backward()
    last = list(cnn.parameters())[-1]
    last.grad = None  # a parameter without .grad gets none
    grads = [p.grad for p in cnn.parameters()]
    values = [None if g is None else g.clone() for g in grads]
    for attack in (ALMA(cnn, steps=5), MinimalEnsemble([torchattacks.DeepFool(cnn, steps=2)])):
        attack(x, y)
        for parameter, grad, value in zip(cnn.parameters(), grads, values, strict=True):
            assert parameter.grad is grad
            assert grad is None or torch.equal(grad, value)
