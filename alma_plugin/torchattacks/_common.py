"""Translation helpers shared by the torchattacks adapters: distance names, input checks,
target labels, the autograd mode of a call and the restoration of the model's state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import eagerpy as ep
import torch
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle
from torchattacks.attack import Attack

from .._entry import check_distance_inputs
from ..core.validation import as_labels, as_tensor, check_inputs
from ..distances import DistanceSpec, get_distance, linf
from ..functional import check_attack_distance

BOUNDS = (0.0, 1.0)


#: ℓ∞ for comparing outputs (MinimalEnsemble; NaN for a sample holding NaN, never a small
#: distance); ALMA routes it to ALMA prox, which has no ε.
LINF = DistanceSpec("linf", linf, float("nan"))


def resolve_distance(distance: Any) -> DistanceSpec:
    """The registry entry for ``distance``, or :data:`LINF` for the ℓ∞ names (those of
    ``alma()``; an unknown name gets ``alma()``'s error, which lists "linf" too)."""
    name = check_attack_distance(distance)
    return LINF if name == "linf" else get_distance(name)


def check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def prepare(
    attack: Attack, inputs: Any, labels: Any, spec: DistanceSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated copies of ``inputs`` (in [0, 1]) and ``labels`` on the attack's device,
    following torchattacks (``images.clone().detach().to(self.device)``): detached from the
    caller's graph (inputs with ``requires_grad`` or made under ``torch.inference_mode()``
    are fine), labels of any integer dtype (uint8, int16, ...) or container as int64."""
    check_tensor("inputs", inputs)
    if labels is None:
        raise ValueError(
            f"{attack.attack} needs labels: the true classes of shape (N,), or the target "
            "classes in targeted(label) mode; got labels=None"
        )
    device = attack.device if attack.device is not None else inputs.device
    images = as_tensor("inputs", inputs).raw.to(device)
    if attack.normalization_used is not None and images.numel():
        images = _clamp_normalisation_rounding(images)
    try:
        check_inputs(ep.astensor(images), BOUNDS)
    except ValueError as error:
        hint = ""
        if "within bounds" in str(error):  # not for NaN, shapes or dtypes
            hint = (
                ". torchattacks attacks take images in [0, 1]; if the model expects normalised "
                "inputs, pass normalised images after set_normalization_used(mean, std)"
            )
        raise ValueError(f"{error}{hint}") from None
    checked = as_labels("labels", labels, ep.astensor(images), (len(images),)).raw
    if spec is not LINF:  # colour and size, before any model call (MinimalEnsemble's members)
        check_distance_inputs(spec.name, ep.astensor(images))
    # Inverse normalisation may leave values a rounding error outside [0, 1].
    return images.clamp(0.0, 1.0), checked


#: How far torchattacks' round trip through the normalisation, (x − mean) / std by the user and
#: x_n·std + mean by :meth:`StateRestoringAttack.inverse_normalize`, both in the images' dtype
#: (mean and std rounded to it too), can leave an image in [0, 1] outside it: about 5 rounding
#: units of the dtype (|x − mean| ≤ 1), so 3 machine epsilons. bfloat16 with ImageNet's mean and
#: std brings a black pixel back as −0.00195.
NORMALISATION_ROUNDING_EPS = 3


def _clamp_normalisation_rounding(images: torch.Tensor) -> torch.Tensor:
    """``images`` (de-normalised by torchattacks) clamped onto [0, 1] when they leave it by no
    more than the normalisation's rounding in their dtype; left as they are otherwise, for
    :func:`check_inputs` to refuse."""
    if not images.is_floating_point():
        return images
    tolerance = NORMALISATION_ROUNDING_EPS * torch.finfo(images.dtype).eps
    low, high = torch.aminmax(images.detach())
    if float(low) >= -tolerance and float(high) <= 1 + tolerance:
        return images.clamp(0.0, 1.0)
    return images


def target_labels(attack: Attack, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The targets of torchattacks' targeted mode, with the model left in the modes of the call.

    torchattacks draws random and least-likely targets through ``get_output_with_eval_nograd``
    (which :class:`StateRestoringAttack` makes restore every module's flag); a user's target
    function (``set_mode_targeted_by_function``) may call ``model.train()`` or ``eval()`` too:
    every module, batch norm and dropout included, would then train for the rest of the call,
    against ``set_model_training_mode(model_training=True, batchnorm_training=False, ...)``.
    Each module's flag is put back as it was before the draw."""
    with modes_kept(attack.model):
        targets = attack.get_target_label(images, labels)
    return as_labels("target labels", targets, ep.astensor(images), (len(images),)).raw


@contextmanager
def modes_kept(model: Any) -> Iterator[None]:
    """Put every module's train/eval flag back as it was on entry: torchattacks' helpers and
    attacks end with ``model.train()`` on a model that was training, which would switch batch
    norm and dropout to training mode against ``set_model_training_mode``."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    modes = [module.training for module in modules]
    try:
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.training = mode


def _snapshot_on_materialisation(
    modules: list[torch.nn.Module], buffers: list[torch.Tensor], values: list[torch.Tensor | None]
) -> list[RemovableHandle]:
    """Forward pre-hooks that fill ``values`` for the lazy buffers of ``buffers`` (None there)
    once a lazy module materialises them on its first forward. The module's own pre-hook,
    registered at its construction, runs first and gives them their initial values; saving
    them before the forward lets the restore undo what the call does to them afterwards
    (running statistics updated with ``batchnorm_training=True``), as for other buffers."""
    lazy = [i for i, value in enumerate(values) if value is None]

    def snapshot(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        with torch.no_grad():
            for i in lazy:
                if values[i] is None and not is_lazy(buffers[i]):
                    values[i] = buffers[i].clone()

    owners = [m for m in modules if any(is_lazy(b) for b in m.buffers(recurse=False))]
    return [module.register_forward_pre_hook(snapshot) for module in owners]


def _put_back_grad(
    parameter: torch.Tensor, grad: torch.Tensor | None, value: torch.Tensor | None
) -> None:
    """Make ``grad`` the ``.grad`` of ``parameter`` again, holding ``value``: the same tensor
    object, written into only where the call changed it."""
    if grad is not None and value is not None and not torch.equal(grad, value):
        grad.copy_(value)
    if parameter.grad is not grad:
        parameter.grad = grad


@contextmanager
def restored_state(attack: Attack) -> Iterator[None]:
    """Run a call with autograd available and leave the model as it was.

    The attack needs input gradients even when the caller is under ``torch.no_grad()`` or
    ``torch.inference_mode()`` (as in evaluation loops): both are lifted for the call.
    Afterwards, even after an error, each module's ``training`` flag is restored exactly
    (torchattacks only calls ``train()`` again on a model that was training), and so are the
    parameters' ``requires_grad`` and ``.grad`` (the same tensor, with its values), the buffers
    (batch norm running statistics, which ``set_model_training_mode(batchnorm_training=True)``
    would otherwise update at every step) and the normalisation flag.

    Lazy modules (``nn.LazyLinear``, ...) that have not run yet hold uninitialised tensors,
    which cannot be copied: a module the call materialises stays materialised, as after
    torchattacks' PGD, and its buffers are restored to their values right after
    materialisation (its initial running statistics); its flags and ``requires_grad`` are
    restored as for any module, and its parameters, which had no ``.grad``, get none."""
    model = attack.model
    is_module = isinstance(model, torch.nn.Module)
    modules = list(model.modules()) if is_module else []
    flags = [m.training for m in modules]
    parameters = list(model.parameters()) if is_module else []
    requires_grad = [p.requires_grad for p in parameters]
    # Members of an ensemble may backpropagate into the parameters (torchattacks' DeepFool).
    # The .grad tensors themselves are put back, not copies: code may hold them (DDP's
    # gradient_as_bucket_view, hooks); the copies only restore their values.
    grads = [p.grad for p in parameters]
    buffers = list(model.buffers()) if is_module else []
    with torch.no_grad():
        grad_values = [None if g is None else g.clone() for g in grads]
        values = [None if is_lazy(b) else b.clone() for b in buffers]
    hooks = _snapshot_on_materialisation(modules, buffers, values)
    applied = attack._normalization_applied
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            yield
    finally:
        for hook in hooks:
            hook.remove()
        for module, flag in zip(modules, flags, strict=True):
            module.training = flag
        with torch.no_grad():
            for parameter, flag, grad, value in zip(
                parameters, requires_grad, grads, grad_values, strict=True
            ):
                # Only where the call changed it: a lazy parameter that never materialised (an
                # error before the model's first forward) refuses requires_grad_, and that
                # error would replace the caller's and skip the rest of this restoration.
                if parameter.requires_grad != flag:
                    parameter.requires_grad_(flag)
                _put_back_grad(parameter, grad, value)
            for buffer, value in zip(buffers, values, strict=True):
                # None: still lazy, or materialised outside a forward (nothing to restore).
                if value is not None and not torch.equal(buffer, value):
                    buffer.copy_(value)
        if attack._normalization_applied != applied:
            attack._set_normalization_applied(applied)


class StateRestoringAttack(Attack):
    """A torchattacks ``Attack`` whose call runs under :func:`restored_state`: the base of the
    package's torchattacks classes."""

    def __call__(self, inputs: Any, labels: Any = None, *args: Any, **kwargs: Any) -> Any:
        """torchattacks' ``Attack.__call__`` that also restores every module's train/eval flag
        and the normalisation state when the attack raises."""
        with restored_state(self):
            return super().__call__(inputs, labels, *args, **kwargs)

    def save(self, *args: Any, **kwargs: Any) -> Any:
        """torchattacks' ``Attack.save`` (same arguments, same files) that leaves every module's
        train/eval flag as it was: torchattacks' ends with ``model.train()`` on a model that
        was training, which switched a batch norm frozen by the user back to training."""
        with modes_kept(self.model):
            return super().save(*args, **kwargs)

    def get_output_with_eval_nograd(self, inputs: torch.Tensor) -> torch.Tensor:
        """torchattacks' logits with the whole model in eval mode (for ``save``'s robust
        accuracy and the targeted modes' draws), each module's flag then put back as it was
        (torchattacks' calls ``model.train()``, which sets every module training)."""
        with modes_kept(self.model):
            return super().get_output_with_eval_nograd(inputs)

    def normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """torchattacks' ``(x − mean) / std`` in the inputs' dtype: its float32 mean and std
        promote a float16 / bfloat16 batch to float32, which a half-precision model refuses
        ("Input type (float) and bias type (c10::Half) should be the same")."""
        mean, std = self._normalization_in(inputs)
        return (inputs - mean) / std

    def inverse_normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """torchattacks' ``x · std + mean`` in the inputs' dtype (see :meth:`normalize`)."""
        mean, std = self._normalization_in(inputs)
        return inputs * std + mean

    @staticmethod
    def to_type(inputs: torch.Tensor, type: str) -> torch.Tensor:  # noqa: A002 (torchattacks')
        """torchattacks' conversion for ``save(save_type="int")``, rounding to the nearest of the
        256 levels where torchattacks truncates: an image on the k/255 grid (``levels=256``)
        that inverse normalisation brought back 1 ulp below k/255 is stored as k, not k − 1
        (truncated: 19 % of the pixels of 16 normalised MNIST images a level down, and 10 of
        their 16 minimal adversarials no longer fooling the model after loading)."""
        if type == "int" and inputs.is_floating_point():
            return (inputs * 255).round().clamp(0, 255).to(torch.uint8)
        return Attack.to_type(inputs, type)

    def _normalization_in(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = inputs.dtype if inputs.is_floating_point() else None
        mean, std = self.normalization_used["mean"], self.normalization_used["std"]
        return mean.to(inputs.device, dtype), std.to(inputs.device, dtype)
