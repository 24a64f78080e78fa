"""The rounding-noise floor of a benchmark median: how far it moves when the inputs move by one
unit in the last place.

``python -m alma_plugin.bench.noise [--models mnist_adversarial] [--attacks alma-l1 alma-l2
alma_prox-linf] [--budgets 100] [--samples 100] [--first 0] [--replicates 6]``

A minimal-norm attack is a non-convex optimisation: a last-bit difference (another thread
count, another PyTorch build, a reordered sum, a rounding-level change of the code) can send a
sample to another local optimum or change which of its iterates end on the adversarial side.
A difference between two medians of the comparison tables means something only beyond this
floor.

Replicate 0 runs the attack on the images as they are; replicate k ≥ 1 on the images with
every pixel strictly inside (0, 1) moved to the next or the previous representable number of
its dtype (probability 1/3 each, else kept; seeded by k) — a change no one can see and no
model should care about. Each replicate goes through the comparison runner
(:func:`.runner.attack_batch`: candidates re-evaluated, distances measured to the replicate's
own images). Reported per (model, attack, budget): the replicates' medians, their spread
(largest / smallest − 1), the standard deviation of their logarithms, and per sample, against
replicate 0, the median |log ratio| and the share of samples that moved by more than 1 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..zoo.models import MODEL_NAMES
from .arguments import (
    BenchParser,
    add_threads_option,
    budget_option,
    device_argument,
    distinct_argument,
    integer_option,
    seed_option,
)
from .registry import ATTACKS, get_attack
from .runner import EMBEDDED_DATA, attack_batch, load_data, load_model

__all__ = ["main", "noise_floor", "nudge"]

DEFAULT_ATTACKS = ("alma-l1", "alma-l2", "alma_prox-linf")


def nudge(images: torch.Tensor, replicate: int) -> torch.Tensor:
    """``images`` for replicate ``replicate``: unchanged for 0; else every value strictly
    inside (0, 1) moved by one unit in the last place of its dtype, up or down with
    probability 1/3 each (kept otherwise), from a generator seeded with ``replicate``. Values
    at 0 or 1 are kept, so the result stays in [0, 1] and no subnormal number appears."""
    if replicate == 0:
        return images
    generator = torch.Generator().manual_seed(replicate)
    move = torch.randint(-1, 2, images.shape, generator=generator).to(images.device)
    inside = (images > 0) & (images < 1)
    target = torch.where(move > 0, torch.ones_like(images), torch.zeros_like(images))
    return torch.where(inside & (move != 0), torch.nextafter(images, target), images)


def noise_floor(distances: torch.Tensor) -> dict[str, Any]:
    """Summary of an (R, N) matrix of per-sample distances (+inf for a failure, 0 for a sample
    misclassified clean), one row per replicate, row 0 the un-nudged images."""
    if distances.ndim != 2 or len(distances) < 2:
        raise ValueError(f"distances must be (replicates >= 2, samples), got "
                         f"{tuple(distances.shape)}")  # fmt: skip
    medians = distances.double().median(dim=1).values
    success = distances.isfinite().double().mean(dim=1)
    finite = medians.isfinite() & (medians > 0)
    logs = medians[finite].log()
    base, others = distances[0].double(), distances[1:].double()
    comparable = base.isfinite() & (base > 0) & others.isfinite() & (others > 0)
    moved = (others / base).log().abs()[comparable]
    return {
        "medians": medians.tolist(),
        "success": success.tolist(),
        "spread": float(logs.max().exp() / logs.min().exp() - 1) if len(logs) else math.nan,
        "log_sd": float(logs.std()) if len(logs) > 1 else math.nan,
        "sample_median": float(moved.median()) if len(moved) else math.nan,
        "sample_moved": float((moved > 0.01).double().mean()) if len(moved) else math.nan,
    }


def run(
    model: torch.nn.Module,
    key: str,
    budget: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    replicates: int,
    batch_size: int,
    seed: int = 0,
) -> torch.Tensor:
    """(replicates, N) re-evaluated distances of attack ``key`` at ``budget``."""
    spec = get_attack(key)
    rows = []
    for replicate in range(replicates):
        parts = []
        for start in range(0, len(images), batch_size):
            x = nudge(images[start : start + batch_size], replicate)
            y = labels[start : start + batch_size]
            with torch.no_grad():
                clean_wrong = model(x).argmax(1) != y
            parts.append(attack_batch(model, spec, budget, x, y, clean_wrong, seed)[0].cpu())
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f} %"


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(
        prog="alma-bench noise", description=" ".join((__doc__ or "").split("\n\n")[0].split())
    )
    parser.add_argument("--models", nargs="+", default=["mnist_adversarial"], choices=MODEL_NAMES)
    parser.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS),
                        help=f"registry keys, among: {', '.join(ATTACKS)}")  # fmt: skip
    parser.add_argument("--budgets", nargs="+", type=budget_option("budgets"), default=[100])
    parser.add_argument("--samples", type=integer_option("samples", 1), default=100)
    parser.add_argument(
        "--first", type=integer_option("first", 0), default=0, help="index of the first sample"
    )
    parser.add_argument(
        "--replicates",
        type=integer_option("replicates", 2),
        default=6,
        help="runs, the first un-nudged",
    )
    parser.add_argument("--batch-size", type=integer_option("batch-size", 1), default=100)
    parser.add_argument(
        "--seed", type=seed_option(), default=0, help="the attacks' seed (all runs)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    unknown = [key for key in args.attacks if key not in ATTACKS]
    if unknown:
        parser.error(f"argument --attacks: unknown {unknown}; known: {', '.join(ATTACKS)}")
    for key in args.attacks:  # was ModuleNotFoundError from inside the first attack
        if get_attack(key).unavailable() is not None:
            parser.error(f"argument --attacks: {key} needs the {get_attack(key).requires!r} "
                         "package, which is not installed (it cannot be imported)")  # fmt: skip
    for key in args.attacks:
        for budget in args.budgets:
            if (why := get_attack(key).check_budget(budget)) is not None:
                parser.error(f"argument --budgets: {why}")
    for option in ("models", "attacks", "budgets"):  # rows are keyed by them, as in the table
        distinct_argument(parser, f"--{option}", getattr(args, option))
    device = device_argument(parser, args.device)
    images, labels = load_data(EMBEDDED_DATA)
    if args.first + args.samples > len(images):
        parser.error(f"arguments --first/--samples: {args.first} + {args.samples} exceeds the "
                     f"{len(images)} embedded images")  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = slice(args.first, args.first + args.samples)
    x, y = images[chosen].to(device), labels[chosen].to(device)
    threads = torch.get_num_threads()
    print(f"{args.samples} samples from {args.first}, {args.replicates} replicates (0: as "
          f"they are; k >= 1: pixels nudged by one ulp), {threads} threads\n")  # fmt: skip
    print("| model | attack | budget | medians | spread | sd of log median | median sample "
          "change | samples moved > 1 % | success |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models:
        model = load_model(model_name, str(device))
        for key in args.attacks:
            for budget in args.budgets:
                distances = run(model, key, budget, x, y, args.replicates, args.batch_size,
                                args.seed)  # fmt: skip
                s = noise_floor(distances)
                medians = ", ".join(f"{m:.4g}" for m in s["medians"])
                success = f"{min(s['success']):.2f}–{max(s['success']):.2f}"
                print(f"| {model_name} | {key} | {budget} | {medians} | {_percent(s['spread'])} "
                      f"| {_percent(s['log_sd'])} | {_percent(s['sample_median'])} "
                      f"| {_percent(s['sample_moved'])} | {success} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
