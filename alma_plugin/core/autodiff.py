"""Gradients on eagerpy tensors with only the work ALMA needs.

eagerpy's generic ``value_and_grad`` calls ``loss.backward()`` for PyTorch, which also computes
and accumulates gradients into every model parameter's ``.grad``: extra work each step and a
side effect on the caller's model. For PyTorch we ask autograd for the input gradient only.
Other frameworks (JAX, TensorFlow) go through eagerpy's own implementation.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import eagerpy as ep

from ..distances._common import stop_gradient

__all__ = ["autograd_allowed", "check_differentiable", "stop_gradient", "value_aux_and_grad"]

F = TypeVar("F", bound=Callable[..., Any])

LossWithAux = Callable[[ep.Tensor], tuple[ep.Tensor, Any]]


def _detach_tree(value: Any) -> Any:
    if isinstance(value, ep.PyTorchTensor):
        return ep.astensor(value.raw.detach())
    if isinstance(value, tuple):
        return tuple(_detach_tree(v) for v in value)
    return value


def value_aux_and_grad(loss_fn: LossWithAux, x: ep.Tensor) -> tuple[ep.Tensor, Any, ep.Tensor]:
    """Return ``(loss, aux, ∇ₓ loss)`` for a scalar ``loss`` given by ``loss_fn(x) = (loss, aux)``.

    ``aux`` comes back detached from the graph. Exactly one backward propagation is made.
    """
    if isinstance(x, ep.PyTorchTensor):
        import torch

        leaf = x.raw.detach().requires_grad_(True)
        with torch.enable_grad():
            loss, aux = loss_fn(ep.astensor(leaf))
            # a loss that does not depend on x (logits that ignore the input) has gradient 0,
            # as in JAX and TensorFlow
            (grad,) = torch.autograd.grad(loss.raw, leaf, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(leaf)
        return ep.astensor(loss.raw.detach()), _detach_tree(aux), ep.astensor(grad)
    if isinstance(x, ep.TensorFlowTensor):  # eagerpy's fails on the None of an unused input
        import tensorflow as tf

        watched = tf.identity(x.raw)  # as eagerpy: independent of other uses of x's tensor
        with tf.GradientTape() as tape:
            tape.watch(watched)
            loss, aux = loss_fn(ep.astensor(watched))
        zero = tf.UnconnectedGradients.ZERO  # logits that ignore the input: gradient 0
        return loss, aux, ep.astensor(tape.gradient(loss.raw, watched, unconnected_gradients=zero))
    return ep.value_aux_and_grad(loss_fn, x)


def check_differentiable(outputs: ep.Tensor) -> None:
    """Raise a clear error when a PyTorch model's outputs do not depend differentiably on its
    input (``torch.no_grad()`` inside the model, ``.detach()``, argmax one-hot outputs): the
    attack would otherwise follow the distance's gradient alone and silently find nothing.
    (Other frameworks give a zero gradient; the solver then takes a random direction.)"""
    if isinstance(outputs, ep.PyTorchTensor) and not outputs.raw.requires_grad:
        raise ValueError(
            "model outputs must be differentiable with respect to the inputs, got a tensor "
            "that does not require grad (is the model run under torch.no_grad(), detached, or "
            "piecewise constant?)"
        )


def autograd_allowed(function: F) -> F:
    """Run an entry point outside PyTorch's ``inference_mode``, where autograd is off and its
    tensors cannot be differentiated: an attack called in an evaluation loop under
    ``torch.inference_mode()`` works as under ``torch.no_grad()`` (which the gradient steps
    lift themselves). Inference tensors given as inputs are copied by the input checks."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is None or not torch.is_inference_mode_enabled():
            return function(*args, **kwargs)
        with torch.inference_mode(False):
            return function(*args, **kwargs)

    return call  # type: ignore[return-value]
