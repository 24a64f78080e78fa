"""``alma-bench graphs`` (``alma_plugin.bench.graphs``): what can be checked without a GPU —
the arguments, and the row ``compare`` builds from the two calls it makes per mode."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from alma_plugin.bench import graphs


def test_parse_run() -> None:
    assert graphs.parse_run("l2:100") == ("l2", 100)
    assert graphs.parse_run("linf:1") == ("linf", 1)
    for bad in ("l2", "l7:10", "l2:0", "l2:x", ":5"):
        with pytest.raises(argparse.ArgumentTypeError, match="DISTANCE:STEPS"):
            graphs.parse_run(bad)


def test_compare_warms_up_then_times_each_mode_once() -> None:
    """Per mode: a 12-step warm-up call, then the timed call; the row reports both modes'
    success and median, and 'identical' only where adversarials and distances are equal."""
    calls: list[tuple[int, bool]] = []
    x = torch.zeros(4, 1, 2, 2)

    def fake(model: Any, inputs: Any, labels: Any, *, distance: str, steps: int,
             cuda_graphs: bool) -> Any:  # fmt: skip
        calls.append((steps, cuda_graphs))
        shift = 1.0 if cuda_graphs else 0.0
        distances = torch.tensor([1.0, 2.0, 3.0, 4.0 + shift])
        return SimpleNamespace(adversarials=inputs + shift, distances=distances,
                               success=torch.tensor([True, True, True, cuda_graphs]))  # fmt: skip

    row = graphs.compare(None, x, torch.zeros(4), "l2", 50, attack=fake)  # type: ignore[arg-type]
    assert calls == [(12, False), (50, False), (12, True), (50, True)]
    assert (row["distance"], row["steps"], row["batch"]) == ("l2", 50, 4)
    assert row["success"] == 0.75 and row["success_graphs"] == 1.0
    assert row["median"] == 2.0 and row["median_graphs"] == 2.0  # torch's lower median
    assert row["identical"] is False
    assert row["speedup"] == pytest.approx(row["seconds"] / row["seconds_graphs"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--device", "cpu"], "--device must be a CUDA device (cuda_graphs needs one), got cpu"),
        (["--runs", "l2:0"], "argument --runs: runs must be DISTANCE:STEPS"),
        (["--models", "mnist_x"], "argument --models: invalid choice"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], expected: str,
                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as raised:
        graphs.main(argv)
    assert raised.value.code == 2
    assert expected in capsys.readouterr().err
