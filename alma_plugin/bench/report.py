"""Tables and per-sample files of a benchmark run.

Conventions (as in the ALMA paper, Rony et al. ICCV 2021, §4 and Table 1): the median is taken
over all attacked samples with failures counted as +inf, so a median is finite only when more
than half of the samples were fooled; samples the model misclassifies before any attack count
as distance 0 (and as successes). Forwards / backwards are the samples propagated through the
model (counted by a wrapper) divided by the number of samples. Robust accuracy at ε is the
fraction of samples whose distance exceeds ε (the paper's Figures 4–14).

Per (model, norm), every attack run (attack and budget) is also compared with the per-sample
best of all runs (:mod:`.metrics`): AttackBench's optimality, the samples each run wins, and
the soft sparsity ‖δ‖₁/‖δ‖₂ of its perturbations (Liang et al., solution patterns, §3). The
best of all is a row of its own.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import metrics

__all__ = ["BEST_OF_ALL", "FOOTER", "Record", "Row", "format_table", "from_json", "groups",
           "merge", "summarize", "to_json", "write_files"]  # fmt: skip

#: The label of the per-sample best-of-all rows and curves.
BEST_OF_ALL = "best of all"

FOOTER = (
    "Median over all samples with failures counted as +inf (as in the paper); samples "
    "misclassified before the attack count as distance 0 and as successes. Forwards / "
    "backwards: samples propagated through the model, counted by a wrapper, per sample. "
    "Distances are measured on images in [0, 1]. C&W-l2 and EAD split the budget over 9 "
    "binary-search steps; APGD over a binary search on eps (see the note column). "
    "Per model and norm, 'best of all' keeps each sample's smallest distance over every run "
    "listed above it; optimality (AttackBench) = 1 - (A - A*) / (A_worst - A*) with A the "
    "exact area under the run's robust-accuracy curve on [0, D], A* that of the best of all, "
    "A_worst = clean accuracy x D, D the largest finite best-of-all distance; distances count "
    "as min(d, D), so 1 means the best distance on every sample except those whose best is D, "
    "where any distance >= D or a failure also scores (check the success column); NaN when no "
    "run fooled any sample. Wins: samples where the run attains the best of all "
    "(ties: each tied run gets the win; misclassified and unbroken samples are nobody's). "
    "Sparsity: l1/l2 ratio of the perturbation of each successful sample, median "
    "[25th, 75th percentile], from 1 (one pixel) to sqrt(n) (constant); lower is sparser."
)


@dataclass
class Record:
    """The per-sample outcome of one attack at one budget on one model (a batch, a shard or
    all samples). ``sparsity``: ‖δ‖₁/‖δ‖₂ per sample (NaN for failures and samples
    misclassified before the attack); ``histogram``: counts of |δ| of the successful samples
    in the bins :data:`.metrics.HISTOGRAM_EDGES`."""

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
    sparsity: list[float] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int]:
        """(model, attack, budget): what identifies a record across shards."""
        return (self.model, self.attack, self.budget)


@dataclass(frozen=True)
class Row:
    """One line of the summary table (``budget`` None: the best-of-all row)."""

    model: str
    attack: str
    norm: str
    budget: int | None
    samples: int
    success: float
    median: float
    forwards: float
    backwards: float
    seconds: float
    note: str
    optimality: float = math.nan
    wins: int = 0
    sparsity_q25: float = math.nan
    sparsity_median: float = math.nan
    sparsity_q75: float = math.nan


def _add(total: list[int], counts: Sequence[int]) -> list[int]:
    if not total:
        return list(counts)
    if counts and len(counts) != len(total):
        raise ValueError(f"histograms must have the same bins, got {len(total)} and {len(counts)}")
    return [a + b for a, b in zip(total, counts, strict=True)] if counts else total


def merge(shards: Sequence[Sequence[Record]], wall: str = "max") -> list[Record]:
    """Records joined per (model, attack, budget), samples in index order, counts and
    histograms summed. Wall time: ``"max"`` over parallel shards, ``"sum"`` over sequential
    batches."""
    merged: dict[tuple[str, str, int], Record] = {}
    for records in shards:
        for r in records:
            if r.key not in merged:
                merged[r.key] = Record(r.model, r.attack, r.label, r.norm, r.budget, r.note,
                                       [], [])  # fmt: skip
            m = merged[r.key]
            m.indices += r.indices
            m.distances += r.distances
            m.sparsity += r.sparsity if r.sparsity else [math.nan] * len(r.indices)
            m.histogram = _add(m.histogram, r.histogram)
            m.forwards += r.forwards
            m.backwards += r.backwards
            m.seconds = max(m.seconds, r.seconds) if wall == "max" else m.seconds + r.seconds
    for m in merged.values():
        order = np.argsort(m.indices, kind="stable")
        m.indices = [m.indices[i] for i in order]
        m.distances = [m.distances[i] for i in order]
        m.sparsity = [m.sparsity[i] for i in order]
    return list(merged.values())


def groups(records: Sequence[Record]) -> dict[tuple[str, str], list[Record]]:
    """Records per (model, norm), in first-appearance order; checks they share their samples."""
    found: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        found.setdefault((r.model, r.norm), []).append(r)
    for (model, norm), chosen in found.items():
        if any(r.indices != chosen[0].indices for r in chosen):
            raise ValueError(f"records of model {model!r} and norm {norm!r} must cover the same "
                             "samples to be compared")  # fmt: skip
    return found


def _sparsity_of(r: Record) -> np.ndarray:
    return np.asarray(r.sparsity or [math.nan] * len(r.indices), dtype=np.float64)


def run_name(r: Record) -> str:
    """The name of one run in the metrics: ``attack@budget``."""
    return f"{r.attack}@{r.budget}"


def _row(
    r: Record,
    name: str,
    budget: int | None,
    note: str,
    d: np.ndarray,
    sparsity: np.ndarray,
    **counts: float,
) -> Row:
    n = len(d)
    q25, q50, q75 = metrics.quartiles(sparsity)
    return Row(
        model=r.model, attack=name, norm=r.norm, budget=budget, samples=n,
        success=100.0 * float(np.isfinite(d).mean()) if n else math.nan,
        median=float(np.median(d)) if n else math.nan, forwards=counts["forwards"],
        backwards=counts["backwards"], seconds=counts["seconds"], note=note,
        optimality=counts["optimality"], wins=int(counts["wins"]),
        sparsity_q25=q25, sparsity_median=q50, sparsity_q75=q75,
    )  # fmt: skip


def summarize(records: Sequence[Record]) -> list[Row]:
    """Rows per (model, norm) group: one per record (success rate (%), median distance with
    failures as +inf, optimality, wins, sparsity quartiles, counted forwards / backwards per
    sample, wall time), then the group's best-of-all row."""
    rows = []
    for chosen in groups(records).values():
        distances = {run_name(r): np.asarray(r.distances, dtype=np.float64) for r in chosen}
        n = len(chosen[0].indices)
        if n:
            scores, wins = metrics.optimality(distances), metrics.win_counts(distances)
            won = metrics.winners(distances)
        else:
            scores, wins = {k: math.nan for k in distances}, {k: 0 for k in distances}
            won = np.zeros((len(chosen), 0), dtype=bool)
        for r in chosen:
            d, name = distances[run_name(r)], run_name(r)
            rows.append(_row(r, r.label, r.budget, r.note, d, _sparsity_of(r),
                             forwards=r.forwards / n if n else math.nan,
                             backwards=r.backwards / n if n else math.nan, seconds=r.seconds,
                             optimality=scores[name], wins=wins[name]))  # fmt: skip
        if len(chosen) < 2 or not n:
            continue
        # The best of all scores 1 against itself, except where no run fooled any sample: then
        # D, and every run's optimality, is undefined (NaN), and so is its own.
        best = np.min(np.stack(list(distances.values())), axis=0)
        sparsity = np.stack([_sparsity_of(r) for r in chosen])
        first = np.where(won.any(axis=0), won.argmax(axis=0), -1)
        best_sparsity = np.where(first >= 0, sparsity[first, np.arange(n)], np.nan)
        ties = int((won.sum(axis=0) > 1).sum())
        note = f"per-sample best of the {len(chosen)} runs above; {ties} tied samples"
        rows.append(_row(chosen[0], BEST_OF_ALL, None, note, best, best_sparsity,
                         forwards=sum(r.forwards for r in chosen) / n,
                         backwards=sum(r.backwards for r in chosen) / n,
                         seconds=sum(r.seconds for r in chosen),
                         optimality=1.0 if np.isfinite(best).any() else math.nan,
                         wins=int(won.any(axis=0).sum())))  # fmt: skip
    return rows


_HEADER = ("model", "attack", "norm", "budget", "success (%)", "median distance",
           "optimality", "wins", "sparsity l1/l2 median [IQR]", "forwards / sample",
           "backwards / sample", "wall time (s)", "budget use")  # fmt: skip


def _sparsity(r: Row) -> str:
    if math.isnan(r.sparsity_median):
        return "-"
    return f"{r.sparsity_median:.3g} [{r.sparsity_q25:.3g}, {r.sparsity_q75:.3g}]"


def format_table(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """A Markdown table with the paper's columns and the evaluation metrics, followed by the
    conventions and notes."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "|".join("---" for _ in _HEADER) + "|"]
    for r in rows:
        cells = (r.model, r.attack if r.budget is not None else f"**{r.attack}**", r.norm,
                 "all" if r.budget is None else str(r.budget), f"{r.success:.1f}",
                 f"{r.median:.4g}", f"{r.optimality:.3f}", str(r.wins), _sparsity(r),
                 f"{r.forwards:.1f}", f"{r.backwards:.1f}", f"{r.seconds:.1f}",
                 r.note)  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    footer = [f"Samples per model: {rows[0].samples}." if rows else "No attack ran.", FOOTER]
    return "\n".join(lines + [""] + footer + [f"Note: {note}" for note in notes]) + "\n"


def _finite(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    return value if math.isfinite(value) else "inf"


def _clean(value: object) -> object:
    return _finite(value) if isinstance(value, float) else value


def to_json(value: object) -> object:
    """``value`` (dicts, lists, tuples, numbers) ready for strict JSON, as ``results.json``
    writes it: ±inf as the strings ``"inf"`` / ``"-inf"``, NaN as null (``json.dumps`` would
    write bare ``Infinity`` / ``NaN``, which strict parsers refuse)."""
    if isinstance(value, float):
        return "-inf" if value == -math.inf else _finite(value)
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def from_json(value: object) -> float:
    """A number written by :func:`to_json` (or by older files as bare ``Infinity`` / ``NaN``,
    which ``json.loads`` reads as floats) back as a float: null is NaN."""
    if value is None:
        return math.nan
    if isinstance(value, str | int | float):
        return float(value)  # float("inf") and float("-inf") read the strings back
    raise ValueError(f"expected a number, 'inf', '-inf' or null, got {value!r}")


def write_files(
    records: Sequence[Record], rows: Sequence[Row], table: str, folder: Path, meta: dict
) -> list[Path]:
    """Write ``distances.csv`` (one line per sample and run: distance and sparsity),
    ``results.json`` (run settings, summary, per-sample distances and sparsities, |δ|
    histograms, best of all and its winners) and ``table.md``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, table_path = (folder / "distances.csv", folder / "results.json",
                                       folder / "table.md")  # fmt: skip
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "attack", "label", "norm", "budget", "sample", "distance",
                         "sparsity"])  # fmt: skip
        for r in records:
            sparsity = r.sparsity or [math.nan] * len(r.indices)
            for index, distance, ratio in zip(r.indices, r.distances, sparsity, strict=True):
                writer.writerow([r.model, r.attack, r.label, r.norm, r.budget, index, distance,
                                 ratio])  # fmt: skip
    summary = [{k: _clean(v) for k, v in asdict(row).items()} for row in rows]
    per_sample = [{"model": r.model, "attack": r.attack, "norm": r.norm, "budget": r.budget,
                   "indices": r.indices, "distances": [_finite(d) for d in r.distances],
                   "sparsity": [_finite(s) for s in r.sparsity], "histogram": r.histogram}
                  for r in records]  # fmt: skip
    best = []
    for (model, norm), chosen in groups(records).items():
        distances = {run_name(r): r.distances for r in chosen}
        if not chosen[0].indices:
            continue
        won = metrics.winners(distances)
        best.append({"model": model, "norm": norm, "indices": chosen[0].indices,
                     "distances": [_finite(d) for d in metrics.best_of_all(distances)],
                     "winners": [[k for k, w in zip(distances, column, strict=True) if w]
                                 for column in won.T]})  # fmt: skip
    payload = {"settings": meta, "conventions": FOOTER, "summary": summary,
               "histogram_edges": metrics.HISTOGRAM_EDGES.tolist(), "samples": per_sample,
               "best_of_all": best}  # fmt: skip
    json_path.write_text(json.dumps(payload, indent=1))
    table_path.write_text(table)
    return [csv_path, json_path, table_path]
