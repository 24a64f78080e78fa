"""Per-batch result files: what makes long ``alma-bench`` runs resumable and shardable.

Every (model, attack, budget, batch) writes one small JSON file as soon as it is done, under
``<output>/batches/<model>/<attack>@<budget>/<first>-<last>.json`` (sample positions, so the
files are the same whatever the number of processes). Each file carries a fingerprint of
everything its result depends on: the package and peer-library versions, a hash of the
package's attack code (so that an edited working copy does not count as the same version),
the model's weights, the batch's images and labels, the attack, budget, seed and device, and
``--cuda-graphs`` for the attacks it applies to.
``--resume`` reuses a file only when its fingerprint matches, so a changed model, data set or
code version is recomputed, never mixed in. Files are written atomically (a temporary file,
then a rename), so a run killed mid-write leaves no half file behind.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .report import Record, from_json, to_json
from .usermodels import safe_name

__all__ = ["BatchStore", "batch_fingerprint", "code_fingerprint", "library_versions"]

#: The benchmark's own modules whose code decides a batch's result (the rest of ``bench/``
#: only reports it; ``sweep.py`` builds the sweep's ALMA and ALMA prox variants); every module
#: outside ``bench/`` counts.
_RESULT_MODULES = ("counting.py", "peers.py", "registry.py", "runner.py", "sweep.py")


def library_versions() -> dict[str, str]:
    """Versions of the packages whose code decides the results (absent ones: "missing")."""
    versions = {}
    for name in ("alma_plugin", "torch", "numpy", "foolbox", "eagerpy", "torchattacks"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 of the package's Python sources that decide attack results: everything but the
    reporting modules of ``bench/``. Computed once per process."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] == "bench" and relative.name not in _RESULT_MODULES:
            continue
        digest.update(str(relative).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def batch_fingerprint(
    *,
    model_hash: str,
    attack: str,
    budget: int,
    seed: int,
    device: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    cuda_graphs: bool = False,
) -> str:
    """SHA-256 of what one batch's result depends on (see the module doc); ``cuda_graphs``
    enters only when set, so the fingerprints of runs without it are those of before."""
    digest = hashlib.sha256()
    settings = {"versions": library_versions(), "code": code_fingerprint(),
                "model": model_hash, "attack": attack,
                "budget": budget, "seed": seed, "device": device,
                "shape": list(images.shape), "dtype": str(images.dtype)}  # fmt: skip
    if cuda_graphs:
        settings["cuda_graphs"] = True
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


class BatchStore:
    """The folder of per-batch files of one run.

    Args:
        folder: where the files go (``<output>/batches``).
        resume: whether :meth:`load` may return finished batches (else every batch reruns and
            its file is overwritten).
    """

    def __init__(self, folder: Path, resume: bool) -> None:
        self.folder = folder
        self.resume = resume
        self.reused = 0
        self.computed = 0

    def path(self, model: str, attack: str, budget: int, first: int, last: int) -> Path:
        """The file of samples ``first..last`` (positions, inclusive) of one run."""
        return (
            self.folder
            / safe_name(model)
            / f"{safe_name(attack)}@{budget}"
            / f"{first:06d}-{last:06d}.json"
        )

    def load(
        self, path: Path, fingerprint: str, indices: Sequence[int] | None = None
    ) -> Record | None:
        """The finished batch at ``path`` when resuming and its fingerprint matches, else None
        (a missing, unreadable or stale file, or one whose record is not one distance per
        sample of ``indices``, the batch's sample positions, means: compute the batch)."""
        if not self.resume or not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        # Valid JSON of another shape ([], a list as the record) was an AttributeError; a
        # record not of this batch's samples an IndexError in the table, or rows of others.
        if not isinstance(payload, dict) or payload.get("fingerprint") != fingerprint:
            return None
        names = {f.name for f in fields(Record)}
        try:
            values = {k: v for k, v in payload["record"].items() if k in names}
            # Numbers as to_json wrote them ("inf", null); older files hold bare Infinity.
            for key in ("distances", "sparsity"):
                if key in values:
                    values[key] = [from_json(v) for v in values[key]]
            record = Record(**values)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        n = len(record.indices)
        if ((indices is not None and record.indices != list(indices))
                or len(record.distances) != n or len(record.sparsity) not in (0, n)
                or not all(d >= 0 for d in record.distances)):  # fmt: skip  # NaN is not >= 0
            return None
        self.reused += 1
        return record

    def save(self, path: Path, fingerprint: str, record: Record) -> None:
        """Write one finished batch atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        payload = {"fingerprint": fingerprint, "record": to_json(asdict(record))}
        temporary.write_text(json.dumps(payload, allow_nan=False))  # strict JSON, as results.json
        os.replace(temporary, path)
        self.computed += 1
