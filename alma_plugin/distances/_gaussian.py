"""Gaussian filtering as matrix products: the 11-tap window of SSIM (σ = 1.5, scikit-image's
truncation at 3.5 σ) applied along each side of an image by a banded matrix, for valid windows
(scikit-image's SSIM) or with a half-sample symmetric extension (full coverage).

Matrix products differentiate in every eagerpy framework and cost one BLAS call per side. The
matrices are built in NumPy (float64, cached per size) and, for PyTorch, kept on each device and
dtype they were asked for (:func:`filter_matrices`).
"""

from __future__ import annotations

import functools

import eagerpy as ep
import numpy as np

from ._common import full_precision_cuda, without_autocast

SIGMA = 1.5
RADIUS = 5  # int(3.5 σ + 0.5): scikit-image's truncation, an 11-tap window
WINDOW = 2 * RADIUS + 1


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


def symmetric_filter_matrix(size: int, sigma: float = SIGMA, radius: int = RADIUS) -> np.ndarray:
    """size × size matrix S with (S v)ᵢ = Σₖ wₖ v[m(i + k)], m the half-sample symmetric
    extension (m(−1) = 0, m(size) = size − 1): scipy's ``gaussian_filter(mode="reflect")``.
    Its rows radius … size − radius − 1 are :func:`valid_filter_matrix`; every row and every
    column sums to 1."""
    return _symmetric_filter_matrix(size, sigma, radius).copy()


@functools.lru_cache(maxsize=64)
def _symmetric_filter_matrix(size: int, sigma: float, radius: int) -> np.ndarray:
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    w = gaussian_window(sigma, radius)
    matrix = np.zeros((size, size), dtype=np.float64)
    for i in range(size):
        for k in range(-radius, radius + 1):
            j = i + k
            while not 0 <= j < size:  # reflect (repeatedly, for sides shorter than the window)
                j = -1 - j if j < 0 else 2 * size - 1 - j
            matrix[i, j] += w[k + radius]
    return matrix


def full_precision_matmul(a: ep.Tensor, b: ep.Tensor) -> ep.Tensor:
    """a @ b with float32 products in full precision on every device.

    Reduced-precision matrix products round their float32 inputs to 10 (TF32) or 8 (bfloat16)
    bits of mantissa: on a GPU with ``torch.set_float32_matmul_precision("high")`` (or
    ``torch.backends.cuda.matmul.allow_tf32 = True``), 1 − SSIM came out 2.5–4.5 % off at every
    size (measured on an H100), and JAX rounds float32 products so on GPUs and TPUs by default.
    PyTorch's setting is lifted for the call on a CUDA tensor
    (:func:`._common.full_precision_cuda`), and the caller's ``torch.autocast`` with it
    (:func:`._common.without_autocast`); JAX is asked for ``Precision.HIGHEST``. On a CPU
    outside autocast both are exact anyway: the same bits as a plain product."""
    if isinstance(a, ep.JAXTensor):
        import jax

        return ep.astensor(jax.numpy.matmul(a.raw, b.raw, precision=jax.lax.Precision.HIGHEST))
    if isinstance(a, ep.PyTorchTensor) and a.raw.is_cuda:
        with without_autocast(a.raw), full_precision_cuda(matmul=True):
            return ep.matmul(a, b)
    with without_autocast(a.raw):
        return ep.matmul(a, b)


def gaussian_filter(x: ep.Tensor, rows: ep.Tensor, cols_t: ep.Tensor) -> ep.Tensor:
    """Separable valid filter ``rows @ x @ cols_t`` on (N, C, H, W), as 2-D matrix products in
    full float32 precision (:func:`full_precision_matmul`)."""
    n, c, h, w = x.shape
    h_out, w_out = rows.shape[0], cols_t.shape[1]
    # Along W: (N·C·H, W) @ (W, W').
    x = full_precision_matmul(x.reshape((n * c * h, w)), cols_t).reshape((n, c, h, w_out))
    # Along H: (H', H) @ (H, N·C·W').
    x = x.transpose((2, 0, 1, 3)).reshape((h, n * c * w_out))
    x = full_precision_matmul(rows, x).reshape((h_out, n, c, w_out))
    return x.transpose((1, 2, 0, 3))


_TORCH_MATRICES: dict[tuple[object, ...], tuple[ep.Tensor, ep.Tensor]] = {}
_TORCH_MATRICES_MAX = 64


def filter_matrices(x: ep.Tensor, padding: str) -> tuple[ep.Tensor, ep.Tensor]:
    """The filter matrices of :func:`gaussian_filter` for images like ``x``: rows (H' × H) and
    the transposed columns (W × W'), in x's framework, dtype and device.

    PyTorch's are kept per (device, dtype, size, padding): on a GPU a host → device copy is a
    synchronisation, and SSIM copied four matrices per call (twenty per MS-SSIM call), every
    step of the attack. Other frameworks build them at each call: a JAX or TensorFlow tensor made
    while tracing a compiled function must not outlive that trace."""
    height, width = x.shape[2], x.shape[3]
    key: tuple[object, ...] | None = None
    if isinstance(x, ep.PyTorchTensor):
        key = (x.raw.device, x.raw.dtype, height, width, padding)
        if key in _TORCH_MATRICES:
            return _TORCH_MATRICES[key]
    matrix = _valid_filter_matrix if padding == "valid" else _symmetric_filter_matrix

    def build() -> tuple[ep.Tensor, ep.Tensor]:
        rows = ep.from_numpy(x, matrix(height, SIGMA, RADIUS)).astype(x.dtype)
        cols_t = ep.from_numpy(x, matrix(width, SIGMA, RADIUS).T.copy()).astype(x.dtype)
        return rows, cols_t

    if key is None:
        return build()
    import torch

    with torch.inference_mode(False):  # kept tensors must serve later calls under autograd too
        built = build()
    if len(_TORCH_MATRICES) >= _TORCH_MATRICES_MAX:
        _TORCH_MATRICES.clear()
    _TORCH_MATRICES[key] = built
    return built


__all__ = [
    "RADIUS",
    "SIGMA",
    "WINDOW",
    "filter_matrices",
    "full_precision_matmul",
    "gaussian_filter",
    "gaussian_window",
    "symmetric_filter_matrix",
    "valid_filter_matrix",
]
