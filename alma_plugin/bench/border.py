"""Where the SSIM / MS-SSIM attacks put their perturbation: the image border or the image.

``python -m alma_plugin.bench.border [--steps 300] [--samples 20] [--msssim-samples 8]``
(``alma-bench border``) trains the small colour CNN of
``notebooks/04_perceptual_distances.ipynb`` on Foolbox's 20 CIFAR-10 sample images (shipped
with Foolbox: nothing is downloaded; the model memorises them, it is a stand-in), then runs
:class:`~alma_plugin.foolbox.SSIMALMA` on the 32×32 images and
:class:`~alma_plugin.foolbox.MSSSIMALMA` on the first ``--msssim-samples`` of them upsampled
6× (nearest) to 192×192 — MS-SSIM needs 176 px — with the CNN behind a 6×6 average pooling,
each with ``padding="valid"`` (descending scikit-image's SSIM: before) and
``padding="symmetric"`` (the default: full-coverage gradient, after).

For each run it prints the success rate (re-evaluated by the model), the exact (valid-window,
scikit-image) distance D = 1 − SSIM / 1 − MS-SSIM of the successful adversarials (median,
mean), their full-coverage distance (``padding="symmetric"``, median), their ℓ2 / ℓ∞ norms,
the time, and the **border-energy ratio**

    ρ_b = (Σ_{border} δ² / Σ δ²) / (border area / image area),

the border being the pixels within ``b`` pixels of an edge (b = 5: the 11×11 window's radius;
for MS-SSIM also 30, the 5 px of the original 32×32 image, and 80, the window radius at the
coarsest of five scales). ρ = 1: the perturbation energy is spread like the area; the goal is
ρ₅ ≤ 1.5. Pooled: over all successful samples' energy; median: of the per-sample ratios.
Times are wall-clock on a possibly shared machine: compare them within one run only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import foolbox as fb
import torch
from torch import nn

from ..distances import msssim, ssim
from ..foolbox import MSSSIMALMA, SSIMALMA
from .arguments import BenchParser, add_threads_option, integer_option

__all__ = ["BorderResult", "border_ratio", "main", "train_cifar_cnn"]

PADDINGS = ("valid", "symmetric")
UPSAMPLE = 6


def border_mask(height: int, width: int, border: int) -> torch.Tensor:
    """Boolean (H, W): True within ``border`` pixels of an edge."""
    rows, cols = torch.arange(height), torch.arange(width)
    near_rows = (rows < border) | (rows >= height - border)
    near_cols = (cols < border) | (cols >= width - border)
    return near_rows[:, None] | near_cols[None, :]


def border_ratio(delta: torch.Tensor, border: int) -> tuple[torch.Tensor, float]:
    """Per-sample ρ_b of perturbations (N, C, H, W), shape (N,), and the pooled ρ_b (the
    energy of all samples together). NaN for a sample with δ = 0."""
    mask = border_mask(delta.shape[-2], delta.shape[-1], border).to(delta.device)
    share = mask.float().mean().item()
    energy = delta.double().square().sum(dim=1)  # (N, H, W)
    inside = (energy * mask).flatten(1).sum(1)
    total = energy.flatten(1).sum(1)
    per_sample = inside / total / share
    pooled = (inside.sum() / total.sum()).item() / share
    return per_sample, pooled


def train_cifar_cnn(
    images: torch.Tensor, labels: torch.Tensor, steps: int = 150, copies: int = 4
) -> nn.Module:
    """The notebook's small colour CNN, fitted to the sample images with flips, shifts and
    brightness/contrast jitter (seconds on one CPU thread); in eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)

    def augment(x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        padded = nn.functional.pad(x, (3, 3, 3, 3), mode="reflect")
        dy, dx = torch.randint(0, 7, (2,), generator=generator).tolist()
        x = padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
        gain = 1 + 0.2 * (torch.rand(len(x), 1, 1, 1, generator=generator) - 0.5)
        shift = 0.1 * (torch.rand(len(x), 1, 1, 1, generator=generator) - 0.5)
        return ((x - 0.5) * gain + 0.5 + shift).clamp(0, 1)

    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(steps):
        batch = torch.cat([augment(images) for _ in range(copies)])
        loss = nn.functional.cross_entropy(net(batch), labels.repeat(copies))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    net.zero_grad(set_to_none=True)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


@dataclass(frozen=True)
class BorderResult:
    """One attack run: which, how many succeeded, the exact distances and the border ratios."""

    attack: str
    padding: str
    success_rate: float
    exact_median: float
    exact_mean: float
    full_median: float
    l2_median: float
    linf_median: float
    ratios: dict[int, tuple[float, float]]  # border → (median per-sample ρ, pooled ρ)
    seconds: float


def run_attack(
    attack: str,
    padding: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    borders: Sequence[int],
) -> BorderResult:
    """Run SSIMALMA or MSSSIMALMA with ``padding`` and measure its adversarials."""
    cls, exact = (SSIMALMA, ssim) if attack == "SSIM" else (MSSSIMALMA, msssim)
    # The device named: without one, Foolbox moves the model to CUDA (in place) when present.
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
    start = time.perf_counter()
    adv = cls(steps=steps, padding=padding).run(fmodel, x, y)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        ok = model(adv).argmax(1) != y
        distances = exact(adv, x)[ok].double()
        full = exact(adv, x, padding="symmetric")[ok].double()
    delta = (adv - x)[ok]
    ratios = {}
    for border in borders:
        per_sample, pooled = border_ratio(delta, border)
        ratios[border] = (per_sample.median().item(), pooled)
    nan = float("nan")
    return BorderResult(
        attack=attack,
        padding=padding,
        success_rate=ok.float().mean().item(),
        exact_median=distances.median().item() if ok.any() else nan,
        exact_mean=distances.mean().item() if ok.any() else nan,
        full_median=full.median().item() if ok.any() else nan,
        l2_median=delta.flatten(1).norm(dim=1).median().item() if ok.any() else nan,
        linf_median=delta.flatten(1).abs().amax(dim=1).median().item() if ok.any() else nan,
        ratios=ratios,
        seconds=seconds,
    )


def format_results(results: Sequence[BorderResult]) -> str:
    """A markdown table of the runs."""
    borders = sorted({b for r in results for b in r.ratios})
    ratio_heads = " | ".join(f"ρ_{b} median / pooled" for b in borders)
    lines = [
        f"| attack | padding | success | exact D median | D mean | full-coverage D median "
        f"| ℓ2 median | ℓ∞ median | {ratio_heads} | time |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(borders) + "---|",
    ]
    for r in results:
        cells = " | ".join(
            f"{r.ratios[b][0]:.2f} / {r.ratios[b][1]:.2f}" if b in r.ratios else "–"
            for b in borders
        )
        lines.append(
            f"| {r.attack} | {r.padding} | {r.success_rate:.0%} | {r.exact_median:.3e} "
            f"| {r.exact_mean:.3e} | {r.full_median:.3e} | {r.l2_median:.3f} "
            f"| {r.linf_median:.3f} | {cells} "
            f"| {r.seconds:.1f} s |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; 0 on success."""
    parser = BenchParser(prog="alma-bench border", description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--steps", type=integer_option("steps", 1), default=300, help="ALMA steps (default 300)"
    )
    parser.add_argument(
        "--samples",
        type=integer_option("samples", 1),
        default=20,
        help="CIFAR samples (at most 20)",
    )
    parser.add_argument(
        "--msssim-samples",
        type=integer_option("msssim-samples", 1),
        default=None,
        help="of those, attacked with MS-SSIM at 192×192 (36× the pixels; at most --samples; "
        "default 8, or --samples if fewer)",
    )
    parser.add_argument(
        "--attacks", nargs="+", choices=("SSIM", "MS-SSIM"), default=["SSIM", "MS-SSIM"]
    )
    add_threads_option(parser, default=1)
    parser.add_argument(
        "--train-steps",
        type=integer_option("train-steps", 1),
        default=150,
        help="CNN training steps",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.samples <= 20:
        parser.error(f"--samples must be between 1 and 20, got {args.samples}")
    if args.msssim_samples is None:
        args.msssim_samples = min(8, args.samples)
    if args.msssim_samples > args.samples:  # was cut to --samples without a word
        parser.error(
            f"argument --msssim-samples: must be at most --samples ({args.samples}), "
            f"got {args.msssim_samples}"
        )
    if args.steps < 1 or args.train_steps < 1 or args.threads < 1:
        parser.error("--steps, --train-steps and --threads must be positive integers")
    torch.set_num_threads(args.threads)

    placeholder = fb.PyTorchModel(nn.Identity().eval(), bounds=(0, 1), device="cpu")
    images, labels = fb.utils.samples(placeholder, dataset="cifar10", batchsize=20)
    start = time.perf_counter()
    net = train_cifar_cnn(images, labels, steps=args.train_steps)
    with torch.no_grad():
        correct = net(images).argmax(1) == labels
    x, y = images[correct][: args.samples], labels[correct][: args.samples]
    print(
        f"CNN trained on Foolbox's 20 CIFAR-10 samples in {time.perf_counter() - start:.1f} s "
        f"({int(correct.sum())}/20 correct); attacking {len(x)} of them, {args.steps} steps, "
        f"{torch.get_num_threads()} thread(s)"
    )
    results = []
    borders: tuple[int, ...]
    for attack in args.attacks:
        if attack == "SSIM":
            model, inputs, borders = net, x, (5,)
        else:
            model = nn.Sequential(nn.AvgPool2d(UPSAMPLE), net).eval()
            inputs = nn.functional.interpolate(
                x[: args.msssim_samples], scale_factor=UPSAMPLE, mode="nearest"
            )
            borders = (5, 5 * UPSAMPLE, 80)
        for padding in PADDINGS:
            targets = y[: len(inputs)]
            result = run_attack(attack, padding, model, inputs, targets, args.steps, borders)
            results.append(result)
            print(f"  {attack} padding={padding}, {len(inputs)} images: {result.seconds:.1f} s")
    print(format_results(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
