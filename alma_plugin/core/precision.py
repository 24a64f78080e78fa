"""A warning for attacks judged through reduced-precision GPU arithmetic (TF32).

On NVIDIA GPUs from Ampere on, PyTorch lets cuDNN run float32 convolutions with TF32 products
(``torch.backends.cudnn.allow_tf32``, True by default) and, when asked, matmuls too
(``torch.set_float32_matmul_precision`` other than "highest", which
``torch.backends.cuda.matmul.allow_tf32 = True`` also sets). TF32
rounds each product's inputs to a 10-bit mantissa, and which kernel cuDNN picks depends on the
batch, so the same image gets logits that differ by ~1e-4 relative from one batch to another.
A minimal attack returns points at the decision boundary, judged on its own batches: measured
on an H100 (SmallCNN, 100 steps, 500 images), 0.8–2.4 % of the reported successes were no
longer adversarial when the images were evaluated one at a time with cuDNN's default, 2–3 % with
TF32 matmuls as well; with TF32 off, none were, and the logits differed by < 3e-6
(``alma-bench reeval``).
"""

from __future__ import annotations

import warnings
from typing import Any

import eagerpy as ep


class ReducedPrecisionWarning(UserWarning):
    """The model's float32 logits are computed with TF32 products on a GPU: successes at the
    decision boundary may not hold when the same images are evaluated in other batches."""


def tf32_settings(
    capability_major: int, cudnn_allow_tf32: bool, matmul_precision: str
) -> list[str]:
    """The PyTorch settings that let float32 products run in TF32 on a CUDA device of compute
    capability ``capability_major``.x (TF32 exists from 8.x, Ampere, on)."""
    if capability_major < 8:
        return []
    found = []
    if cudnn_allow_tf32:
        found.append("torch.backends.cudnn.allow_tf32 = True (convolutions; PyTorch's default)")
    if matmul_precision != "highest":
        found.append(f"torch.get_float32_matmul_precision() = {matmul_precision!r} (matmuls)")
    return found


def warn_if_reduced_precision(inputs: ep.Tensor) -> None:
    """Warn (:class:`ReducedPrecisionWarning`) when float32 PyTorch inputs on a CUDA device
    will be judged through TF32 products (:func:`tf32_settings`). 16-bit models are left
    alone: their rounding is the dtype the caller chose."""
    raw: Any = inputs.raw
    if not isinstance(inputs, ep.PyTorchTensor) or not raw.is_cuda:
        return
    import torch

    if raw.dtype != torch.float32:
        return
    found = tf32_settings(
        torch.cuda.get_device_capability(raw.device)[0],
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    if found:
        warnings.warn(
            f"float32 inputs on {raw.device} with {' and '.join(found)}: the model's logits "
            "are computed with reduced-precision (TF32) products and change by ~1e-4 "
            "(relative) with the batch they are evaluated in. The attack judges success on "
            "its own batches; an adversarial at the decision boundary may not be adversarial "
            "when re-evaluated in another batch (on an H100: 1-3 % of the successes, "
            "evaluated one image at a time). For robustness evaluations set "
            "torch.backends.cudnn.allow_tf32 = False and "
            "torch.set_float32_matmul_precision('highest') before attacking and evaluating.",
            ReducedPrecisionWarning,
            stacklevel=3,
        )
