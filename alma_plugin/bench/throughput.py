"""Steps per second and peak memory of ALMA and ALMA prox, per distance and batch size.

``python -m alma_plugin.bench.throughput [--device cpu|cuda] [--batch-sizes 32 128]
[--distances l2 linf ssim ...] [--image-size 28|224] [--steps 20] [--repeats 2]
[--cuda-graphs]``

Each configuration runs the solver twice, for ``--steps`` steps and for 1 step, and reports
(steps − 1) / (T_steps − T_1) steps/s: the one-off step 0 (input checks, the η⁽⁰⁾ search) is
excluded, and the device is synchronised only at the start and end of each run, so the loop runs
as it would for a user (no callback, no per-step read). ``--cuda-graphs`` (CUDA) measures every
configuration a second time with ``cuda_graphs=True``; there the short run has
:data:`GRAPH_SETUP_STEPS` steps (step 0, the warm-up steps and the captures of both kinds of
step), so steps/s is the replayed rate, and "setup (s)" is what the short run cost beyond it.
``linf`` is ALMA prox; the other distances ALMA (``lpips`` with seeded random AlexNet
weights: the same cost as the real ones, which are never downloaded). The model is the
embedded SmallCNN (28 px, 1 channel) or, at ``--image-size 224``, :class:`SmallImageNetCNN`
(3 channels, 4 stride-2 convolutions, about a tenth of ResNet-18's multiply-adds).

Next to each configuration, the same loop without the attack: ``--steps`` bare forward +
backward passes of the model (gradient w.r.t. the input, as ALMA's step needs), timed the same
way. ``ALMA / bare`` is the per-step overhead of the solver on that device: on a GPU, where the
solver's elementwise operations are kernel launches, it can differ a lot from the CPU's. In the
``--cuda-graphs`` rows the bare pass is replayed as a CUDA graph too, so the ratio compares
replayed steps with replayed passes.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` of each configuration; on CPU, the
process's peak resident set size so far (``ru_maxrss``, a high-water mark that never goes
down: the first configurations that reach it tell). Timings on a shared machine: the fastest
of ``--repeats`` runs.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import eagerpy as ep
import torch
from torch import nn

from ..core.graphs import warmup_stream
from ..core.params import ALMAParams
from ..core.prox_params import ProxParams
from ..core.prox_solver import alma_prox_solve
from ..core.solver import alma_solve
from ..distances import DISTANCES, DistanceFunction, get_distance
from ..zoo.models import SmallCNN
from .arguments import (
    BenchParser,
    add_threads_option,
    cuda_graphs_argument,
    device_argument,
    integer_option,
)
from .runner import synchronize

__all__ = [
    "SmallImageNetCNN",
    "bare_run",
    "bare_step",
    "main",
    "make_distance",
    "make_model",
    "measure",
    "synchronize",
    "timed_run",
]

#: The short run of ``--cuda-graphs``: steps 0 … 10 hold the warm-up (steps 0–2) and the
#: captures of a plain step (3) and of a ρ-check step (9, the first t with (t + 1) % M = 0).
GRAPH_SETUP_STEPS = 11

#: Distances measured by default (``linf``: ALMA prox).
DEFAULT_DISTANCES = ("l2", "l1", "linf")


class SmallImageNetCNN(nn.Module):
    """A small 224-px classifier standing in for an ImageNet model's cost: four 3×3 stride-2
    convolutions (3→32→64→128→256 channels, ~0.18 GMAC per image), global average pooling and
    a 1000-way linear layer. Seeded random weights: only its cost matters here."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = (3, 32, 64, 128, 256)
        for c_in, c_out in zip(channels, channels[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def make_model(image_size: int, device: torch.device, seed: int = 0) -> nn.Module:
    """SmallCNN at 28 px, :class:`SmallImageNetCNN` otherwise, seeded, in eval mode."""
    torch.manual_seed(seed)
    model: nn.Module = SmallCNN() if image_size == 28 else SmallImageNetCNN()
    return model.to(device).eval()


def make_distance(name: str, device: torch.device) -> DistanceFunction:
    """The registry distance ``name``; LPIPS with seeded random weights (its cost, not its
    values, is what these benchmarks need)."""
    if name != "lpips":
        return get_distance(name).function
    from ..distances import LPIPS, LPIPS_CHANNELS

    gen = torch.Generator().manual_seed(0)
    convs = ((0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3))
    backbone = {}
    for index, c_in, c_out, k in convs:
        scale = (2 / (c_in * k * k)) ** 0.5
        backbone[f"features.{index}.weight"] = scale * torch.randn(c_out, c_in, k, k, generator=gen)
        backbone[f"features.{index}.bias"] = 0.1 * torch.randn(c_out, generator=gen)
    linear = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen)
        for k, c in enumerate(LPIPS_CHANNELS)
    }
    metric = LPIPS(backbone_weights=backbone, linear_weights=linear)
    return metric


def timed_run(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    distance: str,
    steps: int,
    distance_fn: DistanceFunction | None = None,
    early_stop: float | None = None,
    cuda_graphs: bool = False,
) -> tuple[float, Any]:
    """Seconds of one solver run (device synchronised before and after) and its result."""
    x, y = ep.astensor(inputs), ep.astensor(labels)

    def model_fn(batch: ep.Tensor) -> torch.Tensor:
        return model(batch.raw)

    device = inputs.device
    synchronize(device)
    start = time.perf_counter()
    if distance == "linf":
        params = ProxParams().for_task("classification")
        result = alma_prox_solve(model_fn, x, y, params=params, steps=steps,
                                 early_stop=early_stop, cuda_graphs=cuda_graphs)  # fmt: skip
    else:
        spec = get_distance(distance)
        result = alma_solve(
            model_fn,
            x,
            y,
            distance=distance_fn or spec.function,
            params=spec.alma_params(ALMAParams(), steps),
            steps=steps,
            early_stop=early_stop,
            cuda_graphs=cuda_graphs,
        )
    synchronize(device)
    return time.perf_counter() - start, result


def bare_run(
    model: nn.Module, inputs: torch.Tensor, steps: int, cuda_graphs: bool = False
) -> float:
    """Seconds of ``steps`` bare forward + backward passes (the gradient of the summed logits
    w.r.t. the input), the device synchronised before and after: one ALMA step without the
    solver. ``cuda_graphs``: one pass captured as a CUDA graph (after warm-up passes on a side
    stream) and replayed ``steps`` times, to compare with ALMA's replayed steps."""
    replay = _graphed_bare_step(model, inputs) if cuda_graphs else None
    synchronize(inputs.device)
    start = time.perf_counter()
    for _ in range(steps):
        if replay is None:
            bare_step(model, inputs)
        else:
            replay()
    synchronize(inputs.device)
    return time.perf_counter() - start


def _graphed_bare_step(model: nn.Module, inputs: torch.Tensor) -> Any:
    static = inputs.clone()
    side = warmup_stream(inputs.device)  # one per process: each new stream keeps a cuBLAS workspace
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            bare_step(model, static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        bare_step(model, static)
    return graph.replay


def bare_step(model: nn.Module, inputs: torch.Tensor) -> None:
    """One bare forward + backward pass: the gradient of the summed logits w.r.t. a copy of
    ``inputs`` (what an ALMA step asks of the model, without the solver)."""
    x = inputs.clone().requires_grad_(True)
    torch.autograd.grad(model(x).sum(), x)


def peak_memory(device: torch.device) -> str:
    """CUDA: the peak allocated since the last reset; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA allocated)"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{kib / 1024:.0f} MiB (process peak RSS)"


def measure(
    distance: str,
    batch: int,
    image_size: int,
    device: torch.device,
    steps: int = 20,
    repeats: int = 2,
    cuda_graphs: bool = False,
) -> dict[str, Any]:
    """steps/s (step 0 excluded), the bare model's forward + backward passes per second, their
    ratio and the peak memory of one configuration, after one untimed warm-up run of each.
    ``cuda_graphs``: the solver replays its steps as CUDA graphs, and the short run has
    :data:`GRAPH_SETUP_STEPS` steps instead of 1 (``steps`` must be larger)."""
    short = GRAPH_SETUP_STEPS if cuda_graphs else 1
    if steps <= short:
        raise ValueError(f"steps must be larger than {short}, got {steps}")
    model = make_model(image_size, device)
    channels = 1 if image_size == 28 else 3
    gen = torch.Generator().manual_seed(1)
    inputs = torch.rand(batch, channels, image_size, image_size, generator=gen).to(device)
    with torch.no_grad():
        labels = model(inputs).argmax(1)
    fn = None if distance == "linf" else make_distance(distance, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    graphs = {"cuda_graphs": True} if cuda_graphs else {}
    # warm-up: allocator, kernels, cuDNN
    timed_run(model, inputs, labels, distance, short + 1, fn, **graphs)
    bare_run(model, inputs, 2, **graphs)
    one, full, bare = [], [], []
    for _ in range(repeats):
        one.append(timed_run(model, inputs, labels, distance, short, fn, **graphs)[0])
        full.append(timed_run(model, inputs, labels, distance, steps, fn, **graphs)[0])
        bare.append(bare_run(model, inputs, steps, **graphs))
    per_step = (min(full) - min(one)) / (steps - short)
    bare_step = min(bare) / steps
    return {
        "attack": "ALMA prox" if distance == "linf" else "ALMA",
        "distance": distance,
        "batch": batch,
        "image_size": image_size,
        "cuda_graphs": cuda_graphs,
        "steps_per_s": 1 / per_step if per_step > 0 else float("nan"),
        "samples_steps_per_s": batch / per_step if per_step > 0 else float("nan"),
        "step0_s": min(one) - (short - 1) * per_step,
        "bare_steps_per_s": 1 / bare_step,
        "overhead": per_step / bare_step if per_step > 0 else float("nan"),
        "peak_memory": peak_memory(device),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| attack | distance | px | batch | CUDA graphs | steps/s | sample-steps/s "
        "| step 0 / setup (s) | bare fwd+bwd/s | ALMA / bare | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['distance']} | {r['image_size']} | {r['batch']} | "
            f"{'yes' if r['cuda_graphs'] else 'no'} | "
            f"{r['steps_per_s']:.2f} | {r['samples_steps_per_s']:.0f} | {r['step0_s']:.3f} | "
            f"{r['bare_steps_per_s']:.2f} | {r['overhead']:.2f} | {r['peak_memory']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(prog="alma-bench throughput", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--distances", "--distance", nargs="+", default=list(DEFAULT_DISTANCES),
                        choices=[*DISTANCES, "linf"])  # fmt: skip
    parser.add_argument(
        "--batch-sizes", nargs="+", type=integer_option("batch-sizes", 1), default=[32, 128]
    )
    parser.add_argument(
        "--image-size",
        type=integer_option("image-size", 1),
        default=28,
        help="28 (SmallCNN) or 224",
    )
    parser.add_argument("--steps", type=integer_option("steps", 1), default=20)
    parser.add_argument("--repeats", type=integer_option("repeats", 1), default=2)
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also measure every configuration with cuda_graphs=True (CUDA only)",
    )
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps must be at least 2, got {args.steps}")
    if args.cuda_graphs and args.steps <= GRAPH_SETUP_STEPS:
        parser.error(
            f"--steps must be larger than {GRAPH_SETUP_STEPS} with --cuda-graphs, got {args.steps}"
        )
    if args.image_size != 28 and args.image_size < 176:
        parser.error(f"--image-size must be 28 or at least 176, got {args.image_size}")
    device = device_argument(parser, args.device)
    cuda_graphs_argument(parser, args.cuda_graphs, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for distance in args.distances:
        if distance != "linf":
            get_distance(distance)  # a clear error for an unknown name
        for batch in args.batch_sizes:
            for graphs in (False, True) if args.cuda_graphs else (False,):
                rows.append(measure(distance, batch, args.image_size, device, args.steps,
                                    args.repeats, cuda_graphs=graphs))  # fmt: skip
                print(f"{rows[-1]}", file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, {torch.get_num_threads()} threads, {args.steps} steps, best of "
          f"{args.repeats}; step 0 excluded from steps/s\n")  # fmt: skip
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
