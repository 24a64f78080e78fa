"""Train the embedded SmallCNN models and write the benchmark assets.

Usage (from the repository root)::

    python -m alma_plugin.bench.train_mnist --data-dir ../shared/data/mnist \\
        --out alma_plugin/zoo/assets

The MNIST *test* set is split in two: images 0–8999 train the models, images 9000–9999 are
held out and shipped (as ``uint8``) for the benchmark to attack. Three models are trained:

- ``mnist_regular``: Adam, cosine learning-rate decay, random ±2 px translations;
- ``mnist_adversarial``: PGD-ℓ∞ adversarial training (Madry et al.), warm-started from the
  regular model, with ε ramped up linearly to its final value over the first epochs;
- ``mnist_lagrangian``: adversarial training with the Lagrangian attack of Azizmalayeri &
  Rohban (2021, Algorithm 1; :class:`alma_plugin.torchattacks.Lagrangian`) through
  :func:`alma_plugin.training.adversarial_training`, warm-started from the *stored* regular
  weights (its warm-up: the regular model's 10 clean epochs), for as many epochs, with the same
  optimiser, schedule and augmentation as the PGD model. ``--models mnist_lagrangian`` retrains
  it alone (the other assets are left untouched).

Weights are written as float16 arrays in compressed ``.npz`` files (a few hundred kB each).
Everything is seeded and the number of CPU threads is fixed, so a rerun with the same arguments
on the same machine and torch version reproduces the same weights. The script finishes with a
report measured on the held-out images with the *stored* (float16-rounded) weights: clean
accuracy, PGD-ℓ∞ robust accuracy at ε = 0.1 and 0.2, and the median minimal ℓ2 norm found by
Foolbox's DDN (100 steps) on the first 200 held-out images (skipped if Foolbox is missing).

Committed assets (defaults: seed 0, 1 thread, torch 2.13 CPU; ~6 min of CPU time)::

    model                clean   PGD 0.1   PGD 0.2   DDN-100 median l2
    mnist_regular        0.987   0.655     0.047     1.42
    mnist_adversarial    0.985   0.946     0.885     2.13
    mnist_lagrangian     0.988   0.932     0.559     2.04

(PGD-ℓ∞: 20 steps of size 2.5·ε/20 from a random start. The adversarial model was trained with
ε = 0.25, 5 PGD steps, 4 epochs after the 10 regular ones; the Lagrangian model with the
attack's defaults (N = 5, α = 0.1, λ = 2, σ² = 0.01, c = 0.1, κ = 1), 4 epochs from the stored
regular weights: ``--models mnist_lagrangian``, 278 s of CPU on 1 thread (18 min of wall time
on the shared, loaded 2-core machine), 564 KiB of weights.)
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.lagrangian import LagrangianParams
from ..zoo.data import (
    HELDOUT_FILENAME,
    HELDOUT_START,
    HELDOUT_STOP,
    read_idx_images,
    read_idx_labels,
)
from ..zoo.models import MODEL_NAMES, SmallCNN, state_dict_to_arrays, weights_filename
from .arguments import (
    BenchParser,
    integer_option,
    output_argument,
    path_option,
    real_option,
    seed_option,
)

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of both training runs."""

    seed: int = 0
    batch_size: int = 64
    regular_epochs: int = 10
    regular_lr: float = 1e-3
    adv_epochs: int = 4
    adv_lr: float = 1e-3
    adv_eps: float = 0.25
    adv_eps_ramp_epochs: int = 2
    adv_steps: int = 5
    shift: int = 2
    lag_epochs: int = 4
    lag_init_lr: float = 0.1
    lag_multiplier: float = 2.0


def load_split(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Read the MNIST test set and split it.

    Returns:
        ``(x_train, y_train, heldout_images, heldout_labels)``: the training images 0–8999 as a
        float tensor ``(9000, 1, 28, 28)`` in [0, 1] with int64 labels, and the held-out images
        9000–9999 as ``uint8`` arrays ``(1000, 28, 28)`` and ``(1000,)``.
    """
    images = read_idx_images(data_dir / IMAGES_FILE)
    labels = read_idx_labels(data_dir / LABELS_FILE)
    if images.shape != (HELDOUT_STOP, 28, 28) or labels.shape != (HELDOUT_STOP,):
        raise ValueError(f"unexpected MNIST test set shapes {images.shape}, {labels.shape}")
    x_train = torch.from_numpy(images[:HELDOUT_START].astype(np.float32) / 255.0).unsqueeze(1)
    y_train = torch.from_numpy(labels[:HELDOUT_START].astype(np.int64))
    return x_train, y_train, images[HELDOUT_START:].copy(), labels[HELDOUT_START:].copy()


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an independent random offset in ``[-shift, shift]`` pixels."""
    if shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    off = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    rows = off[:, 0, None] + torch.arange(h)
    cols = off[:, 1, None] + torch.arange(w)
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    generator: torch.Generator,
    step_size: float | None = None,
) -> torch.Tensor:
    """Untargeted PGD-ℓ∞ with a uniform random start (cross-entropy loss, inputs in [0, 1])."""
    alpha = 2.5 * eps / steps if step_size is None else step_size
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    config: TrainConfig,
    generator: torch.Generator,
    perturb: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
    name: str = "",
) -> None:
    """Train ``model`` with Adam and a per-step cosine learning-rate schedule.

    ``perturb(model, x, y, epoch)``, if given, replaces each (augmented) batch by the returned
    one before the update; it is called with the model in eval mode.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / total))
    )
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        running_loss, correct = 0.0, 0
        for i in range(steps_per_epoch):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            xb = random_shift(x[idx], config.shift, generator)
            yb = y[idx]
            if perturb is not None:
                model.eval()
                xb = perturb(model, xb, yb, epoch)
            model.train()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        print(
            f"[{name}] epoch {epoch + 1}/{epochs}: loss {running_loss / n:.4f}, "
            f"train acc {correct / n:.4f} ({time.perf_counter() - start:.1f}s)",
            flush=True,
        )
    model.eval()


def batched(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 500,
) -> torch.Tensor:
    """Apply ``fn(x_batch, y_batch)`` over batches and concatenate the results."""
    return torch.cat(
        [fn(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    with torch.no_grad():
        pred = batched(lambda xb, _: model(xb).argmax(1), x, y)
    return float((pred == y).float().mean())


def pgd_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int
) -> float:
    """Robust accuracy under PGD-ℓ∞ (``steps`` steps, step size 2.5·ε/steps, random start)."""
    generator = torch.Generator().manual_seed(seed)
    x_adv = batched(lambda xb, yb: pgd_linf(model, xb, yb, eps, steps, generator), x, y)
    return accuracy(model, x_adv, y)


def ddn_median_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> float:
    """Median minimal ℓ2 norm found by Foolbox's DDN (``inf`` for failures, 0 if misclassified)."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)  # else CUDA when present
    attack = fb.attacks.DDNAttack(steps=steps)
    _, clipped, success = attack(fmodel, x, y, epsilons=None)
    norms = (clipped - x).flatten(1).norm(dim=1)
    norms[~success] = math.inf
    with torch.no_grad():
        norms[model(x).argmax(1) != y] = 0.0
    return float(norms.median())


def save_weights(model: nn.Module, path: Path) -> None:
    """Write ``model``'s state dict as float16 arrays to a compressed ``.npz``."""
    arrays: dict[str, Any] = state_dict_to_arrays(model)
    np.savez_compressed(path, **arrays)


def load_weights(path: Path) -> SmallCNN:
    """Read weights written by :func:`save_weights` into a float32 SmallCNN in eval mode."""
    with np.load(path, allow_pickle=False) as arrays:
        state = {k: torch.from_numpy(arrays[k].astype(np.float32)) for k in arrays.files}
    model = SmallCNN()
    model.load_state_dict(state)
    return model.eval()


def report(out: Path, x: torch.Tensor, y: torch.Tensor, seed: int, pgd_steps: int) -> None:
    """Print the held-out evaluation of the stored models."""
    try:
        import foolbox  # noqa: F401

        has_foolbox = True
    except ImportError:
        has_foolbox = False
    print("\nHeld-out MNIST test images 9000-9999 (stored float16 weights):")
    header = f"{'model':<20}{'clean':>8}{'PGD 0.1':>10}{'PGD 0.2':>10}{'DDN-100 med l2':>16}"
    print(header)
    for name in MODEL_NAMES:
        model = load_weights(out / weights_filename(name))
        for p in model.parameters():
            p.requires_grad_(False)
        start = time.perf_counter()
        clean = accuracy(model, x, y)
        pgd = [pgd_accuracy(model, x, y, eps, pgd_steps, seed) for eps in (0.1, 0.2)]
        ddn = ddn_median_l2(model, x[:200], y[:200]) if has_foolbox else math.nan
        print(
            f"{name:<20}{clean:>8.4f}{pgd[0]:>10.4f}{pgd[1]:>10.4f}{ddn:>16.3f}"
            f"   ({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    print(f"(PGD-linf: {pgd_steps} steps, step 2.5*eps/steps, random start; DDN on 200 images)")
    if not has_foolbox:
        print("foolbox is not installed: DDN column skipped")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = BenchParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=path_option("data-dir"),
                        default=Path("../shared/data/mnist"))  # fmt: skip
    parser.add_argument("--out", type=path_option("out"), default=Path("alma_plugin/zoo/assets"))
    parser.add_argument("--threads", type=integer_option("threads", 1), default=1,
                        help="torch.set_num_threads (results depend on it)")  # fmt: skip
    parser.add_argument("--seed", type=seed_option(), default=TrainConfig.seed)
    # Epochs and steps >= 1: 0 (or less) saved untrained weights, or failed in the Lagrangian
    # training after the other two; a negative eps trained on flipped PGD perturbations.
    for name in ("regular-epochs", "adv-epochs", "adv-steps", "lag-epochs"):
        default = getattr(TrainConfig, name.replace("-", "_"))
        parser.add_argument(f"--{name}", type=integer_option(name, 1), default=default)
    parser.add_argument("--adv-eps", type=real_option("adv-eps", 0.0), default=TrainConfig.adv_eps)
    parser.add_argument("--lag-init-lr", type=real_option("lag-init-lr"),
                        default=TrainConfig.lag_init_lr)  # fmt: skip
    parser.add_argument("--lag-multiplier", type=real_option("lag-multiplier"),
                        default=TrainConfig.lag_multiplier)  # fmt: skip
    parser.add_argument(
        "--models",
        nargs="+",
        choices=("all", "mnist_lagrangian"),
        default=["all"],
        help="all: the three models (and the held-out asset); mnist_lagrangian: only it",
    )
    parser.add_argument("--progress", action="store_true", help="progress bars (tqdm)")
    parser.add_argument("--eval-pgd-steps", type=integer_option("eval-pgd-steps", 1), default=20)
    parser.add_argument(
        "--report-only", action="store_true", help="skip training; evaluate the stored weights"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="skip the held-out evaluation after training"
    )
    args = parser.parse_args(argv)
    if args.report_only and args.no_report:
        parser.error("--report-only and --no-report are mutually exclusive")
    try:  # checked now, not when the Lagrangian training starts after the other two
        LagrangianParams(init_lr=args.lag_init_lr, multiplier=args.lag_multiplier)
    except ValueError as error:
        parser.error(f"arguments --lag-init-lr/--lag-multiplier: {error}")
    if not args.report_only:
        output_argument(parser, "--out", args.out)

    config = TrainConfig(
        seed=args.seed,
        regular_epochs=args.regular_epochs,
        adv_epochs=args.adv_epochs,
        adv_eps=args.adv_eps,
        adv_steps=args.adv_steps,
        lag_epochs=args.lag_epochs,
        lag_init_lr=args.lag_init_lr,
        lag_multiplier=args.lag_multiplier,
    )
    only_lagrangian = args.models == ["mnist_lagrangian"]
    regular = args.out / weights_filename("mnist_regular")
    if only_lagrangian and not args.report_only and not regular.is_file():  # its warm start
        parser.error(f"--models mnist_lagrangian warm-starts from the regular model's weights, "
                     f"{regular}: not found (train them first with --models all, or point "
                     "--out at a folder that holds them)")  # fmt: skip
    missing = [name for name in (IMAGES_FILE, LABELS_FILE) if not (args.data_dir / name).is_file()]
    if missing:  # was FileNotFoundError from inside the reader
        parser.error(f"argument --data-dir: expected the MNIST test set files {IMAGES_FILE} and "
                     f"{LABELS_FILE} in {str(args.data_dir)!r}, missing {missing}")  # fmt: skip
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, held_images, held_labels = load_split(args.data_dir)
    x_held = torch.from_numpy(held_images.astype(np.float32) / 255.0).unsqueeze(1)
    y_held = torch.from_numpy(held_labels.astype(np.int64))

    from .train_lagrangian import train_lagrangian

    if only_lagrangian and not args.report_only:
        t0 = time.perf_counter()
        model = train_lagrangian(args.out, x_train, y_train, config, args.progress)
        save_weights(model, args.out / weights_filename("mnist_lagrangian"))
        print(f"lagrangian: held-out acc {accuracy(model, x_held, y_held):.4f}", flush=True)
        print(f"training time: lagrangian {time.perf_counter() - t0:.0f}s")
    elif not args.report_only:
        args.out.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=held_images, labels=held_labels)
        (args.out / HELDOUT_FILENAME).write_bytes(buffer.getvalue())

        t0 = time.perf_counter()
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model = SmallCNN()
        train(
            model,
            x_train,
            y_train,
            config.regular_epochs,
            config.regular_lr,
            config,
            generator,
            name="regular",
        )
        save_weights(model, args.out / weights_filename("mnist_regular"))
        print(f"regular: held-out acc {accuracy(model, x_held, y_held):.4f}", flush=True)
        t1 = time.perf_counter()

        def perturb(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int) -> torch.Tensor:
            ramp = min(1.0, (epoch + 1) / max(1, config.adv_eps_ramp_epochs))
            eps = config.adv_eps * ramp
            return pgd_linf(m, xb, yb, eps, config.adv_steps, generator)

        train(
            model,
            x_train,
            y_train,
            config.adv_epochs,
            config.adv_lr,
            config,
            generator,
            perturb=perturb,
            name="adversarial",
        )
        save_weights(model, args.out / weights_filename("mnist_adversarial"))
        print(f"adversarial: held-out acc {accuracy(model, x_held, y_held):.4f}", flush=True)
        t2 = time.perf_counter()
        model = train_lagrangian(args.out, x_train, y_train, config, args.progress)
        save_weights(model, args.out / weights_filename("mnist_lagrangian"))
        print(f"lagrangian: held-out acc {accuracy(model, x_held, y_held):.4f}", flush=True)
        t3 = time.perf_counter()
        print(
            f"training time: regular {t1 - t0:.0f}s, adversarial {t2 - t1:.0f}s, "
            f"lagrangian {t3 - t2:.0f}s"
        )

    if not args.no_report:
        t4 = time.perf_counter()
        report(args.out, x_held, y_held, config.seed + 1, args.eval_pgd_steps)
        print(f"evaluation time: {time.perf_counter() - t4:.0f}s")
    for path in sorted(args.out.glob("*.npz")):
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
