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


def test_alma_l2_reaches_the_exact_minimum_of_an_affine_model() -> None:
    model = _affine_model()
    gen = torch.Generator().manual_seed(1)
    x = (0.35 + 0.3 * torch.rand(24, 1, 8, 8, generator=gen)).double()  # far from the box
    with torch.no_grad():
        y = model(x).argmax(1)
    linear = model[1]
    exact = _closed_form_l2(linear.weight.detach().numpy(), linear.bias.detach().numpy(), x.numpy())
    result = alma(model, x, y, distance="l2", steps=1000)
    assert result.success.all()
    found = result.distances.numpy()
    assert np.all(found >= exact * (1 - 1e-6))  # nobody beats the exact minimum
    gaps = found / exact - 1
    assert np.median(gaps) < 0.02 and gaps.max() < 0.06, gaps


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
