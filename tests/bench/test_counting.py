"""CountingModel: exact counts of model propagations, on the CPU and on CUDA with graphs.

A replayed CUDA graph runs the recorded kernels without the model's Python code, so on CUDA
the counts live in a device tensor that kernels increment: what the graph replays is counted
too. The CUDA tests run where there is a GPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from alma_plugin import alma, alma_prox
from alma_plugin.bench.counting import CountingModel
from alma_plugin.bench.distributed import Context
from alma_plugin.bench.registry import get_attack
from alma_plugin.bench.runner import BenchConfig, run_shard

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _problem(device: str, n: int = 4) -> tuple[CountingModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model = model.to(device).eval()
    x = torch.rand(n, 1, 8, 8, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return CountingModel(model), x, y


def test_counts_and_resets_on_the_cpu() -> None:
    counting, x, y = _problem("cpu")
    alma(counting, x, y, distance="l2", steps=7)
    assert (counting.forwards, counting.backwards) == (7 * 4, 7 * 4)
    counting.forwards = counting.backwards = 0
    with torch.no_grad():
        counting(x)
    assert (counting.forwards, counting.backwards) == (4, 0)


@CUDA
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("attack", ["alma", "alma_prox"])
def test_cuda_counts_every_step_replays_included(attack: str, graphs: bool) -> None:
    counting, x, y = _problem("cuda")
    run: Any = alma if attack == "alma" else alma_prox
    run(counting, x, y, steps=20, cuda_graphs=graphs)
    assert (counting.forwards, counting.backwards) == (20 * 4, 20 * 4)
    counting.forwards = counting.backwards = 0
    run(counting, x, y, steps=15, cuda_graphs=graphs)  # the kept device counter, reset
    assert (counting.forwards, counting.backwards) == (15 * 4, 15 * 4)


@CUDA
def test_a_capture_before_any_eager_call_is_refused() -> None:
    counting, x, _ = _problem("cuda")
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), pytest.raises(RuntimeError, match="run once on a CUDA"):
        with torch.cuda.graph(graph):
            counting(x)


@CUDA
def test_the_runner_counts_graphed_alma_exactly() -> None:
    config = BenchConfig(models=("mnist_regular",), samples=8, batch_size=8, device="cuda",
                         cuda_graphs=True)  # fmt: skip
    pairs = [(get_attack(key), 12) for key in ("alma-l2", "alma_prox-linf")]
    for record in run_shard(config, Context(), pairs):
        assert (record.forwards, record.backwards) == (12 * 8, 12 * 8), record.attack
