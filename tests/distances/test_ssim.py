"""SSIM / MS-SSIM against scikit-image, scipy.ndimage and (if installed) pytorch_msssim."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import eagerpy as ep
import numpy as np
import pytest
import skimage.data
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity
from skimage.transform import resize

from alma_plugin.bench.border import border_ratio
from alma_plugin.distances import (
    DISTANCES,
    MS_SSIM_WEIGHTS,
    DistanceFunction,
    ms_ssim_min_size,
    msssim,
    ssim,
)

# White-box checks of the package's own internals (the indices before 1 − ·, the filter).
from alma_plugin.distances._ssim import (
    ms_ssim_index,
    msssim_objective,
    ssim_index,
    ssim_objective,
    symmetric_filter_matrix,
    valid_filter_matrix,
)
from alma_plugin.foolbox import MSSSIMALMA, SSIMALMA


def _t(array: np.ndarray, dtype: torch.dtype = torch.float64) -> ep.Tensor:
    return ep.astensor(torch.as_tensor(np.ascontiguousarray(array), dtype=dtype))


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's SSIM of one (C, H, W) pair, Wang et al. 2004 settings."""
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    if a.shape[0] == 1:
        return float(structural_similarity(a[0], b[0], **kwargs))
    return float(structural_similarity(a, b, channel_axis=0, **kwargs))


def _perturb(x: np.ndarray, seed: int, size: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, size, x.shape), 0, 1)


def _camera() -> np.ndarray:
    return resize(skimage.data.camera(), (48, 40), anti_aliasing=True)[None]


def _astronaut(shape: tuple[int, int] = (40, 52)) -> np.ndarray:
    return resize(skimage.data.astronaut(), shape, anti_aliasing=True).transpose(2, 0, 1)


IMAGES = {
    "camera-grey": _camera,
    "astronaut-colour": _astronaut,
    "astronaut-crop": lambda: skimage.data.astronaut()[100:131, 180:217].transpose(2, 0, 1) / 255,
    "random-colour": lambda: np.random.default_rng(0).random((3, 23, 17)),
    "random-grey-11x11": lambda: np.random.default_rng(1).random((1, 11, 11)),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_matches_skimage(name: str, dtype: torch.dtype) -> None:
    x = IMAGES[name]().astype(np.float64)
    batch = np.stack([x, _perturb(x, 1), _perturb(x, 2, 0.2), _perturb(x, 3, 0.005)])
    reference = np.array([_skimage_ssim(b, x) for b in batch])
    ours = ssim_index(_t(batch, dtype), _t(np.stack([x] * 4), dtype)).raw.numpy()
    assert ours.shape == (4,)
    assert np.abs(ours - reference).max() < 1e-5
    distance = ssim(_t(batch, dtype), _t(np.stack([x] * 4), dtype)).raw.numpy()
    assert np.abs(distance - (1 - reference)).max() < 1e-5


def test_ssim_is_symmetric_and_zero_at_identity() -> None:
    x = _astronaut()[None]
    x_adv = _perturb(x, 4)
    forward = ssim(_t(x_adv), _t(x)).raw.numpy()
    backward = ssim(_t(x), _t(x_adv)).raw.numpy()
    np.testing.assert_allclose(forward, backward, rtol=1e-12)
    assert ssim(_t(x), _t(x)).raw.abs().max().item() < 1e-12


def test_filter_matrix_is_the_valid_gaussian() -> None:
    image = np.random.default_rng(5).random((30, 25))
    filtered = valid_filter_matrix(30) @ image @ valid_filter_matrix(25).T
    reference = gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]
    np.testing.assert_allclose(filtered, reference, atol=1e-12)


def test_ssim_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 2, 11, 12, dtype=torch.float64)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0.01, 0.99).requires_grad_(True)  # in [0, 1]
    assert torch.autograd.gradcheck(
        lambda a: ssim(ep.astensor(a), ep.astensor(x)).raw, (x_adv,), fast_mode=True
    )


def test_ms_ssim_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 1, 22, 22, dtype=torch.float64)
    x_adv = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    weights = (0.4, 0.6)
    assert torch.autograd.gradcheck(
        lambda a: ms_ssim_index(ep.astensor(a), ep.astensor(x), weights=weights).raw,
        (x_adv,),
        fast_mode=True,
    )


@pytest.mark.parametrize("function", [ssim, msssim])
def test_finite_gradient_at_identical_inputs(function: DistanceFunction) -> None:
    side = ms_ssim_min_size() if function is msssim else 24
    x = torch.rand(2, 3, side, side, dtype=torch.float32)
    x[1] = 0.5  # a constant image too
    x_adv = x.clone().requires_grad_(True)
    value = function(ep.astensor(x_adv), ep.astensor(x)).raw
    assert value.abs().max().item() < 1e-6
    value.sum().backward()
    assert x_adv.grad is not None and torch.isfinite(x_adv.grad).all()


def _reference_ms_ssim_factors(
    p: np.ndarray, q: np.ndarray, weights: Sequence[float]
) -> list[float]:
    """The mean cs of each scale (l·cs at the coarsest) of one grey (H, W) pair (Wang et al.
    2003), scipy.ndimage filtering and numpy pooling in float64, before the clamp."""
    c1, c2 = 0.01**2, 0.03**2

    def filt(image: np.ndarray) -> np.ndarray:
        return gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]

    def pool(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[0] // 2, image.shape[1] // 2
        return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))

    factors = []
    for scale in range(len(weights)):
        mp, mq = filt(p), filt(q)
        vp, vq, cov = filt(p * p) - mp**2, filt(q * q) - mq**2, filt(p * q) - mp * mq
        cs = (2 * cov + c2) / (vp + vq + c2)
        if scale == len(weights) - 1:
            cs = cs * (2 * mp * mq + c1) / (mp**2 + mq**2 + c1)
        factors.append(float(cs.mean()))
        p, q = pool(p), pool(q)
    return factors


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray, weights: Sequence[float]) -> float:
    """MS-SSIM of one (C, H, W) pair: each scale's factor clamped below at 1e-8 (the module's
    documented rule), the channels averaged."""
    per_channel = [
        np.prod([max(f, 1e-8) ** beta for f, beta in
                 zip(_reference_ms_ssim_factors(p, q, weights), weights, strict=True)])
        for p, q in zip(a, b, strict=True)
    ]  # fmt: skip
    return float(np.mean(per_channel))


@pytest.mark.parametrize("shape", [(176, 176), (181, 190)])
def test_ms_ssim_matches_reference(shape: tuple[int, int]) -> None:
    x = _astronaut(shape)
    batch = np.stack([_perturb(x, 6), _perturb(x, 7, 0.2)])
    ours = ms_ssim_index(_t(batch), _t(np.stack([x, x]))).raw.numpy()
    reference = [_reference_ms_ssim(b, x, MS_SSIM_WEIGHTS) for b in batch]
    np.testing.assert_allclose(ours, reference, atol=1e-10)
    distance = msssim(_t(batch), _t(np.stack([x, x]))).raw.numpy()
    np.testing.assert_allclose(distance, 1 - np.array(reference), atol=1e-10)


def test_ms_ssim_matches_pytorch_msssim() -> None:
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x = torch.as_tensor(_astronaut((192, 192)))[None].repeat(2, 1, 1, 1)
    torch.manual_seed(0)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    reference = pytorch_msssim.ms_ssim(x_adv, x, data_range=1.0, size_average=False)
    ours = ms_ssim_index(ep.astensor(x_adv), ep.astensor(x)).raw
    # pytorch_msssim builds its Gaussian window in float32: agreement to ~3e-6.
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5)
    reference_ssim = pytorch_msssim.ssim(x_adv, x, data_range=1.0, size_average=False)
    np.testing.assert_allclose(
        ssim_index(ep.astensor(x_adv), ep.astensor(x)).raw.numpy(),
        reference_ssim.numpy(),
        atol=1e-5,
    )


def test_ms_ssim_minimum_size() -> None:
    assert ms_ssim_min_size() == 176
    assert ms_ssim_min_size(3) == 44
    for wrong, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="num_scales must be"):  # were 5.5, 2.75, 31.1 and 11
            ms_ssim_min_size(wrong)
    small = _t(np.random.default_rng(0).random((1, 3, 175, 200)))
    with pytest.raises(ValueError, match=r"at least 176×176.*5 scales"):
        msssim(small, small)
    weights = (0.2, 0.3, 0.5)
    tiny = _t(np.random.default_rng(0).random((1, 3, 44, 50)))
    assert ms_ssim_index(tiny, tiny, weights=weights).raw.item() == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 3, 10, 16)])
def test_bad_shapes_raise(shape: tuple[int, ...]) -> None:
    bad = ep.astensor(torch.rand(*shape))
    with pytest.raises(ValueError, match=r"x_adv\.shape=|at least 11×11"):
        ssim(bad, bad)


def test_registry_entries() -> None:
    assert DISTANCES["ssim"].function is ssim
    assert DISTANCES["msssim"].function is msssim
    assert DISTANCES["ssim"].objective is ssim_objective
    assert DISTANCES["msssim"].objective is msssim_objective
    assert DISTANCES["l2"].objective is DISTANCES["l2"].function
    assert DISTANCES["ssim"].init_lr_distance == 3e-5
    assert not DISTANCES["ssim"].needs_color


# --- full coverage: padding="symmetric" and the attacks' objective ----------------------------


def _skimage_full_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of scikit-image's *full* SSIM map (one value per pixel, reflect-filtered moments)
    of one (C, H, W) pair; its central crop is the valid SSIM."""
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    if a.shape[0] == 1:
        return float(structural_similarity(a[0], b[0], full=True, **kwargs)[1].mean())
    return float(structural_similarity(a, b, channel_axis=0, full=True, **kwargs)[1].mean())


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_symmetric_ssim_matches_skimage_full_map(name: str, dtype: torch.dtype) -> None:
    x = IMAGES[name]().astype(np.float64)
    batch = np.stack([x, _perturb(x, 1), _perturb(x, 2, 0.2), _perturb(x, 3, 0.005)])
    reference = np.array([_skimage_full_ssim(b, x) for b in batch])
    reference_x = _t(np.stack([x] * 4), dtype)
    ours = ssim_index(_t(batch, dtype), reference_x, padding="symmetric").raw.numpy()
    assert np.abs(ours - reference).max() < 1e-5
    distance = ssim(_t(batch, dtype), reference_x, padding="symmetric").raw.numpy()
    assert np.abs(distance - (1 - reference)).max() < 1e-5
    # ... and the default is still the valid (cropped) SSIM, a different value.
    valid = np.array([_skimage_ssim(b, x) for b in batch[1:]])
    assert (
        np.abs(ssim(_t(batch[1:], dtype), reference_x[1:]).raw.numpy() - (1 - valid)).max() < 1e-5
    )


def test_symmetric_filter_matrix_is_the_reflected_gaussian() -> None:
    image = np.random.default_rng(5).random((30, 25))
    filtered = symmetric_filter_matrix(30) @ image @ symmetric_filter_matrix(25).T
    reference = gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")
    np.testing.assert_allclose(filtered, reference, atol=1e-12)
    for size in (11, 12, 30):
        matrix = symmetric_filter_matrix(size)
        # Full coverage: every pixel's total weight over all windows is 1, as a row's is.
        np.testing.assert_allclose(matrix.sum(axis=0), 1, atol=1e-12)
        np.testing.assert_allclose(matrix.sum(axis=1), 1, atol=1e-12)
        np.testing.assert_array_equal(matrix[5:-5], valid_filter_matrix(size))
    # The valid windows' coverage of the outer pixels: w₋₅ ≈ 0.001 at the edge.
    assert valid_filter_matrix(30).sum(axis=0)[0] < 2e-3


@pytest.mark.parametrize("shape", [(176, 176), (181, 190)])
def test_symmetric_ms_ssim_matches_reference(shape: tuple[int, int]) -> None:
    """The reference of test_ms_ssim_matches_reference without the crop at every scale."""
    x = _astronaut(shape)
    batch = np.stack([_perturb(x, 6), _perturb(x, 7, 0.2)])
    c1, c2 = 0.01**2, 0.03**2

    def reference(a: np.ndarray, b: np.ndarray) -> float:
        def filt(image: np.ndarray) -> np.ndarray:
            return gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")

        per_channel = []
        for p, q in zip(a, b, strict=True):
            value = 1.0
            for scale, beta in enumerate(MS_SSIM_WEIGHTS):
                mp, mq = filt(p), filt(q)
                vp, vq, cov = filt(p * p) - mp**2, filt(q * q) - mq**2, filt(p * q) - mp * mq
                cs = (2 * cov + c2) / (vp + vq + c2)
                if scale == len(MS_SSIM_WEIGHTS) - 1:
                    cs = cs * (2 * mp * mq + c1) / (mp**2 + mq**2 + c1)
                value *= max(cs.mean(), 1e-8) ** beta
                h, w = p.shape[0] // 2, p.shape[1] // 2
                p = p[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
                q = q[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
            per_channel.append(value)
        return float(np.mean(per_channel))

    ours = ms_ssim_index(_t(batch), _t(np.stack([x, x])), padding="symmetric").raw.numpy()
    np.testing.assert_allclose(ours, [reference(b, x) for b in batch], atol=1e-10)


def test_padding_is_checked() -> None:
    x = _t(np.random.default_rng(0).random((1, 1, 12, 12)))
    for function in (ssim, msssim):
        with pytest.raises(
            ValueError, match=r"padding must be one of \['valid', 'symmetric'\], got 'same'"
        ):
            function(x, x, padding="same")
    with pytest.raises(ValueError, match="padding must be one of"):
        SSIMALMA(padding="reflect")


def test_symmetric_ssim_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 2, 11, 12, dtype=torch.float64)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0.01, 0.99).requires_grad_(True)  # in [0, 1]
    assert torch.autograd.gradcheck(
        lambda a: ssim(ep.astensor(a), ep.astensor(x), padding="symmetric").raw,
        (x_adv,),
        fast_mode=True,
    )


@pytest.mark.parametrize(
    ("objective", "exact", "shape"),
    [(ssim_objective, ssim, (2, 3, 20, 23)), (msssim_objective, msssim, (2, 1, 176, 179))],
)
def test_objective_has_the_exact_value_and_the_full_coverage_gradient(
    objective: DistanceFunction, exact: DistanceFunction, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    x = torch.rand(*shape)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    value = objective(x_adv, x)
    assert torch.equal(value.detach(), exact(x_adv.detach(), x))  # bit for bit
    (gradient,) = torch.autograd.grad(value.sum(), x_adv)
    symmetric = exact(x_adv, x, padding="symmetric")  # type: ignore[call-arg]
    (reference,) = torch.autograd.grad(symmetric.sum(), x_adv)
    torch.testing.assert_close(gradient, reference)
    # Identical images: value 0, finite gradient; a non-finite sample: NaN, the others kept.
    same = x.clone().requires_grad_(True)
    zero = objective(same, x)
    assert zero.abs().max().item() < 1e-5  # float32 rounding (MS-SSIM: ~2e-6)
    (gradient,) = torch.autograd.grad(zero.sum(), same)
    assert torch.isfinite(gradient).all()
    broken = x.clone()
    broken[1, 0, 0, 0] = float("nan")
    values = objective(broken, x)
    assert values[1].isnan() and values[0].item() == 0


def test_border_ratio() -> None:
    """The benchmark's ρ_b: 1 for energy spread like the area, 1 / share for all in the border."""
    delta = torch.ones(2, 3, 32, 32)
    per_sample, pooled = border_ratio(delta, 5)
    torch.testing.assert_close(per_sample, torch.ones(2, dtype=torch.float64))
    assert pooled == pytest.approx(1.0)
    delta[:, :, 5:-5, 5:-5] = 0
    share = 1 - (22 / 32) ** 2
    assert border_ratio(delta, 5)[1] == pytest.approx(1 / share)
    # Uniform within the 5-px ring: the 3-px ring holds energy in proportion to its area too.
    assert border_ratio(delta, 3)[1] == pytest.approx(1 / share)
    assert border_ratio(delta, 6)[1] == pytest.approx(1 / (1 - (20 / 32) ** 2))


@pytest.mark.usefixtures("single_thread")
def test_ssim_attack_does_not_concentrate_on_the_border() -> None:
    """On smooth 32×32 images and a random linear classifier (whose gradient favours no
    region), descending the valid SSIM puts nearly all of the perturbation's energy into the
    outer pixels; the default full-coverage descent spreads it like the area."""
    import foolbox as fb

    crops = [skimage.data.astronaut()[r : r + 128, c : c + 128] for r, c in ((0, 0), (200, 250))]
    x = torch.as_tensor(
        np.stack([resize(c, (32, 32), anti_aliasing=True).transpose(2, 0, 1) for c in crops])
    ).float()
    x = torch.cat([x, x.flip(3), x.flip(2)])  # 6 images
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4)).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    ratios = {}
    for padding in ("valid", "symmetric"):
        adv = SSIMALMA(steps=60, padding=padding).run(fmodel, x, y)
        with torch.no_grad():
            assert (model(adv).argmax(1) != y).all()
        ratios[padding] = (border_ratio(adv - x, 3)[1], border_ratio(adv - x, 5)[1])
    # Outer 3 px: 34% of the area (largest possible ratio 2.94); outer 5 px: 53% (1.90).
    # Measured: valid 2.93 and 1.89 (all the energy in the border), symmetric 1.20 and 1.07.
    assert ratios["valid"][0] > 2.0
    assert ratios["symmetric"][0] < 1.5 and ratios["symmetric"][1] < 1.5


def test_ssim_attacks_measure_with_the_exact_distance() -> None:
    """Whatever the descent, the Foolbox distance (ε clipping, success) is the exact SSIM."""
    for cls in (SSIMALMA, MSSSIMALMA):
        for padding in ("valid", "symmetric"):
            attack = cls(steps=5, padding=padding)
            assert attack.distance.function is DISTANCES[attack.distance_name].function
            assert f"padding={padding!r}" in repr(attack)
    assert SSIMALMA().padding == "symmetric"


def test_kept_filter_matrices_serve_every_later_call() -> None:
    """PyTorch's filter matrices are built once per (device, dtype, size, padding) and kept (on a
    GPU each host → device copy was a synchronisation). A call under ``torch.inference_mode``
    must not leave inference tensors behind that a later differentiated call would reject; each
    dtype gets its own matrices and the values stay scikit-image's."""
    from alma_plugin.distances import _gaussian

    _gaussian._TORCH_MATRICES.clear()
    gen = torch.Generator().manual_seed(3)
    x, x_adv = torch.rand(2, 3, 17, 19, generator=gen), torch.rand(2, 3, 17, 19, generator=gen)
    with torch.inference_mode():
        first = ssim(x_adv, x)
    assert len(_gaussian._TORCH_MATRICES) == 1
    leaf = x_adv.clone().requires_grad_(True)
    second = ssim(leaf, x)
    second.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    assert torch.equal(first, second.detach())
    ssim(x_adv.double(), x.double())
    ssim(x_adv, x, padding="symmetric")
    assert len(_gaussian._TORCH_MATRICES) == 3
    pairs = zip(x_adv.double().numpy(), x.double().numpy(), strict=True)
    expected = [_skimage_ssim(a, b) for a, b in pairs]
    np.testing.assert_allclose(1 - ssim(x_adv.double(), x.double()).numpy(), expected, atol=1e-12)


def _near_identity(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(x_adv, x) in float32, 8 pairs: 4 identical (random, constant, low-contrast, dark), then
    the same images with Gaussian noise of 1e-4 (1 − SSIM ≈ 2e-6, 1 − MS-SSIM ≈ 3e-7) and 1e-3
    (≈ 2e-4 and 3e-5, MS-SSIM at the ε of ALMA's first step)."""
    rng = np.random.default_rng(26)
    x = rng.random((4, 3, side, side))
    x[1] = x[1, :, :1, :1]
    x[2] = 0.25 + 0.5 * x[2]
    x[3] = 0.05 * x[3]
    sizes = np.array([1e-4, 1e-3, 1e-4, 1e-3])[:, None, None, None]
    noisy = np.clip(x + sizes * rng.normal(size=x.shape), 0, 1)
    pairs = np.concatenate([x, noisy]).astype(np.float32), np.concatenate([x, x]).astype(np.float32)
    return pairs


def _backend(name: str) -> Callable[[np.ndarray], ep.Tensor]:
    if name == "torch":
        return lambda a: ep.astensor(torch.from_numpy(a))
    if name == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return lambda a: ep.astensor(jnp.asarray(a))
    return ep.astensor  # NumPy: values only


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
@pytest.mark.parametrize("name", ["ssim", "msssim"])
def test_float32_is_zero_at_identity_and_accurate_near_it(name: str, backend: str) -> None:
    """Formed as 1 minus an index near 1, the float32 distance kept no digit of a small value:
    1 − SSIM at noise 1e-4 was 26 % off, 1 − MS-SSIM 7× (at 1e-3, 14 %), and exact identity
    gave ±5e-6. Now: +0 (not −0) with a zero gradient at identity, and within 1e-3 of the
    float64 value of scikit-image's SSIM / the scipy MS-SSIM reference near it."""
    x_adv, x = _near_identity(ms_ssim_min_size() if name == "msssim" else 32)
    function = msssim if name == "msssim" else ssim
    wrap = _backend(backend)
    a, b = wrap(x_adv), wrap(x)
    if backend == "jax":  # compiled as one program: op by op, XLA compiles each operation
        import jax

        values = np.asarray(jax.jit(function)(a.raw, b.raw))
        gradient = jax.jit(jax.grad(lambda u, v: function(u, v).sum()))
        grads = np.asarray(gradient(a.raw, b.raw))
    else:
        values = function(a, b).numpy()
    assert values.dtype == np.float32
    assert (values[:4] == 0).all() and not np.signbit(values[:4]).any()
    pairs = zip(x_adv.astype(np.float64), x.astype(np.float64), strict=True)
    if name == "msssim":
        reference = [1 - _reference_ms_ssim(p, q, MS_SSIM_WEIGHTS) for p, q in pairs]
    else:
        reference = [1 - _skimage_ssim(p, q) for p, q in pairs]
    assert (values[4:] > 0).all()
    np.testing.assert_allclose(values[4:], reference[4:], rtol=1e-3)
    if backend == "torch":
        grads = ep.value_and_grad(lambda u: function(u, b).sum(), a)[1].numpy()
    if backend != "numpy":
        assert np.isfinite(grads).all() and (grads[:4] == 0).all()


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
def test_one_minus_exp_is_accurate_on_every_backend(backend: str) -> None:
    """MS-SSIM's 1 − eᴸ (L ≤ 0) from tanh, against NumPy's −expm1 in float64: full relative
    precision near 0, where 1 − exp(L) keeps no digit in float32, +0 at 0, 1 at the clamp."""
    from alma_plugin.distances._ssim import _one_minus_exp

    logs = -np.concatenate([[0.0], np.logspace(-12, np.log10(18.5), 40)]).astype(np.float32)
    ours = _one_minus_exp(_backend(backend)(logs)).numpy()
    assert ours.dtype == np.float32 and ours[0] == 0 and not np.signbit(ours[0])
    np.testing.assert_allclose(ours, -np.expm1(logs.astype(np.float64)), rtol=2e-6)


# MS-SSIM where its edge cases act (a factor small but above the 1e-8 clamp; a constant
# shift, whose local variance of x̃ − x rounds below 0 in float32)


def test_a_factor_just_above_the_clamp_counts_with_its_value() -> None:
    """x̃ nearly constant (0.4971·x + 0.5029·(1 − x)): the finest scale's cs is ≈ 2e-5, above
    the 1e-8 clamp, so it counts as itself, (2e-5)^0.0448 = 0.62, not as the clamp's 0.44."""
    x = np.random.default_rng(0).uniform(0, 1, (176, 176))
    t = 0.4971
    x_adv = t * x + (1 - t) * (1 - x)
    finest = _reference_ms_ssim_factors(x_adv, x, MS_SSIM_WEIGHTS)[0]
    assert 1e-7 < finest < 1e-3
    ours = ms_ssim_index(
        ep.astensor(torch.from_numpy(x_adv)[None, None]),
        ep.astensor(torch.from_numpy(x)[None, None]),
    )
    np.testing.assert_allclose(
        ours.raw.numpy(), [_reference_ms_ssim(x_adv[None], x[None], MS_SSIM_WEIGHTS)], rtol=1e-9
    )


def test_a_constant_shift_keeps_float32_precision() -> None:
    """x̃ = x + 0.3: the local variance of x̃ − x is 0, and rounds to −4e-8 in float32;
    counted as such it made 1 − MS-SSIM 2.6e-4 (relative) off. Against the float64
    reference, float32 agrees to 1e-5."""
    x = np.random.default_rng(1).uniform(0, 0.5, (176, 176))
    x_adv = x + 0.3
    expected = 1 - _reference_ms_ssim(x_adv[None], x[None], MS_SSIM_WEIGHTS)
    ours = msssim(
        torch.from_numpy(x_adv).float()[None, None], torch.from_numpy(x).float()[None, None]
    )
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.double().numpy(), [expected], rtol=1e-5)
