"""Against an exact solver: for an affine classifier the minimal ℓ2 adversarial perturbation has a
closed form, min_j (z_y − z_j) / ‖w_y − w_j‖₂ (when the box constraint stays inactive)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin import alma


def _closed_form_l2(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    logits = flat @ weight.T + bias
    label = logits.argmax(1)
    distances = np.full(len(x), np.inf)
    for j in range(weight.shape[0]):
        gap = logits[np.arange(len(x)), label] - logits[:, j]
        norm = np.linalg.norm(weight[label] - weight[j], axis=1)
        candidate = np.where(label == j, np.inf, gap / np.maximum(norm, 1e-12))
        distances = np.minimum(distances, candidate)
    return distances


def _affine_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6)).double().eval()
    with torch.no_grad():
        model[1].weight.mul_(4.0)
    return model


@pytest.mark.parametrize(
    "smooth_max, worst, above_1_percent",
    [(0.0, 0.06, 24), (None, 0.15, 4)],  # Algorithm 2's gradient; the default κ = 0.1
)
def test_alma_l2_reaches_the_exact_minimum_of_an_affine_model(
    smooth_max: float | None, worst: float, above_1_percent: int
) -> None:
    """Measured (float64): with DLR⁺'s gradient the median gap is 1.4 % (14 of 24 samples above
    1 %, the worst 5.5 %); with the smoothed max 0.01 % (3 above 1 %, the worst 12 %: its
    stationary point weighs the classes tied at the boundary, so it can settle a little off
    the exact minimum on a sample where two classes are close)."""
    model = _affine_model()
    gen = torch.Generator().manual_seed(1)
    x = (0.35 + 0.3 * torch.rand(24, 1, 8, 8, generator=gen)).double()  # far from the box
    with torch.no_grad():
        y = model(x).argmax(1)
    linear = model[1]
    exact = _closed_form_l2(linear.weight.detach().numpy(), linear.bias.detach().numpy(), x.numpy())
    result = alma(model, x, y, distance="l2", steps=1000, smooth_max=smooth_max)
    assert result.success.all()
    found = result.distances.numpy()
    assert np.all(found >= exact * (1 - 1e-6))  # nobody beats the exact minimum
    gaps = found / exact - 1
    assert np.median(gaps) < 0.02 and gaps.max() < worst, gaps
    assert (gaps > 0.01).sum() <= above_1_percent, gaps


def test_jax_model_through_eagerpy() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    model = _affine_model()
    weight = jnp.asarray(model[1].weight.detach().numpy(), dtype=jnp.float32)
    bias = jnp.asarray(model[1].bias.detach().numpy(), dtype=jnp.float32)

    def jax_model(inputs: jax.Array) -> jax.Array:
        return inputs.reshape(inputs.shape[0], -1) @ weight.T + bias

    rng = np.random.default_rng(0)
    # the contract table's (4, 1, 8, 8) float32 batch: JAX compiles each primitive per shape
    x = jnp.asarray(0.35 + 0.3 * rng.random((4, 1, 8, 8)), dtype=jnp.float32)
    y = jnp.argmax(jax_model(x), axis=1)
    result = alma(jax_model, x, y, distance="l2", steps=300)
    assert isinstance(result.adversarials, jax.Array)
    assert bool(result.success.all())
    assert bool((jnp.argmax(jax_model(result.adversarials), axis=1) != y).all())
    exact = _closed_form_l2(np.asarray(weight), np.asarray(bias), np.asarray(x))
    np.testing.assert_allclose(np.asarray(result.distances), exact, rtol=0.05)
