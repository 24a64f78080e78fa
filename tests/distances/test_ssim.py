"""SSIM / MS-SSIM against scikit-image, scipy.ndimage and (if installed) pytorch_msssim."""

from __future__ import annotations

from collections.abc import Sequence

import eagerpy as ep
import numpy as np
import pytest
import skimage.data
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity
from skimage.transform import resize

from alma_plugin.distances import (
    DISTANCES,
    MS_SSIM_WEIGHTS,
    DistanceFunction,
    ms_ssim_min_size,
    msssim,
    ssim,
)

# White-box checks of the package's own internals (the indices before 1 − ·, the filter).
from alma_plugin.distances._ssim import ms_ssim_index, ssim_index, valid_filter_matrix


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
    x_adv = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
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


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray, weights: Sequence[float]) -> float:
    """MS-SSIM of one (C, H, W) pair with scipy.ndimage filtering and numpy pooling."""
    c1, c2 = 0.01**2, 0.03**2

    def filt(image: np.ndarray) -> np.ndarray:
        return gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]

    def pool(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[0] // 2, image.shape[1] // 2
        return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))

    per_channel = []
    for p, q in zip(a, b, strict=True):
        value = 1.0
        for scale, beta in enumerate(weights):
            mp, mq = filt(p), filt(q)
            vp, vq, cov = filt(p * p) - mp**2, filt(q * q) - mq**2, filt(p * q) - mp * mq
            cs = (2 * cov + c2) / (vp + vq + c2)
            if scale == len(weights) - 1:
                cs = cs * (2 * mp * mq + c1) / (mp**2 + mq**2 + c1)
            value *= max(cs.mean(), 1e-8) ** beta
            p, q = pool(p), pool(q)
        per_channel.append(value)
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
    assert DISTANCES["ssim"].init_lr_distance == 3e-5
    assert not DISTANCES["ssim"].needs_color
