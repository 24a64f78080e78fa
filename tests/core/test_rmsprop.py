"""Step 9 of Algorithm 2 (core/rmsprop.py) against the three formulas written out in NumPy, on
every backend: PyTorch's fused operators must give the generic form's values to rounding."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alma_plugin.core.rmsprop import RMS_EPSILON, rmsprop_step


def _reference(
    x: np.ndarray, g: np.ndarray, v: np.ndarray, m: np.ndarray, eta: np.ndarray, beta: float,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    v = beta * v + (1 - beta) * g**2
    m = alpha * m + g / (np.sqrt(v) + RMS_EPSILON)
    return np.clip(x - eta.reshape(-1, 1, 1, 1) * m, 0, 1), v, m


def _state(seed: int, dtype: type = np.float64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (6, 2, 3, 3)
    x = rng.uniform(0, 1, shape)
    g = rng.normal(0, 1, shape) * 10.0 ** rng.integers(-6, 3, shape)  # six decades of |g|
    v = rng.uniform(0, 2, shape)
    m = rng.normal(0, 1, shape)
    eta = rng.uniform(0, 0.5, 6)
    eta[0] = 0.0  # a sample that does not move
    return [a.astype(dtype) for a in (x, g, v, m, eta)]


def _as_backend(backend: str, arrays: list[np.ndarray]) -> list[ep.Tensor]:
    if backend == "torch":
        return [ep.astensor(torch.from_numpy(a)) for a in arrays]
    if backend == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return [ep.astensor(jnp.asarray(a)) for a in arrays]
    return [ep.astensor(a) for a in arrays]


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_matches_the_formulas(backend: str, dtype: type) -> None:
    arrays = _state(0, dtype)
    tensors = _as_backend(backend, arrays)
    expected = _reference(*[a.astype(np.float64) for a in arrays], 0.9, 0.5)
    got = rmsprop_step(*tensors, decay=0.9, momentum=0.5)
    # JAX computes in float32 unless x64 is enabled: the float32 tolerance covers it
    wide = backend != "jax" and dtype == np.float64
    tolerance = 1e-12 if wide else 1e-5
    for name, value, reference in zip(("x", "v", "m"), got, expected, strict=True):
        np.testing.assert_allclose(value.numpy(), reference, rtol=tolerance, atol=tolerance,
                                   err_msg=name)  # fmt: skip


def test_step_leaves_its_arguments_alone_and_the_fixed_sample_fixed() -> None:
    tensors = _as_backend("torch", _state(1))
    before = [t.raw.clone() for t in tensors]
    x, _, _ = rmsprop_step(*tensors, decay=0.5, momentum=0.5)
    for t, b in zip(tensors, before, strict=True):
        assert torch.equal(t.raw, b)
    assert torch.equal(x.raw[0], before[0][0])  # η = 0: x̃ in the box stays where it is


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    decay=st.floats(0.0, 0.999),
    momentum=st.floats(0.0, 0.999),
    backend=st.sampled_from(["torch", "numpy"]),
)
def test_step_stays_in_the_box_and_agrees_across_backends(
    seed: int, decay: float, momentum: float, backend: str
) -> None:
    arrays = _state(seed)
    arrays[4] = arrays[4] * 100  # steps far beyond the box
    x, v, m = rmsprop_step(*_as_backend(backend, arrays), decay=decay, momentum=momentum)
    xs = x.numpy()
    assert ((xs >= 0) & (xs <= 1)).all()
    assert (v.numpy() >= 0).all()
    expected = _reference(*arrays, decay, momentum)
    np.testing.assert_allclose(xs, expected[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.numpy(), expected[2], rtol=1e-12, atol=1e-12)
