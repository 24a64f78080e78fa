"""The comparison runner behind ``python -m alma_plugin.bench`` (the paper's Table 1 protocol).

Every selected attack runs at every selected budget on the same samples of every model. The
model handed to an attack is wrapped by :class:`~alma_plugin.bench.counting.CountingModel`, so
forwards / backwards per sample are counted, not assumed. Each returned candidate is then
re-evaluated by the bare model: it counts as adversarial only if misclassified, and its distance
to the original is measured on images in [0, 1]. Conventions: see :mod:`.report`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
from .counting import CountingModel
from .registry import ATTACKS, NORMS, AttackSpec, get_attack
from .report import Record

__all__ = ["DEFAULT_SAMPLES", "BenchConfig", "load_data", "load_model", "plan", "run_shard"]

#: Samples per model of the no-argument run (sized to finish in minutes on 2 CPU cores).
DEFAULT_SAMPLES = 100
#: The embedded data set (MNIST test images 9000–9999, held out from the models' training).
EMBEDDED_DATA = "mnist_heldout"


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``attacks`` / ``budgets`` None: every available attack at its default
    budgets (ALMA at 100 and 1000 steps, the peers at 100)."""

    models: tuple[str, ...] = ("mnist_regular", "mnist_adversarial")
    data: str = EMBEDDED_DATA
    attacks: tuple[str, ...] | None = None
    budgets: tuple[int, ...] | None = None
    distances: tuple[str, ...] = NORMS
    samples: int = DEFAULT_SAMPLES
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    output: Path = field(default_factory=lambda: Path("alma-bench-results"))
    quiet: bool = False


def plan(config: BenchConfig) -> tuple[list[tuple[AttackSpec, int]], list[str]]:
    """The (attack, budget) pairs to run, and notes on the attacks skipped."""
    keys = config.attacks if config.attacks is not None else tuple(ATTACKS)
    chosen, notes = [], []
    for key in keys:
        spec = get_attack(key)
        if spec.norm not in config.distances:
            continue
        budgets = config.budgets if config.budgets is not None else spec.default_budgets
        if not budgets:
            continue
        reason = spec.unavailable()
        if reason is not None:
            notes.append(reason)
            continue
        chosen += [(spec, budget) for budget in budgets]
    return chosen, notes


def load_model(name: str, device: str) -> nn.Module:
    """An embedded SmallCNN by name, or a TorchScript file (``*.pt``), in eval mode, with
    frozen parameters (the runner's own copy: no attack needs weight gradients)."""
    from ..zoo.models import MODEL_NAMES, load_smallcnn

    if name in MODEL_NAMES:
        model: nn.Module = load_smallcnn(name)
    elif Path(name).is_file():
        model = torch.jit.load(name, map_location="cpu")
    else:
        raise ValueError(
            f"model must be one of {', '.join(MODEL_NAMES)} or a TorchScript file, got {name!r}"
        )
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded held-out MNIST images, or an ``.npz`` file with ``images`` (N, C, H, W; uint8
    or floats in [0, 1]) and ``labels`` (N,)."""
    if name == EMBEDDED_DATA:
        from ..zoo.data import load_mnist_heldout

        return load_mnist_heldout()
    if not Path(name).is_file():
        raise ValueError(f"data must be {EMBEDDED_DATA!r} or an .npz file, got {name!r}")
    with np.load(name, allow_pickle=False) as arrays:
        if "images" not in arrays or "labels" not in arrays:
            raise ValueError(f"data file {name!r} must hold arrays 'images' and 'labels'")
        images, labels = arrays["images"], arrays["labels"]
    x = torch.from_numpy(images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1))
    if x.ndim != 4 or len(labels) != len(x) or x.min() < 0 or x.max() > 1:
        raise ValueError(
            f"data file {name!r}: expected images (N, C, H, W) in [0, 1] and labels (N,), got "
            f"images {tuple(x.shape)} in [{float(x.min()):g}, {float(x.max()):g}] and labels "
            f"{tuple(labels.shape)}"
        )
    return x, torch.from_numpy(labels.astype(np.int64))


_ORDER = {"l1": 1.0, "l2": 2.0, "linf": float("inf")}


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, norm: str
) -> torch.Tensor:
    """Distances of the candidates that the bare model misclassifies; +inf elsewhere."""
    if not isinstance(adv, torch.Tensor) or adv.shape != x.shape:
        shape = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
        raise RuntimeError(f"an attack returned {shape} for inputs of shape {tuple(x.shape)}")
    adv = adv.detach().to(x.device, x.dtype).clamp(0, 1)  # a no-op for in-bounds candidates
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    distance = (adv - x).flatten(1).norm(p=_ORDER[norm], dim=1)
    return torch.where(fooled, distance, torch.full_like(distance, float("inf")))


def _progress(total: int, enabled: bool) -> tuple[Callable[[str], None], Callable[[], None]]:
    """(advance(description), close) of a tqdm bar, or no-ops when disabled or tqdm is absent."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:  # the ``bench`` extra is not installed: no bar
            enabled = False
    if not enabled:
        return (lambda description: None), (lambda: None)
    bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, leave=False)

    def advance(description: str) -> None:
        bar.set_description(description)
        bar.update(1)

    return advance, bar.close


def run_shard(
    config: BenchConfig,
    context: distributed.Context,
    pairs: Sequence[tuple[AttackSpec, int]],
) -> list[Record]:
    """Run ``pairs`` on this process's shard of the first ``config.samples`` samples of every
    model; return one :class:`Record` per (model, attack, budget)."""
    images, labels = load_data(config.data)
    if config.samples > len(images):
        raise ValueError(
            f"samples must be at most {len(images)} (the size of data {config.data!r}), got "
            f"{config.samples}"
        )
    indices = distributed.shard(config.samples, context)
    x_all = images[indices].to(config.device)
    y_all = labels[indices].to(config.device)
    batches = [slice(i, i + config.batch_size) for i in range(0, len(indices), config.batch_size)]
    show = not config.quiet and context.is_main and sys.stderr.isatty()
    advance, close = _progress(len(config.models) * len(pairs) * len(batches), show)
    records = []
    try:
        for model_name in config.models:
            model = load_model(model_name, config.device)
            with torch.no_grad():  # a shard may be empty when samples < processes
                wrong = [model(x_all[b]).argmax(1) != y_all[b] for b in batches]
            clean_wrong = torch.cat(wrong) if wrong else torch.zeros(0, dtype=torch.bool)
            name = Path(model_name).stem
            for spec, budget in pairs:
                counter = CountingModel(model)
                distances, seconds = [], 0.0
                for b in batches:
                    torch.manual_seed(config.seed)
                    start = time.perf_counter()
                    adv = spec.run(counter, x_all[b], y_all[b], budget, config.seed)
                    seconds += time.perf_counter() - start
                    distances.append(_evaluate(model, x_all[b], y_all[b], adv, spec.norm))
                    advance(f"{name} {spec.key} @{budget}")
                d = torch.cat(distances) if distances else torch.zeros(0)
                d = torch.where(clean_wrong.to(d.device), torch.zeros_like(d), d)
                records.append(
                    Record(
                        name,
                        spec.key,
                        spec.label,
                        spec.norm,
                        budget,
                        spec.budget_note(budget),
                        indices.tolist(),
                        d.cpu().double().tolist(),
                        counter.forwards,
                        counter.backwards,
                        seconds,
                    )  # fmt: skip
                )
    finally:
        close()
    return records
