"""Adversarial training with a pluggable attack: the outer loop of Azizmalayeri & Rohban (2021),
min_θ Σᵢ ℓ(f_θ(xᵢ + δᵢ), yᵢ), with δ from :class:`alma_plugin.torchattacks.Lagrangian` or any
torchattacks attack (PGD gives Madry et al.'s adversarial training).

Example:
    >>> import torch
    >>> from alma_plugin.torchattacks import Lagrangian
    >>> from alma_plugin.training import adversarial_training
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> data = [(torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))) for _ in range(2)]
    >>> logs = adversarial_training(model, data, attack=Lagrangian(model), epochs=2,
    ...                             warmup_epochs=1, progress=False, log=None)
    >>> [entry.adversarial for entry in logs]
    [False, True]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .core.validation import check_positive_int

__all__ = ["EpochLog", "adversarial_training"]

#: attack(images, labels) -> perturbed images, e.g. a torchattacks ``Attack`` built on the model.
AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpochLog:
    """What one epoch of :func:`adversarial_training` measured, on its training batches.

    epoch: 1-based index.  adversarial: False for a warm-up (clean) epoch.
    loss: mean cross-entropy of the update batches (perturbed ones after the warm-up).
    clean_accuracy: accuracy of the model (eval mode) on the clean batches, before each update.
    mean_norm: mean ‖δ‖₂ of the training perturbations (NaN in warm-up epochs), in the units of
        the loader's images.
    fooled: fraction of training perturbations that fool the model (eval mode): perturbed input
        misclassified although the clean one is classified correctly, over the clean-correct
        samples (NaN in warm-up epochs).
    seconds: wall time of the epoch.
    """

    epoch: int
    adversarial: bool
    loss: float
    clean_accuracy: float
    mean_norm: float
    fooled: float
    seconds: float

    def __str__(self) -> str:
        kind = "adversarial" if self.adversarial else "warm-up"
        text = (
            f"epoch {self.epoch} ({kind}): loss {self.loss:.4f}, clean acc "
            f"{self.clean_accuracy:.4f}"
        )
        if self.adversarial:
            text += f", mean ||delta||_2 {self.mean_norm:.3f}, fooled {self.fooled:.3f}"
        return text + f" ({self.seconds:.1f}s)"


class _Totals:
    def __init__(self) -> None:
        self.samples = self.correct = self.clean_correct = self.fooled = 0
        self.loss = self.norms = 0.0


def _progress(batches: Iterable[Any], enabled: bool, description: str) -> Iterable[Any]:
    if not enabled:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar, the epoch log still prints
        return batches
    total = len(batches) if isinstance(batches, Sized) else None
    return tqdm(batches, total=total, desc=description, leave=False)


def adversarial_training(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    attack: AttackFn | None,
    epochs: int,
    warmup_epochs: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    lr: float = 1e-3,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[EpochLog]:
    """Train ``model`` on ``loader`` for ``epochs`` epochs: the first ``warmup_epochs`` on clean
    data (the paper's warm-up, §4.1), the others on ``attack(x, y)``.

    Args:
        model: the classifier (logits (N, K)); trained in place and left in eval mode.
        loader: an iterable of (images, labels) batches, iterated once per epoch (a
            ``torch.utils.data.DataLoader`` or any re-iterable; ``len()`` feeds the progress
            bar). Batches are moved to the model's device.
        attack: ``attack(images, labels) -> perturbed`` called with the model in eval mode,
            e.g. ``alma_plugin.torchattacks.Lagrangian(model)`` or ``torchattacks.PGD(model,
            eps=0.3)`` (any torchattacks ``Attack`` built on the same model); None trains on
            clean data only.
        epochs: total number of epochs, warm-up included.
        warmup_epochs: leading epochs on clean data.
        optimizer: the optimizer of ``model``'s parameters; None: Adam with learning rate ``lr``
            and a cosine decay to 0 over all the steps (then ``scheduler`` must be None).
        scheduler: a learning-rate scheduler stepped after every batch (None: none, or the
            cosine decay when ``optimizer`` is None).
        lr: the learning rate of the default optimizer.
        progress: show a tqdm progress bar per epoch (if tqdm is installed).
        log: called with one line per epoch (:class:`EpochLog` as text); None: silent.

    Returns:
        One :class:`EpochLog` per epoch: loss, clean accuracy, mean ‖δ‖₂ and the fraction of
        training perturbations that fool the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = check_positive_int("epochs", epochs)
    warmup_epochs = check_positive_int("warmup_epochs", warmup_epochs, minimum=0)
    if warmup_epochs > epochs:
        raise ValueError(f"warmup_epochs must be <= epochs ({epochs}), got {warmup_epochs}")
    if attack is not None and not callable(attack):
        raise TypeError(f"attack must be callable or None, got {type(attack).__name__}")
    if optimizer is None:
        if scheduler is not None:
            raise ValueError("scheduler is only used with an optimizer of your own")
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * len(loader) if isinstance(loader, Sized) else None
        if steps:
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
            )
    device = next(model.parameters()).device
    logs = []
    for epoch in range(epochs):
        adversarial = attack is not None and epoch >= warmup_epochs
        start = time.perf_counter()
        totals = _Totals()
        description = f"epoch {epoch + 1}/{epochs}" + ("" if adversarial else " (warm-up)")
        for images, labels in _progress(loader, progress, description):
            x, y = images.to(device), labels.to(device)
            model.eval()
            inputs = x
            if adversarial:
                assert attack is not None
                inputs = attack(x, y).detach()
            with torch.no_grad():  # one eval forward judges the clean and perturbed batches
                judged = model(torch.cat([x, inputs]) if adversarial else x).argmax(1)
            correct = judged[: len(x)] == y
            totals.samples += len(x)
            totals.correct += int(correct.sum())
            if adversarial:
                totals.fooled += int((correct & (judged[len(x) :] != y)).sum())
                totals.clean_correct += int(correct.sum())
                totals.norms += float((inputs - x).flatten(1).norm(dim=1).sum())
            model.train()
            loss = F.cross_entropy(model(inputs), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            totals.loss += float(loss.detach()) * len(x)
        model.eval()
        n = max(totals.samples, 1)
        entry = EpochLog(
            epoch=epoch + 1,
            adversarial=adversarial,
            loss=totals.loss / n,
            clean_accuracy=totals.correct / n,
            mean_norm=totals.norms / n if adversarial else math.nan,
            fooled=totals.fooled / max(totals.clean_correct, 1) if adversarial else math.nan,
            seconds=time.perf_counter() - start,
        )
        logs.append(entry)
        if log is not None:
            log(str(entry))
    return logs
