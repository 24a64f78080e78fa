"""Adversarial training with a pluggable attack: the outer loop of Azizmalayeri & Rohban (2021),
min_θ Σᵢ ℓ(f_θ(xᵢ + δᵢ), yᵢ), with δ from :class:`alma_plugin.torchattacks.Lagrangian` or any
torchattacks attack (PGD gives Madry et al.'s adversarial training).

Where it differs from the authors' public CIFAR-10 and ImageNet-100 training scripts: the
attack is called with the model in eval mode (theirs keep ``model.train()`` throughout, so the
attack's N forwards use batch-norm batch statistics, update the running statistics and apply
dropout). A torchattacks attack's ``set_model_training_mode(model_training=True,
batchnorm_training=True, dropout_training=True)`` gives its forwards batch statistics and
dropout (torchattacks' defaults keep both in eval mode); torchattacks' own attacks (PGD)
then update the running statistics as the authors' do, but this package's ``Lagrangian`` and
``ALMA`` restore every buffer after each call (an attack never changes the model), so with
them that update cannot be reproduced. ℓ of the outer loss is the cross-entropy, as in their
code (the paper's text reuses the symbol of the C&W margin loss); the default optimizer is Adam
with a cosine decay, theirs SGD (lr 0.1, momentum 0.9, decay ×0.1 at fixed epochs: pass
``optimizer`` and ``scheduler``, whose milestones count batches, since the scheduler is stepped
after every batch: epoch e is batch e·len(loader)); and one extra no-grad eval forward per batch
(clean and perturbed images, the model put back in eval mode whatever the attack left) feeds
the epoch log.

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

import inspect
import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .core.autodiff import autograd_allowed
from .core.validation import check_flag, check_in_range, check_positive_int

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


@autograd_allowed  # called under torch.inference_mode(): as under torch.no_grad()
def adversarial_training(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    attack: AttackFn | None,
    epochs: int,
    warmup_epochs: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    lr: float | None = None,
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
            eps=0.3)`` (any torchattacks ``Attack`` built on the same model, or on a module
            holding it; an attack whose ``model`` is another module, e.g. a copy, is a
            ``ValueError``); None trains on clean data only.
        epochs: total number of epochs, warm-up included.
        warmup_epochs: leading epochs on clean data.
        optimizer: the optimizer of ``model``'s parameters; None: Adam with learning rate ``lr``
            and a cosine decay to 0 over all the steps (then ``scheduler`` must be None and
            ``loader`` must have a ``len()``).
        scheduler: a learning-rate scheduler stepped after every batch (None: none, or the
            cosine decay when ``optimizer`` is None): milestones count batches.
        lr: the learning rate of the default optimizer (finite, > 0; None: 10⁻³). With an
            optimizer of your own, set it there (``lr`` is then a ``ValueError``).
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
    attacked = getattr(attack, "model", model)  # a torchattacks Attack names its model
    if isinstance(attacked, nn.Module) and not _contains(attacked, model):
        raise ValueError(
            f"attack must be built on the model being trained (or on a module holding it, "
            f"e.g. a normalising wrapper): {type(attack).__name__}.model is another module "
            f"({type(attacked).__name__}), e.g. a copy, whose perturbations do not follow "
            "the training"
        )
    if log is not None and not callable(log):  # checked now, not after an epoch of training
        raise TypeError(f"log must be callable or None, got {log!r}")
    progress = check_flag("progress", progress)
    parameters = list(model.parameters())
    if not parameters:
        raise ValueError("model has no parameters to train")
    if optimizer is None:
        if scheduler is not None:
            raise ValueError("scheduler is only used with an optimizer of your own")
        lr = check_in_range("lr", 1e-3 if lr is None else lr, 0.0, math.inf, open_low=True,
                            open_high=True)  # fmt: skip
        if not isinstance(loader, Sized):
            raise TypeError(
                "loader must have a len() (a DataLoader or a list of batches) for the default "
                f"optimizer's cosine decay over all the steps, got {type(loader).__name__}; "
                "pass an optimizer of your own to train on an iterable without one"
            )
        optimizer = torch.optim.Adam(parameters, lr=lr)
        steps = max(epochs * len(loader), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
        )
    else:
        if lr is not None:
            raise ValueError(f"lr is the default optimizer's learning rate, got lr={lr!r} "
                             "with an optimizer of your own: set it on that optimizer")  # fmt: skip
        _check_optimizer(optimizer, parameters)
    if scheduler is not None:
        _check_scheduler(scheduler)
    device = parameters[0].device
    logs = []
    try:
        for epoch in range(epochs):
            logs.append(_epoch(model, loader, attack, epoch, epochs, warmup_epochs, optimizer,
                               scheduler, device, progress))  # fmt: skip
            if log is not None:
                log(str(logs[-1]))
    finally:
        model.eval()  # as documented, also after an error
    return logs


def _check_optimizer(optimizer: Any, parameters: list[nn.Parameter]) -> None:
    """An optimizer of ``model``'s parameters (one over another model's would leave it
    untrained without a word)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {optimizer!r}")
    mine = {id(p) for p in parameters}
    if not any(id(p) in mine for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("optimizer must hold parameters of model, got one that holds none")


def _batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One (images, labels) batch on ``device``, labels as int64 (cross-entropy's index
    dtype; the attacks take any integer dtype), copied where they are inference tensors."""
    if not (isinstance(batch, tuple | list) and len(batch) == 2
            and all(isinstance(t, torch.Tensor) for t in batch)):  # fmt: skip
        raise TypeError(f"loader must yield (images, labels) pairs of torch tensors, got "
                        f"{type(batch).__name__}{_shapes(batch)}")  # fmt: skip
    images, labels = batch
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"loader's labels must be an integer tensor, got dtype {labels.dtype}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"loader's images must be a floating-point tensor, got dtype "
                        f"{images.dtype} (uint8 images: convert them, e.g. to [0, 1])")  # fmt: skip
    if images.ndim == 0 or tuple(labels.shape) != (len(images),):
        raise ValueError(f"loader must yield labels of shape (N,), one class per image, got "
                         f"images of shape {tuple(images.shape)} and labels of shape "
                         f"{tuple(labels.shape)}")  # fmt: skip
    if not bool(torch.isfinite(images).all()):  # one NaN pixel would make every weight NaN
        raise ValueError("loader's images contain NaN or Inf values: training on them would "
                         "make the weights NaN")  # fmt: skip
    # inference tensors (a loader run under torch.inference_mode()) cannot enter autograd:
    # the step trains on copies, as the attacks attack copies
    images, labels = (t.clone() if t.is_inference() else t for t in (images, labels))
    return images.to(device), labels.to(device, torch.int64)


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    """Whether ``inner`` is ``outer`` or one of its submodules, or the other way round."""
    return any(m is inner for m in outer.modules()) or any(m is outer for m in inner.modules())


def _perturbed(output: Any, images: torch.Tensor) -> torch.Tensor:
    """The attack's output, detached, or an error naming ``attack`` and what it returned: a
    tensor of the images' shape, dtype and device, finite (one NaN would make every weight NaN
    at the next step, and the training would go on)."""
    if not isinstance(output, torch.Tensor) or output.shape != images.shape:
        got = type(output).__name__ + (f" of shape {tuple(output.shape)}"
                                       if isinstance(output, torch.Tensor) else "")  # fmt: skip
        raise TypeError(f"attack(images, labels) must return a tensor of the images' shape "
                        f"{tuple(images.shape)}, got {got}")  # fmt: skip
    if output.dtype != images.dtype or output.device != images.device:
        raise TypeError(f"attack(images, labels) must return a tensor of the images' dtype "
                        f"and device ({images.dtype}, {images.device}), got {output.dtype} on "
                        f"{output.device}")  # fmt: skip
    if not bool(torch.isfinite(output).all()):
        raise ValueError("attack(images, labels) returned NaN or Inf values: training on them "
                         "would make the weights NaN")  # fmt: skip
    return output.detach()


def _check_labels(labels: torch.Tensor, logits: torch.Tensor) -> None:
    """Logits (N, K) and labels in [0, K), K the model's class count (cross-entropy's own
    IndexError names neither the loader nor the value's meaning)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = (f"a tensor of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
               else type(logits).__name__)  # fmt: skip
        raise TypeError(
            f"model must return a tensor of logits of shape (N, K), got {got} (a model "
            "returning a tuple or an object with .logits: wrap it)"
        )
    classes = logits.shape[-1]
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"loader's labels must lie in [0, {classes}) for a model with "
                         f"{classes} outputs, got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]")  # fmt: skip


def _shapes(batch: Any) -> str:
    if isinstance(batch, tuple | list):
        return " of " + str([tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
                             for t in batch])  # fmt: skip
    return ""


def _check_scheduler(scheduler: Any) -> None:
    """The loop calls ``scheduler.step()`` with no argument after every batch: refuse, before
    any training, a scheduler that cannot take that call (``ReduceLROnPlateau`` needs a metric
    and would fail after the first optimizer step had changed the weights)."""
    step = getattr(scheduler, "step", None)
    if not callable(step):
        raise TypeError(f"scheduler must have a step() method or be None, got {scheduler!r}")
    try:
        inspect.signature(step).bind()
    except TypeError:
        raise TypeError(
            f"scheduler.step() is called with no argument after every batch, but "
            f"{type(scheduler).__name__}.step needs one (ReduceLROnPlateau needs a metric): pass "
            f"scheduler=None and step it yourself, or use a scheduler stepped without arguments"
        ) from None
    except ValueError:  # no signature (a builtin): leave the call to tell
        pass


def _epoch(
    model: nn.Module,
    loader: Iterable[Any],
    attack: AttackFn | None,
    epoch: int,
    epochs: int,
    warmup_epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    progress: bool,
) -> EpochLog:
    """One epoch of :func:`adversarial_training`."""
    adversarial = attack is not None and epoch >= warmup_epochs
    start = time.perf_counter()
    totals = _Totals()
    description = f"epoch {epoch + 1}/{epochs}" + ("" if adversarial else " (warm-up)")
    for batch in _progress(loader, progress, description):
        x, y = _batch(batch, device)
        if len(x) == 0:  # an empty batch: nothing to learn from, no optimizer step
            continue
        model.eval()
        inputs = x
        if adversarial:
            assert attack is not None
            inputs = _perturbed(attack(x, y), x)
            model.eval()  # a torchattacks attack in training mode leaves model.train() behind
        with torch.no_grad():  # one eval forward judges the clean and perturbed batches
            logits = model(torch.cat([x, inputs]) if adversarial else x)
        _check_labels(y, logits)
        judged = logits.argmax(1)
        correct = judged[: len(x)] == y
        totals.samples += len(x)
        totals.correct += int(correct.sum())
        if adversarial:
            totals.fooled += int((correct & (judged[len(x) :] != y)).sum())
            totals.clean_correct += int(correct.sum())
            totals.norms += float((inputs - x).flatten(1).norm(dim=1).sum())
        model.train()
        with torch.enable_grad():  # also under a caller's no_grad()
            loss = F.cross_entropy(model(inputs), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        totals.loss += float(loss.detach()) * len(x)
    model.eval()
    if totals.samples == 0:  # an empty loader, or an iterator spent by an earlier epoch
        raise ValueError(f"loader yielded no batch in epoch {epoch + 1}: it must be "
                         "non-empty and re-iterable (a DataLoader or a list)")  # fmt: skip
    n = totals.samples
    return EpochLog(
        epoch=epoch + 1,
        adversarial=adversarial,
        loss=totals.loss / n,
        clean_accuracy=totals.correct / n,
        mean_norm=totals.norms / n if adversarial else math.nan,
        fooled=totals.fooled / totals.clean_correct
        if adversarial and totals.clean_correct
        else math.nan,
        seconds=time.perf_counter() - start,
    )
