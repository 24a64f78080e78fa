"""Tables, per-sample files and robust-accuracy curves of a benchmark run.

Conventions (as in the ALMA paper, Rony et al. ICCV 2021, §4 and Table 1): the median is taken
over all attacked samples with failures counted as +inf, so a median is finite only when more
than half of the samples were fooled; samples the model misclassifies before any attack count
as distance 0 (and as successes). Forwards / backwards are the samples propagated through the
model (counted by a wrapper) divided by the number of samples. Robust accuracy at ε is the
fraction of samples whose distance exceeds ε (the paper's Figures 4–14).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["FOOTER", "Record", "Row", "format_table", "plot_curves", "summarize", "write_files"]

FOOTER = (
    "Median over all samples with failures counted as +inf (as in the paper); samples "
    "misclassified before the attack count as distance 0 and as successes. Forwards / "
    "backwards: samples propagated through the model, counted by a wrapper, per sample. "
    "Distances are measured on images in [0, 1]. C&W-l2 and EAD split the budget over 9 "
    "binary-search steps; APGD over a binary search on eps (see the note column)."
)


@dataclass
class Record:
    """The per-sample outcome of one attack at one budget on one model (one shard or all)."""

    model: str
    attack: str
    label: str
    norm: str
    budget: int
    note: str
    indices: list[int]
    distances: list[float]
    forwards: int = 0
    backwards: int = 0
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, str, int]:
        """(model, attack, budget): what identifies a record across shards."""
        return (self.model, self.attack, self.budget)


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    model: str
    attack: str
    norm: str
    budget: int
    samples: int
    success: float
    median: float
    forwards: float
    backwards: float
    seconds: float
    note: str


def merge(shards: Sequence[Sequence[Record]]) -> list[Record]:
    """Records of all shards joined per (model, attack, budget), samples in index order; wall
    time is the slowest shard's (the shards run in parallel)."""
    merged: dict[tuple[str, str, int], Record] = {}
    for records in shards:
        for r in records:
            if r.key not in merged:
                merged[r.key] = Record(r.model, r.attack, r.label, r.norm, r.budget, r.note,
                                       [], [])  # fmt: skip
            m = merged[r.key]
            m.indices += r.indices
            m.distances += r.distances
            m.forwards += r.forwards
            m.backwards += r.backwards
            m.seconds = max(m.seconds, r.seconds)
    for m in merged.values():
        order = np.argsort(m.indices, kind="stable")
        m.indices = [m.indices[i] for i in order]
        m.distances = [m.distances[i] for i in order]
    return list(merged.values())


def summarize(records: Sequence[Record]) -> list[Row]:
    """One :class:`Row` per record: success rate (%), median distance (+inf for failures),
    counted forwards / backwards per sample and wall time."""
    rows = []
    for r in records:
        d = np.asarray(r.distances, dtype=np.float64)
        n = len(d)
        rows.append(
            Row(
                model=r.model,
                attack=r.label,
                norm=r.norm,
                budget=r.budget,
                samples=n,
                success=100.0 * float(np.isfinite(d).mean()) if n else math.nan,
                median=float(np.median(d)) if n else math.nan,
                forwards=r.forwards / n if n else math.nan,
                backwards=r.backwards / n if n else math.nan,
                seconds=r.seconds,
                note=r.note,
            )
        )
    return rows


_HEADER = ("model", "attack", "norm", "budget", "success (%)", "median distance",
           "forwards / sample", "backwards / sample", "wall time (s)", "budget use")  # fmt: skip


def format_table(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """A Markdown table with the paper's columns, followed by the conventions and notes."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "|".join("---" for _ in _HEADER) + "|"]
    for r in rows:
        cells = (r.model, r.attack, r.norm, str(r.budget), f"{r.success:.1f}",
                 f"{r.median:.4g}", f"{r.forwards:.1f}", f"{r.backwards:.1f}",
                 f"{r.seconds:.1f}", r.note)  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    footer = [f"Samples per model: {rows[0].samples}." if rows else "No attack ran.", FOOTER]
    return "\n".join(lines + [""] + footer + [f"Note: {note}" for note in notes]) + "\n"


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "nan")


def write_files(
    records: Sequence[Record], rows: Sequence[Row], table: str, folder: Path, meta: dict
) -> list[Path]:
    """Write ``distances.csv`` (one line per sample and attack), ``results.json`` (summary,
    per-sample distances, run settings) and ``table.md``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, table_path = (folder / "distances.csv", folder / "results.json",
                                       folder / "table.md")  # fmt: skip
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "attack", "label", "norm", "budget", "sample", "distance"])
        for r in records:
            for index, distance in zip(r.indices, r.distances, strict=True):
                writer.writerow([r.model, r.attack, r.label, r.norm, r.budget, index, distance])
    summary = [{k: _finite(v) if isinstance(v, float) else v for k, v in asdict(row).items()}
               for row in rows]  # fmt: skip
    per_sample = [{"model": r.model, "attack": r.attack, "norm": r.norm, "budget": r.budget,
                   "indices": r.indices, "distances": [_finite(d) for d in r.distances]}
                  for r in records]  # fmt: skip
    payload = {"settings": meta, "conventions": FOOTER, "summary": summary, "samples": per_sample}
    json_path.write_text(json.dumps(payload, indent=1))
    table_path.write_text(table)
    return [csv_path, json_path, table_path]


def plot_curves(records: Sequence[Record], folder: Path) -> list[Path]:
    """Robust accuracy vs perturbation size, one PNG per (model, norm), one line per attack and
    budget (dashed: the smaller budgets), as the paper's Figures 4–14. Uses the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    groups = sorted({(r.model, r.norm) for r in records})
    for model, norm in groups:
        chosen = [r for r in records if (r.model, r.norm) == (model, norm) and r.distances]
        if not chosen:
            continue
        finite = [d for r in chosen for d in r.distances if math.isfinite(d)]
        top = max(finite) * 1.05 if finite and max(finite) > 0 else 1.0
        grid = np.linspace(0.0, top, 300)
        largest = max(r.budget for r in chosen)
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in chosen:
            d = np.asarray(r.distances)
            accuracy = 100.0 * (d[None, :] > grid[:, None]).mean(axis=1)
            style = "-" if r.budget == largest else "--"
            ax.plot(grid, accuracy, style, label=f"{r.label} ({r.budget})")
        ax.set_xlabel(f"perturbation size ({norm.replace('linf', 'l∞')})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(f"{model}: robust accuracy vs {norm}")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"robust_accuracy_{model}_{norm}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
