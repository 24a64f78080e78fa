"""Foolbox 3 drop-ins for ALMA on the perceptual distances of the paper (§2.3, §4, Table 3):
CIEDE2000, SSIM, MS-SSIM and LPIPS. Each is :class:`~alma_plugin.foolbox.alma.ALMAAttack` with
its distance; their ``distance`` is a :class:`NormalisedDistance` whose ``clip_perturbation``
really clips.
"""

from __future__ import annotations

import eagerpy as ep
from foolbox.models import Model

from .._entry import check_lpips_framework, checked_lpips
from ..core.keywords import takes_params
from ..core.params import ALMA_STEPS, ALMAParams
from ..distances import MS_SSIM_WEIGHTS, DistanceFunction, ms_ssim_min_size
from ..distances._ssim import check_padding, descent_objective
from .alma import _CONVENTIONS, _REFERENCE, ALMAAttack, _stable_repr

__all__ = ["CIEDE2000ALMA", "LPIPSALMA", "MSSSIMALMA", "SSIMALMA"]


class CIEDE2000ALMA(ALMAAttack):
    __doc__ = (
        """ALMA minimising the CIEDE2000 distance: the ℓ2 norm of per-pixel ΔE₀₀ (§2.3). [#Rony21]_

    As :class:`L2ALMA`; RGB inputs (N, 3, H, W), or (N, H, W, 3) for a channels-last model
    (``model.data_format``), mapped from ``model.bounds`` to [0, 1] (other channel counts raise
    a ValueError). The default ε (``DISTANCES["ciede2000"].init_lr_distance``) is the paper's
    ε = 0.05 re-derived for the standard CIELAB scale of :mod:`alma_plugin.distances`.
    :attr:`distance` is a :class:`NormalisedDistance` whose ``clip_perturbation`` shrinks δ
    until D ≤ ε.
"""
        + _CONVENTIONS
        + _REFERENCE
    )

    distance_name = "ciede2000"


_PADDING = """
    Window coverage (``padding``):
        :attr:`distance` — what the result is measured, clipped to ``epsilons`` and judged
        with — is always the exact, scikit-image-compatible SSIM (valid windows). Valid windows
        give the outer 5 pixels almost no weight, so descending their gradient puts the
        perturbation into the image border and corners. With ``padding="symmetric"``
        (default, also meant by None) the attack descends the gradient of the full-coverage
        SSIM (one window per pixel, symmetric extension: every pixel weighs the same) while
        every value it compares (best iterate, ε of the first step, ``early_stop``) is the
        exact one; ``padding="valid"`` descends the exact SSIM itself (the behaviour of
        scikit-image's windows, border artefact included). See :mod:`alma_plugin.distances._ssim`.
"""


class _SSIMFamily(ALMAAttack):
    """SSIM / MS-SSIM: the ``padding`` of the windows whose gradient the attack descends."""

    @takes_params(ALMAParams)
    def __init__(
        self,
        *,
        steps: int = ALMA_STEPS,
        seed: int = 0,
        padding: str | None = None,
        cuda_graphs: bool = False,
        params: ALMAParams | None = None,
    ) -> None:
        super().__init__(steps=steps, seed=seed, cuda_graphs=cuda_graphs, params=params)
        # None (the signature's default, as alma()'s and torchattacks' ALMA's): "symmetric"
        self.padding = "symmetric" if padding is None else check_padding(padding)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, padding={self.padding!r})"

    def descent_function(self) -> DistanceFunction:
        return descent_objective(self.distance_name, self.padding)


class SSIMALMA(_SSIMFamily):
    __doc__ = (
        """ALMA minimising 1 − SSIM (Appendix G; ε of Table 3). [#Rony21]_

    As :class:`L2ALMA`, with a :class:`NormalisedDistance`; any channel count, images of at
    least 11×11 pixels (one Gaussian window), either layout (``model.data_format``).

    Args:
        padding : ``"symmetric"`` (default, also meant by None) or ``"valid"``: the windows
            whose SSIM gradient the attack descends (see "Window coverage" below).
        steps, seed, cuda_graphs, params, **hyperparameters : as :class:`L2ALMA`.
"""
        + _PADDING
        + _CONVENTIONS
        + _REFERENCE
    )

    distance_name = "ssim"
    min_image_size = ms_ssim_min_size(1)


class MSSSIMALMA(_SSIMFamily):
    __doc__ = (
        """ALMA minimising 1 − MS-SSIM (five scales, Wang, Simoncelli & Bovik 2003). [#Rony21]_

    As :class:`SSIMALMA` (same ε, same ``padding``, applied at every scale), for images of at
    least 176×176 pixels: each of the five scales needs one 11×11 window. Smaller inputs (e.g.
    32×32 CIFAR-10) raise a ValueError before any model call; use :class:`SSIMALMA` for them.
    (Fewer scales would be a different distance, with other weights and no published ε, so
    none is chosen silently.)
"""
        + _PADDING
        + _CONVENTIONS
        + _REFERENCE
    )

    distance_name = "msssim"
    min_image_size = ms_ssim_min_size(len(MS_SSIM_WEIGHTS))

    def check_input_shape(self, inputs: ep.Tensor, model: Model) -> None:
        try:
            super().check_input_shape(inputs, model)
        except ValueError as error:
            raise ValueError(
                f"{error} (five MS-SSIM scales of an 11x11 window); use SSIMALMA for smaller images"
            ) from None


class LPIPSALMA(ALMAAttack):
    __doc__ = (
        """ALMA minimising the LPIPS-AlexNet distance (§4; ε of Table 3). [#Rony21]_

    As :class:`L2ALMA`, with a :class:`NormalisedDistance`; PyTorch models, RGB inputs of at
    least 31×31 pixels.

    Args:
        lpips : the LPIPS network to use, e.g.
            ``alma_plugin.distances.LPIPS(backbone_weights=..., linear_weights=...)``
            (or any callable (x_adv, x) → (N,) on tensors of the model's framework in [0, 1],
            ``torch.Tensor`` for PyTorch). None: the default
            weights, looked for locally on first use (nothing is downloaded).
        steps, seed, cuda_graphs, params, **hyperparameters : as :class:`L2ALMA`.
"""
        + _CONVENTIONS
        + _REFERENCE
    )

    distance_name = "lpips"
    min_image_size = 31  # relu5 of AlexNet needs 31×31 inputs

    @takes_params(ALMAParams)
    def __init__(
        self,
        *,
        steps: int = ALMA_STEPS,
        seed: int = 0,
        lpips: DistanceFunction | None = None,
        cuda_graphs: bool = False,
        params: ALMAParams | None = None,
    ) -> None:
        super().__init__(steps=steps, seed=seed, cuda_graphs=cuda_graphs, params=params)
        self.lpips = lpips
        if lpips is not None:
            checked_lpips(lpips, "lpips")  # a callable, refused now as alma() refuses it
            self.distance_function = lpips

    def check_input_shape(self, inputs: ep.Tensor, model: Model) -> None:
        """RGB images of at least 31×31 pixels, and PyTorch ones unless ``lpips`` is the
        caller's own metric (the package's LPIPS is a torch network)."""
        super().check_input_shape(inputs, model)
        check_lpips_framework(self.lpips, inputs)

    def descent_function(self) -> DistanceFunction:
        """A custom ``lpips`` answers one distance per sample, checked as alma()'s and
        torchattacks' ALMA check it (not an IndexError from deep in the solver)."""
        return (
            super().descent_function() if self.lpips is None else checked_lpips(self.lpips, "lpips")
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, lpips={_stable_repr(self.lpips)})"
