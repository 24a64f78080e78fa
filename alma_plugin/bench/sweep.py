"""``python -m alma_plugin.bench.sweep`` (``alma-bench sweep``): quality against the step budget.

Every attack runs at every budget (default 50, 100, 200, 500 and 1000 steps) on the same
samples of the embedded models (regular, PGD-trained, Lagrangian-trained), through the
comparison runner (:func:`.runner.run_shard`: counted model calls, re-evaluated candidates,
the conventions of :mod:`.report`). ALMA ℓ1 / ℓ2
runs in each of its variants (:data:`ALMA_VARIANTS`: the step-size schedules of
``ALMAParams.schedule``, the paper's first), with its default smoothed max (``--smooth-max 0``
for Algorithm 2's gradient), next to ALMA prox, DDN, FMN (ℓ1, ℓ2, ℓ∞) and APGD (ℓ2, ℓ∞).

For each (model, norm) the table and the plots give, per attack and budget, the median distance
(failures as +inf) and AttackBench's optimality (:func:`.metrics.optimality`), computed against
the per-sample best of **every** run of that model and norm, all budgets together: one
reference per (model, norm), so the optimality of a run can be compared across budgets.

Writes ``sweep.csv`` (one line per model, norm, attack and budget), ``sweep.md`` (the tables)
and ``sweep_<model>.png`` (median and optimality against the budget, one column per norm) to
``--output``; finished batches go to ``--output/batches`` (``--resume`` reuses them).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.params import RESTART_MODES, SCHEDULES
from ..zoo.models import MODEL_NAMES
from . import distributed, metrics
from .arguments import (
    BenchParser,
    add_threads_option,
    budget_option,
    cuda_graphs_argument,
    device_argument,
    distinct_argument,
    integer_option,
    model_argument,
    models_argument,
    output_argument,
    path_option,
    seed_option,
)
from .plots import norm_label, pyplot, save_figure
from .registry import AttackSpec, get_attack
from .report import Record, groups
from .runner import EMBEDDED_DATA, BenchConfig, load_data, load_model, run_shard

__all__ = [
    "ALMA_VARIANTS",
    "DEFAULT_BUDGETS",
    "PEERS",
    "alma_variant",
    "main",
    "prox_variant",
    "summarize",
]

#: The budgets of the no-argument run (the issue's sweep).
DEFAULT_BUDGETS: tuple[int, ...] = (50, 100, 200, 500, 1000)

#: ALMA variants by name → the ALMAParams keywords that select them: one per step-size
#: schedule (``ALMAParams.schedule``; "paper" is the paper's schedule, Fig. 3). Each runs with
#: the distance's default κ unless ``--smooth-max`` says otherwise: Algorithm 2 as published
#: is the paper's schedule with ``--smooth-max 0`` (the main command's ``alma_alg2-<norm>``).
ALMA_VARIANTS: dict[str, dict[str, Any]] = {name: {"schedule": name} for name in SCHEDULES}

#: The registry's attacks swept next to ALMA's variants.
PEERS: tuple[str, ...] = ("alma_prox-linf", "ddn-l2", "fmn-l1", "fmn-l2", "fmn-linf", "apgd-l2",
                          "apgd-linf")  # fmt: skip

_COLUMNS = ("model", "norm", "attack", "label", "budget", "samples", "success", "median",
            "optimality", "forwards", "backwards", "seconds")  # fmt: skip


def _suffix(
    restarts: int | None,
    mode: str = "random",
    smooth_max: float | None = None,
    share: float | None = None,
) -> tuple[str, str]:
    """The key and label suffixes of a spec (none for the default runs and κ): ``_r1`` /
    ", R = 1" for one run, ``_r<R>`` / ", R = <R>" for random restarts, ``_r<R>c`` /
    ", R = <R> classes" for ``restart_mode="classes"``, ``_p<p>`` / ", run 0: p" for a first
    run's share (R > 1), then ``_k<κ>`` / ", κ = <κ>" for a smoothed max."""
    key, label = "", ""
    if restarts == 1:
        key, label = "_r1", ", R = 1"
    elif restarts is not None:
        classes = mode == "classes"
        key, label = f"_r{restarts}{'c' if classes else ''}", f", R = {restarts}"
        label += " classes" if classes else ""
        if share is not None:
            key, label = f"{key}_p{share:g}", f"{label}, run 0: {share:g}"
    if smooth_max is not None:
        key, label = f"{key}_k{smooth_max:g}", f"{label}, κ = {smooth_max:g}"
    return key, label


def alma_variant(
    variant: str,
    norm: str,
    restarts: int | None = None,
    mode: str = "random",
    smooth_max: float | None = None,
    share: float | None = None,
) -> AttackSpec:
    """The spec of ALMA ``variant`` (a key of :data:`ALMA_VARIANTS`) for ``norm`` (l1 or l2)
    with ``restarts`` runs sharing each budget (``ALMAParams.restarts``, ``restart_mode``, run
    0's ``first_run_share`` = ``share``; None: the default, the distance's class restarts,
    with ``mode`` and ``share`` unused) and the smoothed max κ (``ALMAParams.smooth_max``;
    None: the distance's default, ``DISTANCES[norm].smooth_max``, 0.1; 0: Algorithm 2's
    gradient): key ``alma_<variant>[_r<R>[c][_p<p>]][_k<κ>]-<norm>``, run through the
    product's Foolbox class like the registry's ``alma-<norm>``. Algorithm 2 as published
    (``ALMAParams.published()``) is ``restarts=1``, ``smooth_max=0`` and the "paper"
    schedule."""
    if variant not in ALMA_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(ALMA_VARIANTS)}, got {variant!r}")
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    options: dict[str, Any] = dict(ALMA_VARIANTS[variant])
    if restarts is not None:
        options.update(restarts=restarts, restart_mode=mode, first_run_share=share)
    if smooth_max is not None:
        options["smooth_max"] = smooth_max
    name = {"l1": "L1ALMA", "l2": "L2ALMA"}[norm]

    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int,
            cuda_graphs: bool = False) -> Any:  # fmt: skip
        import foolbox as fb

        alma_fb = importlib.import_module("alma_plugin.foolbox")
        attack = getattr(alma_fb, name)(steps=budget, seed=seed, cuda_graphs=cuda_graphs,
                                        **options)  # fmt: skip
        return attack.run(fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, y)

    base = get_attack(f"alma-{norm}")
    key, label = _suffix(restarts, mode, smooth_max, share)
    return replace(base, key=f"alma_{variant}{key}-{norm}",
                   label=f"ALMA ({variant} schedule{label})",
                   run=run)  # fmt: skip


def prox_variant(
    restarts: int | None,
    mode: str = "random",
    smooth_max: float | None = None,
    share: float | None = None,
) -> AttackSpec:
    """The registry's ``alma_prox-linf`` with ``restarts`` runs sharing each budget
    (``ProxParams.restarts``, ``restart_mode``, run 0's ``first_run_share`` = ``share``,
    seeded by the sweep's seed) and the smoothed max κ (``ProxParams.smooth_max``; None: the
    default, :data:`~alma_plugin.PROX_SMOOTH_MAX`): key ``alma_prox[_r<R>[c][_p<p>]][_k<κ>]-linf``;
    the registry's own spec for one run with the defaults (``restarts`` None or 1: ALMA
    prox's default is one run)."""
    base = get_attack("alma_prox-linf")
    restarts = 1 if restarts is None else restarts
    if restarts == 1 and smooth_max is None:
        return base

    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int,
            cuda_graphs: bool = False) -> Any:  # fmt: skip
        import foolbox as fb

        alma_fb = importlib.import_module("alma_plugin.foolbox")
        attack = alma_fb.LinfALMAProx(steps=budget, seed=seed, restarts=restarts,
                                      restart_mode=mode, smooth_max=smooth_max,
                                      first_run_share=share,
                                      cuda_graphs=cuda_graphs)  # fmt: skip
        return attack.run(fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, y)

    key, label = _suffix(restarts if restarts > 1 else None, mode, smooth_max, share)
    return replace(base, key=f"alma_prox{key}-linf", label=f"ALMA prox ({label[2:]})", run=run)


def _smooth_max_option(text: str) -> float | None:
    """``--smooth-max``: 'default' (None: each attack's default κ) or a finite number ≥ 0 (0:
    DLR⁺'s own gradient, as published)."""
    if text.lower() == "default":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(
            f"expected 'default' or a finite number >= 0 (0: the papers' gradient), got {text!r}"
        )
    return value


def _restarts_option(text: str) -> int | None:
    """``--restarts``: 'default' (None: each attack's default runs) or a number of runs."""
    return None if text.lower() == "default" else budget_option("restarts")(text)


def _share_option(text: str) -> float:
    """``--first-run-share``: a number in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _specs(
    variants: Sequence[str],
    peers: Sequence[str],
    norms: Sequence[str],
    restarts: Sequence[int | None],
    mode: str = "random",
    smooth_maxes: Sequence[float | None] = (None,),
    share: float | None = None,
) -> list[Any]:
    specs = [alma_variant(v, n, r, mode, k, share) for n in ("l2", "l1") if n in norms
             for v in variants for r in restarts for k in smooth_maxes]  # fmt: skip
    for key in peers:
        if key == "alma_prox-linf":
            specs += [prox_variant(r, mode, k, share) for r in restarts for k in smooth_maxes]
        else:
            specs.append(get_attack(key))
    return [s for s in specs if s.norm in norms]


def summarize(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per record: success (%), median (failures +inf), optimality against the best of
    every run of the same (model, norm), counted forwards / backwards per sample, wall time."""
    rows = []
    for (model, norm), chosen in groups(records).items():
        n = len(chosen[0].indices)
        distances = {f"{r.attack}@{r.budget}": np.asarray(r.distances, float) for r in chosen}
        scores = metrics.optimality(distances) if n else {k: math.nan for k in distances}
        for r in chosen:
            d = distances[f"{r.attack}@{r.budget}"]
            rows.append({
                "model": model, "norm": norm, "attack": r.attack, "label": r.label,
                "budget": r.budget, "samples": n,
                "success": 100.0 * float(np.isfinite(d).mean()) if n else math.nan,
                "median": float(np.median(d)) if n else math.nan,
                "optimality": scores[f"{r.attack}@{r.budget}"],
                "forwards": r.forwards / n if n else math.nan,
                "backwards": r.backwards / n if n else math.nan, "seconds": r.seconds,
            })  # fmt: skip
    return rows


def _cell(row: Mapping[str, Any]) -> str:
    success = "" if row["success"] == 100 else f", {row['success']:.0f}%"
    return f"{row['median']:.4g} ({row['optimality']:.3f}{success})"


def format_tables(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per (model, norm), one line per attack, one column per budget, each cell
    ``median (optimality[, success % when below 100])``."""
    budgets = sorted({row["budget"] for row in rows})
    out = []
    for model, norm in dict.fromkeys((row["model"], row["norm"]) for row in rows):
        chosen = [row for row in rows if (row["model"], row["norm"]) == (model, norm)]
        out += [f"**{model}, {norm}** — median (optimality)", "",
                "| attack | " + " | ".join(str(b) for b in budgets) + " |",
                "|---|" + "---|" * len(budgets)]  # fmt: skip
        for attack in dict.fromkeys(row["attack"] for row in chosen):
            cells = {row["budget"]: _cell(row) for row in chosen if row["attack"] == attack}
            label = next(row["label"] for row in chosen if row["attack"] == attack)
            name = f"{label} `{attack}`"
            out.append(f"| {name} | " + " | ".join(cells.get(b, "") for b in budgets) + " |")
        out.append("")
    return "\n".join(out)


def plot(rows: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
    """``sweep_<model>.png``: median (top) and optimality (bottom) against the budget (log
    scale), one column per norm, one line per attack."""
    plt = pyplot()
    # One colour per attack across every panel and figure (the default colour cycle).
    labels = dict.fromkeys(row["label"] for row in rows)
    colours = {label: f"C{index % 10}" for index, label in enumerate(labels)}
    paths = []
    for model in dict.fromkeys(row["model"] for row in rows):
        norms = list(dict.fromkeys(row["norm"] for row in rows if row["model"] == model))
        fig, axes = plt.subplots(2, len(norms), figsize=(4.5 * len(norms), 7), squeeze=False)
        for column, norm in enumerate(norms):
            chosen = [row for row in rows if (row["model"], row["norm"]) == (model, norm)]
            for attack in dict.fromkeys(row["attack"] for row in chosen):
                mine = sorted((row for row in chosen if row["attack"] == attack),
                              key=lambda row: row["budget"])  # fmt: skip
                budgets = [row["budget"] for row in mine]
                style = "--" if "paper" in attack else "-"
                for ax, key in zip(axes[:, column], ("median", "optimality"), strict=True):
                    ax.plot(budgets, [row[key] for row in mine], style, marker="o",
                            color=colours[mine[0]["label"]], label=mine[0]["label"])  # fmt: skip
            for ax, key in zip(axes[:, column], ("median", "optimality"), strict=True):
                ax.set_xscale("log")
                ticks = sorted({row["budget"] for row in chosen})
                ax.set_xticks(ticks, [str(b) for b in ticks])
                ax.minorticks_off()
                ax.set_xlabel("budget (steps)")
                ax.set_ylabel(f"{key} {norm_label(norm)}")
                ax.grid(True, which="both", alpha=0.3)
            axes[0, column].set_title(f"{model}: {norm_label(norm)}")
            axes[1, column].legend(fontsize=7)
        paths.append(save_figure(fig, folder / f"sweep_{model}.png", 110))
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = BenchParser(
        prog="alma-bench sweep",
        description="ALMA's variants, ALMA prox, DDN, FMN and APGD at several budgets: median "
        "and optimality against the budget (table, CSV and plots).",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODEL_NAMES),
        metavar="MODEL",
        help=f"embedded model names, TorchScript files or file.py:factory / module:factory "
        f"(default: {' '.join(MODEL_NAMES)})",
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=budget_option(),
        default=list(DEFAULT_BUDGETS),
        metavar="STEPS",
        help="step budgets (default: 50 100 200 500 1000)",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        choices=list(ALMA_VARIANTS),
        default=list(ALMA_VARIANTS),
        help="ALMA variants (default: all)",
    )
    parser.add_argument(
        "--restarts",
        nargs="+",
        type=_restarts_option,
        default=[None],
        metavar="R",
        help="run ALMA's variants and ALMA prox once per R, with R runs sharing each budget "
        "(ALMAParams / ProxParams.restarts: a number >= 1, 1 for the published algorithms) or "
        "'default' (each one's default: ALMA's class restarts for l1 and l2 from 100 steps, "
        "one run for ALMA prox; the default)",
    )
    parser.add_argument(
        "--restart-mode",
        choices=list(RESTART_MODES),
        default=None,
        help="how runs k >= 1 of R > 1 differ from run 0 (ALMAParams / "
        "ProxParams.restart_mode; default: random); with --restarts R > 1 only",
    )
    parser.add_argument(
        "--first-run-share",
        type=_share_option,
        default=None,
        metavar="P",
        help="run 0's share of each budget where R > 1, the others splitting the rest "
        "(ALMAParams / ProxParams.first_run_share: a number in (0, 1); default: an even split); "
        "with --restarts R > 1 only",
    )
    parser.add_argument(
        "--smooth-max",
        nargs="+",
        type=_smooth_max_option,
        default=[None],
        metavar="KAPPA",
        help="run ALMA's variants and ALMA prox once per κ of a smoothed max in DLR+'s gradient "
        "(ALMAParams / ProxParams.smooth_max: a number >= 0, 0 for the papers' gradient) or "
        "'default' (each one's default: DISTANCES[norm].smooth_max, 0.1, for ALMA's l1 and l2, "
        "PROX_SMOOTH_MAX's 0.1 for ALMA prox; the default)",
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        default=list(PEERS),
        metavar="ATTACK",
        help=f"registry attacks to sweep (default: {' '.join(PEERS)})",
    )
    parser.add_argument(
        "--distance",
        "--distances",  # as the main command (the spelling of reeval, step0 and throughput)
        dest="distance",
        nargs="+",
        choices=("l1", "l2", "linf"),
        default=["l1", "l2", "linf"],
        help="norms to keep (default: all)",
    )
    parser.add_argument(
        "--samples", type=integer_option("samples", 1), default=100, help="the first N samples"
    )
    parser.add_argument("--batch-size", type=integer_option("batch-size", 1), default=50)
    add_threads_option(parser)
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda or "
                        "cuda:N; the models, samples and attacks all run there")  # fmt: skip
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="ALMA and ALMA prox replay their steps as CUDA graphs (needs a "
                        "CUDA --device; counted exactly; the peers run as they are)")  # fmt: skip
    parser.add_argument("--seed", type=seed_option(), default=0)
    parser.add_argument("--output", type=path_option("output"), default=Path("alma-sweep-results"))
    parser.add_argument(
        "--resume", action="store_true", help="reuse the finished batches in OUTPUT/batches"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _check(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[list[tuple[AttackSpec, int]], list[str]]:
    """Check the arguments (as the main command does: exit status 2 naming the argument);
    return the (attack, budget) pairs to run and the notes on the attacks skipped."""
    for name in ("samples", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.seed < 0:
        parser.error(f"argument --seed: must be >= 0, got {args.seed}")
    cuda_graphs_argument(parser, args.cuda_graphs, device_argument(parser, args.device))
    if min(args.budgets) < 1:
        parser.error(f"argument --budgets: every budget must be >= 1, got {args.budgets}")
    given = [r for r in args.restarts if r is not None]
    if given and max(given) > min(args.budgets):
        parser.error(
            f"argument --restarts: every R must be at most the smallest budget "
            f"({min(args.budgets)}), got {args.restarts}"
        )
    for key in args.peers:
        try:
            get_attack(key)
        except ValueError as error:
            parser.error(f"argument --peers: {error}")
    # Rows are keyed by (model, attack, budget), as in the main command: no value twice.
    models_argument(parser, args.models)
    for option in ("budgets", "restarts", "variants", "peers"):
        distinct_argument(parser, f"--{option}", getattr(args, option))
    distinct_argument(parser, "--smooth-max", args.smooth_max)
    # Options of R > 1 runs with no R > 1 to take them: refused, not silently dropped.
    for option, value in (("--restart-mode", args.restart_mode),
                          ("--first-run-share", args.first_run_share)):  # fmt: skip
        if value is not None and not any(r is not None and r > 1 for r in args.restarts):
            parser.error(
                f"argument {option}: applies to --restarts R with R > 1 only, got --restarts "
                f"{' '.join('default' if r is None else str(r) for r in args.restarts)}"
            )
    mode = "random" if args.restart_mode is None else args.restart_mode
    specs = _specs(args.variants, args.peers, args.distance, args.restarts, mode,
                   args.smooth_max, args.first_run_share)  # fmt: skip
    skipped = [reason for s in specs if (reason := s.unavailable()) is not None]
    pairs = [(s, b) for s in specs if s.unavailable() is None for b in sorted(args.budgets)]
    for spec, budget in pairs:
        if (why := spec.check_budget(budget)) is not None:
            parser.error(f"argument --budgets: {why}")
    if not pairs:
        why = "".join(f"; {note}" for note in skipped)
        parser.error(f"arguments --variants/--peers/--distance: no attack left to run for "
                     f"variants={args.variants}, peers={args.peers} and "
                     f"distances={args.distance}{why}")  # fmt: skip
    output_argument(parser, "--output", args.output)
    images, labels = load_data(EMBEDDED_DATA)
    if args.samples > len(images):
        parser.error(f"argument --samples: at most {len(images)}, got {args.samples}")
    for name in args.models:  # before any attack runs (a bad name used to be a traceback)
        try:
            model = load_model(name, "cpu")
        except ValueError as error:
            parser.error(f"argument --models: {error}")
        # as the main command: a model returning NaN was a table of 'inf (nan, 0%)' cells, one
        # that does not fit the images a traceback from inside the first attack
        model_argument(parser, name, model, images, labels[: args.samples], EMBEDDED_DATA, None)
    return pairs, skipped


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; return 0 (argument errors exit with status 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    pairs, skipped = _check(parser, args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = BenchConfig(models=tuple(args.models), samples=args.samples,
                         batch_size=args.batch_size, seed=args.seed, device=args.device,
                         output=args.output,
                         quiet=args.quiet, batches=args.output / "batches",
                         resume=args.resume, cuda_graphs=args.cuda_graphs)  # fmt: skip
    start = time.perf_counter()
    records = run_shard(config, distributed.Context(), pairs)
    rows = summarize(records)
    args.output.mkdir(parents=True, exist_ok=True)
    with (args.output / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    notes = [f"Note: {reason}" for reason in skipped]
    table = format_tables(rows) + "\n".join(notes)
    (args.output / "sweep.md").write_text(table + "\n")
    if not args.no_plots:
        plot(rows, args.output)
    print(table)
    print(f"Samples per model: {args.samples}. Device: {args.device}. Total wall time: "
          f"{time.perf_counter() - start:.1f} s.", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
