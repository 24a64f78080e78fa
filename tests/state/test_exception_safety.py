"""Exception safety, for every entry point (``alma``, ``alma_prox``, ``lagrangian``,
``adversarial_training``, the Foolbox classes, the torchattacks classes, ``MinimalEnsemble``) on
tiny models: an error (or ``KeyboardInterrupt``) raised by the model, the success predicate or the
criterion reaches the caller unchanged (the same object, its traceback down to the raising
frame), and the model (per-module train/eval flags, ``requires_grad``, the ``.grad`` tensors,
hooks, attributes) and torch's process-wide settings are as before.

The contract table (tests/test_contract.py) already checks the module state after a model that
raises midway (``RuntimeError``, training mode); this file adds what it does not reach."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import foolbox as fb
import pytest
import torch
import torchattacks
from torch import nn

import alma_plugin as ap
from alma_plugin.foolbox import L2ALMA, LinfALMAProx
from alma_plugin.torchattacks import ALMA, Lagrangian, MinimalEnsemble
from alma_plugin.training import adversarial_training

from .common import (
    CLASSES,
    ENTRIES,
    HOOKS,
    SIZE,
    Tiny,
    X,
    Y,
    changed,
    fmodel,
    model_state,
    prepared,
    process_state,
    raised_from,
)

# --- exception safety -----------------------------------------------------------------------


_MODES: dict[str, Callable[[], Any]] = {
    "grad": torch.enable_grad,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


def _in_mode(mode: str) -> bool:
    return {
        "grad": torch.is_grad_enabled() and not torch.is_inference_mode_enabled(),
        "no_grad": not torch.is_grad_enabled() and not torch.is_inference_mode_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
    }[mode]


@pytest.mark.parametrize("mode", list(_MODES))
@pytest.mark.parametrize("kind", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_model_error_reaches_the_caller_unchanged_and_nothing_is_left_changed(
    entry: str, kind: type[BaseException], mode: str
) -> None:
    """Also under the caller's torch.no_grad() / inference_mode(), which the attacks lift for
    the call: the caller's mode is back when the error reaches it."""
    error = kind("raised by the model on its 3rd forward")
    model = prepared(Tiny(fail_at=3, error=error))
    globals_before, model_before = process_state(), model_state(model)
    with warnings.catch_warnings(), _MODES[mode]():
        warnings.simplefilter("ignore")
        with pytest.raises(kind) as info:
            ENTRIES[entry](model)
        assert _in_mode(mode)
    assert info.value is error, f"replaced by {type(info.value).__name__}: {info.value}"
    assert raised_from(info.value, "forward")
    assert model.calls == 3
    assert changed(globals_before, process_state()) == []
    assert changed(model_before, model_state(model)) == []


@pytest.mark.parametrize("fail_at", [3, 7], ids=["in-the-attack", "in-the-update"])
@pytest.mark.parametrize("kind", [RuntimeError, KeyboardInterrupt])
def test_training_error_reaches_the_caller_unchanged(
    kind: type[BaseException], fail_at: int
) -> None:
    """Forwards 1-5 are the attack's (Lagrangian, 5 steps), 6 judges the batch, 7 is the update's:
    no optimizer step has run, so only the documented eval mode differs from before."""
    error = kind("raised by the model")
    model = Tiny(fail_at=fail_at, error=error).eval()
    model.linear.bias.grad = torch.full_like(model.linear.bias, 7.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    globals_before, model_before = process_state(), model_state(model)
    with pytest.raises(kind) as info:
        adversarial_training(
            model,
            [(X, Y)],
            attack=Lagrangian(model, seed=0),
            epochs=1,
            optimizer=optimizer,
            progress=False,
            log=None,
        )
    assert info.value is error and raised_from(info.value, "forward")
    assert changed(globals_before, process_state()) == []
    assert changed(model_before, model_state(model)) == []  # eval before and after
    assert optimizer.state == {} and optimizer.param_groups[0]["lr"] == 0.1


def test_training_leaves_the_optimizer_and_frozen_parameters_alone() -> None:
    """The loop steps the caller's optimizer and nothing else of it: learning rate unchanged
    without a scheduler, state only for its parameters; a frozen parameter stays frozen, without
    a .grad; the attack (which runs between the updates) neither zeroes nor keeps gradients."""
    model = Tiny().eval()
    model.linear.bias.requires_grad_(False)
    optimizer = torch.optim.SGD([model.linear.weight], lr=0.01, momentum=0.9)
    for attack in (Lagrangian(model, seed=0), torchattacks.PGD(model, eps=0.1, steps=2)):
        adversarial_training(
            model,
            [(X, Y)] * 2,
            attack=attack,
            epochs=1,
            optimizer=optimizer,
            progress=False,
            log=None,
        )
        assert optimizer.param_groups[0]["lr"] == 0.01
        assert list(optimizer.state) == [model.linear.weight]
        assert not model.linear.bias.requires_grad and model.linear.bias.grad is None
        assert not any(m.training for m in model.modules())
        assert model_state(model)[".hooks"] == (0,) * len(HOOKS)


class _Failing(Exception):
    pass


def _failing_predicate(error: BaseException) -> Callable[[Any, Any], Any]:
    calls = [0]

    def is_adversarial(inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] >= 2:
            raise error
        return logits.argmax(1) != Y

    return is_adversarial


class _FailingCriterion(fb.criteria.Misclassification):
    def __init__(self, labels: torch.Tensor, error: BaseException) -> None:
        super().__init__(labels)
        self.error, self.calls = error, 0

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        self.calls += 1
        if self.calls >= 2:
            raise self.error
        return super().__call__(perturbed, outputs)


JUDGES: dict[str, Callable[[nn.Module, BaseException], Any]] = {
    "alma": lambda m, e: ap.alma(m, X, Y, steps=10, is_adversarial=_failing_predicate(e)),
    "alma_prox": lambda m, e: ap.alma_prox(m, X, Y, steps=10, is_adversarial=_failing_predicate(e)),
    "foolbox-L2ALMA": lambda m, e: L2ALMA(steps=10)(
        fmodel(m), X, _FailingCriterion(Y, e), epsilons=None
    ),
    "foolbox-LinfALMAProx": lambda m, e: LinfALMAProx(steps=10)(
        fmodel(m), X, _FailingCriterion(Y, e), epsilons=None
    ),
}


@pytest.mark.parametrize("kind", [_Failing, KeyboardInterrupt])
@pytest.mark.parametrize("entry", list(JUDGES))
def test_success_predicate_error_reaches_the_caller_unchanged(
    entry: str, kind: type[BaseException]
) -> None:
    error = kind("raised by the judge")
    model = prepared(Tiny())
    globals_before, model_before = process_state(), model_state(model)
    with pytest.raises(kind) as info:
        JUDGES[entry](model, error)
    assert info.value is error
    assert changed(globals_before, process_state()) == []
    assert changed(model_before, model_state(model)) == []


class _Lazy(nn.Module):
    """A lazy model that has not run yet (uninitialised parameters), raising ``error`` on its
    first forward, before its lazy layer materialises."""

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(CLASSES))
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        return self.net(x)


LAZY: dict[str, Callable[[nn.Module], Any]] = {
    "ALMA": lambda m: ALMA(m, steps=5)(X, Y),
    "Lagrangian": lambda m: Lagrangian(m, seed=0)(X, Y),
    "MinimalEnsemble": lambda m: MinimalEnsemble([ALMA(m, steps=5)])(X, Y),
}


@pytest.mark.parametrize("entry", list(LAZY))
def test_error_before_a_lazy_model_materialises_reaches_the_caller_unchanged(entry: str) -> None:
    """The torchattacks classes restore ``requires_grad`` after the call; a lazy parameter that
    never materialised refuses ``requires_grad_``, and that ValueError used to replace the
    caller's error (here the model's; also the attack's own input checks, and Ctrl-C)."""
    for error in (RuntimeError("raised by the model"), KeyboardInterrupt()):
        model = _Lazy(error).eval()
        hooks = [len(m._forward_pre_hooks) for m in model.modules()]  # the lazy layer's own
        with pytest.raises(type(error)) as info:
            LAZY[entry](model)
        assert info.value is error
        assert [len(m._forward_pre_hooks) for m in model.modules()] == hooks
    with pytest.raises(ValueError, match="inputs must lie within bounds"):
        ALMA(_Lazy().eval(), steps=5)(X + 2, Y)


class _ClipsItsWeights(nn.Module):
    """Clips a parameter in place in its forward: fine under torch.no_grad(), an in-place write
    into a leaf that requires grad under autograd (PyTorch's RuntimeError)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * SIZE, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fc.weight.clamp_(-0.05, 0.05)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(
    "entry",
    ["alma", "alma-bounds-255", "lagrangian", "alma_prox", "foolbox-L2ALMA", "torchattacks-ALMA"],
)
def test_a_model_writing_into_its_parameter_is_not_blamed_on_its_input(entry: str) -> None:
    """PyTorch's leaf-in-place error names no tensor: the attack may explain it (the iterate is
    such a leaf with bounds (0, 1)) but must not say that the model wrote into its input when
    it wrote into a parameter: the error is PyTorch's, or a ValueError naming both causes."""
    model = _ClipsItsWeights().eval()
    call = {
        "alma": lambda: ap.alma(model, X, Y, steps=3),
        "alma-bounds-255": lambda: ap.alma(model, X * 255, Y, steps=3, bounds=(0, 255)),
        "lagrangian": lambda: ap.lagrangian(model, X, Y, seed=0),
        "alma_prox": lambda: ap.alma_prox(model, X, Y, steps=3),
        "foolbox-L2ALMA": lambda: L2ALMA(steps=3)(fmodel(model), X, Y, epsilons=None),
        "torchattacks-ALMA": lambda: ALMA(model, steps=3)(X, Y),
    }[entry]
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    if isinstance(info.value, ValueError):
        assert "parameter" in str(info.value), str(info.value)
    else:
        assert "leaf Variable that requires grad" in str(info.value)


@pytest.fixture
def unusual_globals() -> Iterator[None]:
    dtype, precision = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_float32_matmul_precision("medium")
    yield
    torch.set_default_dtype(dtype)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_float32_matmul_precision(precision)


@pytest.mark.parametrize(
    "entry",
    ["alma-l2", "alma-ssim", "alma_prox", "foolbox-L2ALMA", "torchattacks-ALMA", "lagrangian"],
)
def test_unusual_global_settings_are_kept(unusual_globals: None, entry: str) -> None:
    """float64 default dtype, deterministic algorithms, reduced matmul precision: kept as set."""
    model = Tiny().float().eval()
    before = process_state()
    ENTRIES[entry](model)
    assert changed(before, process_state()) == []
