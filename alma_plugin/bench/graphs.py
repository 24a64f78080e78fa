"""End to end with and without ``cuda_graphs``: wall time and results of ``alma()`` on the
embedded SmallCNN models (CUDA only).

``python -m alma_plugin.bench.graphs [--device cuda] [--models mnist_regular ...]
[--batch-sizes 100 1000] [--runs l2:100 l1:100 linf:100 l2:1000 linf:1000] [--deterministic]``

For each model, batch (the first B held-out MNIST images) and run (distance:steps), one
untimed warm-up call of each mode, then one timed call with ``cuda_graphs=False`` and one with
``cuda_graphs=True``, the device synchronised before and after: the whole call, step 0, the
warm-up steps and the captures included, as a user sees it. The table gives both times, their
ratio, the success rates and medians of both, and whether the two results are identical.

By default cuDNN picks its algorithms freely and its convolution backward is not
bit-reproducible, so two runs of the same mode differ too. ``--deterministic`` sets
``torch.backends.cudnn.deterministic``: then ALMA's two results are the same bits and ALMA
prox's agree up to the last bits of a division (docs/performance.md, "CUDA graphs").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..functional import alma
from ..zoo.data import load_mnist_heldout
from ..zoo.models import MODEL_NAMES, load_smallcnn
from .arguments import BenchParser, device_argument, integer_option

__all__ = ["compare", "main", "parse_run"]

Attack = Callable[..., Any]

DEFAULT_RUNS = ("l2:100", "l1:100", "linf:100", "l2:1000", "linf:1000")


def parse_run(text: str) -> tuple[str, int]:
    """``"l2:100"`` → ``("l2", 100)``; argparse's type for ``--runs``."""
    distance, _, steps = text.partition(":")
    if distance not in ("l1", "l2", "linf") or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(
            f"runs must be DISTANCE:STEPS with DISTANCE in l1, l2, linf and STEPS >= 1, "
            f"got {text!r}"
        )
    return distance, int(steps)


def _timed(attack: Attack, device: torch.device, **kwargs: Any) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = attack(**kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def compare(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    distance: str,
    steps: int,
    attack: Attack = alma,
) -> dict[str, Any]:
    """One row: ``attack`` (``alma`` by default) with ``cuda_graphs`` False and True, each
    after an untimed warm-up call of 12 steps (the graphs' warm-up and both captures)."""
    times, results = {}, {}
    for graphs in (False, True):
        attack(model, inputs, labels, distance=distance, steps=12, cuda_graphs=graphs)
        times[graphs], results[graphs] = _timed(
            attack, inputs.device, model=model, inputs=inputs, labels=labels,
            distance=distance, steps=steps, cuda_graphs=graphs,
        )  # fmt: skip
    plain, graphed = results[False], results[True]
    identical = torch.equal(plain.adversarials, graphed.adversarials) and torch.equal(
        plain.distances, graphed.distances
    )
    return {
        "distance": distance,
        "steps": steps,
        "batch": len(inputs),
        "seconds": times[False],
        "seconds_graphs": times[True],
        "speedup": times[False] / times[True],
        "success": plain.success.float().mean().item(),
        "success_graphs": graphed.success.float().mean().item(),
        "median": plain.distances.median().item(),
        "median_graphs": graphed.distances.median().item(),
        "identical": identical,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | distance | steps | batch | plain (s) | graphs (s) | speed-up | success "
        "| median | identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['distance']} | {r['steps']} | {r['batch']} | "
            f"{r['seconds']:.3f} | {r['seconds_graphs']:.3f} | {r['speedup']:.2f} | "
            f"{r['success']:.2f} / {r['success_graphs']:.2f} | "
            f"{r['median']:.4f} / {r['median_graphs']:.4f} | {'yes' if r['identical'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(prog="alma-bench graphs", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default: cuda)")
    parser.add_argument("--models", nargs="+", default=["mnist_regular", "mnist_adversarial"],
                        choices=MODEL_NAMES)  # fmt: skip
    parser.add_argument(
        "--batch-sizes", nargs="+", type=integer_option("batch-sizes", 1), default=[100, 1000]
    )
    parser.add_argument("--runs", nargs="+", type=parse_run, default=list(DEFAULT_RUNS),
                        help="DISTANCE:STEPS, e.g. l2:100 linf:1000")  # fmt: skip
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.backends.cudnn.deterministic = True (bit-reproducible convolutions)",
    )
    args = parser.parse_args(argv)
    device = device_argument(parser, args.device)
    if device.type != "cuda":
        parser.error(f"--device must be a CUDA device (cuda_graphs needs one), got {args.device}")
    images, classes = load_mnist_heldout()
    if max(args.batch_sizes) > len(images):
        parser.error(f"--batch-sizes must be at most {len(images)} (the held-out images)")
    torch.backends.cudnn.deterministic = args.deterministic
    rows = []
    for name in args.models:
        model = load_smallcnn(name).to(device).eval()
        for batch in args.batch_sizes:
            x, y = images[:batch].to(device), classes[:batch].to(device)
            for distance, steps in (parse_run(r) if isinstance(r, str) else r for r in args.runs):
                rows.append({"model": name, **compare(model, x, y, distance, steps)})
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{torch.cuda.get_device_name(device)}, cudnn.deterministic={args.deterministic}; "
          f"whole calls, one timed call per mode after a warm-up call\n")  # fmt: skip
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
