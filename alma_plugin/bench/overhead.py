"""How much the ALMA solver adds to the model's own cost, per step.

``python -m alma_plugin.bench.overhead [--batch-size 128] [--steps 30] [--rounds 5]`` times, on the
embedded SmallCNN, (a) bare forward + backward passes (gradient w.r.t. the input) and (b) ALMA
steps, one duration per step: ALMA's steps are timed between consecutive calls of its
``callback``, so the one-off step 0 (input checks, the η⁽⁰⁾ search) is left out without taking
the difference of two long runs. The two alternate, ``--rounds`` times, so that both see the
same machine load; the ratio of the medians of all per-step times is the estimate (ideal: 1.0),
and the ratio of the fastest steps and the range of the per-round ratios show how much the
load moved it. Measure as a ratio within one run: absolute times on a shared machine are not
comparable between runs.

``--paired`` adds a second estimate that load drift cannot bias: one bare forward+backward
runs inside ALMA's callback before every step, and the median of the per-step ratios (ALMA step
/ the bare step just before it) is reported; ``rounds × steps`` pairs. ``--processes K`` repeats
that in K fresh processes, one after the other, and reports the median over them: one
process's ratio moves by several % with the state it starts in.

``--profile`` adds an account by ``torch.profiler``: the operators' own CPU time per step
(self time, summed over every ATen operator), for the bare loop and for ALMA (a run of
``steps`` + 1 steps minus a run of 1, so step 0 cancels out), their ratio, and the operators
whose time differs most. Time the host spends outside operators (the machine's other jobs,
the Python between calls) counts less there than in the wall clock; what the attack's own
tensors do to the caches still counts, through the model's operators.

``--device cuda`` runs the model and the attack on a GPU. Each timed step then ends with a
device synchronisation (in ALMA's callback and after each bare step), so a step's time is the
device's, not the time to enqueue it. ``--profile`` there also reports the kernels' own device
time and the kernel launches per step: a small model at a small batch leaves the GPU waiting
for the host, and the ratio of wall-clock to device time shows by how much.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..distances import DISTANCES
from ..functional import alma
from ..zoo.models import SmallCNN
from .arguments import BenchParser, add_threads_option, device_argument, integer_option
from .throughput import bare_step, synchronize

__all__ = ["main", "measure", "measure_paired", "measure_paired_processes", "profile_account"]


def _bare_steps(model: torch.nn.Module, inputs: torch.Tensor, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        bare_step(model, inputs)
        synchronize(inputs.device)
        times.append(time.perf_counter() - start)
    return times


def _alma_steps(
    model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int, distance: str
) -> list[float]:
    """Durations of steps 1 … ``steps`` (between the callbacks of consecutive steps)."""
    stamps: list[float] = []

    def stamp(_: object) -> None:
        synchronize(inputs.device)
        stamps.append(time.perf_counter())

    alma(model, inputs, labels, distance=distance, steps=steps + 1, callback=stamp)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def _warm_setup(
    batch: int, distance: str, seed: int, device: str = "cpu"
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded SmallCNN and batch on ``device``, after a few bare and ALMA steps (allocator,
    kernels)."""
    torch.manual_seed(seed)
    model = SmallCNN().eval().to(device)
    inputs = torch.rand(batch, 1, 28, 28).to(device)
    labels = torch.randint(0, 10, (batch,)).to(device)
    _bare_steps(model, inputs, 3)
    _alma_steps(model, inputs, labels, 3, distance)
    return model, inputs, labels


def measure(
    batch: int = 128,
    steps: int = 30,
    rounds: int = 5,
    distance: str = "l2",
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    """Per-step seconds (medians) of a bare forward+backward and of ALMA, and their ratios."""
    model, inputs, labels = _warm_setup(batch, distance, seed, device)
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


def measure_paired(
    batch: int = 128, steps: int = 100, distance: str = "l2", seed: int = 0, device: str = "cpu"
) -> dict[str, float]:
    """Per-step ratios of paired durations: each ALMA step against one bare forward+backward
    run inside the callback just before it, so both see the same machine load within a few
    milliseconds (the rounds of :func:`measure` are a second apart). Returns the medians of
    both durations and the median of the per-step ratios."""
    model, inputs, labels = _warm_setup(batch, distance, seed, device)
    marks: list[tuple[float, float]] = []

    def bare_inside(_: object) -> None:
        synchronize(inputs.device)
        start = time.perf_counter()
        _bare_steps(model, inputs, 1)
        marks.append((start, time.perf_counter()))

    alma(model, inputs, labels, distance=distance, steps=steps + 2, callback=bare_inside)
    # ALMA step t runs between the end of callback t − 1 and the start of callback t; the bare
    # step of callback t − 1 ran just before it. Steps 0 (checks, η⁽⁰⁾ search) and 1 are left
    # out.
    bare = [end - start for start, end in marks[1:-1]]
    steps_alma = [marks[t][0] - marks[t - 1][1] for t in range(2, len(marks))]
    ratios = [a / b for a, b in zip(steps_alma, bare, strict=True)]
    return {
        "bare_step_s": statistics.median(bare),
        "alma_step_s": statistics.median(steps_alma),
        "paired_ratio": statistics.median(ratios),
    }


def _paired_in_fresh_process(
    batch: int, steps: int, distance: str, threads: int | None, device: str
) -> dict[str, float]:
    if threads:
        torch.set_num_threads(threads)
    return measure_paired(batch, steps, distance, device=device)


def measure_paired_processes(
    processes: int,
    batch: int = 128,
    steps: int = 100,
    distance: str = "l2",
    threads: int | None = None,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """:func:`measure_paired` in ``processes`` fresh interpreters, one after the other. The
    paired ratio of one process moves by several % from process to process on the same idle
    machine (1.01–1.12 over nine runs of the same code, docs/performance.md): the state a process
    starts in weighs more than the load, so the median over processes is the estimate to
    quote."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    results = []
    for _ in range(processes):
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            job = pool.submit(_paired_in_fresh_process, batch, steps, distance, threads, device)
            results.append(job.result())
    return results


def _self_times(run: Callable[[], object], device: str = "cpu") -> dict[str, Any]:
    """Seconds of own CPU time per ATen operator name while ``run`` runs; on CUDA also the
    kernels' own device time (``"device"``, seconds) and the kernel launches (``"launches"``)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
        synchronize(torch.device(device))
    rows = prof.key_averages()
    times: dict[str, Any] = {row.key: row.self_cpu_time_total * 1e-6 for row in rows}
    if not cuda:
        return {"cpu": times}
    device_time = sum(getattr(row, "self_device_time_total", 0.0) for row in rows) * 1e-6
    launches = sum(row.count for row in rows if row.key in ("cudaLaunchKernel",
                                                             "cuLaunchKernel",
                                                             "cudaLaunchKernelExC"))  # fmt: skip
    return {"cpu": times, "device": device_time, "launches": launches}


def profile_account(
    batch: int = 128, steps: int = 30, distance: str = "l2", seed: int = 0, device: str = "cpu"
) -> dict[str, Any]:
    """Per-step own CPU time of the operators (seconds) of a bare forward+backward and of an
    ALMA step on SmallCNN, their ratio, and the per-operator differences (ALMA − bare),
    largest first. On CUDA also, per step, the kernels' device time (``bare_device_s``,
    ``alma_device_s``) and kernel launches (``bare_launches``, ``alma_launches``)."""
    model, inputs, labels = _warm_setup(batch, distance, seed, device)
    bare_all = _self_times(lambda: _bare_steps(model, inputs, steps), device)
    short_all = _self_times(lambda: alma(model, inputs, labels, distance=distance, steps=1), device)
    long_all = _self_times(
        lambda: alma(model, inputs, labels, distance=distance, steps=steps + 1), device
    )
    bare, short, long = bare_all["cpu"], short_all["cpu"], long_all["cpu"]
    per_step_bare = {k: v / steps for k, v in bare.items()}
    per_step_alma = {k: (long.get(k, 0.0) - short.get(k, 0.0)) / steps for k in long}
    names = set(per_step_bare) | set(per_step_alma)
    differences = {k: per_step_alma.get(k, 0.0) - per_step_bare.get(k, 0.0) for k in names}
    bare_step, alma_step = sum(per_step_bare.values()), sum(per_step_alma.values())
    account = {
        "bare_step_s": bare_step,
        "alma_step_s": alma_step,
        "ratio": alma_step / bare_step,
        "differences": dict(sorted(differences.items(), key=lambda kv: -kv[1])),
    }
    if "device" in bare_all:
        account["bare_device_s"] = bare_all["device"] / steps
        account["alma_device_s"] = (long_all["device"] - short_all["device"]) / steps
        account["bare_launches"] = bare_all["launches"] / steps
        account["alma_launches"] = (long_all["launches"] - short_all["launches"]) / steps
    return account


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(prog="alma-bench overhead", description=(__doc__ or "").splitlines()[0])
    # --batch-size as in the main command, noise, reeval and sweep; --batch kept
    parser.add_argument("--batch-size", "--batch", dest="batch",
                        type=integer_option("batch-size", 1), default=128)  # fmt: skip
    parser.add_argument(
        "--steps",
        type=integer_option("steps", 1),
        default=30,
        help="timed steps per round and side",
    )
    parser.add_argument("--rounds", type=integer_option("rounds", 1), default=5)
    parser.add_argument("--distance", default="l2", choices=[*DISTANCES, "linf"])
    add_threads_option(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="also time each ALMA step against a bare step run just before it (in the callback)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="with --paired: repeat it in this many fresh processes and report their median",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also account the operators' own CPU time per step with torch.profiler",
    )
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes must be a positive integer, got {args.processes}")
    if args.processes > 1 and not args.paired:
        parser.error("--processes repeats the paired measurement: it needs --paired")
    device = str(device_argument(parser, args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.batch, args.steps, args.rounds, args.distance, device=device)
    print(
        f"SmallCNN on {device}, batch {args.batch}, {args.distance}, "
        f"{torch.get_num_threads()} threads, "
        f"{args.rounds} x {args.steps} steps each: bare forward+backward "
        f"{result['bare_step_s'] * 1e3:.2f} ms, ALMA step {result['alma_step_s'] * 1e3:.2f} ms "
        f"(medians), ratio {result['ratio']:.3f} (fastest steps: "
        f"{result['ratio_fastest']:.3f}; per round: {result['round_ratio_min']:.3f}–"
        f"{result['round_ratio_max']:.3f})"
    )
    if args.paired:
        paired = measure_paired(args.batch, max(args.steps, 10) * args.rounds, args.distance,
                                device=device)  # fmt: skip
        print(
            f"paired, one bare step inside each ALMA step's callback: bare "
            f"{paired['bare_step_s'] * 1e3:.2f} ms, ALMA step {paired['alma_step_s'] * 1e3:.2f}"
            f" ms (medians), median per-step ratio {paired['paired_ratio']:.3f}"
        )
    if args.paired and args.processes > 1:
        runs = measure_paired_processes(args.processes, args.batch,
                                        max(args.steps, 10) * args.rounds, args.distance,
                                        args.threads, device)  # fmt: skip
        ratios = sorted(run["paired_ratio"] for run in runs)
        print(
            f"paired in {args.processes} fresh processes: median per-step ratio "
            f"{statistics.median(ratios):.3f} (per process: "
            f"{', '.join(f'{r:.3f}' for r in ratios)})"
        )
    if args.profile:
        account = profile_account(args.batch, args.steps, args.distance, device=device)
        top = list(account["differences"].items())[:6]
        largest = ", ".join(f"{name} {seconds * 1e3:+.2f}" for name, seconds in top)
        print(
            f"profiled, operators' own CPU time per step: bare {account['bare_step_s'] * 1e3:.2f}"
            f" ms, ALMA {account['alma_step_s'] * 1e3:.2f} ms, ratio {account['ratio']:.3f}; "
            f"largest differences (ms): {largest}"
        )
        if "alma_device_s" in account:
            print(
                f"kernels' own device time per step: bare {account['bare_device_s'] * 1e3:.2f} "
                f"ms, ALMA {account['alma_device_s'] * 1e3:.2f} ms; kernel launches per step: "
                f"bare {account['bare_launches']:.0f}, ALMA {account['alma_launches']:.0f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
