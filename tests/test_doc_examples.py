"""The Python examples of the README and of the user guides (docs/foolbox.md,
docs/torchattacks.md) run exactly as written.

docs/performance.md and docs/bench.md hold reproduction recipes of measurements (minutes to
hours of CPU); the benchmarks' own tests cover the code they call."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ("README.md", "docs/foolbox.md", "docs/torchattacks.md")


def python_blocks(name: str) -> list[str]:
    text = (ROOT / name).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


EXAMPLES = [(name, index) for name in GUIDES for index in range(len(python_blocks(name)))]


@pytest.mark.parametrize("name", GUIDES)
def test_guide_has_examples(name: str) -> None:
    assert len(python_blocks(name)) >= (5 if name == "README.md" else 3)


@pytest.mark.parametrize(("name", "index"), EXAMPLES)
def test_example_runs(
    name: str, index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An example may write files (torchattacks' save()) into the working directory, and may set
    # process-wide switches a user would set (cuDNN's determinism): both are undone so that no
    # other test sees them.
    monkeypatch.chdir(tmp_path)
    deterministic = torch.backends.cudnn.deterministic
    try:
        code = compile(python_blocks(name)[index], f"{name}[python block {index}]", "exec")
        exec(code, {"__name__": "__example__"})
    finally:
        torch.backends.cudnn.deterministic = deterministic


#: Modules whose docstrings hold ``>>>`` examples that run as written (the torchattacks
#: classes' "Examples::" used ``model``, ``images`` and ``labels`` of the reader's code, as
#: torchattacks' own docstrings do; they now build them from the zoo).
DOCTESTED = (
    "alma_plugin.functional",
    "alma_plugin.training",
    "alma_plugin.zoo",
    "alma_plugin.foolbox",
    "alma_plugin.torchattacks.alma",
    "alma_plugin.torchattacks.lagrangian",
    "alma_plugin.torchattacks.ensemble",
)


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    results = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS,
                              report=True)  # fmt: skip
    assert results.attempted > 0 and results.failed == 0, results
