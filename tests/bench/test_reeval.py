"""``alma-bench reeval``: reported successes re-evaluated in other batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alma_plugin.bench import reeval


class BatchDependent(nn.Module):
    """Logits x·w whose class 0 gains ``shift`` when the model sees a single image: a stand-in
    for kernels that round differently with the batch shape."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([x[:, 0], x[:, 1]], dim=1)
        if len(x) == 1:
            z = z + torch.tensor([self.shift, 0.0])
        return z


def test_reevaluate_counts_the_successes_each_evaluation_loses() -> None:
    # label 0 everywhere; class 1 wins by 1e-3 (at logits ~10), 1e-2 and 1.0: all claimed;
    # sample 3 is not adversarial and not claimed
    x = torch.tensor([[10.0, 10.001], [0.0, 1e-2], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.zeros(4, dtype=torch.long)
    success = torch.tensor([True, True, True, False])
    result = reeval.reevaluate(BatchDependent(shift=5e-3), x, labels, success, batch_size=4)
    assert result["claimed"] == 3
    assert result["lost_same_batches"] == 0
    assert result["lost_single"] == 1  # only the 1e-3 margin is below the shift
    assert result["lost_sevens"] == 0  # one batch of 4 (< 7): the attack's batch
    assert result["largest_logit_change"] == pytest.approx(5e-3, rel=1e-3)
    assert result["narrow"] == 1  # gap 1e-3 < 1e-3 × 10.001; the others' gaps are their max


def test_tf32_sets_and_restores_the_flags() -> None:
    before = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    with reeval.tf32(True):
        assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    with reeval.tf32(False):
        assert not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    assert (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()) == before


def test_the_cpu_table_loses_nothing_in_the_attack_s_batches(capsys) -> None:
    arguments = "--samples 6 --batch-size 3 --steps 5 --models mnist_regular --distances l2 linf"
    code = reeval.main([*arguments.split(), "--threads", "1"])
    assert code == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| (cpu)")]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert int(cells[3]) <= 6 and int(cells[4]) == 0, row


def test_samples_beyond_the_embedded_images_are_an_argument_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        reeval.main(["--samples", "100000"])
    assert exit_info.value.code == 2
    assert "--samples: 100000 exceeds" in capsys.readouterr().err
