"""CIEDE2000 of pixels that differ in some channels only, against scikit-image: only pixels
equal in all three channels are set to exactly 0."""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import deltaE_ciede2000, rgb2lab

from alma_plugin.distances import ciede2000


def test_pixels_changed_in_one_channel_count_as_scikit_image_measures_them() -> None:
    """Each pixel of x̃ differs from x in one channel (R, G or B by turns) and the rest of the
    pixels are equal: the accumulated distance is (Σₚ ΔE₀₀²)^½ of scikit-image's per-pixel
    ΔE₀₀ (agreement to 2e-4 relative, as documented for natural colours)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 0.9, size=(2, 3, 6, 6))
    x_adv = x.copy()
    for index in range(18):  # one channel of half the pixels of each sample
        row, col = divmod(index, 6)
        x_adv[:, index % 3, row, col] += 0.05
    got = ciede2000(torch.from_numpy(x_adv), torch.from_numpy(x)).numpy()
    per_pixel = deltaE_ciede2000(
        rgb2lab(x_adv.transpose(0, 2, 3, 1)), rgb2lab(x.transpose(0, 2, 3, 1))
    )
    expected = np.sqrt((per_pixel**2).reshape(2, -1).sum(axis=1))
    assert (expected > 1).all()
    np.testing.assert_allclose(got, expected, rtol=2e-4)
