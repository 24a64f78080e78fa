"""The contract's vocabulary: the invariants, what a row expects (:class:`Expect`), what a
built row is (:class:`Setup`) and returns (:class:`Returned`), and conversions to NumPy."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import eagerpy as ep
import numpy as np
import torch
from torch import nn

HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None

INVARIANTS = (
    "outcome: the row's clear error (type, message naming the argument) or a result",
    "warnings: TrainingModeWarning exactly when alma/alma_prox get a model in training mode",
    "types: each returned tensor has the caller's framework, shape, dtype and device",
    "finite: returned tensors are finite (distances: NaN exactly for NaN/Inf samples)",
    "bounds: returned inputs lie within the bounds (distances: >= 0, 0 at x_adv = x)",
    "claims: every claimed success re-verifies on the returned tensor (finite logits), "
    "reported distances/norms/APSR match, unclaimed samples come back unchanged, eps respected",
    "graph: returned tensors carry no autograd graph",
    "caller: the caller's tensors keep values, dtype, requires_grad and .grad",
    "model: parameters, buffers, .grad, requires_grad and every train/eval flag untouched",
    "attack: repr free of memory addresses and identical before and after the call",
    "determinism: the row built again (same seeds) returns bitwise the same tensors",
)


def training_mode_warning() -> type[Warning]:
    """The package's public ``TrainingModeWarning``."""
    from alma_plugin import TrainingModeWarning

    return TrainingModeWarning


# --------------------------------------------------------------------------------------------
# Expectations, rows and outcomes


@dataclass(frozen=True)
class Expect:
    """``errors`` empty: a result is required. Otherwise an error of ``errors`` whose message
    matches ``match`` (the argument's name) is required, or accepted when ``result_ok``. A
    result that claims successes must claim at least one (of a non-empty batch) unless
    ``succeeds`` is False: an attack that never succeeds would pass every other invariant."""

    errors: tuple[type[BaseException], ...] = ()
    match: str = ""
    result_ok: bool = True
    succeeds: bool = True


OK = Expect()
CLEAR = (ValueError, TypeError)


def raises(match: str, *errors: type[BaseException]) -> Expect:
    return Expect(errors or CLEAR, match, False)


def either(match: str, *errors: type[BaseException], succeeds: bool = True) -> Expect:
    """A valid result, or a clear error naming the argument: both honour the contract."""
    return Expect(errors or CLEAR, match, True, succeeds)


#: A result, of which no success is required: a model that is NaN beyond a small radius (the
#: attack may not reach an adversarial inside it), or ε = 0 (nothing is adversarial within it).
NO_SUCCESS_NEEDED = Expect(succeeds=False)


@dataclass
class Returned:
    """One tensor an entry point returned, and what the entry point claims about it.

    kind "input": an (adversarial) input batch (N, ...) of the caller's type, shape and dtype.
    kind "distance": per-sample distances (N,), NaN exactly where ``nan`` is True.
    """

    name: str
    tensor: Any
    kind: str = "input"
    claimed: np.ndarray | None = None  # (N,) samples reported successful
    verify: Callable[[Any], np.ndarray] | None = None  # re-evaluated success on ``tensor``
    unchanged: bool = True  # unclaimed samples must equal the clean inputs
    agree: list[tuple[str, np.ndarray, np.ndarray, float]] = field(default_factory=list)
    at_most: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    graph_free: bool = True
    nan: np.ndarray | None = None  # distances: samples that must be NaN
    zero: bool = False  # distances: every finite value must be ~0 (D(x, x))


@dataclass
class Setup:
    """A built row: the call, how to read its result, and what it must leave untouched."""

    run: Callable[[], Any]
    collect: Callable[[Any], list[Returned]]
    inputs: Any  # the clean input batch, as the caller passed it
    bounds: tuple[float, float] = (0.0, 1.0)
    caller: dict[str, Any] = field(default_factory=dict)
    modules: list[nn.Module] = field(default_factory=list)
    attack: Any = None
    check_address: bool = False  # the attack's repr must hold no memory address (Foolbox)
    buffers_may_change: bool = False  # batch norm in training mode (documented)
    sanity: Callable[[], None] | None = None  # asserts the row exercised what it claims to


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], Setup]
    expect: Expect = OK
    warns: bool = False
    x64: bool = False  # built and run with JAX's 64-bit types enabled (its float64 rows)


# --------------------------------------------------------------------------------------------
# Conversions


def to_numpy(tensor: Any) -> np.ndarray:
    """float64 (or bool/int) NumPy copy of a torch / JAX / eagerpy / NumPy tensor."""
    if isinstance(tensor, ep.Tensor):
        tensor = tensor.raw
    if isinstance(tensor, torch.Tensor):
        t = tensor.detach()
        if t.dtype.is_floating_point:
            t = t.to(torch.float64)
        return t.cpu().numpy().copy()
    array = np.asarray(tensor)
    if array.dtype.kind == "f" or "float" in str(array.dtype):
        return array.astype(np.float64)
    return array.copy()


def dtype_of(tensor: Any) -> Any:
    return (tensor.raw if isinstance(tensor, ep.Tensor) else tensor).dtype


def flat(a: np.ndarray) -> np.ndarray:
    """(N, everything else), also for N = 0."""
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:])))


def same_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-element equality where NaN equals NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b


def deferred(make: Callable[[], Any]) -> tuple[Any, Callable[[], Any]]:
    """(instance or None, getter): a constructor error is raised by the row's call, where the
    checker judges it, not while building the row."""
    try:
        instance = make()
    except Exception as error:  # noqa: BLE001 - re-raised by the getter
        captured = error

        def fail() -> Any:
            raise captured

        return None, fail
    return instance, lambda: instance


def targeted_by_label(attack: Any, targeted: bool) -> Any:
    if targeted:
        attack.set_mode_targeted_by_label(quiet=True)
    return attack
