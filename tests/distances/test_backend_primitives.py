"""Primitives whose behaviour can differ between frameworks, and the distances at their edges.

* Sub-gradients at 0 and at ties: the gradient of each distance D(x̃, x) with respect to x̃ at
  x̃ = x, with one coordinate equal, at grey (hue undefined) and black pixels, and at ℓ∞ ties:
  finite, and the same on PyTorch, JAX and TensorFlow (a NaN or a halved sub-gradient on one
  backend makes the attack stall or drift there only).
* The clip in ALMA's and ALMA prox's map to the model's space: JAX's ``clip`` gives half the
  gradient at a bound (PyTorch and TensorFlow: all of it), and under ``jax.value_and_grad``
  ``(model input − lower) / scale`` is not bit for bit the ``x`` it came from, so D(x̃, x) at
  x̃ = x was rounding noise whose gradient is O(1) (ℓ1: sign(noise) in every coordinate).
* Reference agreement on edge images (black, white, saturated colours, grey): SSIM against
  scikit-image, CIEDE2000 against scikit-image with its own constants.
* The Foolbox ``NormalisedDistance`` on raw and eagerpy tensors of each backend: the
  functional distance's values.

JAX and TensorFlow rows skip cleanly where the framework is not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
import torch

from alma_plugin import alma, distances
from alma_plugin.distances import _color

pytestmark = pytest.mark.usefixtures("single_thread")

BACKENDS = ("torch", "jax", "tf")


def _framework(backend: str) -> Any:
    if backend == "jax":
        return pytest.importorskip("jax")
    if backend == "tf":
        return pytest.importorskip("tensorflow")
    return torch


_JAX_COMPILED: dict[Any, Any] = {}


def _value_and_grad(
    backend: str, f: Callable[[Any, Any], Any], x_adv: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """f(x̃, x) and ∇ₓ̃ f for one sample (N = 1), x a constant, as float64 NumPy arrays."""
    fw = _framework(backend)
    if backend == "torch":
        a = torch.tensor(x_adv, requires_grad=True)
        value = f(a, torch.tensor(x))
        (grad,) = torch.autograd.grad(value.sum(), a)
        return value.detach().double().numpy(), grad.double().numpy()
    if backend == "jax":
        # Compiled as one program (op by op, XLA compiles each operation of the gradient):
        # once per distance, every case has the same shape.
        if f not in _JAX_COMPILED:
            _JAX_COMPILED[f] = fw.jit(fw.value_and_grad(lambda u, c: f(u, c).sum()))
        value, grad = _JAX_COMPILED[f](fw.numpy.asarray(x_adv), fw.numpy.asarray(x))
        return np.asarray(value, dtype=np.float64).reshape(1), np.asarray(grad, np.float64)
    a, c = fw.constant(x_adv), fw.constant(x)
    with fw.GradientTape() as tape:
        tape.watch(a)
        value = fw.reduce_sum(f(a, c))
    grad = tape.gradient(value, a)
    return np.asarray(f(a, c), dtype=np.float64), np.asarray(grad, dtype=np.float64)


def _edge_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(x̃, x) float32 pairs, (1, 3, 12, 12): the cases where sub-gradients are chosen."""
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 12, 12)).astype(np.float32)
    one_equal = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1).astype(np.float32)
    one_equal[0, 1, 3, 4] = x[0, 1, 3, 4]
    grey = np.full((1, 3, 12, 12), 0.5, np.float32)
    red = np.array([0.01, 0, 0], np.float32)[None, :, None, None]
    black = np.zeros((1, 3, 12, 12), np.float32)
    black_adv = black.copy()
    black_adv[0, :, 3, 3] = 0.01
    return {
        "identical": (x.copy(), x),
        "one-coordinate-equal": (one_equal, x),
        "grey-to-grey": (np.full_like(grey, 0.6), grey),  # a* = b* = 0: hue undefined
        "grey-to-chromatic": (grey + red, grey),
        # 0.3 is one of the greys whose a*, b* the conversion left as rounding residue
        "chromatic-to-grey": (np.full_like(grey, 0.3), x),
        "black-one-pixel": (black_adv, black),
    }


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_grey_is_achromatic_and_its_ciede2000_gradient_agrees(
    backend: str, dtype: str
) -> None:
    """Each of the 256 8-bit greys has a* = b* = 0 exactly, and CIEDE2000's gradient at a grey
    x̃ against a coloured x is its achromatic sub-gradient, the same for every dtype and
    backend (float64 PyTorch the reference). Before, 68 greys kept a rounding residue
    (≤ 3·10⁻⁵) and took the chromatic branch with its hue: gradients up to 4.5·10⁴ of
    dtype- and backend-dependent sign (jit-compiled JAX 13× off PyTorch)."""
    fw = _framework(backend)
    levels = np.repeat((np.arange(256) / 255).reshape(256, 1, 1, 1), 3, axis=1)
    if backend == "torch":
        greys = torch.tensor(levels, dtype=getattr(torch, dtype))
    elif backend == "jax":
        if dtype == "float64" and not fw.config.jax_enable_x64:
            pytest.skip("JAX without x64 has no float64")
        greys = fw.numpy.asarray(levels, dtype=dtype)
    else:
        greys = fw.constant(levels, dtype=dtype)
    lab = np.asarray(_color.rgb_to_lab(ep.astensor(greys)).raw, dtype=np.float64)
    assert (lab[:, 1:] == 0).all()
    coloured = np.array([0.6, 0.4, 0.5]).reshape(1, 3, 1, 1)
    for level in (0.3, 0.5, 0.7, 74 / 255):
        grey = np.full((1, 3, 1, 1), level)
        _, reference = _value_and_grad("torch", distances.ciede2000, grey, coloured)
        _, grad = _value_and_grad(backend, distances.ciede2000, grey.astype(dtype),
                                  coloured.astype(dtype))  # fmt: skip
        np.testing.assert_allclose(grad, reference, rtol=1e-4, atol=1e-4, err_msg=str(level))


@pytest.mark.parametrize("backend", ["jax", "tf"])
@pytest.mark.parametrize("name", ["l1", "l2", "ciede2000", "ssim"])
def test_gradients_at_zero_and_ties_are_finite_and_agree_with_pytorch(
    name: str, backend: str
) -> None:
    f = getattr(distances, name)
    for case, (x_adv, x) in _edge_pairs().items():
        value_t, grad_t = _value_and_grad("torch", f, x_adv, x)
        value_b, grad_b = _value_and_grad(backend, f, x_adv, x)
        assert np.isfinite(grad_t).all() and np.isfinite(grad_b).all(), case
        # float32: a grey pixel's a*, b* are rounding residues, whose hue differs per backend
        # (CIEDE2000's documented float32 tolerance is 1e-3 relative)
        np.testing.assert_allclose(value_b, value_t, rtol=1e-4, atol=1e-6, err_msg=case)
        np.testing.assert_allclose(grad_b, grad_t, rtol=1e-3, atol=2e-4, err_msg=case)
        if case == "identical":
            assert (grad_t == 0).all() and (grad_b == 0).all()
        if case == "one-coordinate-equal" and name in ("l1", "l2"):
            assert grad_t[0, 1, 3, 4] == 0 and grad_b[0, 1, 3, 4] == 0  # sub-gradient 0


@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
def test_linf_gradient_at_ties_is_split_evenly_on_every_backend(backend: str) -> None:
    x = np.full((1, 3, 4, 4), 0.5, np.float32)
    x_adv = x.copy()
    x_adv[0, 0, 0, 0] += 0.25  # three coordinates at the maximum |x̃ − x| = 0.25
    x_adv[0, 1, 2, 2] -= 0.25
    x_adv[0, 2, 3, 1] += 0.25
    _, grad = _value_and_grad(backend, distances.linf, x_adv, x)
    expected = np.zeros_like(grad)
    expected[0, 0, 0, 0] = expected[0, 2, 3, 1] = 1 / 3
    expected[0, 1, 2, 2] = -1 / 3
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


# --- through alma(): the clip and the re-measurement in the model's space --------------------


# JAX compiles each primitive once per shape: the JAX rows here take the (4, 3, 12, 12) images
# (and 3 classes) of the other JAX tests (test_distances_contract.py, test_foolbox_jax.py, the
# contract table's perceptual rows), unless the shape is the point.
BATCH = (4, 3, 12, 12)


def _affine_problem(bounds: tuple[float, float], zeros: bool) -> tuple:
    """A linear 3-class model on (4, 3, 12, 12) images in ``bounds`` (NumPy arrays)."""
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.2, (432, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, (3,)).astype(np.float32)
    x = rng.random(BATCH).astype(np.float32)
    if zeros:
        x[:, :, :3] = 0.0  # pixels on the lower bound, as MNIST's background
    labels = (x.reshape(4, -1) @ weights + bias).argmax(1)
    lower, upper = bounds
    return weights, bias, (x * (upper - lower) + lower).astype(np.float32), labels


def _tensors(backend: str) -> tuple[Callable[..., Any], Callable[[Any], Any], Callable]:
    """(to the backend's tensor, flatten (N, ...) → (N, −1), to a float64 NumPy array)."""
    fw = _framework(backend)
    if backend == "torch":
        return torch.tensor, lambda u: u.flatten(1), lambda t: t.detach().double().numpy()
    if backend == "jax":
        flatten = lambda u: u.reshape(u.shape[0], -1)  # noqa: E731
        return fw.numpy.asarray, flatten, lambda t: np.asarray(t, dtype=np.float64)
    flatten = lambda u: fw.reshape(u, (u.shape[0], -1))  # noqa: E731
    return fw.constant, flatten, lambda t: np.asarray(t, dtype=np.float64)


def _run_alma(
    backend: str, distance: str, bounds: tuple[float, float], steps: int, zeros: bool
) -> tuple[np.ndarray, np.ndarray]:
    """alma() on ``backend`` tensors: (per-step distances (steps, N), final distances)."""
    convert, flatten, numpy = _tensors(backend)
    weights, bias, inputs, labels = _affine_problem(bounds, zeros)
    lower, upper = bounds
    w, b = convert(weights), convert(bias)

    def model(u: Any) -> Any:
        return flatten((u - lower) / (upper - lower)) @ w + b

    trace: list[np.ndarray] = []

    def record(info: Any) -> None:
        trace.append(numpy(info.distance))

    result = alma(model, convert(inputs), convert(labels), distance=distance, steps=steps,
                  bounds=bounds, callback=record)  # fmt: skip
    return np.stack(trace), numpy(result.distances)


# JAX runs alma() op by op: XLA compiles each new operation once per process (~10 s for a
# distance's first call), so the JAX rows of alma() are marked slow.
_ADVERSARIAL_ROWS = [
    pytest.param(
        distance,
        backend,
        marks=[pytest.mark.slow] if backend == "jax" else [],
        id=f"{distance}-{backend}",
    )
    for distance in ("l1", "l2", "linf", "ciede2000", "ssim")
    for backend in BACKENDS
]


@pytest.mark.parametrize(("distance", "backend"), _ADVERSARIAL_ROWS)
def test_alma_from_an_adversarial_input_returns_it_on_every_backend(
    distance: str, backend: str
) -> None:
    """Labels the model does not predict: the input itself, distance exactly 0, no NaN."""
    convert, flatten, numpy = _tensors(backend)
    rng = np.random.default_rng(1)
    x = rng.random(BATCH).astype(np.float32)
    logits = convert(np.array([0.0, 0.0, 1.0], np.float32))

    def model(u: Any) -> Any:  # class 2 everywhere (a gradient of 0)
        return flatten(u)[:, :3] * 0 + logits

    result = alma(model, convert(x), convert(np.array([0, 1, 0, 1])), distance=distance, steps=3)
    adversarials, dists = numpy(result.adversarials), numpy(result.distances)
    np.testing.assert_array_equal(adversarials, x)
    assert (dists == 0).all() and bool(np.asarray(result.success).all())


@pytest.mark.slow  # alma() op by op on JAX: ~10 s of compilation per distance
@pytest.mark.parametrize("distance", ["l2", "l1", "ciede2000"])
def test_alma_jax_with_other_bounds_starts_at_distance_zero(distance: str) -> None:
    trace, _ = _run_alma("jax", distance, (0.0, 255.0), steps=1, zeros=False)
    assert (trace[0] == 0).all(), trace[0]


@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
def test_the_map_to_the_model_space_passes_the_whole_gradient_at_the_bounds(
    backend: str,
) -> None:
    """ALMA's map from the [0, 1] iterate to the model's (0, 255) inputs, at pixels on the
    bounds (black and white): d(model input)/du = 255 on every backend."""
    from alma_plugin.core.tensors import model_space

    convert, _, _ = _tensors(backend)
    raw = convert(np.array([[0.0, 255.0, 127.0, 255.0, 1.0, 254.0]], np.float32))
    x = (ep.astensor(raw) - 0.0) / 255.0
    to_model_space, _ = model_space(ep.astensor(raw), x, (0.0, 255.0), x.dtype)
    _, grad = ep.value_and_grad(lambda u: to_model_space(u).sum(), x)
    np.testing.assert_allclose(np.asarray(grad.raw), 255.0, rtol=1e-6)


@pytest.mark.slow  # ALMA prox op by op on JAX: ~9 s of compilation
def test_alma_prox_on_jax_follows_pytorch_with_pixels_on_the_bounds() -> None:
    torch_trace, _ = _run_alma("torch", "linf", (0.0, 1.0), steps=12, zeros=True)
    jax_trace, _ = _run_alma("jax", "linf", (0.0, 1.0), steps=12, zeros=True)
    np.testing.assert_allclose(jax_trace, torch_trace, rtol=1e-4, atol=1e-6)


def test_alma_prox_on_tensorflow_follows_pytorch_with_pixels_on_the_bounds() -> None:
    torch_trace, _ = _run_alma("torch", "linf", (0.0, 1.0), steps=12, zeros=True)
    tf_trace, _ = _run_alma("tf", "linf", (0.0, 1.0), steps=12, zeros=True)
    np.testing.assert_allclose(tf_trace, torch_trace, rtol=1e-4, atol=1e-6)


# --- reference agreement on edge images ------------------------------------------------------

_COLOURS = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "grey": (0.5, 0.5, 0.5),
}


def _flat_image_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, x̃, x) float64 (3, 13, 17) pairs: flat colours against noise, grey, a shift."""
    rng = np.random.default_rng(0)
    pairs = []
    for name, colour in _COLOURS.items():
        x = np.ones((3, 13, 17)) * np.array(colour)[:, None, None]
        one_pixel = x.copy()
        one_pixel[:, 4, 5] = 1 - one_pixel[:, 4, 5]
        pairs += [
            (f"{name}+noise", np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1), x),
            (f"{name}->grey", np.full_like(x, 0.5), x),
            (f"{name}+one-pixel", one_pixel, x),
            (f"{name}+shift", np.clip(x + 0.02, 0, 1) if name != "white" else x - 0.02, x),
        ]
    return pairs


def test_ssim_matches_skimage_on_flat_and_saturated_images() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    for name, x_adv, x in _flat_image_pairs():
        reference = 1 - metrics.structural_similarity(x_adv, x, channel_axis=0, **kwargs)
        ours = distances.ssim(torch.tensor(x_adv[None]), torch.tensor(x[None])).item()
        assert abs(ours - reference) < 1e-10, (name, ours, reference)
        ours32 = distances.ssim(torch.tensor(x_adv[None]).float(), torch.tensor(x[None]).float())
        assert abs(ours32.item() - reference) < 1e-5, (name, ours32.item(), reference)


def test_ciede2000_matches_skimage_with_its_constants_on_flat_and_saturated_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With scikit-image's 6-digit matrix and white the values are scikit-image's to 1e-5
    relative on black, white, the primaries and grey (1e-15 but for black, where scikit-image
    also rounds f's linear branch); with the package's 7-digit constants they differ by up to
    ~2e-4 on saturated colours and white, against ~1e-5 on natural colours."""
    color = pytest.importorskip("skimage.color")
    matrix = (
        (0.412453, 0.357580, 0.180423),
        (0.212671, 0.715160, 0.072169),
        (0.019334, 0.119193, 0.950227),
    )
    monkeypatch.setattr(_color, "RGB_TO_XYZ", matrix)
    monkeypatch.setattr(_color, "WHITE_D65", (0.95047, 1.0, 1.08883))
    for name, x_adv, x in _flat_image_pairs():
        delta = color.deltaE_ciede2000(
            color.rgb2lab(x_adv.transpose(1, 2, 0)), color.rgb2lab(x.transpose(1, 2, 0))
        )
        reference = np.sqrt((delta**2).sum())
        ours = distances.ciede2000(torch.tensor(x_adv[None]), torch.tensor(x[None])).item()
        assert abs(ours - reference) <= 1e-5 * reference, (name, ours, reference)


@pytest.mark.parametrize("shape", [(1, 10, 10), (3, 7, 20), (1, 1, 1)])
@pytest.mark.parametrize("padding", ["valid", "symmetric"])
def test_ssim_refuses_images_smaller_than_its_window(shape: tuple[int, ...], padding: str) -> None:
    x = torch.rand((1, *shape))
    with pytest.raises(ValueError, match=r"at least 11×11 pixels.*x\.shape"):
        distances.ssim(x, x, padding=padding)


# --- the Foolbox distance objects on each backend -------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["l1", "l2", "ciede2000", "ssim"])
def test_normalised_distance_has_the_functional_values_on_every_backend(
    name: str, backend: str
) -> None:
    pytest.importorskip("foolbox")
    from alma_plugin.foolbox import NormalisedDistance

    convert, _, _ = _tensors(backend)
    rng = np.random.default_rng(0)
    x = rng.random(BATCH).astype(np.float32)
    x_adv = np.clip(x + rng.uniform(-0.2, 0.2, x.shape), 0, 1).astype(np.float32)
    expected = np.asarray(getattr(distances, name)(x_adv.astype(np.float64), x.astype(np.float64)))
    lower, upper = 0.0, 255.0
    for layout in ("channels_first", "channels_last"):
        a, b = x * 255, x_adv * 255
        if layout == "channels_last":
            a, b = a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)
        distance = NormalisedDistance(name, (lower, upper), data_format=layout)
        for wrap in (False, True):
            references, perturbed = convert(a), convert(b)
            if wrap:
                references, perturbed = ep.astensor(references), ep.astensor(perturbed)
            out = distance(references, perturbed)
            assert isinstance(out, ep.Tensor) == wrap
            values = np.asarray(out.raw if wrap else out, dtype=np.float64)
            np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-6)
            if (layout, wrap) != ("channels_last", True):
                continue  # the bisection (30 measurements) once per backend
            epsilon = float(np.median(expected)) / 2
            clipped = distance.clip_perturbation(references, perturbed, epsilon)
            assert type(clipped) is type(perturbed)
            measured = np.asarray(ep.astensor(distance(references, clipped)).raw, np.float32)
            assert (measured <= np.float32(epsilon)).all(), (measured, epsilon)
