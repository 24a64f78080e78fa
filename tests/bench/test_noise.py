"""``alma-bench noise``: the one-ulp nudge, the summary of the replicates, the command."""

from __future__ import annotations

import math

import pytest
import torch

from alma_plugin.bench import noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nudge_moves_inner_values_by_one_ulp_and_keeps_the_box(dtype: torch.dtype) -> None:
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    images[:, :, 0] = 0.0
    images[:, :, 1] = 1.0
    assert noise.nudge(images, 0) is images
    nudged = noise.nudge(images, 3)
    assert torch.equal(nudged, noise.nudge(images, 3)) and not torch.equal(nudged, images)
    moved = nudged != images
    up, down = torch.nextafter(images, torch.ones_like(images)), torch.nextafter(images, 0 * images)
    assert torch.equal(nudged[moved & (nudged > images)], up[moved & (nudged > images)])
    assert torch.equal(nudged[moved & (nudged < images)], down[moved & (nudged < images)])
    assert not moved[:, :, :2].any()  # 0 and 1 kept: the box holds, no subnormal number
    share = moved[:, :, 2:].double().mean().item()
    assert 0.6 < share < 0.73  # 2/3 of the inner values move


def test_noise_floor_summarises_the_replicates() -> None:
    inf = math.inf
    distances = torch.tensor([
        [1.0, 2.0, 4.0, inf, 0.0],
        [1.0, 2.2, 4.0, inf, 0.0],  # one sample moved by 10 %
        [1.0, 3.0, 4.02, 3.0, 0.0],  # by 50 % and 0.5 %, a failure became a success
    ], dtype=torch.float64)  # fmt: skip
    s = noise.noise_floor(distances)
    assert s["medians"] == pytest.approx([2.0, 2.2, 3.0])
    assert s["success"] == pytest.approx([0.8, 0.8, 1.0])
    assert s["spread"] == pytest.approx(0.5)
    logs = torch.tensor([2.0, 2.2, 3.0], dtype=torch.float64).log()
    assert s["log_sd"] == pytest.approx(float(logs.std()))
    # compared with replicate 0: samples 0-2 of both rows (sample 3 fails in row 0, 4 is 0)
    # |log ratios| 0, log 1.1, 0 and 0, log 1.5, log 1.005: torch's median is the lower middle
    assert s["sample_median"] == 0.0
    assert s["sample_moved"] == pytest.approx(2 / 6)  # log 1.1 and log 1.5 exceed 1 %
    with pytest.raises(ValueError, match="replicates >= 2"):
        noise.noise_floor(distances[:1])


def test_the_command_prints_one_row_per_attack_and_budget(capsys: pytest.CaptureFixture) -> None:
    previous = torch.get_num_threads()
    try:
        code = noise.main(["--attacks", "alma-l2", "alma_prox-linf", "--budgets", "3",
                           "--samples", "3", "--replicates", "2", "--threads", "1"])  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    rows = [
        line for line in capsys.readouterr().out.splitlines() if "| mnist_adversarial |" in line
    ]
    assert [row.split("|")[2].strip() for row in rows] == ["alma-l2", "alma_prox-linf"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--replicates", "1"], "--replicates: replicates must be >= 2, got 1"),
        (["--attacks", "pgd-l9"], "--attacks: unknown"),
        (["--first", "990", "--samples", "20"], "--first/--samples"),
        (["--budgets", "0"], "--budgets: budgets must be >= 1"),
        (["--threads", "0"], "--threads: threads must be >= 1"),
        (["--models", "foo"], "--models: invalid choice"),
    ],
)
def test_argument_errors(argv: list[str], match: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        noise.main(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err
