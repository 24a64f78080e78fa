"""``python -m alma_plugin.bench`` / ``alma-bench``: compare ALMA with its peers (Table 1 of
Rony et al., "Augmented Lagrangian Adversarial Attacks", ICCV 2021) on the embedded SmallCNN
models, or on a model and data of your own.

With no arguments: both embedded MNIST models (regular and adversarially trained), the first
100 held-out images (:data:`.runner.DEFAULT_SAMPLES`), ALMA ℓ1/ℓ2 at 100 and 1000 steps, ALMA
prox ℓ∞ and the peers at 100.
Prints the table (with AttackBench's optimality, the wins in the best-of-all ensemble and the
soft sparsity of the perturbations), writes ``distances.csv``, ``results.json``, ``table.md``,
robust-accuracy curves and solution-pattern figures (PNG) to ``--output``, and every finished
batch to ``--output/batches`` (``--resume`` picks an interrupted run up from there). Several
processes: ``torchrun --nproc_per_node=N -m alma_plugin.bench ...`` shares the batches out and
gathers the results on rank 0.

``alma-bench SUBCOMMAND ...`` runs another benchmark instead (see :data:`SUBCOMMANDS`).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch

from ..zoo.models import MODEL_NAMES
from . import distributed
from .arguments import (
    BenchParser,
    budget_option,
    cuda_graphs_argument,
    device_argument,
    distinct_argument,
    integer_option,
    model_argument,
    models_argument,
    output_argument,
    path_option,
    real_option,
    seed_option,
)
from .registry import ATTACKS, NORMS
from .report import format_table, merge, summarize, write_files
from .resume import library_versions
from .runner import DEFAULT_SAMPLES, EMBEDDED_DATA, BenchConfig, load_data, plan, run_shard

__all__ = ["SUBCOMMANDS", "main", "parse_args"]

#: ``alma-bench NAME ...`` → ``alma_plugin.bench.<module>.main([...])``, imported on demand.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "unseen": ("unseen", "ALMA on attacks and models it was not tuned on (issue 12)"),
    "sweep": ("sweep", "success and optimality against the step budget (issue 14)"),
    "throughput": ("throughput", "large-batch / GPU throughput (issue 14)"),
    "overhead": ("overhead", "one ALMA step vs one bare forward + backward"),
    "border": ("border", "where the SSIM / MS-SSIM attacks put their perturbation"),
    "step0": ("step0", "the cost of step 0 (η⁽⁰⁾ search) vs a later step, per distance"),
    "noise": ("noise", "how far a median moves when the inputs move by one ulp"),
    "graphs": ("graphs", "wall time and results with and without cuda_graphs (CUDA)"),
    "reeval": ("reeval", "do reported successes hold in other batches? (TF32 on a GPU)"),
}


def _epilog() -> str:
    lines = ["subcommands (alma-bench SUBCOMMAND --help for their options):"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines.append("without a subcommand: the comparison described above.")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = BenchParser(
        prog="alma-bench",
        usage="alma-bench [SUBCOMMAND ...] | alma-bench [options]",
        description="Compare ALMA with Foolbox and torchattacks peers (ALMA paper, Table 1), "
        "with AttackBench's optimality, best-of-all wins and solution-pattern sparsity.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", default=["mnist_regular", "mnist_adversarial"],
                        metavar="MODEL", help=f"embedded model names ({', '.join(MODEL_NAMES)}), "
                        "TorchScript files, 'path/to/file.py:factory' or "
                        "'package.module:factory' (a callable returning a torch.nn.Module); "
                        "inputs in [0, 1] unless --mean/--std are given")  # fmt: skip
    parser.add_argument("--mean", nargs="+", type=real_option("mean"), metavar="M",
                        help="per-channel input mean of the non-embedded models: they are "
                        "called on (x - mean) / std, x in [0, 1]")  # fmt: skip
    parser.add_argument("--std", nargs="+", type=real_option("std"), metavar="S",
                        help="per-channel input std, with --mean")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="reuse the finished batches in OUTPUT/batches (same model, data, "
                        "attack, budget, seed, device and versions) instead of recomputing "
                        "them")  # fmt: skip
    parser.add_argument("--data", default=EMBEDDED_DATA,
                        help=f"{EMBEDDED_DATA!r} (embedded MNIST test images 9000-9999) or an "
                        ".npz file with 'images' (N, C, H, W) and 'labels'")  # fmt: skip
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACKS), metavar="ATTACK",
                        help="attacks to run (default: every available one with default "
                        f"budgets); choices: {', '.join(ATTACKS)}")  # fmt: skip
    parser.add_argument("--budgets", nargs="+", type=budget_option(), metavar="STEPS",
                        help="budgets for every selected attack (default: ALMA 100 and 1000, "
                        "peers 100); without --attacks, the attacks of the default run at these "
                        "budgets")  # fmt: skip
    # --distances: the spelling of the subcommands that take a list (reeval, step0, throughput).
    parser.add_argument("--distance", "--distances", dest="distance", nargs="+", choices=NORMS,
                        default=list(NORMS), help="norms to evaluate (default: all)")  # fmt: skip
    parser.add_argument("--samples", type=integer_option("samples"), default=DEFAULT_SAMPLES,
                        help=f"samples per model, the first N of the data (default "
                        f"{DEFAULT_SAMPLES})")  # fmt: skip
    parser.add_argument("--batch-size", type=integer_option("batch-size"), default=32)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="ALMA and ALMA prox replay their steps as CUDA graphs (needs a "
                        "CUDA --device; counted exactly; the peers run as they are)")  # fmt: skip
    parser.add_argument("--threads", type=integer_option("threads"),
                        help="torch CPU threads per process (default: torch's choice)")  # fmt: skip
    parser.add_argument("--output", type=path_option("output"), default=Path("alma-bench-results"),
                        help="folder for the CSV, JSON, table and PNG files")  # fmt: skip
    parser.add_argument("--seed", type=seed_option(), default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    """Parse and check the command line; argument errors exit with status 2 and a message
    naming the argument, the value and what was expected."""
    parser = _parser()
    args = parser.parse_args(argv)
    device = device_argument(parser, args.device)
    cuda_graphs_argument(parser, args.cuda_graphs, device)
    if (args.mean is None) != (args.std is None):
        parser.error(f"arguments --mean/--std: give both or neither, got --mean {args.mean} "
                     f"and --std {args.std}")  # fmt: skip
    if args.std is not None and (len(args.std) != len(args.mean) or min(args.std) <= 0):
        parser.error(f"arguments --mean/--std: expected as many values each (one per channel) "
                     f"and std > 0, got --mean {args.mean} and --std {args.std}")  # fmt: skip
    if args.mean is not None and all(model in MODEL_NAMES for model in args.models):
        parser.error(f"arguments --mean/--std: they normalise the inputs of non-embedded models "
                     f"only, and every --models is embedded ({' '.join(args.models)}; inputs in "
                     f"[0, 1]): drop them or add your model")  # fmt: skip
    models_argument(parser, args.models)
    distinct_argument(parser, "--attacks", args.attacks or [])
    distinct_argument(parser, "--budgets", args.budgets or [])
    output_argument(parser, "--output", args.output)
    try:
        images, labels = load_data(args.data)
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
        mean=None if args.mean is None else tuple(args.mean),
        std=None if args.std is None else tuple(args.std),
        batches=args.output / "batches",
        resume=args.resume,
        cuda_graphs=args.cuda_graphs,
    )
    from .runner import load_model

    accuracy: dict[str, float] = {}  # printed and stored with the results
    args.clean_accuracy = accuracy
    for name in config.models:
        try:
            model = load_model(name, "cpu", config)
        except ValueError as error:
            parser.error(f"argument --models: {error}")
        chosen = labels[: args.samples]
        model_argument(parser, name, model, images, chosen, args.data)
        accuracy[name] = _clean_accuracy(model, images[: args.samples], chosen, args.batch_size)
        if accuracy[name] < 0.5:  # before the run: labels in the wrong order look like this
            print(f"alma-bench: warning: {name} classifies {accuracy[name]:.1%} of the "
                  f"{args.samples} samples of {args.data!r} as labelled; every sample it "
                  "gets wrong counts as fooled at distance 0: check that the labels are the "
                  "model's classes, in its order", file=sys.stderr)  # fmt: skip
    pairs, notes = plan(config)
    for spec, budget in pairs:
        if (why := spec.check_budget(budget)) is not None:
            parser.error(f"argument --budgets: {why}")
    if not pairs:
        why = "".join(f"; {note}" for note in notes)  # e.g. adv_lib is not installed
        parser.error("arguments --attacks/--distance/--budgets: no attack left to run for "
                     f"attacks={args.attacks} and distances={args.distance}{why}")  # fmt: skip
    return config, args


def _clean_accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> float:
    """The model's accuracy on the attacked samples (finite logits, argmax = y): samples it
    already gets wrong count as fooled at distance 0, so a model that gets most of them wrong
    (untrained, fed data in another range) shows as all but fully fooled."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size])
            y = labels[start : start + batch_size]
            correct += int(((logits.argmax(1) == y) & torch.isfinite(logits).all(1)).sum())
    return correct / max(len(images), 1)


def _subcommand(name: str, argv: Sequence[str]) -> int:
    """Run ``alma_plugin.bench.<module>.main(argv)``; a clear error if it is not installed."""
    module_name = f"{__package__}.{SUBCOMMANDS[name][0]}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        print(f"alma-bench: error: subcommand {name!r} is not available in this installation "
              f"(no module {module_name})", file=sys.stderr)  # fmt: skip
        return 2
    status = module.main(list(argv))
    return 0 if status is None else int(status)


def cpu_description() -> dict[str, str]:
    """The CPU and the instruction set PyTorch's kernels were chosen for: on another CPU the
    same code and seed round differently, and a 100-sample median of a non-convex attack can
    move by several per cent (docs/performance.md, "Rounding noise of a median")."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            name = next((line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name")), name)  # fmt: skip
    except OSError:
        pass
    return {"model": name or "unknown", "capability": torch.backends.cpu.get_cpu_capability()}


def settings(args: argparse.Namespace, argv: Sequence[str], processes: int) -> dict[str, object]:
    """What makes a run reproducible: versions, seed, threads, the exact command, and every
    option (stored in ``results.json``)."""
    return {
        "command": shlex.join(["alma-bench", *argv]),
        "launcher": f"torchrun ({processes} processes)" if processes > 1 else "single process",
        "version": library_versions()["alma_plugin"],
        "versions": library_versions(),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "processes": processes,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "options": {key: str(value) for key, value in vars(args).items()
                    if key != "clean_accuracy"},
        "clean_accuracy": getattr(args, "clean_accuracy", {}),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``alma-bench``; returns the exit status."""
    started, cpu_started = time.perf_counter(), time.process_time()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0], argv[1:])
    if argv and not argv[0].startswith("-"):  # the main command takes no positional argument
        close = difflib.get_close_matches(argv[0], SUBCOMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _parser().error(f"unknown subcommand {argv[0]!r}{hint}; the subcommands are "
                        f"{', '.join(SUBCOMMANDS)}")  # fmt: skip
    config, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    context = distributed.setup()
    try:
        meta = settings(args, argv, context.world_size)
        if context.is_main:
            cpu = cast("dict[str, str]", meta["cpu"])
            print(f"alma-bench {meta['version']}: seed {meta['seed']}, {meta['threads']} "
                  f"thread(s), {context.world_size} process(es), {cpu['model']} "
                  f"({cpu['capability']}); command: {meta['command']}", flush=True)  # fmt: skip
        pairs, notes = plan(config)
        stats: dict[str, int] = {}
        try:
            records = run_shard(config, context, pairs, stats=stats)
        except KeyboardInterrupt:
            print(f"\nalma-bench: interrupted; the finished batches are saved in "
                  f"{config.batches}: run the same command with --resume to go on",
                  file=sys.stderr)  # fmt: skip
            return 130
        shards = distributed.gather((records, stats), context)
        if not context.is_main:
            return 0
        attacked = time.perf_counter()
        merged = merge([shard for shard, _ in shards])
        reused, computed = (sum(counts.get(key, 0) for _, counts in shards)
                            for key in ("reused", "computed"))  # fmt: skip
        rows = summarize(merged)
        table = format_table(rows, notes)
        print(table, end="")
        accuracy = cast("dict[str, float]", meta["clean_accuracy"])
        print(f"Clean accuracy on the {config.samples} samples: "
              + ", ".join(f"{name} {value:.3f}" for name, value in accuracy.items())
              + (" (samples a model already gets wrong count as fooled at distance 0)"
                 if min(accuracy.values(), default=1.0) < 0.5 else ""))  # fmt: skip
        if config.resume:
            print(f"Resumed: {reused} finished batch(es) read back from {config.batches}, "
                  f"{computed} computed.")  # fmt: skip
        paths = write_files(merged, rows, table, config.output, meta)
        if not args.no_plots:
            from .plots import plot_curves, plot_patterns

            paths += plot_curves(merged, config.output) + plot_patterns(merged, config.output)
        print(f"Wrote {', '.join(str(p) for p in paths)} and per-batch files in "
              f"{config.batches}")  # fmt: skip
        done = time.perf_counter()
        # On a shared machine wall time includes other people's load; the CPU time of this
        # process (all its threads) does not.
        print(f"Total wall time: {done - started:.1f} s ({context.world_size} process(es); "
              f"metrics, files and figures: {done - attacked:.1f} s; CPU time of rank 0: "
              f"{time.process_time() - cpu_started:.1f} s)")  # fmt: skip
        sys.stdout.flush()
        return 0
    finally:
        distributed.teardown(context)


if __name__ == "__main__":
    sys.exit(main())
