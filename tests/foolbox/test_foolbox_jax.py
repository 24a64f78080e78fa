"""The Foolbox adapter on a JAX model: the eagerpy core is framework-neutral."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
fb = pytest.importorskip("foolbox")

from alma_plugin.foolbox import CIEDE2000ALMA, L2ALMA, SSIMALMA, NormalisedDistance  # noqa: E402

K, D, PER_CLASS = 3, 8, 4


def _linear_problem() -> tuple:
    """A linear classifier z = W x + b (nearest class centre) and points near the centres."""
    rng = np.random.default_rng(0)
    centers = rng.uniform(0.3, 0.7, (K, D)).astype(np.float32)
    weights = jnp.asarray(10 * centers)
    bias = jnp.asarray(-5 * (centers**2).sum(1))

    def model(x: jax.Array) -> jax.Array:
        # Full float32 products also on a GPU, where JAX's default precision rounds the inputs
        # of a matmul to bfloat16-like mantissas: the float64 optimum below is this model's.
        flat = x.reshape(x.shape[0], -1)
        return jnp.matmul(flat, weights.T, precision=jax.lax.Precision.HIGHEST) + bias

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


def _colour_problem() -> tuple:
    """A linear colour classifier written for NCHW images, and the same model for NHWC."""
    rng = np.random.default_rng(1)
    x_first = rng.uniform(0.49, 0.51, (4, 3, 12, 12)).astype(np.float32)
    weights = jnp.asarray(rng.standard_normal((3 * 12 * 12, 3)).astype(np.float32) / 4)

    def channels_first(x: jax.Array) -> jax.Array:  # near the decision boundaries at 0.5
        return (x - 0.5).reshape(x.shape[0], -1) @ weights

    def channels_last(x: jax.Array) -> jax.Array:
        return channels_first(jnp.transpose(x, (0, 3, 1, 2)))

    x_first = jnp.asarray(x_first)
    y = channels_first(x_first).argmax(1)
    return channels_first, channels_last, x_first, jnp.transpose(x_first, (0, 2, 3, 1)), y


@pytest.mark.parametrize("cls, epsilon", [(CIEDE2000ALMA, 1.0), (SSIMALMA, 0.05)])
def test_channels_last_perceptual_attacks(cls: type, epsilon: float) -> None:
    """Foolbox's JAXModel is channels-last by default: the perceptual distance sees the images
    channels first, the caller gets NHWC back, and the attack is the one on the NCHW model."""
    first, last, x_first, x_last, y = _colour_problem()
    model_last = fb.JAXModel(last, bounds=(0, 1), data_format="channels_last")
    model_first = fb.JAXModel(first, bounds=(0, 1), data_format="channels_first")
    attack = cls(steps=10)
    raw, clipped, success = attack(model_last, x_last, y, epsilons=[None, epsilon])
    assert raw[0].shape == x_last.shape and clipped[1].shape == x_last.shape
    assert bool(success[0].any())
    distance = attack.for_model(model_last).distance
    assert distance == NormalisedDistance(cls.distance_name, data_format="channels_last")
    assert bool((distance(x_last, clipped[1]) <= epsilon).all())
    for k, xp in enumerate(clipped):  # every claimed success re-verifies
        assert bool((success[k] == (last(xp).argmax(1) != y)).all())
        assert float(xp.min()) >= 0 and float(xp.max()) <= 1
    reference, _, reference_success = attack(model_first, x_first, y, epsilons=[None, epsilon])
    np.testing.assert_allclose(np.transpose(np.asarray(raw[0]), (0, 3, 1, 2)), reference[0])
    assert bool((success == reference_success).all())
    # Foolbox's Repeated compares distances: the channels-last distance, same result.
    repeated, _, _ = attack.repeat(2)(model_last, x_last, y, epsilons=None)
    np.testing.assert_array_equal(np.asarray(repeated), np.asarray(raw[0]))
    # Wrong channel axis for the stated layout: a clear error before any model call.
    if cls is CIEDE2000ALMA:
        with pytest.raises(ValueError, match="channels_last"):
            attack(model_last, x_first, y, epsilons=None)


def test_jax_label_dtypes() -> None:
    model, x, y, _, _ = _linear_problem()
    fmodel = fb.JAXModel(model, bounds=(0, 1))
    attack = L2ALMA(steps=10)
    reference = np.asarray(attack.run(fmodel, x, y))
    for labels in (y.astype(jnp.uint8), y.astype(jnp.int16), np.asarray(y), np.asarray(y).tolist()):
        np.testing.assert_array_equal(np.asarray(attack.run(fmodel, x, labels)), reference)
        attack(fmodel, x, labels, epsilons=[0.0, None])


def test_jax_epsilons_are_checked() -> None:
    """Epsilons as a JAX array (1-d or 0-d) are checked as any other: a negative one is a
    ValueError naming epsilons, with or without a None next to it; valid ones still work."""
    model, x, y, _, _ = _linear_problem()
    fmodel = fb.JAXModel(model, bounds=(0, 1))
    attack = L2ALMA(steps=5)
    for epsilons in (jnp.array([0.1, -0.2]), jnp.array(-0.3), [None, jnp.array(-0.3)]):
        with pytest.raises(ValueError, match=r"epsilons must be .*>= 0.*got -0\.[23]"):
            attack(fmodel, x, y, epsilons=epsilons)
    _, clipped, success = attack(fmodel, x, y, epsilons=jnp.array([0.0, 0.3]))
    assert success.shape == (2, len(x)) and not bool(success[0].any())
    np.testing.assert_array_equal(np.asarray(clipped[0]), np.asarray(x))
