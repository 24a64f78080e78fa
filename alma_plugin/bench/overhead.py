"""How much the ALMA solver adds to the model's own cost, per step.

``python -m alma_plugin.bench.overhead [--batch 128] [--repeats 5]`` times, on the embedded
SmallCNN, (a) one bare forward + backward (gradient w.r.t. the input) and (b) one ALMA step,
measured as the difference between runs of ``2·S`` and ``S`` steps so that the one-off initial
step-size search is excluded. It prints the fastest of several runs of each and their ratio
(ideal: 1.0).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch

from ..functional import alma
from ..zoo.models import SmallCNN


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed runs: on a shared machine, other load only adds time."""
    fn()  # warm-up: allocator, kernels
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def measure(
    batch: int = 128, steps: int = 50, repeats: int = 5, distance: str = "l2", seed: int = 0
) -> dict[str, float]:
    """Per-step seconds of a bare forward+backward and of ALMA, and their ratio."""
    torch.manual_seed(seed)
    model = SmallCNN().eval()
    inputs = torch.rand(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))

    def bare() -> None:
        for _ in range(steps):
            x = inputs.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(x).sum(), x)

    def run(n: int) -> Callable[[], object]:
        return lambda: alma(model, inputs, labels, distance=distance, steps=n)

    bare_step = _best_seconds(bare, repeats) / steps
    alma_step = _best_seconds(run(2 * steps), repeats) - _best_seconds(run(steps), repeats)
    alma_step /= steps
    return {"bare_step_s": bare_step, "alma_step_s": alma_step, "ratio": alma_step / bare_step}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--distance", default="l2")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.batch, args.steps, args.repeats, args.distance)
    print(
        f"SmallCNN, batch {args.batch}, {args.distance}, {torch.get_num_threads()} threads: "
        f"bare forward+backward {result['bare_step_s'] * 1e3:.2f} ms, "
        f"ALMA step {result['alma_step_s'] * 1e3:.2f} ms, ratio {result['ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
