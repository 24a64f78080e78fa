"""Row builders for the public distances of ``alma_plugin.distances`` (LPIPS with seeded
random weights: no weight files on CI)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import eagerpy as ep
import numpy as np
import torch

from .core import Returned, Setup
from .models import clean_inputs, jax_inputs, tf_inputs, torch_inputs


def random_lpips() -> Any:
    """An LPIPS metric with seeded random weights (no weight files on CI): the benchmarks' own
    (:func:`alma_plugin.bench.throughput.make_distance`)."""
    from alma_plugin.bench.throughput import make_distance

    return make_distance("lpips", torch.device("cpu"))


#: One sample's shape per distance, with the batch of 4 (``distance_case``): JAX compiles every
#: primitive once per shape, so its rows share the (4, 3, 12, 12) batch of the table's JAX
#: perceptual Foolbox rows (SSIM needs 11×11, MS-SSIM 176×176, CIEDE2000 and LPIPS 3 channels).
DISTANCE_SHAPES = {
    "l1": (3, 12, 12),
    "l2": (3, 12, 12),
    "linf": (3, 12, 12),
    "ciede2000": (3, 12, 12),
    "ssim": (3, 12, 12),
    "msssim": (1, 176, 176),
    "lpips": (3, 32, 32),
}


def public_distance(name: str) -> Callable[[Any, Any], Any]:
    """``alma_plugin.distances.<name>`` (a random-weight LPIPS for "lpips": no weight files)."""
    from alma_plugin import distances

    if name == "lpips":
        return random_lpips()
    function = getattr(distances, name)
    if not callable(function):
        raise AssertionError(f"alma_plugin.distances.{name} is not callable ({function!r})")
    return function


def distance_case(
    name: str,
    *,
    framework: str = "torch",
    n: int = 4,
    dtype: str = "float32",
    nan_rows: Sequence[int] = (),
    inf_rows: Sequence[int] = (),
    mode: str | None = None,
    seed: int = 0,
) -> Setup:
    """``alma_plugin.distances.<name>(x_adv, x)`` on raw tensors (``mode="eagerpy"``: wrapped)."""
    shape = DISTANCE_SHAPES[name]
    base = clean_inputs(n, shape, (0.0, 1.0), seed=seed, spread=0.3)
    other = np.clip(base + np.random.default_rng(seed + 1).normal(0, 0.05, base.shape), 0, 1)
    for i in nan_rows:
        other[i].flat[0] = np.nan
    for i in inf_rows:
        other[i].flat[-1] = np.inf
    if framework == "jax":
        x, x_adv = jax_inputs(base, dtype), jax_inputs(other, dtype)
    elif framework == "tf":
        x, x_adv = tf_inputs(base, dtype), tf_inputs(other, dtype)
    else:
        x = torch_inputs(base, dtype, mode if mode != "eagerpy" else None)
        x_adv = torch_inputs(other, dtype, mode if mode != "eagerpy" else None)
    if mode == "eagerpy":
        x, x_adv = ep.astensor(x), ep.astensor(x_adv)
    function = public_distance(name)
    broken = np.zeros(n, dtype=bool)
    broken[list(nan_rows) + list(inf_rows)] = True

    def run() -> Any:
        return function(x_adv, x), function(x, x)

    def collect(result: Any) -> list[Returned]:
        value, identity = result
        return [
            Returned("D(x_adv, x)", value, kind="distance", nan=broken, graph_free=False),
            Returned(
                "D(x, x)",
                identity,
                kind="distance",
                nan=np.zeros(n, dtype=bool),
                graph_free=False,
                zero=True,
            ),  # fmt: skip
        ]

    caller = {"x_adv": x_adv, "x": x}
    return Setup(run, collect, x, (0.0, 1.0), caller=caller)
