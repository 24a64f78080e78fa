"""Execute every notebook of ``notebooks/`` with the small budget and check the committed ones.

The notebooks read ``ALMA_NOTEBOOK_BUDGET``; CI runs them with ``small`` (a few images and steps
each) under nbclient, with a per-cell timeout, on the Agg matplotlib backend. Executed copies are
written nowhere: the committed notebooks keep the outputs of their documented run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import alma_plugin

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 240
MAX_COMMITTED_BYTES = 400 * 1024


def current_defaults() -> dict[str, Any]:
    """Every default a notebook's numbers depend on: the params classes (ALMA, ALMA prox, the
    Lagrangian attack), the default budgets, ALMA prox's λ⁽⁰⁾, ρ⁽⁰⁾ and κ per task, each
    distance's Table 3 ε, ALMA's κ and its default class restarts (runs, from which budget and
    class count, run 0's share)."""
    from alma_plugin.core.params import (
        ALMA_STEPS,
        CLASS_RESTARTS_FIRST_RUN_SHARE,
        CLASS_RESTARTS_MIN_CLASSES,
        CLASS_RESTARTS_MIN_STEPS,
        PROX_STEPS,
    )

    return {
        "ALMAParams": asdict(alma_plugin.ALMAParams()),
        "ProxParams": asdict(alma_plugin.ProxParams()),
        "LagrangianParams": asdict(alma_plugin.LagrangianParams()),
        "PROX_INIT_LR": dict(alma_plugin.PROX_INIT_LR),
        "PROX_RHO_INIT": dict(alma_plugin.PROX_RHO_INIT),
        "PROX_SMOOTH_MAX": dict(alma_plugin.PROX_SMOOTH_MAX),
        "steps": {"alma": ALMA_STEPS, "alma_prox": PROX_STEPS},
        "init_lr_distance": {n: s.init_lr_distance for n, s in alma_plugin.DISTANCES.items()},
        "smooth_max": {n: s.smooth_max for n, s in alma_plugin.DISTANCES.items()},
        "class_restarts": {n: s.class_restarts for n, s in alma_plugin.DISTANCES.items()},
        "CLASS_RESTARTS": {
            "min_steps": CLASS_RESTARTS_MIN_STEPS,
            "first_run_share": CLASS_RESTARTS_FIRST_RUN_SHARE,
            "min_classes": CLASS_RESTARTS_MIN_CLASSES,
        },
    }


def record_defaults(path: Path) -> None:
    """Write :func:`current_defaults` and the package version into the notebook's metadata
    (``metadata.alma_plugin``): run after executing it at the full budget."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["alma_plugin"] = {
        "version": alma_plugin.__version__,
        "defaults": current_defaults(),
    }
    nbformat.write(notebook, path)


def _missing_execution_dependency() -> str | None:
    """Why notebooks cannot be executed here, or None."""
    import importlib.util

    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            return (
                f"executing the notebooks needs {module!r}, which cannot be imported "
                "(pip install nbclient nbformat ipykernel matplotlib)"
            )
    return None


def test_notebooks_exist() -> None:
    names = [path.name for path in NOTEBOOKS]
    assert names == [
        "01_foolbox_quickstart.ipynb",
        "02_torchattacks_ensembles.ipynb",
        "03_minimal_attack_comparison.ipynb",
        "04_perceptual_distances.ipynb",
        "05_segmentation_alma_prox.ipynb",
        "06_lagrangian_training.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_is_executed_and_small(path: Path) -> None:
    """Committed with the outputs of a clean run, no errors, a budget switch, a modest size."""
    assert path.stat().st_size <= MAX_COMMITTED_BYTES, f"{path.name} is too large to commit"
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    sources = "".join("".join(cell["source"]) for cell in code)
    assert "ALMA_NOTEBOOK_BUDGET" in sources
    for forbidden in ("torchvision", "urlretrieve", "requests.get", "download=True"):
        assert forbidden not in sources, f"{path.name} uses {forbidden!r}"
    counts = [cell["execution_count"] for cell in code]
    assert all(count is not None for count in counts), f"{path.name} has unexecuted cells"
    assert counts == list(range(1, len(code) + 1)), f"{path.name} was not run top to bottom"
    for cell in code:
        for output in cell["outputs"]:
            assert output["output_type"] != "error", f"{path.name} was committed with an error"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_outputs_come_from_the_current_defaults(path: Path) -> None:
    """A notebook executed with other defaults than the package's current ones holds stale
    outputs: re-execute it at the full budget, then ``python -m tests.test_notebooks PATH``."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    recorded = notebook.get("metadata", {}).get("alma_plugin", {}).get("defaults")
    assert recorded is not None, f"{path.name} records no defaults (metadata.alma_plugin)"
    assert json.loads(json.dumps(current_defaults())) == recorded, (
        f"{path.name} was executed with other defaults than the current ones: re-execute it"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_with_small_budget(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = _missing_execution_dependency()
    if reason is not None:
        pytest.skip(reason)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # The kernel inherits this environment: small budget, headless plots, the checkout first
    # on the path (so an uninstalled checkout works), one torch thread on shared CI machines.
    monkeypatch.setenv("ALMA_NOTEBOOK_BUDGET", "small")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("ALMA_NOTEBOOK_THREADS", "1")
    python_path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv(
        "PYTHONPATH", str(ROOT) if not python_path else os.pathsep.join([str(ROOT), python_path])
    )
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:  # pragma: no cover - the failure message is the point
        pytest.fail(f"{path.name} failed with ALMA_NOTEBOOK_BUDGET=small:\n{error}")
    executed = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in executed)
    errors = [o for cell in executed for o in cell.outputs if o.output_type == "error"]
    assert not errors


if __name__ == "__main__":  # stamp notebooks just executed at the full budget
    for argument in sys.argv[1:]:
        record_defaults(Path(argument))
