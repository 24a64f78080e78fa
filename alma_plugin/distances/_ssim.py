"""SSIM and MS-SSIM dissimilarities, per sample and differentiable, on eagerpy tensors.

SSIM (Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 2004) compares local statistics under a Gaussian window w
(11×11, σ = 1.5):

    SSIM(x, y) = mean over windows of  l · cs,
    l  = (2 μₓ μᵧ + C₁) / (μₓ² + μᵧ² + C₁),     cs = (2 σₓᵧ + C₂) / (σₓ² + σᵧ² + C₂),

with C₁ = (K₁ L)², C₂ = (K₂ L)², K₁ = 0.01, K₂ = 0.03, data range L = 1 and population
(weighted) moments. Colour images use the mean over channels (ALMA paper, Appendix G), and the
attack minimises ``1 − SSIM`` (:func:`ssim`; :func:`msssim` for ``1 − MS-SSIM``).

The filter is "valid": only windows lying entirely inside the image are averaged. This is
exactly what ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` computes: it filters the whole image (reflecting
at the border) and then crops a border of ``(win_size − 1) / 2 = 5`` pixels, so every kept
value depends on interior pixels only. The separable Gaussian filter is two matrix products
with banded (H − 10) × H and (W − 10) × W matrices, so the code is framework-neutral.

MS-SSIM (Wang, Simoncelli & Bovik, "Multiscale structural similarity for image quality
assessment", Asilomar 2003) evaluates cs at M = 5 scales, with 2×2 average pooling (stride 2,
an odd last row / column dropped) between scales, and l only at the coarsest one:

    MS-SSIM = ∏ⱼ₌₁ᴹ⁻¹ csⱼ^βⱼ · SSIMᴹ^βᴹ,   β = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333),

per channel, then averaged over channels (as in TensorFlow's ``ssim_multiscale``). Each
factor is clamped below at 1e-8 so that the fractional powers stay differentiable.
The coarsest scale must still hold one 11×11 window, so images need
``min(H, W) ≥ 11 · 2^(M−1)`` = **176** pixels for the default five scales; smaller images
raise ``ValueError`` (the internal :func:`ms_ssim_index` takes fewer ``weights`` for fewer
scales, e.g. three weights need 44).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import eagerpy as ep
import numpy as np

from ._common import distance_function, flatten

K1 = 0.01
K2 = 0.03
SIGMA = 1.5
RADIUS = 5  # int(3.5 σ + 0.5): scikit-image's truncation, an 11-tap window
WINDOW = 2 * RADIUS + 1
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_CLAMP = 1e-8


def gaussian_window(sigma: float = SIGMA, radius: int = RADIUS) -> np.ndarray:
    """Normalised 1-D Gaussian weights wₖ ∝ exp(−k² / 2σ²), k = −radius … radius."""
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


def valid_filter_matrix(size: int, sigma: float = SIGMA, radius: int = RADIUS) -> np.ndarray:
    """Banded (size − 2·radius) × size matrix A with (A v)ᵢ = Σₖ wₖ v[i + radius + k]."""
    return _valid_filter_matrix(size, sigma, radius).copy()


@functools.lru_cache(maxsize=64)
def _valid_filter_matrix(size: int, sigma: float, radius: int) -> np.ndarray:
    out = size - 2 * radius
    if out < 1:
        raise ValueError(f"size must be at least {2 * radius + 1}, got {size}")
    w = gaussian_window(sigma, radius)
    matrix = np.zeros((out, size), dtype=np.float64)
    for i in range(out):
        matrix[i, i : i + 2 * radius + 1] = w
    return matrix


def _check_images(x_adv: ep.Tensor, x: ep.Tensor, min_size: int) -> None:
    for name, t in (("x_adv", x_adv), ("x", x)):
        if t.ndim != 4:
            raise ValueError(
                f"{name} must be a batch of images of shape (N, C, H, W), "
                f"got {name}.shape={tuple(t.shape)}"
            )
    if x_adv.shape != x.shape:
        raise ValueError(
            f"x_adv and x must have the same shape, got {tuple(x_adv.shape)} and {tuple(x.shape)}"
        )
    if min(x.shape[2], x.shape[3]) < min_size:
        raise ValueError(
            f"images must be at least {min_size}×{min_size} pixels, got x.shape={tuple(x.shape)}"
        )


def _gaussian_filter(x: ep.Tensor, rows: ep.Tensor, cols_t: ep.Tensor) -> ep.Tensor:
    """Separable valid filter ``rows @ x @ cols_t`` on (N, C, H, W), as 2-D matrix products."""
    n, c, h, w = x.shape
    h_out, w_out = rows.shape[0], cols_t.shape[1]
    # Along W: (N·C·H, W) @ (W, W').
    x = ep.matmul(x.reshape((n * c * h, w)), cols_t).reshape((n, c, h, w_out))
    # Along H: (H', H) @ (H, N·C·W').
    x = x.transpose((2, 0, 1, 3)).reshape((h, n * c * w_out))
    x = ep.matmul(rows, x).reshape((h_out, n, c, w_out))
    return x.transpose((1, 2, 0, 3))


def _ssim_terms(x_adv: ep.Tensor, x: ep.Tensor, data_range: float) -> tuple[ep.Tensor, ep.Tensor]:
    """Luminance l and contrast-structure cs maps, shape (N, C, H − 10, W − 10)."""
    height, width = x.shape[2], x.shape[3]
    rows = ep.from_numpy(x, _valid_filter_matrix(height, SIGMA, RADIUS)).astype(x.dtype)
    cols_t = ep.from_numpy(x, _valid_filter_matrix(width, SIGMA, RADIUS).T.copy()).astype(x.dtype)

    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    # The five local moments in one filter pass: (5, N, C, H, W) → (5·N, C, H, W).
    n, c, h, w = x.shape
    moments = ep.stack([x_adv, x, x_adv * x_adv, x * x, x_adv * x], axis=0)
    filtered = _gaussian_filter(moments.reshape((5 * n, c, h, w)), rows, cols_t)
    filtered = filtered.reshape((5, n, c, filtered.shape[2], filtered.shape[3]))
    mu_a, mu_b, e_aa, e_bb, e_ab = (filtered[k] for k in range(5))
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    luminance = (2 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1)
    contrast_structure = (2 * cov + c2) / (var_a + var_b + c2)
    return luminance, contrast_structure


def ssim_index(x_adv: ep.Tensor, x: ep.Tensor, data_range: float = 1.0) -> ep.Tensor:
    """SSIM(x̃, x) per sample, shape (N,): mean of l·cs over valid windows and channels.

    Args:
        x_adv: images x̃, shape (N, C, H, W) with H, W ≥ 11 (C = 1 grey, 3 colour, …).
        x: reference images x, same shape.
        data_range: L, the dynamic range of the values (1 for [0, 1] images).
    """
    _check_images(x_adv, x, WINDOW)
    luminance, contrast_structure = _ssim_terms(x_adv, x, data_range)
    return flatten(luminance * contrast_structure).mean(axis=1)


@distance_function
def ssim(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """SSIM dissimilarity ``1 − SSIM(x̃, x)`` per sample, shape (N,); 0 where x̃ = x.

    Images of shape (N, C, H, W) with H, W ≥ 11, values in [0, 1] (data range 1).
    """
    return 1 - ssim_index(x_adv, x)


def _average_pool2(x: ep.Tensor) -> ep.Tensor:
    n, c, h, w = x.shape
    x = x[:, :, : 2 * (h // 2), : 2 * (w // 2)]
    return x.reshape((n, c, h // 2, 2, w // 2, 2)).mean(axis=(3, 5))


def ms_ssim_min_size(num_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest side length for which ``num_scales`` scales each hold one 11×11 window."""
    return WINDOW * 2 ** (num_scales - 1)


def ms_ssim_index(
    x_adv: ep.Tensor,
    x: ep.Tensor,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    data_range: float = 1.0,
) -> ep.Tensor:
    """MS-SSIM(x̃, x) per sample, shape (N,).

    Args:
        x_adv: images x̃, shape (N, C, H, W) with min(H, W) ≥ 11 · 2^(M−1) (176 for M = 5).
        x: reference images x, same shape.
        weights: the exponents β₁ … β_M, finest scale first; their number is M.
        data_range: L, the dynamic range of the values.
    """
    if len(weights) < 1:
        raise ValueError("weights must hold at least one exponent")
    min_size = ms_ssim_min_size(len(weights))
    try:
        _check_images(x_adv, x, min_size)
    except ValueError as error:
        if x_adv.ndim != 4 or x_adv.shape != x.shape:
            raise
        raise ValueError(
            f"{error} for MS-SSIM with {len(weights)} scales (11·2^(M−1)); "
            "use ssim for smaller images"
        ) from None
    log_index: ep.Tensor | None = None
    for scale, beta in enumerate(weights):
        luminance, contrast_structure = _ssim_terms(x_adv, x, data_range)
        last = scale == len(weights) - 1
        term = luminance * contrast_structure if last else contrast_structure
        per_channel = ep.maximum(flatten(term, 2).mean(axis=2), _CLAMP)  # (N, C)
        weighted = beta * per_channel.log()
        log_index = weighted if log_index is None else log_index + weighted
        if not last:
            x_adv, x = _average_pool2(x_adv), _average_pool2(x)
    assert log_index is not None
    return log_index.exp().mean(axis=1)


@distance_function
def msssim(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """MS-SSIM dissimilarity ``1 − MS-SSIM(x̃, x)`` per sample (five scales), shape (N,).

    Images of shape (N, C, H, W) with min(H, W) ≥ ``ms_ssim_min_size()`` = 176.
    """
    return 1 - ms_ssim_index(x_adv, x)


__all__ = [
    "K1",
    "K2",
    "MS_SSIM_WEIGHTS",
    "SIGMA",
    "gaussian_window",
    "ms_ssim_index",
    "ms_ssim_min_size",
    "msssim",
    "ssim",
    "ssim_index",
    "valid_filter_matrix",
]
