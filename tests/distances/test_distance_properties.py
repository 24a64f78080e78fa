"""Property-based tests of every public distance (hypothesis): on random images of several kinds
(random, constant, dark, smooth, binary) and perturbations from 10⁻⁵ to 0.5 (dense, one pixel,
one channel), the float32 distance is ≥ 0, exactly +0 at x̃ = x, and within a stated tolerance
of the float64 distance of the same (rounded) inputs, on PyTorch and (all but LPIPS, which is
PyTorch-only) on JAX and, where it is installed, TensorFlow.

The tolerances say what float32 can promise for each distance:

* ℓ1, ℓ2, ℓ∞: sums of the exact differences, 10⁻⁶ relative;
* SSIM, MS-SSIM: formed from the moments of x̃ − x, 10⁻³ relative with no absolute floor
  (their denominators are at least C₂ = 9·10⁻⁴, and their single-pass variances round by a
  few 10⁻⁸). Formed as 1 minus an index near 1 they were off by up to 7×;
* CIEDE2000: L*a*b* of x̃ and of x are computed apart, so their difference keeps the absolute
  float32 resolution of L* ≈ 100 (an absolute 10⁻⁴ on these 16 px images);
* LPIPS (seeded random weights): the network's features of x̃ and x are computed apart too,
  an absolute 10⁻⁶.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.ndimage import uniform_filter

from tests.distances.test_distances_contract import NAMES, SIDE, _distance

pytestmark = pytest.mark.usefixtures("single_thread")

#: (relative, absolute) tolerance of the float32 value against float64, see the docstring.
TOLERANCE = {
    "l1": (1e-6, 0.0),
    "l2": (1e-6, 0.0),
    "linf": (1e-6, 0.0),
    "ssim": (1e-3, 0.0),
    "msssim": (1e-3, 0.0),
    "ciede2000": (1e-3, 1e-4),
    "lpips": (1e-3, 1e-6),
}
KINDS = ("random", "constant", "dark", "smooth", "binary")


HAS_TF = importlib.util.find_spec("tensorflow") is not None
NO_TF = pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (the tf extra)")


@functools.cache
def _jitted(name: str) -> Any:
    return jax.jit(_distance(name))


PATTERNS = ("dense", "pixel", "channel")


def _pair(name: str, kind: str, scale: float, pattern: str, seed: int) -> tuple[np.ndarray, ...]:
    """(x_adv, x) float32 arrays in [0, 1], two RGB images of the size ``name`` needs."""
    side = SIDE.get(name, 16)
    rng = np.random.default_rng(seed)
    x = rng.random((2, 3, side, side))
    if kind == "constant":
        x = np.broadcast_to(x[:, :, :1, :1], x.shape).copy()
    elif kind == "dark":
        x = 0.02 * x
    elif kind == "smooth":
        x = uniform_filter(x, (1, 1, 5, 5))
    elif kind == "binary":
        x = (x > 0.5).astype(np.float64)
    noise = scale * rng.standard_normal(x.shape)
    if pattern == "pixel":
        keep = np.zeros_like(x)
        keep[:, :, rng.integers(side), rng.integers(side)] = 1
        noise *= keep
    elif pattern == "channel":
        noise[:, 1:] = 0
    x_adv = np.clip(x + noise, 0, 1)
    return x_adv.astype(np.float32), x.astype(np.float32)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(KINDS),
    scale=st.sampled_from((1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5)),
    pattern=st.sampled_from(PATTERNS),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize(
    ("name", "backend"),
    [(name, "torch") for name in NAMES]
    + [(name, "jax") for name in NAMES if name != "lpips"]
    + [pytest.param(name, "tf", marks=NO_TF) for name in NAMES if name != "lpips"],
)
def test_float32_is_nonnegative_zero_at_identity_and_close_to_float64(
    name: str, backend: str, kind: str, scale: float, pattern: str, seed: int
) -> None:
    x_adv, x = _pair(name, kind, scale, pattern, seed)
    distance = _distance(name)
    a, b = torch.from_numpy(x_adv), torch.from_numpy(x)
    if backend == "jax":  # compiled once per shape; op by op, XLA would compile every operation
        compiled = _jitted(name)
        value: Any = np.asarray(compiled(jnp.asarray(x_adv), jnp.asarray(x)))
        at_identity = np.asarray(compiled(jnp.asarray(x), jnp.asarray(x)))
    elif backend == "tf":
        import tensorflow as tf

        value = distance(tf.constant(x_adv), tf.constant(x)).numpy()
        at_identity = distance(tf.constant(x), tf.constant(x)).numpy()
    else:
        value = distance(a, b).numpy()
        at_identity = distance(b, b).numpy()
    assert value.dtype == np.float32
    value = value.astype(np.float64)
    assert np.isfinite(value).all() and (value >= 0).all(), value
    assert (at_identity == 0).all() and not np.signbit(at_identity).any(), at_identity
    reference = distance(a.double(), b.double()).numpy()
    rtol, atol = TOLERANCE[name]
    np.testing.assert_allclose(value, reference, rtol=rtol, atol=atol)
