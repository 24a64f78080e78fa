"""Generalisation to unseen threat models: the comparison of Azizmalayeri & Rohban's Tables 1–2
on the three embedded MNIST SmallCNNs (regular, PGD-ℓ∞-trained, Lagrangian-trained).

Usage::

    alma-bench unseen --samples 100 --steps 100     # or python -m alma_plugin.bench.unseen

For each model, on the first ``--samples`` held-out MNIST images 9000+:

- robust accuracy against the *training* threat model, ℓ∞: PGD-ℓ∞ (the attack the PGD model
  was trained with: random start, step 2.5·ε/steps) and the minimal ℓ∞ of ALMA prox, both at ε∞;
- robust accuracy against threat models *unseen* in training: minimal ℓ1 and ℓ2 (ALMA) and
  SSIM (ALMA) at ε1, ε2, ε_SSIM, Gaussian noise (mean 0, variance 0.05, one seeded draw) and
  Gaussian blur (kernel 5, σ = 1.5), the two corruptions of their Table 1;
- "unseen mean" (mean over the unseen columns) and "union mean" (over every column), as the
  paper reports them;
- the per-sample robustness radii: the median minimal distance per threat model (0 for a
  misclassified image, ∞ where the attack found nothing), which does not depend on the choice
  of ε.

A sample is robust at ε against a minimal attack when it is classified correctly and the attack
found no adversarial closer than ε (distances in the [0, 1] pixel space).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .arguments import (
    BenchParser,
    add_threads_option,
    budget_option,
    distinct_argument,
    integer_option,
    json_file_argument,
    path_option,
    real_option,
    seed_option,
)
from .report import to_json

__all__ = ["DEFAULT_EPSILONS", "TRAINING", "UNSEEN", "Row", "compare", "format_table", "main"]

#: ε per threat model, in the [0, 1] pixel space.
DEFAULT_EPSILONS = {"linf": 0.2, "l1": 5.0, "l2": 1.5, "ssim": 0.05}
#: The columns: the training threat model (ℓ∞ for the PGD model) and the unseen ones.
TRAINING = ("PGD-linf", "linf")
UNSEEN = ("l1", "l2", "ssim", "noise", "blur")
MINIMAL = ("linf", "l1", "l2", "ssim")
NOISE_VARIANCE = 0.05
BLUR_KERNEL, BLUR_SIGMA = 5, 1.5


@dataclass
class Row:
    """The comparison for one model: accuracies in [0, 1], medians in pixel-space units."""

    model: str
    clean: float
    accuracy: dict[str, float] = field(default_factory=dict)
    median: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def unseen_mean(self) -> float:
        return float(np.mean([self.accuracy[name] for name in UNSEEN]))

    @property
    def union_mean(self) -> float:
        return float(np.mean([self.accuracy[name] for name in TRAINING + UNSEEN]))


def gaussian_blur(
    x: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA
) -> torch.Tensor:
    """Per-channel Gaussian blur (zero padding: MNIST's background is 0)."""
    offsets = torch.arange(kernel, dtype=x.dtype) - (kernel - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    filt = (weights[:, None] * weights[None, :]).expand(x.shape[1], 1, kernel, kernel)
    return F.conv2d(x, filt.contiguous(), padding=kernel // 2, groups=x.shape[1])


def gaussian_noise(
    x: torch.Tensor, variance: float = NOISE_VARIANCE, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * math.sqrt(variance)
    return (x + noise).clamp(0, 1)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def minimal_radii(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: str, steps: int
) -> torch.Tensor:
    """Per sample, the smallest adversarial distance found (ALMA, or ALMA prox for ℓ∞): 0 where
    the clean image is misclassified, inf where no adversarial was found."""
    from ..functional import alma

    correct = _correct(model, x, y)
    radii = torch.zeros(len(x))
    if correct.any():
        result = alma(model, x[correct], y[correct], distance=threat, steps=steps)
        adv = result.adversarials
        fooled = ~_correct(model, adv, y[correct])  # re-verified, not only claimed
        radii[correct] = torch.where(fooled, result.distances.float(), torch.tensor(math.inf))
    return radii


def pgd_robust(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int
) -> torch.Tensor:
    """Per sample: correct on the clean image and on PGD-ℓ∞ (``steps`` steps, random start)."""
    from .train_mnist import pgd_linf

    generator = torch.Generator().manual_seed(seed)
    adv = pgd_linf(model, x, y, eps, steps, generator)
    return _correct(model, x, y) & _correct(model, adv, y)


def evaluate(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    pgd_steps: int,
    epsilons: dict[str, float],
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Row:
    """The comparison row of one model (see the module doc)."""
    start = time.perf_counter()
    for p in model.parameters():
        p.requires_grad_(False)
    clean = _correct(model, x, y)
    row = Row(name, float(clean.float().mean()))
    robust = pgd_robust(model, x, y, epsilons["linf"], pgd_steps, seed)
    row.accuracy["PGD-linf"] = float(robust.float().mean())
    for threat in MINIMAL:
        radii = minimal_radii(model, x, y, threat, steps)
        row.accuracy[threat] = float((radii > epsilons[threat]).float().mean())
        row.median[threat] = float(radii.median())
        if log is not None:
            log(f"{name}: {threat} done ({time.perf_counter() - start:.0f}s)")
    row.accuracy["noise"] = float(_correct(model, gaussian_noise(x, seed=seed), y).float().mean())
    row.accuracy["blur"] = float(_correct(model, gaussian_blur(x), y).float().mean())
    row.seconds = time.perf_counter() - start
    return row


def compare(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 100,
    pgd_steps: int = 40,
    epsilons: dict[str, float] | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[Row]:
    """One :class:`Row` per model, on the same images."""
    eps = {**DEFAULT_EPSILONS, **(epsilons or {})}
    return [
        evaluate(
            name, model, x, y, steps=steps, pgd_steps=pgd_steps, epsilons=eps, seed=seed, log=log
        )  # fmt: skip
        for name, model in models.items()
    ]


COLUMN_TITLES = {"PGD-linf": "PGD-l∞", "linf": "l∞", "l1": "l1", "l2": "l2", "ssim": "SSIM",
                 "noise": "noise", "blur": "blur"}  # fmt: skip


def format_table(rows: Sequence[Row], epsilons: dict[str, float] | None = None) -> str:
    """The comparison as two Markdown tables: robust accuracy (%) and median radii."""
    eps = {**DEFAULT_EPSILONS, **(epsilons or {})}
    columns = TRAINING + UNSEEN
    head = ["model", "clean"] + [COLUMN_TITLES[c] for c in columns] + ["unseen mean", "union mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.model, f"{100 * r.clean:.1f}"]
        cells += [f"{100 * r.accuracy[c]:.1f}" for c in columns]
        cells += [f"{100 * r.unseen_mean:.1f}", f"{100 * r.union_mean:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| model | " + " | ".join(f"median {COLUMN_TITLES[c]}" for c in MINIMAL) + " |",
              "|" + "---|" * (len(MINIMAL) + 1)]  # fmt: skip
    for r in rows:
        lines.append(f"| {r.model} | " + " | ".join(f"{r.median[c]:.3f}" for c in MINIMAL) + " |")
    lines.append("")
    lines.append(
        f"Robust accuracy (%) at eps l∞ = {eps['linf']:g} (PGD and ALMA prox), l1 = {eps['l1']:g}, "
        f"l2 = {eps['l2']:g}, SSIM = {eps['ssim']:g}; noise: variance {NOISE_VARIANCE:g}; blur: "
        f"kernel {BLUR_KERNEL}, sigma {BLUR_SIGMA:g}. Training threat model: l∞ (PGD-l∞, l∞); "
        "unseen mean over l1, l2, SSIM, noise, blur; union mean over all seven."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: print the comparison tables (and write them as JSON)."""
    from ..zoo import MODEL_NAMES, load_mnist_heldout, load_smallcnn

    parser = BenchParser(prog="alma-bench unseen", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--samples",
        type=integer_option("samples", 1),
        default=100,
        help="held-out images (<= 1000)",
    )
    parser.add_argument(
        "--steps", type=budget_option("steps"), default=100, help="steps of each minimal attack"
    )
    parser.add_argument(
        "--pgd-steps", type=budget_option("pgd-steps"), default=40, help="steps of PGD-linf"
    )
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    for threat, value in DEFAULT_EPSILONS.items():
        parser.add_argument(
            f"--eps-{threat}", type=real_option(f"eps-{threat}", 0.0), default=value
        )
    parser.add_argument("--seed", type=seed_option(), default=0)
    add_threads_option(parser)
    parser.add_argument("--json", type=path_option("json"), default=None,
                        help="also write the rows here (strict JSON: inf as \"inf\", NaN as "
                        "null, as results.json)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.samples <= 1000:
        parser.error(f"argument --samples: must lie in [1, 1000], got {args.samples}")
    if args.steps < 1 or args.pgd_steps < 1:
        parser.error("--steps and --pgd-steps must be >= 1")
    distinct_argument(parser, "--models", args.models)  # was one row for a model given twice
    if args.json is not None:  # before the benchmark runs, not after
        json_file_argument(parser, "--json", args.json)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    epsilons = {threat: getattr(args, f"eps_{threat}") for threat in DEFAULT_EPSILONS}
    images, labels = load_mnist_heldout()
    x, y = images[: args.samples], labels[: args.samples]
    models: dict[str, nn.Module] = {name: load_smallcnn(name) for name in args.models}
    log = None if args.quiet else (lambda line: print(line, flush=True))
    rows = compare(models, x, y, steps=args.steps, pgd_steps=args.pgd_steps, epsilons=epsilons,
                   seed=args.seed, log=log)  # fmt: skip
    print(format_table(rows, epsilons))
    print(f"({args.samples} images, {args.steps} steps per minimal attack, "
          f"{args.pgd_steps} PGD steps; {sum(r.seconds for r in rows):.0f}s)")  # fmt: skip
    if args.json is not None:
        payload = [asdict(r) | {"unseen_mean": r.unseen_mean, "union_mean": r.union_mean}
                   for r in rows]  # fmt: skip
        strict = to_json({"epsilons": epsilons, "rows": payload})
        args.json.write_text(json.dumps(strict, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
