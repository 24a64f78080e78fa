"""Per-sample differentiable distances D(x̃, x), one function per distance.

The public distances, named as in :data:`DISTANCES` (and as the attacks' ``distance=``):

* ``l1``: ‖x̃ − x‖₁ (sub-gradient 0 at a zero coordinate, on every backend);
* ``l2``: ‖x̃ − x‖₂ (gradient 0, not NaN, at x̃ = x);
* ``linf``: ‖x̃ − x‖∞ (not in :data:`DISTANCES`: the attacks run ALMA prox for it);
* ``ciede2000``: CIEDE2000 colour difference, ℓ2-accumulated over pixels, on the standard
  CIELAB scale (so its ε differs from the paper's, see :data:`CIEDE2000_INIT_LR_DISTANCE`);
* ``ssim``: 1 − SSIM (Gaussian 11×11 window, mean over channels; scikit-image's value, or
  ``padding="symmetric"`` for one window per pixel, see below);
* ``msssim``: 1 − MS-SSIM (five scales; images of at least ``ms_ssim_min_size()`` = 176 px);
* ``lpips``: LPIPS-AlexNet v0.1 with the default weights (PyTorch only); :class:`LPIPS`
  builds the same distance from your own weights.

Every distance maps two batches ``x_adv``, ``x`` of the same shape (N, ...) with values in the
[0, 1]-normalised input space to a tensor of shape (N,), and follows one contract:

* **Tensor types.** Raw PyTorch, JAX, TensorFlow or NumPy tensors, or eagerpy tensors; the
  result has the caller's type (raw in → raw out, eagerpy in → eagerpy out), like Foolbox's
  ``fb.distances``. ``lpips`` / :class:`LPIPS` accept PyTorch only (``TypeError`` otherwise).
* **Dtypes.** Any floating dtype: float16, bfloat16, float32, float64. Distances compute in at
  least float32: 16-bit inputs are promoted, so the result is **float32 for 16-bit inputs and
  the input dtype otherwise** (float64 if either input is float64).
* **Non-finite input.** A sample whose ``x_adv`` or ``x`` holds a NaN or ±Inf has distance NaN
  (never a finite value, never 0); the other samples are unaffected.
* **Bad input** (not a tensor, two frameworks, integer dtypes, different shapes, no batch axis,
  wrong image layout) raises ``TypeError`` / ``ValueError`` naming the argument and its value.
  The perceptual distances (``ciede2000``, ``ssim``, ``msssim``, ``lpips``), defined on images
  in [0, 1], also refuse finite values outside [0, 1] (beyond 10⁻⁵ of rounding) with a
  ``ValueError``: raw (0, 255) or (−1, 1) images would give plausible values, 1.5× to 57× off.
  Inside ``jax.jit`` or a ``tf.function`` nothing can be read, and the range is not checked.
  For other bounds, :class:`alma_plugin.foolbox.distances.NormalisedDistance` maps them.
* **Gradients** are finite everywhere on finite input, and 0 (up to rounding) at x̃ = x.
* **Precision.** D(x, x) is exactly +0, and D ≥ 0. In float32 each distance stays within a stated
  tolerance of its float64 value (``tests/distances/test_distance_properties.py``): ℓp 10⁻⁶,
  SSIM / MS-SSIM 10⁻³ relative however small (they are formed from the moments of x̃ − x, not
  as 1 minus an index), CIEDE2000 10⁻³ relative plus an absolute floor (L*a*b* of x̃ and x are
  computed apart: 10⁻⁴ on 16 px images), LPIPS 10⁻⁶ absolute. On GPUs the SSIM
  products and the LPIPS forward pass run in full float32 whatever the TF32 / bfloat16 modes
  of PyTorch or JAX (they are lifted for the call and restored).

:data:`DISTANCES` maps the names ALMA minimises (all but ``linf``) to a :class:`DistanceSpec`
with the paper's initial step-size target ε (Table 3 of the ALMA paper) and the function the
attacks descend (:attr:`DistanceSpec.objective`). For SSIM and MS-SSIM that objective has the
exact (scikit-image, valid-window) value but the gradient of the full-coverage SSIM
(``padding="symmetric"``): valid windows give the outer 5 pixels almost no weight, and an
attack following their gradient puts its perturbation into the image border (see
:mod:`alma_plugin.distances._ssim`). The LPIPS network
and its weights are loaded on first use, so importing this package needs neither torch nor
weight files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import eagerpy as ep

from ._color import CIEDE2000_INIT_LR_DISTANCE, check_color_input, ciede2000
from ._common import Distance, DistanceFunction, distance_function
from ._lp import l1, l2, linf
from ._ssim import (
    MS_SSIM_WEIGHTS,
    PADDINGS,
    ms_ssim_min_size,
    msssim,
    msssim_objective,
    ssim,
    ssim_objective,
)

if TYPE_CHECKING:
    from ..core.params import ALMAParams
    from ._alexnet import LPIPS_CHANNELS, AlexNetFeatures
    from ._lpips import LPIPS, LPIPSWeightsNotFoundError


@dataclass(frozen=True)
class DistanceSpec:
    """A named distance, its function, its default initial-step target ε (Table 3), the
    default κ of ALMA's smoothed max (``ALMAParams.smooth_max``; not in the paper, 0: DLR⁺'s
    own gradient, Algorithm 2) and the number of runs R of ALMA's default class restarts
    (``ALMAParams.restarts=None``; not in the paper, 1: one run, Algorithm 2).

    ``descent``, if given, is what ALMA minimises instead of ``function``: the same values
    (so reported distances, ε, early stopping and success are ``function``'s) with another
    gradient — for SSIM / MS-SSIM, the full-coverage one (no cheap image border).
    """

    name: str
    function: DistanceFunction
    init_lr_distance: float
    needs_color: bool = False
    descent: DistanceFunction | None = None
    smooth_max: float = 0.0
    class_restarts: int = 1

    def alma_params(
        self, params: ALMAParams, steps: int, targeted: bool = False, classes: int | None = None
    ) -> ALMAParams:
        """``params`` with every None resolved for ``steps`` steps of an untargeted or
        ``targeted`` attack on this distance and a model with ``classes`` = K classes (None:
        not known yet) (:meth:`ALMAParams.for_budget` with this spec's ε, κ and class
        restarts): what ``alma()`` and the Foolbox classes run."""
        return params.for_budget(
            steps, self.init_lr_distance, self.smooth_max, self.class_restarts, targeted, classes
        )

    @property
    def objective(self) -> DistanceFunction:
        """The function ALMA descends: :attr:`descent`, or :attr:`function` when None."""
        return self.function if self.descent is None else self.descent


@distance_function(unit_range="lpips")
def lpips(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """LPIPS-AlexNet (v0.1) per sample with the default weights, loaded on first call.

    The weights are looked for, never downloaded (see :class:`LPIPS`); without them this raises
    :class:`LPIPSWeightsNotFoundError`. PyTorch tensors only, RGB images of at least 31×31
    pixels (``ValueError`` otherwise, before the weights are looked for).
    """
    from ._lpips import check_lpips_input, default_lpips

    check_lpips_input(x_adv)  # before looking for weights
    return default_lpips().eager_distance(x_adv, x)


#: κ of ALMA's smoothed max (``ALMAParams.smooth_max``) is 0.1 where it was measured to lower
#: the minimal distances, 0 (DLR⁺'s own gradient) elsewhere. κ = 0.1 against 0, mean log ratio
#: per sample, 100 steps, the MNIST SmallCNNs (PGD-trained / regular; docs/performance.md,
#: "ALMA with a smoothed max"): ℓ1 −4.4 % / −10.6 %, ℓ2 −1.1 % / −3.8 % (1951 / 1970
#: images), CIEDE2000 −4.1 % / −8.5 % and LPIPS (seeded random weights) −22 % / −40 % (MNIST in
#: three grey channels, 300 / 200 images), MS-SSIM −1.2 % / −30.3 % (MNIST upsampled 7× to
#: 196 px, 300 images: level on the PGD-trained model). SSIM stays 0: −7.7 % / +13.6 % (500
#: images), worse on the regular model.
#: Class restarts by default (``class_restarts=2``, see ``ALMAParams.restarts``) for ℓ1 and ℓ2,
#: where they were measured to lower the minimal distances from 100 steps on; not for SSIM (+39
#: to +59 % on the regular model at 100 steps) nor CIEDE2000 (level by median at 100 steps),
#: and not measured with real LPIPS or MS-SSIM weights and images (docs/performance.md, "Class
#: restarts on the perceptual distances").
DISTANCES: dict[str, DistanceSpec] = {
    "l1": DistanceSpec("l1", l1, 0.5, smooth_max=0.1, class_restarts=2),
    "l2": DistanceSpec("l2", l2, 0.1, smooth_max=0.1, class_restarts=2),
    "ciede2000": DistanceSpec(
        "ciede2000", ciede2000, CIEDE2000_INIT_LR_DISTANCE, True, smooth_max=0.1
    ),
    # The attacks descend the full-coverage SSIM's gradient; the values stay scikit-image's.
    "ssim": DistanceSpec("ssim", ssim, 3e-5, descent=ssim_objective),
    # MS-SSIM is not in the paper; 1 − MS-SSIM is of the same order as 1 − SSIM.
    "msssim": DistanceSpec("msssim", msssim, 3e-5, descent=msssim_objective, smooth_max=0.1),
    "lpips": DistanceSpec("lpips", lpips, 1e-3, True, smooth_max=0.1),
}


def get_distance(name: str) -> DistanceSpec:
    """Look up a distance by name, with an error that lists the known names."""
    if not isinstance(name, str):
        raise TypeError(f"distance must be one of {sorted(DISTANCES)}, got {name!r}")
    if name.lower() not in DISTANCES:
        raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got {name!r}")
    return DISTANCES[name.lower()]


_TORCH_NAMES = {
    "LPIPS": "._lpips",
    "LPIPSWeightsNotFoundError": "._lpips",
    "AlexNetFeatures": "._alexnet",
    "LPIPS_CHANNELS": "._alexnet",
}


def __getattr__(name: str) -> Any:
    """The LPIPS names, imported (with torch) only when first asked for."""
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(_TORCH_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CIEDE2000_INIT_LR_DISTANCE",
    "DISTANCES",
    "LPIPS",
    "LPIPS_CHANNELS",
    "MS_SSIM_WEIGHTS",
    "PADDINGS",
    "AlexNetFeatures",
    "Distance",
    "DistanceFunction",
    "DistanceSpec",
    "LPIPSWeightsNotFoundError",
    "check_color_input",
    "ciede2000",
    "get_distance",
    "l1",
    "l2",
    "linf",
    "lpips",
    "ms_ssim_min_size",
    "msssim",
    "ssim",
]
