"""``python -m alma_plugin.bench`` / ``alma-bench``: compare ALMA with its peers (Table 1 of
Rony et al., "Augmented Lagrangian Adversarial Attacks", ICCV 2021) on the embedded SmallCNN
models, or on a model and data of your own.

With no arguments: both embedded MNIST models (regular and adversarially trained), the first
10 held-out images, ALMA ℓ1/ℓ2 at 100 and 1000 steps, ALMA prox ℓ∞ and the peers at 100.
Prints the table, writes ``distances.csv``, ``results.json``, ``table.md`` and robust-accuracy
curves (PNG) to ``--output``. Several processes: ``torchrun --nproc_per_node=N -m
alma_plugin.bench ...`` shards the samples and gathers the results on rank 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import distributed
from .registry import ATTACKS, NORMS
from .report import format_table, merge, plot_curves, summarize, write_files
from .runner import DEFAULT_SAMPLES, EMBEDDED_DATA, BenchConfig, load_data, plan, run_shard

__all__ = ["main", "parse_args"]


def _integer(name: str, minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with an error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def _positive(name: str) -> Callable[[str], int]:
    return _integer(name, 1)


_seed = _integer("seed", 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alma-bench",
        description="Compare ALMA with Foolbox and torchattacks peers (ALMA paper, Table 1).",
    )
    parser.add_argument("--models", nargs="+", default=["mnist_regular", "mnist_adversarial"],
                        metavar="MODEL", help="embedded model names (mnist_regular, "
                        "mnist_adversarial) or TorchScript files; inputs in [0, 1]")  # fmt: skip
    parser.add_argument("--data", default=EMBEDDED_DATA,
                        help=f"{EMBEDDED_DATA!r} (embedded MNIST test images 9000-9999) or an "
                        ".npz file with 'images' (N, C, H, W) and 'labels'")  # fmt: skip
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACKS), metavar="ATTACK",
                        help="attacks to run (default: every available one with default "
                        f"budgets); choices: {', '.join(ATTACKS)}")  # fmt: skip
    parser.add_argument("--budgets", nargs="+", type=_positive("budget"), metavar="STEPS",
                        help="budgets for every selected attack (default: ALMA 100 and 1000, "
                        "peers 100)")  # fmt: skip
    parser.add_argument("--distance", nargs="+", choices=NORMS, default=list(NORMS),
                        help="norms to evaluate (default: all)")  # fmt: skip
    parser.add_argument("--samples", type=_positive("samples"), default=DEFAULT_SAMPLES,
                        help=f"samples per model, the first N of the data (default "
                        f"{DEFAULT_SAMPLES})")  # fmt: skip
    parser.add_argument("--batch-size", type=_positive("batch-size"), default=32)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--threads", type=_positive("threads"),
                        help="torch CPU threads per process (default: torch's choice)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("alma-bench-results"),
                        help="folder for the CSV, JSON, table and PNG files")  # fmt: skip
    parser.add_argument("--seed", type=_seed, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG curves")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    """Parse and check the command line; argument errors exit with status 2 and a message
    naming the argument, the value and what was expected."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"argument --device: expected a torch device such as 'cpu', got "
                     f"{args.device!r}")  # fmt: skip
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {args.device!r} requested but CUDA is not available")
    try:
        images, _ = load_data(args.data)
    except ValueError as error:
        parser.error(f"argument --data: {error}")
    if args.samples > len(images):
        parser.error(f"argument --samples: at most {len(images)} samples in {args.data!r}, "
                     f"got {args.samples}")  # fmt: skip
    config = BenchConfig(
        models=tuple(args.models),
        data=args.data,
        attacks=None if args.attacks is None else tuple(args.attacks),
        budgets=None if args.budgets is None else tuple(args.budgets),
        distances=tuple(args.distance),
        samples=args.samples,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        output=args.output,
        quiet=args.quiet,
    )
    from .runner import load_model

    for name in config.models:
        try:
            load_model(name, "cpu")
        except ValueError as error:
            parser.error(f"argument --models: {error}")
    if not plan(config)[0]:
        parser.error("arguments --attacks/--distance/--budgets: no attack left to run for "
                     f"attacks={args.attacks} and distances={args.distance}")  # fmt: skip
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``alma-bench``; returns the exit status."""
    started = time.perf_counter()
    config, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    context = distributed.setup()
    try:
        pairs, notes = plan(config)
        records = run_shard(config, context, pairs)
        shards = distributed.gather(records, context)
        if not context.is_main:
            return 0
        merged = merge(shards)
        rows = summarize(merged)
        table = format_table(rows, notes)
        print(table, end="")
        meta = {key: str(value) for key, value in vars(args).items()}
        meta["processes"] = str(context.world_size)
        paths = write_files(merged, rows, table, config.output, meta)
        if not args.no_plots:
            paths += plot_curves(merged, config.output)
        print(f"Wrote {', '.join(str(p) for p in paths)}")
        print(f"Total wall time: {time.perf_counter() - started:.1f} s "
              f"({context.world_size} process(es))")  # fmt: skip
        sys.stdout.flush()
        return 0
    finally:
        distributed.teardown(context)


if __name__ == "__main__":
    sys.exit(main())
