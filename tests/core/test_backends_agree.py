"""One algorithm, every backend: the same affine model and inputs in float64 on PyTorch, JAX
(64-bit types enabled) and TensorFlow give the same attack, to rounding. The core runs once, on
eagerpy tensors, but each framework supplies its own primitives (the sub-gradient of |·| and of
max at ties, reductions, sorting in the exact prox, the ℓ2 norm's safe square root at 0); a
primitive that differs shows here as a different iterate, step after step. Float64 and an
affine model keep the comparison exact up to the frameworks' reduction orders (≈ 1e-15 per
step; measured after 50 steps: ≤ 8e-10, except ALMA prox ℓ∞ on TensorFlow, 4e-8, whose
oneDNN products round otherwise and whose prox steps are piecewise), below the 1e-6 asserted:
a gradient scaled by 1 + 1e-6 on TensorFlow alone fails 3 of its 7 cases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from alma_plugin import alma, alma_prox, lagrangian

pytestmark = pytest.mark.usefixtures("single_thread")

RNG = np.random.default_rng(0)
WEIGHTS = RNG.standard_normal((16, 4)) * 2  # (features, K): a 4-class linear classifier
BIAS = RNG.standard_normal(4) * 0.1
IMAGES = RNG.uniform(0.3, 0.7, (6, 1, 4, 4))
# a per-pixel 3-class segmenter: class k's logit is the tangent at u_k of 20·u²
POINTS = np.array([-0.05, 0.0, 0.05])
SCENES = RNG.uniform(0.45, 0.55, (2, 1, 5, 5))
TOLERANCE = 1e-6


def classifier(framework: str) -> Callable[[Any], Any]:
    if framework == "torch":
        weights, bias = torch.from_numpy(WEIGHTS), torch.from_numpy(BIAS)
        return lambda x: x.flatten(1) @ weights + bias
    if framework == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(WEIGHTS) + jnp.asarray(BIAS)
    tf = pytest.importorskip("tensorflow")
    return lambda x: tf.reshape(x, (-1, 16)) @ tf.constant(WEIGHTS) + tf.constant(BIAS)


def segmenter(framework: str) -> Callable[[Any], Any]:
    slopes = (40 * POINTS).reshape(1, 3, 1, 1)
    intercepts = (-20 * POINTS**2).reshape(1, 3, 1, 1)
    if framework == "tf":
        tf = pytest.importorskip("tensorflow")
        slopes, intercepts = tf.constant(slopes), tf.constant(intercepts)
    elif framework == "jax":
        jnp = pytest.importorskip("jax.numpy")
        slopes, intercepts = jnp.asarray(slopes), jnp.asarray(intercepts)
    else:
        slopes, intercepts = torch.from_numpy(slopes), torch.from_numpy(intercepts)
    return lambda x: (x - 0.5) * slopes + intercepts


def tensor(framework: str, array: np.ndarray) -> Any:
    if framework == "jax":
        import jax.numpy as jnp

        x = jnp.asarray(array)
        assert x.dtype == array.dtype, "JAX without x64 made 32 bits of 64"
        return x
    if framework == "tf":
        import tensorflow as tf

        return tf.constant(array)
    return torch.from_numpy(array.copy())


def numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def run(framework: str, attack: Callable[[str], Any]) -> Any:
    if framework != "jax":
        return attack(framework)
    import jax

    with jax.enable_x64(True):
        return attack(framework)


def clean_classes(model: Callable[[Any], Any], x: np.ndarray) -> np.ndarray:
    return np.argmax(numpy(model(torch.from_numpy(x))), axis=1)


LABELS = clean_classes(classifier("torch"), IMAGES)
TARGETS = (LABELS + 1) % 4
LABEL_MAPS = clean_classes(segmenter("torch"), SCENES)


def classify(framework: str, labels: np.ndarray, **kwargs: Any) -> Any:
    """``alma`` on the linear classifier and IMAGES in ``framework``."""
    model, x = classifier(framework), tensor(framework, IMAGES)
    return alma(model, x, tensor(framework, labels), **kwargs)


CASES: dict[str, Callable[[str], Any]] = {
    "alma-l2": lambda f: classify(f, LABELS, distance="l2", steps=50),
    "alma-l1": lambda f: classify(f, LABELS, distance="l1", steps=50),
    "alma-l1-targeted": lambda f: classify(f, TARGETS, distance="l1", steps=50, targeted=True),
    "alma-linf": lambda f: classify(f, LABELS, distance="linf", steps=50),
    "alma-l2-restarts-classes": lambda f: classify(
        f, LABELS, distance="l2", steps=40, restarts=2, restart_mode="classes"
    ),
    "alma_prox-dense": lambda f: alma_prox(
        segmenter(f),
        tensor(f, SCENES),
        tensor(f, LABEL_MAPS),
        steps=40,
        init_lr=0.05,
        adv_threshold=0.6,
    ),  # fmt: skip
    "lagrangian": lambda f: lagrangian(
        classifier(f), tensor(f, IMAGES), tensor(f, LABELS), steps=10, seed=0
    ),
}


@pytest.mark.parametrize("framework", ["jax", "tf"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_backend_runs_the_same_attack(name: str, framework: str) -> None:
    expected = CASES[name]("torch")
    got = run(framework, CASES[name])
    if name == "lagrangian":  # a training perturbation: no success, no minimum
        fields = ["perturbed", "norms"]
    else:
        fields = ["adversarials", "distances", "success"]
        assert numpy(expected.success).any(), "no success: the comparison would be vacuous"
    for field in fields:
        a, b = numpy(getattr(expected, field)), numpy(getattr(got, field))
        assert a.shape == b.shape and a.dtype == b.dtype, (field, a.dtype, b.dtype)
        if a.dtype == bool:
            assert np.array_equal(a, b), field
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=TOLERANCE, err_msg=field)
