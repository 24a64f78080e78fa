"""``alma_plugin.bench.unseen``: the corruptions, the table and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from alma_plugin.bench import unseen

pytestmark = pytest.mark.usefixtures("single_thread")


def test_blur_is_a_normalised_gaussian() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    blurred = unseen.gaussian_blur(x)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-6)
    kernel = blurred[0, 0, 2:7, 2:7]
    assert torch.allclose(kernel, kernel.T) and torch.allclose(kernel, kernel.flip(0))
    ratio = float(kernel[2, 3] / kernel[2, 2])
    assert ratio == pytest.approx(math.exp(-1 / (2 * unseen.BLUR_SIGMA**2)), rel=1e-5)
    assert float(blurred[0, 0, 0, 0]) == 0.0  # 5 × 5 support


def test_noise_is_seeded_and_in_bounds() -> None:
    x = torch.full((64, 1, 8, 8), 0.5)
    a, b = unseen.gaussian_noise(x, seed=1), unseen.gaussian_noise(x, seed=1)
    assert torch.equal(a, b) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert float((a - x).var()) == pytest.approx(unseen.NOISE_VARIANCE, rel=0.1)


def test_means_and_table() -> None:
    accuracy = dict.fromkeys(unseen.TRAINING, 0.0) | dict.fromkeys(unseen.UNSEEN, 0.5)
    row = unseen.Row("m", 0.9, accuracy, dict.fromkeys(unseen.MINIMAL, 1.0))
    assert row.unseen_mean == 0.5
    assert row.union_mean == pytest.approx(0.5 * len(unseen.UNSEEN) / 7)
    text = unseen.format_table([row])
    assert "unseen mean" in text and "median l2" in text and "| m | 90.0 | 0.0 |" in text


def test_main_runs_a_tiny_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    argv = ["--samples", "4", "--steps", "2", "--pgd-steps", "1", "--models", "mnist_regular",
            "--json", str(out), "--quiet"]  # fmt: skip
    assert unseen.main(argv) == 0
    printed = capsys.readouterr().out
    assert "mnist_regular" in printed and "union mean" in printed
    (row,) = json.loads(out.read_text())["rows"]
    assert set(row["accuracy"]) == set(unseen.TRAINING + unseen.UNSEEN)
    assert all(0 <= value <= row["clean"] for value in row["accuracy"].values()
               if value is not None)  # fmt: skip


def test_main_rejects_bad_budgets() -> None:
    with pytest.raises(SystemExit):
        unseen.main(["--samples", "0"])
