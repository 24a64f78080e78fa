"""The constraints of ALMA prox (thesis eq. 5.3, 5.5): one DLR⁺ per sample in classification,
one per labelled pixel in dense prediction, flattened to (N, M) for the solver."""

from __future__ import annotations

from dataclasses import dataclass

import eagerpy as ep
import numpy as np

from .model_checks import check_logits
from .prox_schedule import least_count

__all__ = ["Constraints", "constraint_logits", "make_constraints"]


@dataclass(frozen=True)
class Constraints:
    """labels: (N, M) class indices (0 on unmasked pixels).  mask: (N, M) bool, the pixels m.
    counts: (N,) ‖m‖₁ as integers.  needed: (N,) satisfied constraints needed for success,
    ⌈ν‖m‖₁⌉ (eq. 5.19).  shape: the labels' original shape.  dense: per-pixel constraints.
    name: what the labels are called in errors ("targets" in a targeted attack)."""

    labels: ep.Tensor
    mask: ep.Tensor
    counts: np.ndarray
    needed: ep.Tensor
    shape: tuple[int, ...]
    dense: bool
    name: str = "labels"


def make_constraints(
    labels: ep.Tensor, masks: ep.Tensor | None, nu: float, like: ep.Tensor, name: str = "labels"
) -> Constraints:
    """Flatten labels (N,) or (N, *S) and the optional masks; check masks and label values
    (``name``: "targets" in a targeted attack)."""
    n = labels.shape[0]
    y = labels.reshape((n, -1))
    if masks is None:
        mask = ep.ones(y, y.shape).astype(bool)
    else:
        values = masks.astype(like.dtype).reshape((n, -1))
        other = ep.logical_and(values != 0, values != 1)  # NaN included
        if bool(other.any().item()):
            wrong = float(ep.where(other, values, 0).abs().max().item())
            raise ValueError(
                f"masks must hold only 0/1 (or boolean) values, got others (largest in "
                f"magnitude: {wrong:g})"
            )
        mask = values > 0
    counts = mask.astype(like.dtype).sum(axis=1).numpy().astype(np.int64)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"masks must select at least one pixel per sample; empty: {empty}")
    y = ep.where(mask, y, 0)  # labels of unmasked pixels (e.g. 255) are ignored
    y = y.astype(ep.arange(y, 1).dtype)  # the framework's index dtype, for the gather
    dense = masks is not None or labels.ndim > 1
    low = int(y.min().item())
    if low < 0:  # ≥ K is checked once the model has answered (constraint_logits)
        where = " on masked pixels" if dense else ""
        raise ValueError(f"{name} must lie in [0, K){where}, K the model's class count, got "
                         f"values in [{low}, {int(y.max().item())}]")  # fmt: skip
    # success (APSR ≥ ν, eq. 5.19) ⇔ #satisfied ≥ the least count k with k / ‖m‖₁ ≥ ν,
    # decided on integers; ν > 0, so at least one constraint, however small ν·‖m‖₁ is
    needed = ep.from_numpy(like, least_count(nu, counts).astype(np.float32))
    return Constraints(y, mask, counts, needed.astype(like.dtype), labels.shape, dense, name)


def constraint_logits(logits: ep.Tensor, c: Constraints, check: bool) -> ep.Tensor:
    """Logits (N, K) or (N, K, *S) as (N, M, K); on the first step (``check``) their shape is
    checked against the labels (K ≥ 2, labels < K)."""
    n = c.labels.shape[0]
    if check:
        if c.dense:
            if logits.ndim < 3 or (logits.shape[0],) + tuple(logits.shape[2:]) != c.shape:
                raise ValueError(
                    f"model outputs must have shape (N, K, *labels.shape[1:]) = (N, K, "
                    f"{', '.join(map(str, c.shape[1:]))}), got shape {tuple(logits.shape)}"
                )
            if logits.shape[1] < 2:
                raise ValueError(
                    f"model outputs must have K >= 2 classes on axis 1, got shape "
                    f"{tuple(logits.shape)}"
                )
            flat = logits.reshape((n, logits.shape[1], -1)).transpose((0, 2, 1))
            # most often an ignore label (255) left unmasked
            check_logits(flat.reshape((-1, logits.shape[1])), c.labels.reshape((-1,)), c.name,
                         hint="; leave unlabelled pixels (an ignore index such as 255) out of "
                         "alma_prox's masks, e.g. alma_prox(..., masks=labels != 255)")  # fmt: skip
        else:
            check_logits(logits, c.labels.reshape((-1,)), c.name)
    if not c.dense:
        return logits.expand_dims(1)
    return logits.reshape((n, logits.shape[1], -1)).transpose((0, 2, 1))
