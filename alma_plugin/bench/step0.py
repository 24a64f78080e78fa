"""The cost of ALMA's step 0 (the η⁽⁰⁾ search of §3.2.3) against a later step, per distance.

``python -m alma_plugin.bench.step0 [--device cpu|cuda] [--distances l1 l2 ciede2000 ssim
msssim lpips] [--batch-size 4] [--image-size 224] [--steps 4] [--repeats 2] [--compare-bracket]``

For each distance: the seconds of a 1-step run (step 0: input checks, one forward/backward and
the η⁽⁰⁾ search) and of a ``--steps`` run, on :class:`~.throughput.SmallImageNetCNN` (224 px,
~0.18 GMAC per image: a cheap model, so the search weighs more than next to a real ImageNet
network); a later step is (T_steps − T_1)/(steps − 1). Reported: both times, their ratio (the
goal of issue 14: at most 3), and the distance evaluations of the search (a separate, untimed
run). ``--compare-bracket`` measures the bracketing search the solver used before (a doubling
line search, then a bisection) in the same process. Timings on a shared machine: the fastest of
``--repeats`` runs, and the ratio is taken within one run of this command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import eagerpy as ep
import torch

from ..core import schedules, solver
from ..distances import DISTANCES, DistanceFunction
from .arguments import BenchParser, add_threads_option, device_argument, integer_option
from .throughput import make_distance, make_model, timed_run

__all__ = ["main", "measure"]

DEFAULT_DISTANCES = ("l1", "l2", "ciede2000", "ssim", "msssim", "lpips")


class _Counting:
    def __init__(self, distance: DistanceFunction) -> None:
        self.distance, self.calls = distance, 0

    def __call__(self, x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
        self.calls += 1
        return self.distance(x_adv, x)


@contextlib.contextmanager
def _bracketing_search(enabled: bool) -> Iterator[None]:
    """The solver with the bracketing search of the paper (the previous implementation)."""
    if not enabled:
        yield
        return
    original = solver.initial_step_size
    solver.initial_step_size = schedules.bracket_step_size
    try:
        yield
    finally:
        solver.initial_step_size = original


@contextlib.contextmanager
def _counted_as(name: str, counting: _Counting) -> Iterator[None]:
    """ℓ1/ℓ2 are recognised by identity for their closed form: count them under that name."""
    if name not in ("l1", "l2"):
        yield
        return
    original = getattr(schedules, name)
    setattr(schedules, name, counting)
    try:
        yield
    finally:
        setattr(schedules, name, original)


def measure(
    distance: str,
    batch: int,
    image_size: int,
    device: torch.device,
    steps: int = 4,
    repeats: int = 2,
    bracket: bool = False,
) -> dict[str, Any]:
    """Step-0 and later-step seconds, their ratio and the search's distance evaluations."""
    model = make_model(image_size, device)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.rand(batch, 3, image_size, image_size, generator=gen)
    # Natural images are smooth: a 5×5 box blur keeps SSIM's local statistics realistic.
    inputs = torch.nn.functional.avg_pool2d(inputs, 5, 1, 2).to(device)
    with torch.no_grad():
        labels = model(inputs).argmax(1)
    fn = make_distance(distance, device)
    with _bracketing_search(bracket):
        counting = _Counting(fn)
        with _counted_as(distance, counting):
            timed_run(model, inputs, labels, distance, 1, counting)
        one, full = [], []
        for _ in range(repeats):
            one.append(timed_run(model, inputs, labels, distance, 1, fn)[0])
            full.append(timed_run(model, inputs, labels, distance, steps, fn)[0])
    later = (min(full) - min(one)) / (steps - 1)
    return {
        "distance": distance,
        "search": "bracket + bisection" if bracket else "closed form / secant",
        "step0_s": min(one),
        "later_step_s": later,
        "ratio": min(one) / later if later > 0 else float("nan"),
        "evaluations": counting.calls - 1,  # the loss's own D at step 0 is not the search's
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(prog="alma-bench step0", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--distances", "--distance", nargs="+", default=list(DEFAULT_DISTANCES),
                        choices=list(DISTANCES))  # fmt: skip
    # --batch-size as in the main command, noise, reeval and sweep; --batch kept
    parser.add_argument("--batch-size", "--batch", dest="batch",
                        type=integer_option("batch-size", 1), default=4)  # fmt: skip
    parser.add_argument("--image-size", type=integer_option("image-size", 1), default=224)
    parser.add_argument("--steps", type=integer_option("steps", 1), default=4)
    parser.add_argument("--repeats", type=integer_option("repeats", 1), default=2)
    parser.add_argument("--compare-bracket", action="store_true",
                        help="also measure the previous bracketing search")  # fmt: skip
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps must be at least 2, got {args.steps}")
    # The smallest images the chosen distances take (MS-SSIM: 11·2⁴ px at 5 scales; LPIPS:
    # AlexNet's feature maps; SSIM: its 11-px window); ℓ1, ℓ2 and CIEDE2000 take any size.
    needs = {"msssim": (176, "MS-SSIM"), "lpips": (31, "LPIPS"), "ssim": (11, "SSIM")}
    chosen = [needs[d] for d in args.distances if d in needs]
    if chosen and args.image_size < max(chosen)[0]:
        size, name = max(chosen)
        parser.error(f"--image-size must be at least {size} ({name}), got {args.image_size}")
    device = device_argument(parser, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for distance in args.distances:
        for bracket in (False, True) if args.compare_bracket else (False,):
            rows.append(
                measure(
                    distance, args.batch, args.image_size, device, args.steps, args.repeats, bracket
                )  # fmt: skip
            )
            print(rows[-1], flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.image_size} px, SmallImageNetCNN, best of {args.repeats}\n")  # fmt: skip
    print("| distance | η⁽⁰⁾ search | D evaluations | step 0 (s) | later step (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['distance']} | {r['search']} | {r['evaluations']} | {r['step0_s']:.3f} | "
              f"{r['later_step_s']:.3f} | {r['ratio']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
