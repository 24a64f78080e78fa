"""The package as users receive it: sdist → wheel → a fresh virtual environment outside the
repository, where the README quick start runs on the embedded assets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _backend(command: str, source: Path, out: Path) -> Path:
    """Build with setuptools' PEP 517 backend in-process (no isolated env, nothing downloaded)."""
    code = f"from setuptools import build_meta; print(build_meta.{command}({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, check=True
    )
    return out / done.stdout.strip().splitlines()[-1]


def _quick_start() -> str:
    section = README.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    sdist = _backend("build_sdist", ROOT, out)
    with tarfile.open(sdist) as archive:
        archive.extractall(out / "unpacked", filter="data")
    (unpacked,) = (out / "unpacked").iterdir()
    for required in ("LICENSE", "README.md", "setup.cfg", "pyproject.toml"):
        assert (unpacked / required).is_file(), f"{required} missing from the sdist"
    return _backend("build_wheel", unpacked, out)  # the wheel is built from the sdist


def test_wheel_metadata_and_contents(wheel: Path) -> None:
    import alma_plugin

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    assert f"Version: {alma_plugin.__version__}" in text
    assert "License-Expression: BSD-3-Clause" in text or "License: BSD-3-Clause" in text
    assert any(n.endswith("LICENSE") for n in names)
    assert any(n.endswith("py.typed") for n in names)
    assets = [n for n in names if "/assets/" in n]
    assert assets, "the embedded models and data are missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)


def test_readme_quick_start_in_a_fresh_environment(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with zipfile.ZipFile(wheel) as archive:  # a wheel install is an unzip (pure Python)
        archive.extractall(site)
    # The dependencies (torch, eagerpy, numpy) come from the test environment's site-packages,
    # added as a plain path: its .pth files (the editable install of this repository) are not
    # processed, so the only alma_plugin importable is the wheel's.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = "import alma_plugin, sys; print('FROM', alma_plugin.__file__)\n" + _quick_start()
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [python, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=environment
    )
    assert done.returncode == 0, done.stderr
    origin = done.stdout.split("FROM ", 1)[1].splitlines()[0]
    assert origin.startswith(str(env_dir)), origin
    assert "success" in done.stdout
