"""Per-sample differentiable distances D(x̃, x) on eagerpy tensors.

Every distance maps two batches of shape (N, ...) with values in the [0, 1]-normalised input
space to a tensor of shape (N,). ``DISTANCES`` maps the public names to their specification,
including the paper's initial step-size target ε (Table 3 of the ALMA paper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import eagerpy as ep

from .lp import l1, l2, linf

DistanceFunction = Callable[[ep.Tensor, ep.Tensor], ep.Tensor]


@dataclass(frozen=True)
class DistanceSpec:
    """A named distance, its function and its default initial-step target ε (Table 3)."""

    name: str
    function: DistanceFunction
    init_lr_distance: float
    needs_color: bool = False


DISTANCES: dict[str, DistanceSpec] = {
    "l1": DistanceSpec("l1", l1, 0.5),
    "l2": DistanceSpec("l2", l2, 0.1),
}


def get_distance(name: str) -> DistanceSpec:
    """Look up a distance by name, with an error that lists the known names."""
    if not isinstance(name, str) or name.lower() not in DISTANCES:
        raise ValueError(
            f"distance must be one of {sorted(DISTANCES)}, got {name!r}"
        )
    return DISTANCES[name.lower()]


__all__ = ["DISTANCES", "DistanceFunction", "DistanceSpec", "get_distance", "l1", "l2", "linf"]
