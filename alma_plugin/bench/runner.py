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

from . import distributed, metrics, usermodels
from .counting import CountingModel
from .registry import ATTACKS, NORMS, AttackSpec, get_attack
from .report import Record, merge
from .resume import BatchStore, batch_fingerprint

__all__ = [
    "DEFAULT_SAMPLES",
    "BenchConfig",
    "attack_batch",
    "load_data",
    "load_model",
    "plan",
    "run_shard",
    "synchronize",
]

#: Samples per model of the no-argument run (sized to finish in minutes on 2 CPU cores).
DEFAULT_SAMPLES = 100
#: The embedded data set (MNIST test images 9000–9999, held out from the models' training).
EMBEDDED_DATA = "mnist_heldout"


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``attacks`` / ``budgets`` None: every available attack at its default
    budgets (ALMA at 100 and 1000 steps, the peers at 100). ``mean`` / ``std``: input
    normalisation of the non-embedded models. ``batches``: folder of the per-batch result files
    (None: none written); ``resume``: reuse the finished ones (see :mod:`.resume`).
    ``cuda_graphs``: ALMA and ALMA prox replay their steps as CUDA graphs (``device`` must be
    CUDA; the peers run as they are; :class:`.counting.CountingModel` counts the replays)."""

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
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    batches: Path | None = None
    resume: bool = False
    cuda_graphs: bool = False


def plan(config: BenchConfig) -> tuple[list[tuple[AttackSpec, int]], list[str]]:
    """The (attack, budget) pairs to run, and notes on the attacks skipped. Without
    ``config.attacks``, the attacks with no default budgets stay out even when
    ``config.budgets`` is given (they must be selected explicitly)."""
    keys = config.attacks if config.attacks is not None else tuple(ATTACKS)
    chosen, notes = [], []
    for key in keys:
        spec = get_attack(key)
        if spec.norm not in config.distances:
            continue
        if config.attacks is None and not spec.default_budgets:
            continue  # kept out of the default run (docs/bench.md), whatever the budgets
        budgets = config.budgets if config.budgets is not None else spec.default_budgets
        if not budgets:  # selected by name, with no default budget: say so
            notes.append(f"{key} has no default budget: give --budgets")
            continue
        reason = spec.unavailable()
        if reason is not None:
            notes.append(reason)
            continue
        chosen += [(spec, budget) for budget in budgets]
    return chosen, notes


def load_model(name: str, device: str, config: BenchConfig | None = None) -> nn.Module:
    """The model ``name`` (embedded, TorchScript, ``file.py:callable`` or ``module:callable``;
    see :mod:`.usermodels`), normalised as ``config`` says, in eval mode, frozen."""
    mean, std = (config.mean, config.std) if config is not None else (None, None)
    return usermodels.load_model(name, device, mean, std)


def load_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded held-out MNIST images, or an ``.npz`` file with ``images`` (N, C, H, W; uint8
    or floats in [0, 1]) and ``labels`` (N,)."""
    if name == EMBEDDED_DATA:
        from ..zoo.data import load_mnist_heldout

        return load_mnist_heldout()
    if not Path(name).is_file():
        missing = " (no such file)" if name.endswith(".npz") else ""
        raise ValueError(f"data must be {EMBEDDED_DATA!r} or an .npz file, got {name!r}{missing}")
    expected = "an .npz file (numpy.savez) with arrays 'images' and 'labels'"
    with open(name, "rb") as file:
        magic = file.read(6)
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        # numpy would read anything else as a pickle and suggest allow_pickle=True
        raise ValueError(f"data file {name!r}: expected {expected}, got a file that is "
                         f"neither an .npz (zip) nor an .npy file")  # fmt: skip
    try:
        loaded = np.load(name, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"data file {name!r}: expected {expected}, cannot read it: "
                         f"{error}") from None  # fmt: skip
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy: one array, no labels
        raise ValueError(f"data file {name!r}: expected {expected}, got a single "
                         f"{type(loaded).__name__} (a .npy file)")  # fmt: skip
    with loaded as arrays:
        if "images" not in arrays or "labels" not in arrays:
            raise ValueError(f"data file {name!r} must hold arrays 'images' and 'labels'")
        images, labels = arrays["images"], arrays["labels"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"data file {name!r}: expected integer labels (N,), got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")  # fmt: skip
    if images.size == 0 or not np.isfinite(images).all():
        what = "empty" if images.size == 0 else "with NaN or Inf values"
        raise ValueError(f"data file {name!r}: expected a non-empty array of finite images, "
                         f"got one {what} of shape {tuple(images.shape)}")  # fmt: skip
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances of the candidates that the bare model misclassifies (+inf elsewhere) and the
    perturbations ``adv − x`` (candidates clipped to [0, 1])."""
    if not isinstance(adv, torch.Tensor) or adv.shape != x.shape:
        shape = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
        raise RuntimeError(f"an attack returned {shape} for inputs of shape {tuple(x.shape)}")
    adv = adv.detach().to(x.device, x.dtype).clamp(0, 1)  # a no-op for in-bounds candidates
    with torch.no_grad():
        fooled = misclassified(model(adv), y)
    delta = adv - x
    distance = delta.flatten(1).norm(p=_ORDER[norm], dim=1)
    return torch.where(fooled, distance, torch.full_like(distance, float("inf"))), delta


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """argmax ≠ y with finite logits: a NaN row's argmax is 0, which would count a broken
    model's samples as fooled (at distance 0, before any attack)."""
    return (logits.argmax(1) != y) & torch.isfinite(logits).all(1)


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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attack_batch(
    model: nn.Module,
    spec: AttackSpec,
    budget: int,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_wrong: torch.Tensor,
    seed: int,
    cuda_graphs: bool = False,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, int, int, float]:
    """Run one attack on one batch (torch seeded with ``seed`` first) and re-evaluate it;
    ``cuda_graphs`` is passed on to attacks that take it (``spec.cuda_graphs``).

    Returns: distances (0 where ``clean_wrong``, +inf for failures), soft sparsity per sample
    (NaN unless 0 < distance < inf), the |δ| histogram of the successful samples, counted
    forwards and backwards, and the attack's wall time.
    """
    counter = CountingModel(model)
    torch.manual_seed(seed)
    start = time.perf_counter()
    options = {"cuda_graphs": True} if cuda_graphs and spec.cuda_graphs else {}
    adv = spec.run(counter, x, y, budget, seed, **options)
    synchronize(x.device)  # on a GPU the attack's last kernels may still be queued
    seconds = time.perf_counter() - start
    d, delta = _evaluate(model, x, y, adv, spec.norm)
    d = torch.where(clean_wrong.to(d.device), torch.zeros_like(d), d)
    counted = (torch.isfinite(d) & (d > 0)).cpu().numpy()
    perturbations = delta.detach().cpu().double().numpy()[counted]
    sparsity = np.full(len(d), np.nan)
    sparsity[counted] = metrics.soft_sparsity(perturbations)
    histogram = metrics.abs_histogram(perturbations)
    return d, sparsity, histogram, counter.forwards, counter.backwards, seconds


def run_shard(
    config: BenchConfig,
    context: distributed.Context,
    pairs: Sequence[tuple[AttackSpec, int]],
    stats: dict[str, int] | None = None,
) -> list[Record]:
    """Run ``pairs`` on this process's batches of the first ``config.samples`` samples of every
    model; return one :class:`Record` per (model, attack, budget).

    Batches are fixed slices of ``config.batch_size`` samples, shared out between processes
    (:func:`.distributed.batches`), so a batch has the same samples and result whatever the
    number of processes. With ``config.batches`` set, each finished batch is written there at
    once; with ``config.resume`` too, batches already there (same fingerprint) are read back
    instead of recomputed; ``stats`` (if given) receives the numbers of batches ``"reused"``
    and ``"computed"``.
    """
    images, labels = load_data(config.data)
    if config.samples > len(images):
        raise ValueError(
            f"samples must be at most {len(images)} (the size of data {config.data!r}), got "
            f"{config.samples}"
        )
    mine = distributed.batches(config.samples, config.batch_size, context)
    store = BatchStore(config.batches, config.resume) if config.batches is not None else None
    show = not config.quiet and context.is_main and sys.stderr.isatty()
    advance, close = _progress(len(config.models) * len(pairs) * len(mine), show)
    records, computed = [], 0
    try:
        for model_name in config.models:
            model = load_model(model_name, config.device, config)
            name = usermodels.model_label(model_name)
            model_hash = usermodels.model_fingerprint(model) if store is not None else ""
            clean: dict[int, torch.Tensor] = {}
            for spec, budget in pairs:
                parts = [Record(name, spec.key, spec.label, spec.norm, budget,
                                spec.budget_note(budget), [], [])]  # fmt: skip
                for number, index in enumerate(mine):
                    x = images[index].to(config.device)
                    y = labels[index].to(config.device)
                    path, fingerprint, part = None, "", None
                    if store is not None:
                        path = store.path(name, spec.key, budget, int(index[0]), int(index[-1]))
                        fingerprint = batch_fingerprint(
                            model_hash=model_hash, attack=spec.key, budget=budget,
                            seed=config.seed, device=config.device, images=x, labels=y,
                            cuda_graphs=config.cuda_graphs and spec.cuda_graphs,
                        )  # fmt: skip
                        part = store.load(path, fingerprint, index.tolist())
                    if part is None:
                        if number not in clean:
                            with torch.no_grad():
                                clean[number] = misclassified(model(x), y)
                        d, sparsity, histogram, forwards, backwards, seconds = attack_batch(
                            model, spec, budget, x, y, clean[number], config.seed,
                            config.cuda_graphs,
                        )  # fmt: skip
                        part = Record(name, spec.key, spec.label, spec.norm, budget,
                                      spec.budget_note(budget), index.tolist(),
                                      d.cpu().double().tolist(), forwards, backwards, seconds,
                                      sparsity.tolist(), histogram.tolist())  # fmt: skip
                        computed += 1
                        if store is not None and path is not None:
                            store.save(path, fingerprint, part)
                    parts.append(part)
                    advance(f"{name} {spec.key} @{budget}")
                records += merge([parts], wall="sum")
    finally:
        close()
        if stats is not None:
            stats["reused"] = store.reused if store is not None else 0
            stats["computed"] = computed
    return records
