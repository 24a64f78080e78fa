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
(``alma-bench reeval``). JAX on a GPU computes float32 dots and convolutions in reduced
precision unless ``jax_default_matmul_precision`` asks for full: a small random CNN lost 20 %
of its successes there (none with "highest"; docs/performance.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import eagerpy as ep


class ReducedPrecisionWarning(UserWarning):
    """The model's float32 logits are computed with TF32 products on a GPU: successes at the
    decision boundary may not hold when the same images are evaluated in other batches."""


def torch_settings(
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


#: ``jax_default_matmul_precision`` values that keep float32 products in float32.
JAX_FULL_PRECISION = ("highest", "float32")


def jax_settings(platform: str, capability_major: int | None, precision: str | None) -> list[str]:
    """The JAX setting that lets float32 products run in reduced precision: on a GPU (from
    compute capability 8.x; unknown counts as such), XLA's default precision for float32 dots
    and convolutions is TF32-like unless ``jax_default_matmul_precision`` asks for full."""
    if platform != "gpu" or (capability_major is not None and capability_major < 8):
        return []
    if precision is not None and precision.lower() in JAX_FULL_PRECISION:
        return []
    return [f"jax_default_matmul_precision = {precision!r} (JAX's default on GPUs is not float32)"]


def tensorflow_settings(device: str, tf32_enabled: bool) -> list[str]:
    """The TensorFlow setting that lets float32 products run in TF32: on a GPU,
    ``tf.config.experimental.enable_tensor_float_32_execution`` (True by default; TensorFlow
    uses TF32 only where the GPU has it)."""
    if "GPU" not in device.upper() or not tf32_enabled:
        return []
    return ["TensorFlow's TF32 execution (tf.config.experimental."
            "enable_tensor_float_32_execution, True by default)"]  # fmt: skip


def _found(inputs: ep.Tensor) -> tuple[str, list[str], str]:
    """(the device, the reduced-precision settings in force for float32 ``inputs`` there, the
    remedy); no settings for other dtypes, the CPU and other frameworks."""
    raw: Any = inputs.raw
    if isinstance(inputs, ep.PyTorchTensor) and raw.is_cuda:
        import torch

        if raw.dtype != torch.float32:
            return "", [], ""
        found = torch_settings(
            torch.cuda.get_device_capability(raw.device)[0],
            torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision(),
        )
        remedy = ("torch.backends.cudnn.allow_tf32 = False and "
                  "torch.set_float32_matmul_precision('highest')")  # fmt: skip
        return str(raw.device), found, remedy
    if isinstance(inputs, ep.JAXTensor) and str(raw.dtype) == "float32":
        import jax

        try:
            device = next(iter(raw.devices()))
        except Exception:  # noqa: BLE001 - a traced value has no device: nothing to judge
            return "", [], ""
        capability = str(getattr(device, "compute_capability", None) or "").split(".")[0]
        major = int(capability) if capability.isdigit() else None  # e.g. "9.0" on an H100
        found = jax_settings(
            device.platform, major, getattr(jax.config, "jax_default_matmul_precision", None)
        )
        remedy = "jax.config.update('jax_default_matmul_precision', 'highest')"
        return str(device), found, remedy
    if isinstance(inputs, ep.TensorFlowTensor) and raw.dtype.name == "float32":
        import tensorflow as tf

        enabled = tf.config.experimental.tensor_float_32_execution_enabled()
        found = tensorflow_settings(str(raw.device), enabled)
        remedy = "tf.config.experimental.enable_tensor_float_32_execution(False)"
        return str(raw.device), found, remedy
    return "", [], ""


def warn_if_reduced_precision(inputs: ep.Tensor) -> None:
    """Warn (:class:`ReducedPrecisionWarning`) when float32 inputs on a GPU will be judged
    through reduced-precision products: PyTorch with TF32 allowed (:func:`torch_settings`),
    JAX without full-precision matmuls (:func:`jax_settings`; a model that asks for
    ``Precision.HIGHEST`` in every product of its own is not seen), TensorFlow with TF32
    execution enabled (:func:`tensorflow_settings`; not measured on a GPU). 16-bit models are left
    alone: their rounding is the dtype the caller chose."""
    device, found, remedy = _found(inputs)
    if found:
        warnings.warn(
            f"float32 inputs on {device} with {' and '.join(found)}: the model's logits "
            "are computed with reduced-precision (TF32) products and change by ~1e-4 "
            "(relative) with the batch they are evaluated in. The attack judges success on "
            "its own batches; an adversarial at the decision boundary may not be adversarial "
            "when re-evaluated in another batch (on an H100: 1-3 % of the successes, "
            "evaluated one image at a time with PyTorch, 20 % with JAX). For robustness "
            f"evaluations set {remedy} before attacking and evaluating.",
            ReducedPrecisionWarning,
            stacklevel=3,
        )
