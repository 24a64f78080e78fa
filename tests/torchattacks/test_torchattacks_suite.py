"""torchattacks' conventions, checked on our attacks next to torchattacks' own.

torchattacks' ``code_coverage/test_atks.py`` runs every attack on a model, in the default mode
and, where ``"targeted" in supported_mode``, after ``set_mode_targeted_random``, and asserts
that the robust accuracy does not exceed the clean accuracy. Its ``Attack`` base class adds
the conventions every attack inherits: the targeted modes, ``set_normalization_used``,
``set_model_training_mode``, ``save()``, ``MultiAttack``, ``repr``. This file checks all of
them (our own tests, written from those conventions), plus what a user of an evaluation
library relies on (deterministic under a fixed seed, the caller's tensors and model left
alone, inputs with ``requires_grad`` or from ``torch.inference_mode()``, calls under
``torch.no_grad()``, integer labels of other dtypes), on:

    torchattacks DeepFool, FAB (L2), PGDL2, CW | ALMA (l2, l1, linf), MinimalEnsemble

on a small CNN (batch norm and dropout, 3×8×8 inputs, 4 classes) trained here in a second.
Where a check fails for one of torchattacks' own attacks, the test is a strict xfail that
says why (the host's behaviour, measured); our attacks have no xfail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torchattacks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchattacks.attack import Attack

from alma_plugin.torchattacks import ALMA, MinimalEnsemble
from tests.utils import predict

pytestmark = pytest.mark.usefixtures("single_thread")

K = 4  # classes
SHAPE = (3, 8, 8)
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)

Factory = Callable[[nn.Module], Attack]
#: Few steps: conventions, not strength, are checked here.
ATTACKS: dict[str, Factory] = {
    "DeepFool": lambda m: torchattacks.DeepFool(m, steps=10),
    "FAB-L2": lambda m: torchattacks.FAB(m, norm="L2", eps=10.0, steps=10, n_classes=K),
    "PGDL2": lambda m: torchattacks.PGDL2(m, eps=2.0, alpha=0.25, steps=10),
    "CW": lambda m: torchattacks.CW(m, c=10.0, steps=50, lr=0.1),
    "ALMA-l2": lambda m: ALMA(m, "l2", steps=30),
    "ALMA-l1": lambda m: ALMA(m, "l1", steps=30),
    "ALMA-linf": lambda m: ALMA(m, "linf", steps=30),
    "MinimalEnsemble": lambda m: MinimalEnsemble(
        [ALMA(m, "l2", steps=20), torchattacks.CW(m, c=1.0, steps=10, lr=0.05)]
    ),
}
OURS = ("ALMA-l2", "ALMA-l1", "ALMA-linf", "MinimalEnsemble")

_GRAD_LEFT = (
    "torchattacks' {} backpropagates into the model's parameters and leaves their .grad set "
    "(host behaviour; our adapters restore .grad)"
)
_NO_GRAD = (
    "torchattacks' {} needs autograd enabled by the caller: under torch.no_grad() its "
    "gradient call raises (test_atks.py wraps its calls in torch.enable_grad()); ours enable "
    "it for the call"
)
#: (check, attack, variant) -> why one of torchattacks' own attacks fails that check
#: (measured with torchattacks 3.5.1; the xfails are strict, so a fixed host shows up).
HOST_FAILURES: dict[tuple[str, str, str | None], str] = {
    ("targeted", "FAB-L2", "by_label"): (
        "torchattacks' FAB judges success as argmax != labels in every mode; in "
        "targeted(label) mode the labels are the targets, so every sample counts as already "
        "fooled and the clean images come back"
    ),
    ("untouched", "DeepFool", None): _GRAD_LEFT.format("DeepFool"),
    ("untouched", "FAB-L2", None): _GRAD_LEFT.format("FAB"),
    ("untouched", "CW", None): _GRAD_LEFT.format("CW"),
    ("no_grad", "DeepFool", None): _NO_GRAD.format("DeepFool"),
    ("no_grad", "PGDL2", None): _NO_GRAD.format("PGDL2"),
    ("no_grad", "CW", None): _NO_GRAD.format("CW"),
    **{
        ("training_mode", name, mode): (
            f"torchattacks' {name} draws {mode} targets through get_output_with_eval_nograd, "
            "which ends with model.train(): batch norm and dropout then train for the rest of "
            "the call (running statistics updated) against set_model_training_mode"
        )
        for name in ("FAB-L2", "PGDL2", "CW")
        for mode in ("random", "least_likely")
    },
    **{
        ("save_modes", name, verbose): (
            f"{name}'s call and save (torchattacks' Attack.__call__ and Attack.save) end with "
            "model.train() on a model that was training: a batch norm the user froze trains "
            "again"
        )
        for name in ("DeepFool", "FAB-L2", "PGDL2", "CW")
        for verbose in ("quiet", "verbose")
    },
    ("label_dtype", "PGDL2", "int32"): (
        "torchattacks' PGDL2 passes the labels to cross_entropy, which needs int64 targets"
    ),
    ("label_dtype", "DeepFool", "uint8"): (
        "torchattacks' DeepFool indexes with the labels: uint8 indices are read as a mask"
    ),
    ("label_dtype", "PGDL2", "int16"): (
        "torchattacks' PGDL2 passes the labels to cross_entropy, which needs int64 targets"
    ),
    ("label_dtype", "CW", "uint8"): (
        "torchattacks' CW indexes torch.eye with the labels: uint8 indices are read as a mask"
    ),
    ("label_dtype", "CW", "int16"): (
        "torchattacks' CW indexes torch.eye with the labels: int16 is not an index dtype"
    ),
}


def cases(check: str, variants: tuple[str | None, ...] = (None,)) -> list[Any]:
    """Attack names (or (name, variant) pairs), with a strict xfail where a host attack is known to
    fail the check."""
    params = []
    for variant in variants:
        for name in ATTACKS:
            reason = HOST_FAILURES.get((check, name, variant))
            assert reason is None or name not in OURS, "no xfail for our own attacks"
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            if variant is None:
                params.append(pytest.param(name, marks=marks, id=name))
            else:
                params.append(pytest.param(name, variant, marks=marks, id=f"{name}-{variant}"))
    return params


# --- the model and the data ----------------------------------------------------------------


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, K),
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return train_small_cnn()


def train_small_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained on noisy class templates, and 8 held-out images it classifies
    correctly (2 per class)."""
    generator = torch.Generator().manual_seed(0)
    templates = torch.rand((K, *SHAPE), generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % K
        noise = torch.rand((n, *SHAPE), generator=generator)
        return (0.35 * templates[labels] + 0.65 * noise).clamp(0, 1), labels

    torch.manual_seed(0)
    model = small_cnn()
    images, labels = sample(512)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    test_images, test_labels = sample(64)
    with torch.no_grad():
        correct = model(test_images).argmax(1) == test_labels
    assert correct.float().mean() > 0.8
    keep = torch.cat([torch.nonzero(correct & (test_labels == k))[:2, 0] for k in range(K)])
    return model, test_images[keep].clone(), test_labels[keep].clone()


@pytest.fixture
def setup(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """The trained model (eval mode, no gradients) and the images; whatever a test (or a
    host attack) leaves in the model's gradients or modes is cleared afterwards."""
    model, x, y = trained
    yield model, x, y
    model.zero_grad(set_to_none=True)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(model, inputs) == labels).float().mean().item()


def model_state(model: nn.Module) -> dict[str, Any]:
    """Everything an attack must leave as it was: values of parameters and buffers (batch
    norm running statistics), ``requires_grad``, ``.grad``, every module's mode."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def assert_same_state(model: nn.Module, before: dict[str, Any], grads: bool = True) -> None:
    after = model_state(model)
    assert after["training"] == before["training"], "module modes changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    for new, old in zip(after["grads"] if grads else [], before["grads"], strict=False):
        assert (new is None and old is None) or (
            new is not None and old is not None and torch.equal(new, old)
        ), ".grad changed"
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"


def assert_valid_output(adv: Any, x: torch.Tensor, attack: Attack) -> None:
    """What torchattacks' docstrings promise: (N, C, H, W), the input's dtype, on the
    attack's device, values in [0, 1]; detached from any graph."""
    assert isinstance(adv, torch.Tensor)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.device == (attack.device or x.device)
    assert torch.isfinite(adv).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert not adv.requires_grad


# --- test_atks.py: default mode, then targeted(random) where supported ---------------------


@pytest.mark.parametrize("name", cases("test_atks"))
def test_atks_default_then_targeted_random(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str
) -> None:
    model, x, y = setup
    attack = ATTACKS[name](model)
    clean = accuracy(model, x, y)
    adv = attack(x, y)
    assert_valid_output(adv, x, attack)
    assert accuracy(model, adv, y) <= clean
    if "targeted" in attack.supported_mode:
        attack.set_mode_targeted_random(quiet=True)
        adv = attack(x, y)
        assert_valid_output(adv, x, attack)
        assert accuracy(model, adv, y) <= clean


@pytest.mark.parametrize("name", cases("fools"))
def test_fools_most_samples(setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str) -> None:
    """Beyond test_atks' robust ≤ clean: with these budgets every attack fools ≥ 3/4."""
    model, x, y = setup
    adv = ATTACKS[name](model)(x, y)
    assert accuracy(model, adv, y) <= 0.25


# --- the targeted modes of Attack ------------------------------------------------------------

MODES = ("random", "least_likely", "by_function", "by_label")


@pytest.mark.parametrize(("name", "mode"), cases("targeted", MODES))
def test_targeted_modes(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str, mode: str
) -> None:
    """Every ``set_mode_targeted_*``: refused with torchattacks' ValueError where the attack
    does not support it; otherwise valid outputs, the mode reported, targets never the true
    class, and at least a quarter of the samples reach their target (few steps here)."""
    model, x, y = setup
    attack = ATTACKS[name](model)
    setters: dict[str, Callable[[], None]] = {
        "random": lambda: attack.set_mode_targeted_random(quiet=True),
        "least_likely": lambda: attack.set_mode_targeted_least_likely(quiet=True),
        "by_function": lambda: attack.set_mode_targeted_by_function(
            lambda inputs, labels: (labels + 1) % K, quiet=True
        ),
        "by_label": lambda: attack.set_mode_targeted_by_label(quiet=True),
    }
    if "targeted" not in attack.supported_mode:
        with pytest.raises(ValueError, match="Targeted mode is not supported"):
            setters[mode]()
        return
    setters[mode]()
    assert attack.targeted and attack.get_mode().startswith("targeted")
    labels = (y + 2) % K if mode == "by_label" else y
    torch.manual_seed(1)
    targets = attack.get_target_label(x, labels)
    assert (targets != y).all()
    torch.manual_seed(1)
    adv = attack(x, labels)
    assert_valid_output(adv, x, attack)
    assert (predict(model, adv) == targets).float().mean() >= 0.25
    attack.set_mode_default()
    assert not attack.targeted and attack.get_mode() == "default"


# --- set_normalization_used, set_model_training_mode ---------------------------------------


class Normalized(nn.Module):
    """The model behind a normalisation layer: it expects (x − MEAN) / STD."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * self.std + self.mean)


@pytest.mark.parametrize("name", cases("normalization"))
def test_set_normalization_used(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str
) -> None:
    """Normalised images in, normalised images out; in image space the output is in [0, 1]
    and the model (which sees normalised inputs through get_logits) is fooled as without."""
    model, x, y = setup
    wrapped = Normalized(model).eval()
    attack = ATTACKS[name](wrapped)
    attack.set_normalization_used(MEAN, STD)
    mean, std = wrapped.mean, wrapped.std
    z = (x - mean) / std
    adv_z = attack(z, y)
    assert adv_z.shape == z.shape and adv_z.dtype == z.dtype
    adv = adv_z * std + mean
    assert adv.min() >= -1e-5 and adv.max() <= 1 + 1e-5
    assert accuracy(wrapped, adv_z, y) <= 0.25
    assert attack._normalization_applied is True
    assert "normalization_used=True" in repr(attack)


@pytest.mark.parametrize("name", cases("training_mode"))
def test_set_model_training_mode(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str
) -> None:
    """Eval mode during the attack by default; ``set_model_training_mode`` as documented
    (model in train mode, batch norm and dropout as asked). A model given in train mode is
    in train mode again afterwards, with its batch norm running statistics untouched."""
    model, x, y = setup
    seen: list[tuple[bool, bool, bool]] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        seen.append((module.training, module[1].training, module[3].training))

    handle = model.register_forward_hook(record)
    try:
        model.train()
        before = model_state(model)
        attack = ATTACKS[name](model)
        attack(x, y)
        assert seen and all(s == (False, False, False) for s in seen)
        assert_same_state(model, before, grads=False)  # .grad: test_inputs_and_model_untouched

        seen.clear()
        attack.set_model_training_mode(model_training=True)  # batch norm, dropout: eval
        attack(x, y)
        assert seen and all(s == (True, False, False) for s in seen)
        assert_same_state(model, before, grads=False)
    finally:
        handle.remove()
        model.eval()


@pytest.mark.parametrize(("name", "mode"), cases("training_mode", ("random", "least_likely")))
def test_set_model_training_mode_in_targeted_modes(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str, mode: str
) -> None:
    """The random and least-likely targets are drawn by a forward in eval mode, after which
    torchattacks' ``get_output_with_eval_nograd`` calls ``model.train()``: every module, batch
    norm and dropout included, would train. The attack must still run in the modes
    ``set_model_training_mode`` asked for (model training, batch norm and dropout in eval),
    and the samples it changes must reach their targets in those modes."""
    model, x, y = setup
    attack = ATTACKS[name](model)
    if "targeted" not in attack.supported_mode:
        pytest.skip(f"{name} has no targeted mode")
    seen: list[tuple[bool, bool, bool]] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        seen.append((module.training, module[1].training, module[3].training))

    attack.set_model_training_mode(model_training=True)
    getattr(attack, f"set_mode_targeted_{mode}")(quiet=True)
    model.train()
    before = model_state(model)
    handle = model.register_forward_hook(record)
    try:
        torch.manual_seed(1)
        adv = attack(x, y)
        assert_same_state(model, before, grads=False)
    finally:  # a host attack updates the running statistics: later tests get them back
        handle.remove()
        model.load_state_dict(before["state"])
        model.eval()
    drawing, asked = (False, False, False), (True, False, False)  # the draw, then the attack
    assert seen[0] == drawing and asked in seen
    assert set(seen) <= {drawing, asked}, f"forwards in modes {sorted(set(seen))}"
    torch.manual_seed(1)
    targets = attack.get_target_label(x, y)
    changed = (adv != x).flatten(1).any(1)
    assert (predict(model, adv) == targets)[changed].all()


# --- save(), MultiAttack, repr -------------------------------------------------------------


@pytest.mark.parametrize("name", cases("save"))
def test_save(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str, tmp_path: Any
) -> None:
    """``save(loader, save_path)`` over a DataLoader: the file holds every batch's outputs
    and labels; the returned robust accuracy (%) and mean ℓ2 are consistent with them."""
    model, x, y = setup
    attack = ATTACKS[name](model)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    path = tmp_path / "adv.pt"
    rob_acc, mean_l2, _ = attack.save(
        loader, save_path=str(path), verbose=False, return_verbose=True, save_clean_inputs=True
    )
    saved = torch.load(path)
    assert saved["adv_inputs"].shape == x.shape and torch.equal(saved["labels"], y)
    assert torch.equal(saved["clean_inputs"], x)
    assert rob_acc == pytest.approx(100 * accuracy(model, saved["adv_inputs"], y))
    fooled = predict(model, saved["adv_inputs"]) != y
    if fooled.any():
        distances = (saved["adv_inputs"] - x).flatten(1).norm(dim=1)[fooled]
        assert mean_l2 == pytest.approx(distances.mean().item(), rel=1e-4)


@pytest.mark.parametrize(("name", "verbose"), cases("save_modes", ("quiet", "verbose")))
def test_save_leaves_every_module_mode(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str, verbose: str
) -> None:
    """``save()`` on a model in train mode with its batch norm frozen (``bn.eval()``, as in
    fine-tuning): every module's flag is as it was afterwards, whether ``save`` measured the
    robust accuracy (``verbose``, through ``get_output_with_eval_nograd``) or not."""
    model, x, y = setup
    model.train()
    model[1].eval()
    before = model_state(model)
    attack = ATTACKS[name](model)
    loader = DataLoader(TensorDataset(x[:6], y[:6]), batch_size=3)
    attack.save(loader, verbose=False, return_verbose=verbose == "verbose")
    assert_same_state(model, before, grads=False)  # .grad: test_inputs_and_model_untouched


@pytest.mark.parametrize("name", cases("multiattack"))
def test_inside_multiattack(setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str) -> None:
    """First in ``MultiAttack``: it never does worse than the attack alone, and
    ``set_normalization_used`` reaches the members."""
    model, x, y = setup
    attack = ATTACKS[name](model)
    torch.manual_seed(0)
    alone = attack(x, y)
    multi = torchattacks.MultiAttack([attack, torchattacks.PGDL2(model, eps=1.0, steps=5)])
    torch.manual_seed(0)
    adv = multi(x, y)
    assert_valid_output(adv, x, multi)
    assert accuracy(model, adv, y) <= accuracy(model, alone, y)
    multi.set_normalization_used(MEAN, STD)
    assert attack.normalization_used is not None


@pytest.mark.parametrize("name", cases("repr"))
def test_repr(setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str) -> None:
    """``repr`` (= ``str``) as torchattacks prints it: the name, the public settings and the
    mode; the same for two equal attacks and free of memory addresses (stable test ids)."""
    model = setup[0]
    attack = ATTACKS[name](model)
    text = repr(attack)
    assert str(attack) == text
    assert text.startswith(attack.attack + "(") and text.endswith(")")
    assert "attack_mode=default" in text and "normalization_used=False" in text
    assert " at 0x" not in text
    assert repr(ATTACKS[name](model)) == text


# --- what an evaluation relies on ------------------------------------------------------------


@pytest.mark.parametrize("name", cases("deterministic"))
def test_deterministic_with_a_fixed_seed(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str
) -> None:
    model, x, y = setup
    attack = ATTACKS[name](model)
    torch.manual_seed(0)
    first = attack(x, y)
    torch.manual_seed(0)
    assert torch.equal(attack(x, y), first)


@pytest.mark.parametrize("name", cases("untouched"))
def test_inputs_and_model_untouched(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str
) -> None:
    """The caller's images and labels, and the model (parameters, buffers, ``.grad``,
    ``requires_grad``, modes) are as before the call."""
    model, x, y = setup
    images, labels = x.clone(), y.clone()
    before = model_state(model)
    ATTACKS[name](model)(images, labels)
    assert torch.equal(images, x) and torch.equal(labels, y)
    assert_same_state(model, before)


@pytest.mark.parametrize("name", cases("requires_grad"))
def test_inputs_requiring_grad(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str
) -> None:
    """Images that require grad (e.g. from a differentiable preprocessing): the output does
    not, the caller's tensor gets no ``.grad`` and keeps ``requires_grad``."""
    model, x, y = setup
    images = x.clone().requires_grad_(True)
    attack = ATTACKS[name](model)
    torch.manual_seed(0)
    adv = attack(images, y)
    assert_valid_output(adv, x, attack)
    assert images.requires_grad and images.grad is None and torch.equal(images.detach(), x)
    torch.manual_seed(0)
    assert torch.equal(adv, attack(x, y))


@pytest.mark.parametrize("name", cases("inference_mode"))
def test_inference_mode_inputs(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str
) -> None:
    """Images made under ``torch.inference_mode()`` (a data pipeline's output)."""
    model, x, y = setup
    with torch.inference_mode():
        images, labels = x.clone(), y.clone()
    attack = ATTACKS[name](model)
    torch.manual_seed(0)
    adv = attack(images, labels)
    assert_valid_output(adv, x, attack)
    torch.manual_seed(0)
    assert torch.equal(adv, attack(x, y))


@pytest.mark.parametrize("name", cases("no_grad"))
def test_called_under_no_grad(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str
) -> None:
    """Called inside an evaluation loop's ``torch.no_grad()`` (test_atks.py wraps its own
    calls in ``torch.enable_grad()`` for this reason)."""
    model, x, y = setup
    attack = ATTACKS[name](model)
    torch.manual_seed(0)
    with torch.no_grad():
        adv = attack(x, y)
    assert_valid_output(adv, x, attack)
    torch.manual_seed(0)
    assert torch.equal(adv, attack(x, y))
    if name in OURS:  # inference mode is lifted as no_grad is, for MinimalEnsemble's members
        torch.manual_seed(0)  # too (its torchattacks CW needs autograd)
        with torch.inference_mode():
            assert torch.equal(attack(x, y), adv)


@pytest.mark.parametrize(("name", "dtype"), cases("label_dtype", ("int32", "uint8", "int16")))
def test_integer_label_dtypes(
    setup: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str, dtype: str
) -> None:
    """Labels of another integer dtype give the result of int64 labels."""
    model, x, y = setup
    attack = ATTACKS[name](model)
    torch.manual_seed(0)
    expected = attack(x, y)
    torch.manual_seed(0)
    assert torch.equal(attack(x, y.to(getattr(torch, dtype))), expected)
