"""``adversarial_training``: warm-up then attack epochs, a pluggable attack, the per-epoch log."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
import torchattacks

from alma_plugin.torchattacks import Lagrangian
from alma_plugin.training import EpochLog, adversarial_training
from tests.utils import tiny_mnist_cnn

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def loader(
    mnist_data: tuple[torch.Tensor, torch.Tensor],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = mnist_data
    return [(images[i : i + 64], labels[i : i + 64]) for i in range(0, 256, 64)]


def test_a_tiny_epoch_runs_in_seconds(loader: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    torch.manual_seed(0)
    model = tiny_mnist_cnn()
    lines: list[str] = []
    start = time.perf_counter()
    logs = adversarial_training(model, loader, attack=Lagrangian(model), epochs=2,
                                warmup_epochs=1, progress=False, log=lines.append)  # fmt: skip
    assert time.perf_counter() - start < 30
    assert [entry.adversarial for entry in logs] == [False, True]
    warmup, adversarial = logs
    assert math.isnan(warmup.mean_norm) and math.isnan(warmup.fooled)
    assert adversarial.mean_norm > 0 and 0 <= adversarial.fooled <= 1
    assert all(0 <= entry.clean_accuracy <= 1 and entry.loss > 0 for entry in logs)
    assert len(lines) == 2 and "fooled" in lines[1] and "warm-up" in lines[0]
    assert not model.training


def test_log_matches_a_recount(loader: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """mean ‖δ‖₂ and the fooled fraction, recomputed from what a recording attack returned."""
    torch.manual_seed(0)
    model = tiny_mnist_cnn()
    attack = Lagrangian(model, seed=0)
    seen: list[tuple[float, int, int]] = []

    def recording(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = attack(x, y)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
            fooled = correct & (model(adv).argmax(1) != y)
        seen.append((float((adv - x).flatten(1).norm(dim=1).sum()), int(fooled.sum()),
                     int(correct.sum())))  # fmt: skip
        return adv

    (entry,) = adversarial_training(model, loader, attack=recording, epochs=1, progress=False,
                                    log=None)  # fmt: skip
    n = sum(len(x) for x, _ in loader)
    assert entry.mean_norm == pytest.approx(sum(s[0] for s in seen) / n, rel=1e-5)
    assert entry.fooled == pytest.approx(sum(s[1] for s in seen) / sum(s[2] for s in seen))
    assert entry.clean_accuracy == pytest.approx(sum(s[2] for s in seen) / n)


def test_any_torchattacks_attack_plugs_in(loader: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    torch.manual_seed(0)
    model = tiny_mnist_cnn()
    pgd = torchattacks.PGD(model, eps=0.3, alpha=0.1, steps=2)
    (entry,) = adversarial_training(model, loader[:2], attack=pgd, epochs=1, progress=False,
                                    log=None)  # fmt: skip
    assert entry.adversarial and 0 < entry.mean_norm


def test_an_attack_on_a_wrapper_of_the_model_plugs_in(
    loader: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """The check that refuses an attack on a copy accepts one on a module holding the model (a
    normalising wrapper, as torchattacks users build)."""
    torch.manual_seed(0)
    model = tiny_mnist_cnn()
    wrapped = torch.nn.Sequential(torch.nn.Identity(), model)
    pgd = torchattacks.PGD(wrapped, eps=0.3, alpha=0.1, steps=2)
    (entry,) = adversarial_training(model, loader[:1], attack=pgd, epochs=1, progress=False,
                                    log=None)  # fmt: skip
    assert entry.adversarial


def test_deterministic_under_torch_seed(loader: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    def run() -> tuple[list[EpochLog], torch.Tensor]:
        torch.manual_seed(0)
        model = tiny_mnist_cnn()
        logs = adversarial_training(model, loader[:2], attack=Lagrangian(model), epochs=1,
                                    progress=False, log=None)  # fmt: skip
        return logs, model[-1].weight.detach().clone()

    (a,), weights_a = run()
    (b,), weights_b = run()
    assert torch.equal(weights_a, weights_b)
    assert (a.loss, a.mean_norm, a.fooled) == (b.loss, b.mean_norm, b.fooled)


def test_own_optimizer_and_scheduler(loader: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    model = tiny_mnist_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    adversarial_training(model, loader[:2], attack=None, epochs=1, optimizer=optimizer,
                         scheduler=scheduler, progress=False, log=None)  # fmt: skip
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1, "warmup_epochs": 2}, "warmup_epochs"),
        ({"epochs": 1, "attack": "pgd"}, "attack"),
        ({"epochs": 1, "scheduler": object()}, "scheduler"),
        ({"epochs": 1, "lr": math.inf}, "lr"),
        ({"epochs": 1, "lr": "0.1"}, "lr"),
        ({"epochs": 1, "lr": -1.0}, "lr"),
        ({"epochs": 1, "log": 5}, "log"),
        ({"epochs": 1, "progress": "no"}, "progress"),
        ({"epochs": 1, "optimizer": "adam"}, "optimizer"),
        ({"epochs": 1, "optimizer": "other model"}, "optimizer must hold parameters of model"),
        ({"epochs": 1, "attack": "on a copy"}, "attack must be built on the model being trained"),
        ({"epochs": 1, "optimizer": "own", "scheduler": 5}, "scheduler"),
        (
            {"epochs": 1, "optimizer": "own", "scheduler": "plateau"},
            r"scheduler.step\(\) is called with no argument .*ReduceLROnPlateau needs a metric",
        ),
    ],
)
def test_invalid_arguments_are_named(kwargs: dict[str, object], name: str) -> None:
    """Refused before any training (a bad log used to fail after a whole epoch)."""
    model = tiny_mnist_cnn()
    if kwargs.get("optimizer") == "other model":
        kwargs = {**kwargs, "optimizer": torch.optim.SGD(tiny_mnist_cnn().parameters(), lr=1)}
    elif kwargs.get("attack") == "on a copy":  # before: trained on a frozen copy's perturbations
        kwargs = {**kwargs, "attack": Lagrangian(copy.deepcopy(model))}
    elif kwargs.get("optimizer") == "own":
        optimizer = torch.optim.SGD(model.parameters(), lr=1)
        kwargs = {**kwargs, "optimizer": optimizer}
        if kwargs.get("scheduler") == "plateau":
            kwargs["scheduler"] = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    options: dict[str, object] = {"attack": None, "progress": False, "log": None, **kwargs}
    before = [p.clone() for p in model.parameters()]
    with pytest.raises((ValueError, TypeError), match=name):
        adversarial_training(model, [(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))],
                             **options)  # type: ignore[arg-type]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _quiet(model: torch.nn.Module, loader: object, **kwargs: object) -> list[EpochLog]:
    options: dict[str, object] = {"attack": None, "epochs": 1, "progress": False, "log": None}
    return adversarial_training(model, loader, **{**options, **kwargs})  # type: ignore[arg-type]


def test_loader_errors_are_clear(loader: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    model = tiny_mnist_cnn()
    with pytest.raises(ValueError, match="loader yielded no batch in epoch 1"):
        _quiet(model, [])  # was a log of zeros
    with pytest.raises(TypeError, match="loader must have a len"):
        _quiet(model, iter(loader[:1]))  # the documented cosine decay needs the step count
    own = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="loader yielded no batch in epoch 2"):
        _quiet(model, iter(loader[:1]), epochs=2, optimizer=own)  # spent after one epoch
    images, labels = loader[0]
    with pytest.raises(TypeError, match=r"loader must yield \(images, labels\) pairs"):
        _quiet(model, [(images, labels, labels)])
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        _quiet(model, [(images, labels.float())])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*\[10, "):
        _quiet(model, [(images, labels + 10)])  # was cross-entropy's IndexError
    for wrong in (lambda x, y: None, lambda x, y: x[:, :, :14], lambda x, y: x.double()):
        with pytest.raises(TypeError, match=r"attack\(images, labels\) must return a tensor"):
            _quiet(model, [(images, labels)], attack=wrong, warmup_epochs=0)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="NaN or Inf"):  # was trained on: every weight NaN
        _quiet(model, [(images, labels)], attack=lambda x, y: x / (x > 0), warmup_epochs=0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for broken in (torch.nan, torch.inf):  # before: trained on, every weight NaN (no attack)
        with pytest.raises(ValueError, match="loader's images contain NaN or Inf"):
            _quiet(model, [(torch.where(images > 0.5, broken, images), labels)], attack=None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        _quiet(model, [((images * 255).to(torch.uint8), labels)])  # was a bare matmul error
    for bad in (labels[:, None], labels[:5], torch.nn.functional.one_hot(labels, 10)):
        with pytest.raises(ValueError, match=r"labels of shape \(N,\)"):  # torch's own error
            _quiet(model, [(images, bad)])
    assert not model.training  # left in eval mode after every error


class _TupleOutput(torch.nn.Module):
    """A model returning (logits, features), as some feature-extracting models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_mnist_cnn()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x


def test_a_model_returning_a_tuple_is_named(
    loader: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Before: AttributeError 'tuple' object has no attribute 'shape', from the label check."""
    with pytest.raises(TypeError, match=r"model must return a tensor of logits.*got tuple"):
        _quiet(_TupleOutput(), loader[:1])


def test_empty_batches_are_skipped(loader: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """An empty batch among others made the epoch's loss NaN (0 · NaN) and cost an optimizer
    step; it is now skipped, so the log is that of the other batches."""
    images, labels = loader[0]
    torch.manual_seed(0)
    expected = _quiet(tiny_mnist_cnn(), [(images, labels)])[0]
    torch.manual_seed(0)
    got = _quiet(tiny_mnist_cnn(), [(images[:0], labels[:0]), (images, labels)])[0]
    assert got.loss == expected.loss and got.clean_accuracy == expected.clean_accuracy


def test_lr_with_an_optimizer_of_ones_own_is_refused() -> None:
    """It was ignored without a word, as a typo in it would have been."""
    model = tiny_mnist_cnn()
    own = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lr is the default optimizer's learning rate"):
        _quiet(model, [(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))], optimizer=own, lr=0.5)


def test_the_log_forward_runs_in_eval_mode_after_an_attack_in_training_mode(
    loader: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """torchattacks' ``set_model_training_mode(True, True, True)`` leaves the model in train
    mode after the attack: the epoch log's no-grad forward (documented as eval mode) ran with
    dropout and batch statistics, and updated the running statistics on it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.BatchNorm1d(16),
        torch.nn.Dropout(0.5), torch.nn.Linear(16, 10),
    )  # fmt: skip
    attack = torchattacks.PGD(model, eps=0.1, alpha=0.05, steps=1)
    attack.set_model_training_mode(model_training=True, batchnorm_training=True,
                                   dropout_training=True)  # fmt: skip
    modes: list[bool] = []
    model.register_forward_hook(
        lambda module, args, output: (
            modes.append(module.training) if not torch.is_grad_enabled() else None
        )
    )
    _quiet(model, loader[:2], attack=attack, warmup_epochs=0)
    assert modes == [False, False]  # one no-grad log forward per batch, in eval mode


def test_integer_labels_of_any_dtype_and_a_callers_no_grad(
    loader: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """int32 labels (the attacks take them) and a caller's torch.no_grad() train as usual."""
    torch.manual_seed(0)
    reference = _quiet(tiny_mnist_cnn(), loader[:1])[0].loss
    torch.manual_seed(0)
    with torch.no_grad():
        log = _quiet(tiny_mnist_cnn(), [(loader[0][0], loader[0][1].int())])
    assert log[0].loss == reference
    torch.manual_seed(0)
    model = tiny_mnist_cnn()
    with torch.inference_mode():  # was "element 0 of tensors does not require grad"
        log = _quiet(model, loader[:1])
    assert log[0].loss == reference


def test_a_model_without_parameters_is_named(
    loader: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    with pytest.raises(ValueError, match="model has no parameters to train"):
        _quiet(torch.nn.Flatten(), loader[:1])
