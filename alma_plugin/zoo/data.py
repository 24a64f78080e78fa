"""Embedded MNIST data (the held-out test images 9000–9999) and the idx readers used to build it.

The benchmark attacks the held-out MNIST *test* images 9000–9999; the embedded models were
trained on test images 0–8999 (see :mod:`alma_plugin.bench.train_mnist`). The held-out images
ship with the package as a compressed ``.npz`` of ``uint8`` pixels, so nothing outside the
package is needed at run time. The idx readers are only used by the training script.
"""

from __future__ import annotations

import gzip
import io
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "HELDOUT_FILENAME",
    "HELDOUT_START",
    "HELDOUT_STOP",
    "load_mnist_heldout",
    "read_asset",
    "read_idx_images",
    "read_idx_labels",
]

#: First and one-past-last index (in the MNIST test set) of the held-out images.
HELDOUT_START = 9000
HELDOUT_STOP = 10000
#: File name of the held-out asset inside ``alma_plugin/zoo/assets``.
HELDOUT_FILENAME = "mnist_test_9000_9999.npz"

_IDX_UBYTE = 0x08


def read_asset(filename: str) -> bytes:
    """Return the bytes of ``alma_plugin/zoo/assets/<filename>`` (works from an install)."""
    return resources.files("alma_plugin.zoo").joinpath("assets").joinpath(filename).read_bytes()


def _read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte idx file (optionally gzip-compressed) with ``ndim`` dimensions."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file")
    if raw[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: unsupported idx data type 0x{raw[2]:02x} (want unsigned byte)")
    if raw[3] != ndim:
        raise ValueError(f"{path}: expected {ndim} dimensions, found {raw[3]}")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header announces shape {shape}, found {data.size} values")
    return data.reshape(shape)


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read MNIST images from an idx3 file (``.gz`` or not) as a ``(N, 28, 28)`` uint8 array."""
    return _read_idx(path, 3)


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read MNIST labels from an idx1 file (``.gz`` or not) as a ``(N,)`` uint8 array."""
    return _read_idx(path, 1)


def load_mnist_heldout() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the 1000 held-out MNIST test images 9000–9999 and their labels.

    Returns:
        ``(images, labels)``: float32 images of shape ``(1000, 1, 28, 28)`` with values in
        ``[0, 1]`` and int64 labels of shape ``(1000,)``.
    """
    with np.load(io.BytesIO(read_asset(HELDOUT_FILENAME)), allow_pickle=False) as arrays:
        images = arrays["images"]
        labels = arrays["labels"]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
