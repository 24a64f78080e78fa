"""Per-sample differentiable distances D(x̃, x) on eagerpy tensors.

Every distance maps two batches of shape (N, ...) with values in the [0, 1]-normalised input
space to a tensor of shape (N,). ``DISTANCES`` maps the public names to their specification,
including the paper's initial step-size target ε (Table 3 of the ALMA paper).

Perceptual distances: ``ciede2000`` (standard CIELAB scale, so its ε differs from the paper's,
see :mod:`.color`), ``ssim`` / ``msssim`` (1 − SSIM, 1 − MS-SSIM, :mod:`.ssim`) and ``lpips``
(AlexNet v0.1, PyTorch only, :mod:`.lpips`). The LPIPS network and its weights are loaded on
the first call, so importing this package never needs torch or weight files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import eagerpy as ep

from .color import CIEDE2000_INIT_LR_DISTANCE, check_color_input, ciede2000
from .lp import l1, l2, linf
from .ssim import ms_ssim as ms_ssim_distance
from .ssim import ssim as ssim_distance

DistanceFunction = Callable[[ep.Tensor, ep.Tensor], ep.Tensor]


@dataclass(frozen=True)
class DistanceSpec:
    """A named distance, its function and its default initial-step target ε (Table 3)."""

    name: str
    function: DistanceFunction
    init_lr_distance: float
    needs_color: bool = False


def lpips_distance(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """LPIPS-AlexNet (v0.1) with the default weights; torch and the weights load on first call.

    (The submodules ``ssim`` and ``lpips`` keep their names in this package, hence the
    ``*_distance`` names of the functions exported here.)
    """
    from .lpips import lpips

    return lpips(x_adv, x)


DISTANCES: dict[str, DistanceSpec] = {
    "l1": DistanceSpec("l1", l1, 0.5),
    "l2": DistanceSpec("l2", l2, 0.1),
    "ciede2000": DistanceSpec("ciede2000", ciede2000, CIEDE2000_INIT_LR_DISTANCE, True),
    "ssim": DistanceSpec("ssim", ssim_distance, 3e-5),
    # MS-SSIM is not in the paper; 1 − MS-SSIM is of the same order as 1 − SSIM.
    "msssim": DistanceSpec("msssim", ms_ssim_distance, 3e-5),
    "lpips": DistanceSpec("lpips", lpips_distance, 1e-3, True),
}


def get_distance(name: str) -> DistanceSpec:
    """Look up a distance by name, with an error that lists the known names."""
    if not isinstance(name, str) or name.lower() not in DISTANCES:
        raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got {name!r}")
    return DISTANCES[name.lower()]


__all__ = [
    "DISTANCES",
    "DistanceFunction",
    "DistanceSpec",
    "check_color_input",
    "ciede2000",
    "get_distance",
    "l1",
    "l2",
    "linf",
    "lpips_distance",
    "ms_ssim_distance",
    "ssim_distance",
]
