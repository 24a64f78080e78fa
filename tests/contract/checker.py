"""ONE checker for every row: :func:`check` runs a built row and asserts each invariant of
:data:`.core.INVARIANTS` on what it returned and on what it must have left untouched."""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Sequence
from typing import Any

import eagerpy as ep
import numpy as np
import torch
from torch import nn

from .core import (
    Case,
    Returned,
    Setup,
    dtype_of,
    flat,
    same_values,
    to_numpy,
    training_mode_warning,
)


def _snapshot_value(value: Any) -> dict[str, Any]:
    if isinstance(value, ep.Tensor):
        value = value.raw
    if isinstance(value, torch.Tensor):
        state = {
            "values": to_numpy(value),
            "dtype": value.dtype,
            "requires_grad": value.requires_grad,
            "grad": None if value.grad is None else to_numpy(value.grad),
            "inference": value.is_inference(),
        }
        if not value.is_inference():
            state["version"] = value._version
        return state
    if isinstance(value, list):
        return {"values": copy.deepcopy(value)}
    return {"values": to_numpy(value), "dtype": str(getattr(value, "dtype", type(value)))}


def _same_snapshot(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    problems = []
    for key in a:
        left, right = a[key], b.get(key)
        if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
            if not (
                isinstance(left, np.ndarray)
                and isinstance(right, np.ndarray)
                and left.shape == right.shape
                and same_values(left, right).all()
            ):
                problems.append(key)
        elif left != right:
            problems.append(f"{key} ({left!r} -> {right!r})")
    return problems


def _module_state(modules: Sequence[nn.Module], with_buffers: bool) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for i, module in enumerate(modules):
        for name, p in module.named_parameters():
            state[f"{i}.{name}"] = to_numpy(p)
            state[f"{i}.{name}.requires_grad"] = p.requires_grad
            state[f"{i}.{name}.grad"] = None if p.grad is None else to_numpy(p.grad)
        if with_buffers:
            for name, b in module.named_buffers():
                state[f"{i}.{name} (buffer)"] = to_numpy(b)
        for name, m in module.named_modules():
            state[f"{i}.{name or 'model'}.training"] = m.training
    return state


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _framework_type(value: Any) -> str:
    if isinstance(value, ep.Tensor):
        return f"eagerpy.{type(value).__name__}"
    if isinstance(value, torch.Tensor):
        return "torch.Tensor"
    module = type(value).__module__.split(".")[0]
    return {"jaxlib": "jax.Array", "jax": "jax.Array"}.get(module, type(value).__name__)


def check(case: Case) -> tuple[Setup, Any]:
    """Run one row and assert every invariant of :data:`INVARIANTS`; return the built setup
    and the call's result (None after an expected error)."""
    if not case.x64:
        return _check(case)
    import jax

    with jax.enable_x64(True):  # JAX's float64 rows: float64 arrays need it, to the end
        return _check(case)


def _check(case: Case) -> tuple[Setup, Any]:
    torch.manual_seed(0)  # rows whose entry point draws from the global RNG (seed=None)
    setup = case.build()
    caller_before = {k: _snapshot_value(v) for k, v in setup.caller.items()}
    model_before = _module_state(setup.modules, not setup.buffers_may_change)
    repr_before = repr(setup.attack) if setup.attack is not None else None
    error: BaseException | None = None
    result: Any = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = setup.run()
        except Exception as raised:  # noqa: BLE001 - judged below
            error = raised

    # outcome
    expect = case.expect
    if error is not None:
        assert expect.errors and isinstance(error, expect.errors), (
            f"{case.id}: unexpected {type(error).__name__}: {error}"
        )
        assert re.search(expect.match, str(error)), (
            f"{case.id}: the {type(error).__name__} message does not name {expect.match!r}: {error}"
        )
    else:
        assert expect.result_ok, (
            f"{case.id}: expected a {'/'.join(e.__name__ for e in expect.errors)} naming "
            f"{expect.match!r}, got a result"
        )

    # warnings
    category = training_mode_warning()
    training = [w for w in caught if issubclass(w.category, category)]
    if case.warns:
        assert training, f"{case.id}: no {category.__name__} for a model in training mode"
    else:
        assert not training, f"{case.id}: unexpected warning {training[0].message}"

    # results
    if error is None:
        claims = [_check_returned(case.id, setup, returned) for returned in setup.collect(result)]
        claims = [c for c in claims if c is not None and c.size]
        if expect.succeeds and claims:
            assert any(c.any() for c in claims), f"{case.id}: no sample claimed a success"
        if setup.sanity is not None:
            setup.sanity()
        _check_determinism(case, setup, result)

    # caller
    for key, before in caller_before.items():
        problems = _same_snapshot(before, _snapshot_value(setup.caller[key]))
        assert not problems, f"{case.id}: the caller's {key} changed: {problems}"
    # model
    after = _module_state(setup.modules, not setup.buffers_may_change)
    changed = [k for k in model_before if _same_snapshot({k: model_before[k]}, {k: after.get(k)})]
    assert not changed and len(after) == len(model_before), (
        f"{case.id}: the model changed: {changed or sorted(set(after) ^ set(model_before))}"
    )
    # attack
    if setup.attack is not None:
        text = repr(setup.attack)
        assert text == repr_before, f"{case.id}: repr changed: {repr_before!r} -> {text!r}"
        if setup.check_address:
            assert not _ADDRESS.search(text), f"{case.id}: repr holds an address: {text}"
    return setup, result


def _check_determinism(case: Case, setup: Setup, result: Any) -> None:
    """The row built again (same seeds, the global one included; fresh model and tensors)
    returns bitwise the same."""
    torch.manual_seed(0)
    again = case.build()
    first = [to_numpy(r.tensor) for r in setup.collect(result)]
    second = [to_numpy(r.tensor) for r in again.collect(again.run())]
    assert len(first) == len(second), f"{case.id}: not deterministic (another result)"
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        same = a.shape == b.shape and ((a == b) | (np.isnan(a) & np.isnan(b))).all()
        assert same, f"{case.id}: not deterministic: returned tensor {i} differs on a re-run"


def _check_returned(row: str, setup: Setup, r: Returned) -> np.ndarray | None:
    """Assert the invariants on one returned tensor; return its claimed successes, if any."""
    where = f"{row}: {r.name}"
    tensor = r.tensor
    inputs = setup.inputs
    n = len(to_numpy(inputs)) if not isinstance(inputs, list) else len(inputs)
    # types
    assert _framework_type(tensor) == _framework_type(inputs), (
        f"{where}: type {_framework_type(tensor)}, the caller passed {_framework_type(inputs)}"
    )
    values = to_numpy(tensor)
    raw = tensor.raw if isinstance(tensor, ep.Tensor) else tensor
    # graph
    if isinstance(raw, torch.Tensor) and r.graph_free:
        assert raw.grad_fn is None and not raw.requires_grad, f"{where}: carries an autograd graph"
    # device: every returned torch tensor (results, distances, flags) where the inputs are
    raw_inputs = inputs.raw if isinstance(inputs, ep.Tensor) else inputs
    if isinstance(raw, torch.Tensor) and isinstance(raw_inputs, torch.Tensor):
        assert raw.device == raw_inputs.device, (
            f"{where}: on {raw.device}, the caller's inputs on {raw_inputs.device}"
        )
    if r.kind == "per-sample":
        assert values.shape == (n,), f"{where}: shape {values.shape}, expected ({n},)"
        return None
    if r.kind == "distance":
        assert values.shape == (n,), f"{where}: shape {values.shape}, expected ({n},)"
        assert "float" in str(dtype_of(tensor)), f"{where}: dtype {dtype_of(tensor)}"
        assert r.nan is not None
        assert np.isnan(values[r.nan]).all(), (
            f"{where}: samples with NaN/Inf values must give NaN, got {values[r.nan]}"
        )
        good = values[~r.nan]
        assert np.isfinite(good).all() and (good >= 0).all(), f"{where}: {values}"
        if r.zero:
            assert np.abs(good).max(initial=0) <= 1e-3, f"{where}: D(x, x) = {good}"
        return None
    x_np = to_numpy(inputs)
    assert values.shape == x_np.shape, f"{where}: shape {values.shape}, inputs {x_np.shape}"
    assert dtype_of(tensor) == dtype_of(inputs), (
        f"{where}: dtype {dtype_of(tensor)}, inputs {dtype_of(inputs)}"
    )
    # finite
    assert np.isfinite(values).all(), f"{where}: non-finite values in samples " + str(
        np.flatnonzero(~np.isfinite(flat(values)).all(1)).tolist()
    )
    # bounds
    # exactly, as Foolbox's own check does (inputs a rounding error outside are clipped in)
    lower, upper = setup.bounds
    if values.size:
        assert values.min() >= lower and values.max() <= upper, (
            f"{where}: values in [{values.min()!r}, {values.max()!r}] outside {setup.bounds}"
        )
    # claims
    if r.claimed is not None:
        claimed = np.asarray(r.claimed, dtype=bool)
        assert claimed.shape == (n,), f"{where}: success shape {claimed.shape}"
        if r.verify is not None and claimed.any():
            verified = r.verify(tensor)
            bad = np.flatnonzero(claimed & ~verified)
            assert not len(bad), f"{where}: claimed successes {bad.tolist()} do not re-verify"
        if r.unchanged:
            same = flat(same_values(values, x_np)).all(1)
            bad = np.flatnonzero(~claimed & ~same)
            assert not len(bad), f"{where}: unsuccessful samples {bad.tolist()} were changed"
    for name, reported, recomputed, rtol in r.agree:
        both_inf = np.isinf(reported) & np.isinf(recomputed) & (reported == recomputed)
        with np.errstate(invalid="ignore"):  # inf - inf
            close = np.abs(reported - recomputed) <= rtol * (1 + np.abs(recomputed))
        bad = np.flatnonzero(~(both_inf | close))
        assert not len(bad), (
            f"{where}: reported {name} {reported[bad]} != recomputed {recomputed[bad]}"
        )
    for name, measured, limit in r.at_most:
        bad = np.flatnonzero(~(measured <= limit + 1e-6))
        assert not len(bad), f"{where}: {name} violated: {measured[bad]} > {limit[bad]}"
    return None if r.claimed is None else np.asarray(r.claimed, dtype=bool)
