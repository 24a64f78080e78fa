"""The Foolbox adapter on a JAX model: the eagerpy core is framework-neutral."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
fb = pytest.importorskip("foolbox")

from alma_plugin.foolbox import L2ALMA  # noqa: E402

K, D, PER_CLASS = 3, 8, 4


def _linear_problem() -> tuple:
    """A linear classifier z = W x + b (nearest class centre) and points near the centres."""
    rng = np.random.default_rng(0)
    centers = rng.uniform(0.3, 0.7, (K, D)).astype(np.float32)
    weights = jnp.asarray(10 * centers)
    bias = jnp.asarray(-5 * (centers**2).sum(1))

    def model(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1) @ weights.T + bias

    y = np.repeat(np.arange(K), PER_CLASS)
    x = np.clip(centers[y] + 0.02 * rng.standard_normal((len(y), D)), 0, 1).astype(np.float32)
    return model, jnp.asarray(x), jnp.asarray(y), np.asarray(weights), np.asarray(bias)


def test_jax_model_minimal_l2_matches_the_analytic_optimum() -> None:
    model, x, y, w, b = _linear_problem()
    fmodel = fb.JAXModel(model, bounds=(0, 1))
    assert bool((model(x).argmax(1) == y).all())
    adv, clipped, success = L2ALMA(steps=100)(fmodel, x, y, epsilons=[None, 0.3])
    assert isinstance(adv[0], jax.Array) and success.shape == (2, len(x))
    assert bool(success[0].all())
    found = np.asarray(fb.distances.l2(x, adv[0]))
    # Distance to the nearest decision boundary of a linear model (the box is not active).
    z = np.asarray(x) @ w.T + b
    yy = np.asarray(y)
    optimum = np.full(len(yy), np.inf)
    for j in range(K):
        other = yy != j
        gap = (z[other, yy[other]] - z[other, j]) / np.linalg.norm(w[yy[other]] - w[j], axis=1)
        optimum[other] = np.minimum(optimum[other], gap)
    assert (found >= optimum * (1 - 1e-3)).all()
    assert (found <= optimum * 1.05).all(), (found / optimum).max()
    assert bool((fb.distances.l2(x, clipped[1]) <= 0.3 + 1e-5).all())
    assert float(clipped[1].min()) >= 0 and float(clipped[1].max()) <= 1


def test_jax_targeted_and_other_bounds() -> None:
    model, x, y, _, _ = _linear_problem()
    fmodel = fb.JAXModel(model, bounds=(-1, 1), preprocessing=dict(mean=-1.0, std=2.0))
    targets = (y + 1) % K
    criterion = fb.criteria.TargetedMisclassification(targets)
    adv, _, success = L2ALMA(steps=100)(fmodel, 2 * x - 1, criterion, epsilons=None)
    assert bool(success.all())
    assert float(adv.min()) >= -1 and float(adv.max()) <= 1
    assert bool((model((adv + 1) / 2).argmax(1) == targets).all())
