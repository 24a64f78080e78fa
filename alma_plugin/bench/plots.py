"""The PNG figures of a benchmark run (matplotlib, Agg backend).

- ``robust_accuracy_<model>_<norm>.png``: robust accuracy vs perturbation size, one line per
  attack run (dashed: the smaller budgets) and the per-sample best of all (black), as the ALMA
  paper's Figures 4–14 and AttackBench's optimality curves.
- ``patterns_<model>.png``: the solution patterns of Liang et al. (§3, Figures 3–6), one
  column per norm: the histogram of the element-wise magnitude |δ| of every run's successful
  perturbations (top) and the distribution of the soft sparsity ‖δ‖₁/‖δ‖₂ per run (bottom).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .report import BEST_OF_ALL, Record, groups
from .usermodels import safe_name

__all__ = ["plot_curves", "plot_patterns"]


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def norm_label(norm: str) -> str:
    """A norm's name for figures: "l1", "l2", "l∞"."""
    return norm.replace("linf", "l∞")


def save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """Lay out, write and close ``fig``; return ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_curves(records: Sequence[Record], folder: Path) -> list[Path]:
    """Robust accuracy vs perturbation size, one PNG per (model, norm): one line per attack and
    budget (dashed: the smaller budgets) and the best-of-all curve (black)."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (model, norm), chosen in groups(records).items():
        chosen = [r for r in chosen if r.distances]
        if not chosen:
            continue
        finite = [d for r in chosen for d in r.distances if math.isfinite(d)]
        top = max(finite) * 1.05 if finite and max(finite) > 0 else 1.0
        grid = np.linspace(0.0, top, 400)
        largest = max(r.budget for r in chosen)
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in chosen:
            d = np.asarray(r.distances)
            accuracy = 100.0 * (d[None, :] > grid[:, None]).mean(axis=1)
            style = "-" if r.budget == largest else "--"
            ax.plot(grid, accuracy, style, label=f"{r.label} ({r.budget})")
        if len(chosen) > 1:
            best = metrics.best_of_all({f"{r.attack}@{r.budget}": r.distances for r in chosen})
            accuracy = 100.0 * (best[None, :] > grid[:, None]).mean(axis=1)
            ax.plot(grid, accuracy, color="black", linewidth=2.2, alpha=0.6, label=BEST_OF_ALL)
        ax.set_xlabel(f"perturbation size ({norm_label(norm)})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(f"{model}: robust accuracy vs {norm_label(norm)}")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(
            save_figure(fig, folder / f"robust_accuracy_{safe_name(model)}_{norm}.png", 100)
        )
    return paths


def _successes(r: Record) -> int:
    return sum(1 for d in r.distances if 0 < d < math.inf)


def plot_patterns(records: Sequence[Record], folder: Path) -> list[Path]:
    """One PNG per model: per norm, the |δ| histograms (fraction of the entries of successful
    perturbations per bin; the share below 1e-4 is in the legend) and box plots of the soft
    sparsity ‖δ‖₁/‖δ‖₂ of every run, on one scale [0, √n] for all norms (as the paper's
    Figures 5–6)."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    found = groups(records)
    paths = []
    edges = metrics.HISTOGRAM_EDGES
    centres = np.sqrt(edges[1:-1] * edges[2:])  # geometric centres of the log bins
    for model in dict.fromkeys(m for m, _ in found):
        norms = [norm for m, norm in found if m == model]
        n = max(
            (
                sum(r.histogram) // max(1, _successes(r))
                for key in found
                if key[0] == model
                for r in found[key]
                if r.histogram
            ),
            default=0,
        )  # entries per sample
        fig, axes = plt.subplots(2, len(norms), figsize=(4.6 * len(norms), 7), squeeze=False)
        for column, norm in enumerate(norms):
            chosen = found[(model, norm)]
            top, bottom = axes[0, column], axes[1, column]
            for r in chosen:
                counts = np.asarray(r.histogram, dtype=np.float64)
                if not counts.sum():
                    continue
                share = counts / counts.sum()
                top.step(centres, share[1:], where="mid",
                         label=f"{r.label} ({r.budget}): {100 * share[0]:.0f}% < 1e-4")  # fmt: skip
            top.set_xscale("log")
            top.set_yscale("log")
            top.set_xlabel("|δ| per entry (successful samples)")
            top.set_ylabel("fraction of entries per bin" if not column else "")
            top.set_title(f"{model}, {norm_label(norm)} attacks: |δ| histogram")
            top.grid(alpha=0.3)
            if top.get_legend_handles_labels()[1]:
                top.legend(fontsize=7)
            else:  # no attack of this norm fooled a sample: say so, not an empty legend
                top.text(0.5, 0.5, "no successful perturbation", ha="center", va="center",
                         transform=top.transAxes)  # fmt: skip
            values, labels = [], []
            for r in chosen:
                s = np.asarray(r.sparsity, dtype=np.float64)
                values.append(s[~np.isnan(s)])
                labels.append(f"{r.label}\n({r.budget})")
            bottom.boxplot(values, tick_labels=labels, showfliers=True)
            bottom.set_ylim(0, math.sqrt(n) * 1.02 if n else None)
            bottom.set_ylabel("‖δ‖₁ / ‖δ‖₂ per sample (lower: sparser)" if not column else "")
            bottom.set_title("soft sparsity")
            bottom.tick_params(axis="x", labelsize=7)
            bottom.grid(alpha=0.3, axis="y")
        paths.append(save_figure(fig, folder / f"patterns_{safe_name(model)}.png", 90))
    return paths
