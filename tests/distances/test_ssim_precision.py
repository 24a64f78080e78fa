"""MS-SSIM against a scipy.ndimage reference where its edge cases act: a factor small but
above the 1e-8 clamp, and a constant shift, whose local variance of x̃ − x rounds below 0."""

from __future__ import annotations

from collections.abc import Sequence

import eagerpy as ep
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from alma_plugin.distances import MS_SSIM_WEIGHTS, msssim
from alma_plugin.distances._ssim import ms_ssim_index

C1, C2 = 0.01**2, 0.03**2


def _filter(image: np.ndarray) -> np.ndarray:
    """scikit-image's SSIM window (σ = 1.5, truncated at 3.5 σ), valid part only."""
    return gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]


def _pool(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def _factors(p: np.ndarray, q: np.ndarray, weights: Sequence[float]) -> list[float]:
    """The mean cs of each scale (l·cs at the coarsest) of one grey pair (Wang et al. 2003),
    in float64, before the clamp."""
    factors = []
    for scale in range(len(weights)):
        mp, mq = _filter(p), _filter(q)
        vp, vq, cov = _filter(p * p) - mp**2, _filter(q * q) - mq**2, _filter(p * q) - mp * mq
        cs = (2 * cov + C2) / (vp + vq + C2)
        if scale == len(weights) - 1:
            cs = cs * (2 * mp * mq + C1) / (mp**2 + mq**2 + C1)
        factors.append(float(cs.mean()))
        p, q = _pool(p), _pool(q)
    return factors


def _reference(p: np.ndarray, q: np.ndarray) -> float:
    """MS-SSIM with each factor clamped below at 1e-8 (the module's documented rule)."""
    factors = _factors(p, q, MS_SSIM_WEIGHTS)
    return float(
        np.prod([max(f, 1e-8) ** b for f, b in zip(factors, MS_SSIM_WEIGHTS, strict=True)])
    )


def test_a_factor_just_above_the_clamp_counts_with_its_value() -> None:
    """x̃ nearly constant (0.4971·x + 0.5029·(1 − x)): the finest scale's cs is ≈ 2e-5, above
    the 1e-8 clamp, so it counts as itself, (2e-5)^0.0448 = 0.62, not as the clamp's 0.44."""
    x = np.random.default_rng(0).uniform(0, 1, (176, 176))
    t = 0.4971
    x_adv = t * x + (1 - t) * (1 - x)
    finest = _factors(x_adv, x, MS_SSIM_WEIGHTS)[0]
    assert 1e-7 < finest < 1e-3
    ours = ms_ssim_index(
        ep.astensor(torch.from_numpy(x_adv)[None, None]),
        ep.astensor(torch.from_numpy(x)[None, None]),
    )
    np.testing.assert_allclose(ours.raw.numpy(), [_reference(x_adv, x)], rtol=1e-9)


def test_a_constant_shift_keeps_float32_precision() -> None:
    """x̃ = x + 0.3: the local variance of x̃ − x is 0, and rounds to −4e-8 in float32;
    counted as such it made 1 − MS-SSIM 2.6e-4 (relative) off. Against the float64
    reference, float32 agrees to 1e-5."""
    x = np.random.default_rng(1).uniform(0, 0.5, (176, 176))
    x_adv = x + 0.3
    expected = 1 - _reference(x_adv, x)
    ours = msssim(
        torch.from_numpy(x_adv).float()[None, None], torch.from_numpy(x).float()[None, None]
    )
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.double().numpy(), [expected], rtol=1e-5)
