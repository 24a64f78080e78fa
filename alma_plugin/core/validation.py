"""Argument checks shared by every entry point: clear errors instead of silent wrong answers."""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep

Bounds = tuple[float, float]


def check_bounds(bounds: Any) -> Bounds:
    try:
        lower, upper = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(
            f"bounds must be a pair (lower, upper) of numbers, got {bounds!r}"
        ) from None
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError(f"bounds must be finite with lower < upper, got {bounds!r}")
    return lower, upper


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if open_low else value < low
    too_high = value >= high if open_high else value > high
    if too_low or too_high or math.isnan(value):
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{name} must lie in {left}{low:g}, {high:g}{right}, got {value!r}")
    return float(value)


def check_inputs(inputs: ep.Tensor, bounds: Bounds) -> None:
    """Inputs must be a floating batch (N, ...) of finite values inside the bounds."""
    if inputs.ndim < 2:
        raise ValueError(
            f"inputs must be a batch of shape (N, ...), got shape {tuple(inputs.shape)}"
        )
    if "float" not in str(inputs.dtype):
        raise TypeError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
    if len(inputs) == 0:
        return
    if _has_non_finite(inputs):
        raise ValueError("inputs contain NaN or Inf values")
    lower, upper = bounds
    low, high = inputs.min().item(), inputs.max().item()
    slack = 1e-6 * (upper - lower)
    if low < lower - slack or high > upper + slack:
        raise ValueError(
            f"inputs must lie within bounds {bounds}, got values in [{low:.6g}, {high:.6g}]"
        )


def _has_non_finite(x: ep.Tensor) -> bool:
    return bool(ep.logical_or(x.isnan(), x.isinf()).any().item())


def check_labels(labels: ep.Tensor, batch_size: int, name: str = "labels") -> None:
    """Labels must be integer class indices of shape (N,)."""
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},), got shape {tuple(labels.shape)}")
    if "int" not in str(labels.dtype):
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")


def check_logits(logits: ep.Tensor, labels: ep.Tensor, name: str = "labels") -> None:
    """The model must return (N, K) logits with K ≥ 2 and labels in [0, K)."""
    n = len(labels)
    if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(
            f"model outputs must have shape (N={n}, K>=2) (one logit per class), got shape "
            f"{tuple(logits.shape)}"
        )
    if n:
        low, high = labels.min().item(), labels.max().item()
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(
                f"{name} must lie in [0, {logits.shape[1]}) for a model with "
                f"{logits.shape[1]} classes, got values in [{low}, {high}]"
            )
