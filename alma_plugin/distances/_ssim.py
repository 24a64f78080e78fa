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
factor is clamped below at 1e-8 so that the fractional powers stay differentiable. Two
departures from pytorch-msssim, which the tests compare with at 192 px and small
perturbations (where they agree to ~3e-6): a negative cs (images anti-correlated at some
scale, far from any adversarial) counts as 1e-8 here and as 0 there (a checkerboard flip of a
smooth image: 0.562 against 1.0); and pytorch-msssim pads an odd side before pooling where
this drops the last row / column (1.2 % apart at 177 × 181, 0.07 % at 227 px).
The coarsest scale must still hold one 11×11 window, so images need
``min(H, W) ≥ 11 · 2^(M−1)`` = **176** pixels for the default five scales; smaller images
raise ``ValueError`` (the internal :func:`ms_ssim_index` takes fewer ``weights`` for fewer
scales, e.g. three weights need 44).

Both dissimilarities are formed from the maps 1 − l and 1 − cs, written with the moments of the
difference x̃ − x, and from log1p and 1 − exp (as −2 tanh(L/2) / (1 − tanh(L/2))) for MS-SSIM —
never as 1 minus a number close to 1: they are ≥ 0, exactly 0 for identical images, and keep
their relative precision in float32 for nearly identical ones.

**Window coverage and the attacks.** Valid windows do not weigh all pixels alike: pixel i of a
side of length n lies in the windows centred at i − 5 … i + 5 that fit, so its total Gaussian
weight is Σ wₖ over those windows: 1 in the interior, 0.63 five pixels in, w₋₅ ≈ 0.001 at an
edge and ≈ 1e-6 at a corner. Changing the outer pixels therefore costs almost no SSIM, and an
attack that descends 1 − SSIM puts its perturbation there: coloured borders and corners on
32×32 CIFAR images, with all of the energy within 5 px of the border (``alma-bench border``).

``padding="symmetric"`` computes SSIM with full coverage: the moments are filtered with a
half-sample symmetric extension of the image (``d c b a | a b c d``, scipy's
``mode="reflect"``) and the SSIM map is averaged over **all** H × W window centres. Every column
of that filter sums to 1 (the mirrored taps of a border pixel make up exactly the weight of its
missing windows), so every pixel has the same total weight. The value is the mean of
scikit-image's full SSIM map (``structural_similarity(..., full=True)[1]``), whose central crop
is the valid SSIM: a distance with an outside reference, defined the same way at every scale of
MS-SSIM.

The distances :func:`ssim` / :func:`msssim` stay the exact, scikit-image-compatible ones
(``padding="valid"``) unless asked otherwise. What the attacks *descend* is
:func:`ssim_objective` / :func:`msssim_objective` (the registry's ``DistanceSpec.objective``):
its **value is the exact valid-window distance**, so the best iterate, the ε of the first step,
``early_stop``, the reported distances and every success an attack claims are judged with the
exact SSIM; its **gradient is that of the full-coverage SSIM**, which has no cheap border.
(Descending the full-coverage SSIM *value* as well would make the attack report and compare a
distance other than the one it is checked against.) An alternative measured and not chosen:
the valid gradient divided per pixel by its coverage (up to ×10⁶ at the corners), which has no
objective behind it, relies on RMSProp's normalisation to stay tame and has no simple MS-SSIM
analogue (measured on the 20 CIFAR samples: border ratio 0.92 against 0.81, median exact
1 − SSIM 1.1e-3 against 1.4e-3; on synthetic images neither was consistently lower).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import eagerpy as ep

from ._common import (
    DistanceFunction,
    apply_distance,
    distance_function,
    flatten,
    stop_gradient,
    zero_where,
)
from ._gaussian import (
    SIGMA,
    WINDOW,
    filter_matrices,
    gaussian_filter,
    gaussian_window,
    symmetric_filter_matrix,
    valid_filter_matrix,
)

T = TypeVar("T")

K1 = 0.01
K2 = 0.03
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: The window placements: ``"valid"`` (scikit-image's mean: windows inside the image only) and
#: ``"symmetric"`` (full coverage: one window per pixel, symmetric extension at the border).
PADDINGS: tuple[str, ...] = ("valid", "symmetric")
_CLAMP = 1e-8
_LOG_CLAMP = math.log(_CLAMP)


def check_padding(padding: str) -> str:
    """``padding`` folded to lower case if it is one of :data:`PADDINGS` (as every option name
    of the package: distances, penalties, schedules), else an error naming it (TypeError for a
    non-string)."""
    if not isinstance(padding, str):
        raise TypeError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")
    if padding.lower() not in PADDINGS:
        raise ValueError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")
    return padding.lower()


#: The distances whose attacks take a ``padding`` (the windows whose gradient they descend).
PADDED_DISTANCES: tuple[str, ...] = ("ssim", "msssim")


def check_padding_for(distance: str, padding: str | None) -> str | None:
    """``padding`` as given to an attack on ``distance`` (a registry name): None (the
    distance's default descent, ``"symmetric"`` for SSIM / MS-SSIM), or one of
    :data:`PADDINGS` for a distance of :data:`PADDED_DISTANCES`; else a ValueError naming
    ``padding``, its value and the distance."""
    if padding is None:
        return None
    padding = check_padding(padding)
    if distance not in PADDED_DISTANCES:
        raise ValueError(
            f"padding= is only used with distance='ssim' or 'msssim', got padding={padding!r} "
            f"with distance={distance!r}"
        )
    return padding


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
    if x.shape[1] == 0:  # a mean over no channel is NaN, not a distance
        raise ValueError(f"images must have at least one channel, got x.shape={tuple(x.shape)}")
    if min(x.shape[2], x.shape[3]) < min_size:
        layout = " (channels last? the layout is (N, C, H, W))" if x.shape[1] > x.shape[3] else ""
        raise ValueError(
            f"images must be at least {min_size}×{min_size} pixels, got "
            f"x.shape={tuple(x.shape)}{layout}"
        )


def _ssim_gaps(
    x_adv: ep.Tensor, d: ep.Tensor, data_range: float, padding: str = "valid"
) -> tuple[ep.Tensor, ep.Tensor]:
    """The maps 1 − l and 1 − cs of x̃ and x = x̃ − d, from x̃ and the difference d (given, so
    that MS-SSIM's coarser scales pool d itself rather than subtract two pooled images); shape
    (N, C, H − 10, W − 10) for valid windows, (N, C, H, W) for symmetric padding; ≥ 0, and
    exactly 0 where d = 0.

    With d = x̃ − x they are differences of squares written as squares:

        1 − l  = μ_d² / (μ_x̃² + μₓ² + C₁),     1 − cs = σ_d² / (σ_x̃² + σₓ² + C₂),

    (σ_d² = σ_x̃² + σₓ² − 2σ_x̃ₓ). Forming l and cs and subtracting them from 1 cancels the
    digits of a small distance: in float32, 1 − MS-SSIM of images 10⁻⁴ apart was 7× its value,
    at D ≈ 3·10⁻⁵ (the ε of ALMA's first step) 14 % off. The moments of d keep them.
    """
    rows, cols_t = filter_matrices(x_adv, padding)

    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    # The five local moments in one filter pass: (5, N, C, H, W) → (5·N, C, H, W).
    n, c, h, w = x_adv.shape
    moments = ep.stack([x_adv, d, x_adv * x_adv, d * d, x_adv * d], axis=0)
    filtered = gaussian_filter(moments.reshape((5 * n, c, h, w)), rows, cols_t)
    filtered = filtered.reshape((5, n, c, filtered.shape[2], filtered.shape[3]))
    mu_a, mu_d, e_aa, e_dd, e_ad = (filtered[k] for k in range(5))
    mu_x = mu_a - mu_d
    var_a = e_aa - mu_a * mu_a
    var_d = e_dd - mu_d * mu_d
    var_d = zero_where(var_d < 0, var_d)  # a variance (≥ 0); rounding can dip below
    var_x = var_a - 2 * (e_ad - mu_a * mu_d) + var_d  # Var(x̃ − d)
    one_minus_l = mu_d * mu_d / (mu_a * mu_a + mu_x * mu_x + c1)
    one_minus_cs = var_d / (var_a + var_x + c2)
    return one_minus_l, one_minus_cs


def _ssim_gap(
    x_adv: ep.Tensor, x: ep.Tensor, data_range: float = 1.0, padding: str = "valid"
) -> ep.Tensor:
    """1 − SSIM(x̃, x) per sample, shape (N,), without cancellation: ≥ 0, 0 where x̃ = x."""
    padding = check_padding(padding)
    _check_images(x_adv, x, WINDOW)
    one_minus_l, one_minus_cs = _ssim_gaps(x_adv, x_adv - x, data_range, padding)
    # 1 − l·cs = (1 − l) + l·(1 − cs)
    return flatten(one_minus_l + (1 - one_minus_l) * one_minus_cs).mean(axis=1)


def ssim_index(
    x_adv: ep.Tensor, x: ep.Tensor, data_range: float = 1.0, padding: str = "valid"
) -> ep.Tensor:
    """SSIM(x̃, x) per sample, shape (N,): mean of l·cs over the windows and channels.

    Args:
        x_adv: images x̃, shape (N, C, H, W) with H, W ≥ 11 (C = 1 grey, 3 colour, …).
        x: reference images x, same shape.
        data_range: L, the dynamic range of the values (1 for [0, 1] images).
        padding: ``"valid"`` (scikit-image's value) or ``"symmetric"`` (full coverage: the
            mean of scikit-image's full SSIM map), see the module docstring.
    """
    return 1 - _ssim_gap(x_adv, x, data_range, padding)


def _ssim_distance(x_adv: ep.Tensor, x: ep.Tensor, padding: str = "valid") -> ep.Tensor:
    return _ssim_gap(x_adv, x, padding=padding)


def ssim(x_adv: T, x: T, *, padding: str = "valid") -> T:
    """SSIM dissimilarity ``1 − SSIM(x̃, x)`` per sample, shape (N,); 0 where x̃ = x.

    Images of shape (N, C, H, W) with H, W ≥ 11, values in [0, 1] (data range 1).
    ``padding="valid"`` (default) is scikit-image's SSIM; ``"symmetric"`` averages over one
    window per pixel with a symmetric extension at the border (full coverage).
    """
    padding = check_padding(padding)
    return cast(
        T, apply_distance(functools.partial(_ssim_distance, padding=padding), x_adv, x, "ssim")
    )


# What the solvers' loops call for ``padding="valid"`` (:func:`._common.unchecked`): the
# exact distance without the contract, whose range check would read the host every step.
ssim.unchecked = _ssim_distance  # type: ignore[attr-defined]


def _average_pool2(x: ep.Tensor) -> ep.Tensor:
    n, c, h, w = x.shape
    x = x[:, :, : 2 * (h // 2), : 2 * (w // 2)]
    return x.reshape((n, c, h // 2, 2, w // 2, 2)).mean(axis=(3, 5))


def ms_ssim_min_size(num_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest side length for which ``num_scales`` scales each hold one 11×11 window."""
    if isinstance(num_scales, bool) or not isinstance(num_scales, numbers.Integral):
        raise TypeError(f"num_scales must be an integer, got {num_scales!r}")
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales!r}")
    return WINDOW * 2 ** (int(num_scales) - 1)


def ms_ssim_index(
    x_adv: ep.Tensor,
    x: ep.Tensor,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    data_range: float = 1.0,
    padding: str = "valid",
) -> ep.Tensor:
    """MS-SSIM(x̃, x) per sample, shape (N,).

    Args:
        x_adv: images x̃, shape (N, C, H, W) with min(H, W) ≥ 11 · 2^(M−1) (176 for M = 5).
        x: reference images x, same shape.
        weights: the exponents β₁ … β_M, finest scale first; their number is M.
        data_range: L, the dynamic range of the values.
        padding: the windows of every scale, ``"valid"`` or ``"symmetric"`` (full coverage);
            the size requirement is the same for both.
    """
    return 1 - _ms_ssim_gap(x_adv, x, weights, data_range, padding)


def _one_minus_exp(log: ep.Tensor) -> ep.Tensor:
    """1 − eᴸ for L ≤ 0, to full relative precision near 0 (−expm1, which eagerpy lacks):
    −2t / (1 − t) with t = tanh(L / 2) ∈ (−1, 0], a quotient without cancellation."""
    t = (log / 2).tanh()
    return -2 * t / (1 - t)


def _ms_ssim_gap(
    x_adv: ep.Tensor,
    x: ep.Tensor,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    data_range: float = 1.0,
    padding: str = "valid",
) -> ep.Tensor:
    """1 − MS-SSIM(x̃, x) per sample, shape (N,), without cancellation (arguments as for
    :func:`ms_ssim_index`): ≥ 0, 0 where x̃ = x."""
    padding = check_padding(padding)
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
    d = x_adv - x
    for scale, beta in enumerate(weights):
        one_minus_l, one_minus_cs = _ssim_gaps(x_adv, d, data_range, padding)
        last = scale == len(weights) - 1
        # 1 − l·cs = (1 − l) + l·(1 − cs) at the coarsest scale, 1 − cs at the others.
        term = one_minus_l + (1 - one_minus_l) * one_minus_cs if last else one_minus_cs
        gap = flatten(term, 2).mean(axis=2)  # (N, C): 1 − the scale's factor
        # log of the factor, clamped below at 1e-8; log1p keeps the digits of a factor near 1.
        clamped = gap >= 1 - _CLAMP  # False for NaN, which stays NaN
        log_factor = ep.where(clamped, _LOG_CLAMP, (-zero_where(clamped, gap)).log1p())
        weighted = beta * log_factor
        log_index = weighted if log_index is None else log_index + weighted
        if not last:
            x_adv, d = _average_pool2(x_adv), _average_pool2(d)
    assert log_index is not None
    return _one_minus_exp(log_index).mean(axis=1)


def _msssim_distance(x_adv: ep.Tensor, x: ep.Tensor, padding: str = "valid") -> ep.Tensor:
    return _ms_ssim_gap(x_adv, x, padding=padding)


def msssim(x_adv: T, x: T, *, padding: str = "valid") -> T:
    """MS-SSIM dissimilarity ``1 − MS-SSIM(x̃, x)`` per sample (five scales), shape (N,).

    Images of shape (N, C, H, W) with min(H, W) ≥ ``ms_ssim_min_size()`` = 176.
    ``padding`` as for :func:`ssim`, at every scale.
    """
    padding = check_padding(padding)
    return cast(
        T, apply_distance(functools.partial(_msssim_distance, padding=padding), x_adv, x, "msssim")
    )


msssim.unchecked = _msssim_distance  # type: ignore[attr-defined]


def _descent(
    function: Callable[..., ep.Tensor],
) -> Callable[[ep.Tensor, ep.Tensor], ep.Tensor]:
    """Value of ``function(padding="valid")``, gradient of ``function(padding="symmetric")``."""

    def objective(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
        exact = function(stop_gradient(x_adv), stop_gradient(x), padding="valid")
        surrogate = function(x_adv, x, padding="symmetric")
        # exact + (s − s): the value is bit for bit the exact one, the gradient is ∇s.
        return exact + (surrogate - stop_gradient(surrogate))

    return objective


@distance_function(unit_range="ssim")
def ssim_objective(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """What ALMA descends for ``distance="ssim"``: the value of :func:`ssim` (valid windows,
    scikit-image's, bit for bit) with the gradient of ``ssim(..., padding="symmetric")``
    (full coverage), so the attack gets no cheap border. Shape (N,)."""
    return _descent(_ssim_distance)(x_adv, x)


@distance_function(unit_range="msssim")
def msssim_objective(x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
    """What ALMA descends for ``distance="msssim"``: the value of :func:`msssim` with the
    gradient of ``msssim(..., padding="symmetric")``, as :func:`ssim_objective`."""
    return _descent(_msssim_distance)(x_adv, x)


def descent_objective(name: str, padding: str = "symmetric") -> DistanceFunction:
    """The function an attack minimising ``name`` ("ssim" or "msssim") descends: with
    ``padding="symmetric"`` (default) :func:`ssim_objective` / :func:`msssim_objective`, with
    ``"valid"`` the exact distance itself (scikit-image's windows, border included)."""
    padding = check_padding(padding)
    functions = {"ssim": (ssim, ssim_objective), "msssim": (msssim, msssim_objective)}
    if name not in functions:
        raise ValueError(f"name must be 'ssim' or 'msssim', got {name!r}")
    exact, objective = functions[name]
    return objective if padding == "symmetric" else exact


__all__ = [
    "K1",
    "K2",
    "MS_SSIM_WEIGHTS",
    "PADDED_DISTANCES",
    "PADDINGS",
    "SIGMA",
    "check_padding",
    "check_padding_for",
    "descent_objective",
    "gaussian_window",
    "ms_ssim_index",
    "ms_ssim_min_size",
    "msssim",
    "msssim_objective",
    "ssim",
    "ssim_index",
    "ssim_objective",
    "symmetric_filter_matrix",
    "valid_filter_matrix",
]
