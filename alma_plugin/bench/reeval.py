"""Do the reported adversarials stay adversarial when the model sees them in other batches?

``python -m alma_plugin.bench.reeval --device cuda [--models ...] [--distances l2 l1 linf]
[--samples 500] [--batch-size 500] [--steps 100] [--tf32 on off]``

A minimal attack returns points at the decision boundary, judged on the batches it attacked.
Where the model's logits depend on the batch (cuDNN's TF32 convolutions on an Ampere-or-newer
GPU pick kernels per batch shape and round products to a 10-bit mantissa), a re-evaluation in
another batch can put such a point back on the clean side. For each model, distance (ALMA ℓ1 /
ℓ2, ALMA prox for ``linf``) and TF32 setting (``on``: ``torch.backends.cudnn.allow_tf32`` and
matmul precision "high"; ``off``: neither), the reported successes are re-evaluated in the
attack's batches, one image at a time and in batches of 7; the table gives the successes that
fail each re-evaluation, the largest change of a logit between the attack's batch and single
images, and how many successes have a top-2 logit gap below 10⁻³ × max |z|. The package warns
(``ReducedPrecisionWarning``) where the first setting is in force; the CPU is reported as is.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..core.precision import ReducedPrecisionWarning
from ..functional import alma, alma_prox
from ..zoo.models import MODEL_NAMES
from .arguments import BenchParser, add_threads_option, device_argument, integer_option
from .runner import EMBEDDED_DATA, load_data, load_model

__all__ = ["attack_and_reevaluate", "main", "reevaluate", "tf32"]


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """cuDNN's TF32 convolutions and TF32 matmuls on (``enabled``) or off for the block, the
    caller's settings restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def _logits_in_batches(model: torch.nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[start : start + size]) for start in range(0, len(x), size)])


def reevaluate(
    model: torch.nn.Module,
    adversarials: torch.Tensor,
    labels: torch.Tensor,
    success: torch.Tensor,
    batch_size: int,
) -> dict[str, Any]:
    """Claimed ``success`` against re-evaluations of ``adversarials``: in batches of
    ``batch_size`` (the attack's), one at a time, and in batches of 7."""
    attacked = _logits_in_batches(model, adversarials, batch_size)
    single = _logits_in_batches(model, adversarials, 1)
    sevens = _logits_in_batches(model, adversarials, 7)
    top2 = attacked.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    scale = attacked.abs().amax(dim=1)

    def lost(logits: torch.Tensor) -> int:
        return int((success & (logits.argmax(1) == labels)).sum())

    return {
        "claimed": int(success.sum()),
        "lost_same_batches": lost(attacked),
        "lost_single": lost(single),
        "lost_sevens": lost(sevens),
        "largest_logit_change": float((attacked - single).abs().max()),
        "narrow": int((success & (gap < 1e-3 * scale)).sum()),
    }


def attack_and_reevaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    distance: str,
    steps: int,
    batch_size: int,
) -> dict[str, Any]:
    """ALMA (ALMA prox for ``linf``) on batches of ``batch_size``, then :func:`reevaluate`."""
    adversarials, success = [], []
    with warnings.catch_warnings():
        # the TF32 rows are deliberate: their warning is what this measures
        warnings.simplefilter("ignore", ReducedPrecisionWarning)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            if distance == "linf":
                result = alma_prox(model, xb, yb, steps=steps)
            else:
                result = alma(model, xb, yb, distance=distance, steps=steps)
            adversarials.append(result.adversarials)
            success.append(result.success)
    return reevaluate(model, torch.cat(adversarials), y, torch.cat(success), batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = BenchParser(
        prog="alma-bench reeval", description=" ".join((__doc__ or "").split("\n\n")[0].split())
    )
    parser.add_argument("--models", nargs="+", default=["mnist_regular", "mnist_adversarial"],
                        choices=MODEL_NAMES)  # fmt: skip
    parser.add_argument("--distances", "--distance", nargs="+", default=["l2", "l1", "linf"],
                        choices=["l1", "l2", "linf"])  # fmt: skip
    parser.add_argument("--samples", type=integer_option("samples", 1), default=500)
    parser.add_argument("--batch-size", type=integer_option("batch-size", 1), default=500)
    parser.add_argument("--steps", type=integer_option("steps", 1), default=100)
    parser.add_argument("--tf32", nargs="+", default=["on", "off"], choices=["on", "off"],
                        help="TF32 settings to run (CUDA; ignored on the CPU)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    device = device_argument(parser, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = load_data(EMBEDDED_DATA)
    if args.samples > len(images):
        parser.error(f"argument --samples: {args.samples} exceeds the {len(images)} embedded "
                     "images")  # fmt: skip
    x, y = images[: args.samples].to(device), labels[: args.samples].to(device)
    settings = args.tf32 if device.type == "cuda" else ["(cpu)"]
    print(f"{args.samples} held-out images, batches of {args.batch_size}, {args.steps} steps, "
          f"{device}\n")  # fmt: skip
    print("| TF32 | model | attack | successes | lost: same batches | lost: one at a time "
          "| lost: batches of 7 | largest logit change "
          "| top-2 gap < 1e-3 max abs(z) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for setting in settings:
        for model_name in args.models:
            model = load_model(model_name, str(device))
            for distance in args.distances:
                on_gpu = device.type == "cuda"
                with tf32(setting == "on") if on_gpu else contextlib.nullcontext():
                    r = attack_and_reevaluate(model, x, y, distance, args.steps, args.batch_size)
                attack = "ALMA prox ℓ∞" if distance == "linf" else f"ALMA {distance}"
                print(f"| {setting} | {model_name} | {attack} | {r['claimed']} "
                      f"| {r['lost_same_batches']} | {r['lost_single']} | {r['lost_sevens']} "
                      f"| {r['largest_logit_change']:.2e} | {r['narrow']} |",
                      flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
