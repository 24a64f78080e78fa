"""How much the ALMA solver adds to the model's own cost, per step.

``python -m alma_plugin.bench.overhead [--batch 128] [--steps 30] [--rounds 5]`` times, on the
embedded SmallCNN, (a) bare forward + backward passes (gradient w.r.t. the input) and (b) ALMA
steps, one duration per step: ALMA's steps are timed between consecutive calls of its
``callback``, so the one-off step 0 (input checks, the η⁽⁰⁾ search) is left out without taking
the difference of two long runs. The two alternate, ``--rounds`` times, so that both see the
same machine load; the ratio of the medians of all per-step times is the estimate (ideal: 1.0),
and the ratio of the fastest steps and the range of the per-round ratios show how much the
load moved it. Measure as a ratio within one run: absolute times on a shared machine are not
comparable between runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from ..functional import alma
from ..zoo.models import SmallCNN

__all__ = ["main", "measure"]


def _bare_steps(model: torch.nn.Module, inputs: torch.Tensor, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        x = inputs.clone().requires_grad_(True)
        torch.autograd.grad(model(x).sum(), x)
        times.append(time.perf_counter() - start)
    return times


def _alma_steps(
    model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int, distance: str
) -> list[float]:
    """Durations of steps 1 … ``steps`` (between the callbacks of consecutive steps)."""
    stamps: list[float] = []
    alma(model, inputs, labels, distance=distance, steps=steps + 1,
         callback=lambda _: stamps.append(time.perf_counter()))  # fmt: skip
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def measure(
    batch: int = 128, steps: int = 30, rounds: int = 5, distance: str = "l2", seed: int = 0
) -> dict[str, float]:
    """Per-step seconds (medians) of a bare forward+backward and of ALMA, and their ratios."""
    torch.manual_seed(seed)
    model = SmallCNN().eval()
    inputs = torch.rand(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))
    _bare_steps(model, inputs, 3)  # warm-up: allocator, kernels
    _alma_steps(model, inputs, labels, 3, distance)
    bare: list[float] = []
    steps_alma: list[float] = []
    per_round = []
    for _ in range(rounds):
        b = _bare_steps(model, inputs, steps)
        a = _alma_steps(model, inputs, labels, steps, distance)
        per_round.append(statistics.median(a) / statistics.median(b))
        bare += b
        steps_alma += a
    bare_step, alma_step = statistics.median(bare), statistics.median(steps_alma)
    return {
        "bare_step_s": bare_step,
        "alma_step_s": alma_step,
        "ratio": alma_step / bare_step,
        "ratio_fastest": min(steps_alma) / min(bare),
        "round_ratio_min": min(per_round),
        "round_ratio_max": max(per_round),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--distance", default="l2")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.batch, args.steps, args.rounds, args.distance)
    print(
        f"SmallCNN, batch {args.batch}, {args.distance}, {torch.get_num_threads()} threads, "
        f"{args.rounds} x {args.steps} steps each: bare forward+backward "
        f"{result['bare_step_s'] * 1e3:.2f} ms, ALMA step {result['alma_step_s'] * 1e3:.2f} ms "
        f"(medians), ratio {result['ratio']:.3f} (fastest steps: "
        f"{result['ratio_fastest']:.3f}; per round: {result['round_ratio_min']:.3f}–"
        f"{result['round_ratio_max']:.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
