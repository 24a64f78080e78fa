"""``MinimalEnsemble``: the per-sample best of several minimal attacks, as a torchattacks
``Attack`` (the "best of" evaluation of Rony et al., ICCV 2021, §4)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import eagerpy as ep
import numpy as np
import torch
from torchattacks.attack import Attack

from .._entry import checked_lpips
from ..core.tensors import valid_logit_rows
from ..distances import DistanceFunction, DistanceSpec
from ._common import (
    StateRestoringAttack,
    modes_kept,
    prepare,
    resolve_distance,
    target_labels,
)

__all__ = ["MinimalEnsemble"]


@contextmanager
def _members_following(attacks: Sequence[Attack], targets: torch.Tensor | None) -> Iterator[None]:
    """Put every member in the ensemble's mode for one call: untargeted, or targeted towards
    the ``targets`` the ensemble drew once (so random targets agree across members)."""
    saved = [(a.attack_mode, a.targeted, a._target_map_function) for a in attacks]

    def fixed_targets(inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        assert targets is not None
        if len(inputs) != len(targets):
            raise RuntimeError(
                f"a member of MinimalEnsemble asked targets for {len(inputs)} samples, but the "
                f"ensemble drew them for {len(targets)}"
            )
        return targets.to(inputs.device)

    try:
        for member in attacks:
            if targets is None:
                _set_mode(member, "default", False, member._target_map_function)
            else:
                _set_mode(member, "targeted(custom)", True, fixed_targets)
        yield
    finally:
        for member, (mode, targeted, function) in zip(attacks, saved, strict=True):
            _set_mode(member, mode, targeted, function)


def _set_mode(member: Attack, mode: str, targeted: bool, function: Any) -> None:
    # object.__setattr__: these plain values need no registration by Attack.__setattr__,
    # which would otherwise keep a reference to every per-call closure (and its targets).
    object.__setattr__(member, "attack_mode", mode)
    object.__setattr__(member, "targeted", targeted)
    object.__setattr__(member, "_target_map_function", function)


def _normalization_of(attack: Attack) -> tuple[list[float], list[float]] | None:
    used = attack.normalization_used
    if used is None:
        return None
    return used["mean"].flatten().tolist(), used["std"].flatten().tolist()


def _same_normalization(
    a: tuple[list[float], list[float]] | None, b: tuple[list[float], list[float]] | None
) -> bool:
    """Equal means and stds up to float32 rounding: torchattacks keeps the dtype it was given
    (NumPy's float64, a list's float32), so the same constants may differ in the last bits."""
    if a is None or b is None:
        return a is b
    return all(
        len(u) == len(v) and np.allclose(u, v, rtol=1e-6, atol=0.0)
        for u, v in zip(a, b, strict=True)
    )


def _described(normalization: tuple[list[float], list[float]] | None) -> str:
    if normalization is None:
        return "none"
    mean, std = normalization
    return f"mean={mean}, std={std}"


class MinimalEnsemble(StateRestoringAttack):
    r"""Per-sample best of several minimal attacks (any torchattacks ``Attack``).

    Every member attacks the whole batch; the model is re-evaluated on each member's output
    (clipped to [0, 1]) and, per sample, the successful output with the smallest ``distance``
    to the clean image (in [0, 1] image space) is kept. Success is argmax ≠ label, or
    argmax = target in the targeted modes, where the targets are drawn once by the ensemble
    and shared by all members. This is the "best of" evaluation of the ALMA paper's
    comparisons (Rony et al., ICCV 2021, §4), unlike ``MultiAttack``, which keeps the first
    success. Samples no member fools are returned unchanged. A member output that is not
    finite (any NaN or Inf in the sample), or on which the model's logits hold NaN or +Inf,
    is never selected.

    Arguments:
        attacks (list): the member attacks, all on the same model.
        distance (str): D used to compare outputs: a registry name or "linf". (Default: "l2")
        lpips (callable, optional): for ``distance="lpips"``, the LPIPS network that compares
            the outputs, as ALMA's ``lpips=`` (an :class:`alma_plugin.distances.LPIPS`, or a
            callable (x_adv, x) -> (N,) on torch tensors). None: the default weights, looked
            for before any member runs. (Default: None)

    Examples::
        >>> from alma_plugin.zoo import load_mnist_heldout, load_smallcnn
        >>> model = load_smallcnn("mnist_regular")
        >>> images, labels = (t[:4] for t in load_mnist_heldout())
        >>> import torchattacks
        >>> from alma_plugin.torchattacks import ALMA, MinimalEnsemble
        >>> ensemble = MinimalEnsemble([ALMA(model, steps=100), torchattacks.DeepFool(model)])
        >>> adv_images = ensemble(images, labels)
        >>> bool((model(adv_images).argmax(1) != labels).all())
        True
    """

    def __init__(
        self,
        attacks: Sequence[Attack],
        distance: str = "l2",
        lpips: DistanceFunction | None = None,
    ) -> None:
        if isinstance(attacks, Attack) or not isinstance(attacks, Sequence):
            raise TypeError(
                f"attacks must be a non-empty list of torchattacks attacks, got {attacks!r}"
            )
        if not attacks:  # the right type, the wrong value
            raise ValueError(
                f"attacks must be a non-empty list of torchattacks attacks, got {attacks!r}"
            )
        for index, member in enumerate(attacks):
            if not isinstance(member, Attack):
                raise TypeError(
                    f"attacks[{index}] must be a torchattacks.attack.Attack, got "
                    f"{type(member).__name__}"
                )
        for index, member in enumerate(attacks[1:], start=1):
            if member.model is not attacks[0].model:
                raise ValueError(
                    f"attacks must all reference the same model: attacks[0] attacks a "
                    f"{type(attacks[0].model).__name__} (id {id(attacks[0].model):#x}), "
                    f"attacks[{index}] a {type(member.model).__name__} (id {id(member.model):#x})"
                )
        first = _normalization_of(attacks[0])
        for index, member in enumerate(attacks[1:], start=1):
            if not _same_normalization(first, _normalization_of(member)):
                raise ValueError(
                    "attacks must all use the same set_normalization_used(mean, std): "
                    f"attacks[0] uses {_described(first)}, attacks[{index}] uses "
                    f"{_described(_normalization_of(member))}"
                )
        spec = resolve_distance(distance)
        if lpips is not None:
            checked_lpips(lpips, spec.name)  # the distance and a callable, as ALMA's
        super().__init__("MinimalEnsemble", attacks[0].model)
        self.attacks = list(attacks)
        self.distance = spec.name
        self.lpips = lpips
        self.device = attacks[0].device
        targetable = all("targeted" in member.supported_mode for member in attacks)
        self.supported_mode = ["default", "targeted"] if targetable else ["default"]
        normalization = _normalization_of(attacks[0])
        if normalization is not None:
            self.set_normalization_used(*normalization)

    def _change_model_mode(self, given_training: bool) -> None:
        """The ensemble's own ``set_model_training_mode``, and only its own. torchattacks'
        version applies every registered member's mode after it, so the last member's (a PGD
        with ``dropout_training=True``) was the mode the ensemble judged in: outputs judged
        adversarial under dropout came back that fool nothing in eval. Each member still runs
        in its own mode, set by its own call."""
        if not self._model_training:
            self.model.eval()
            return
        self.model.train()
        for module in self.model.modules():
            kind = type(module).__name__
            if ("BatchNorm" in kind and not self._batchnorm_training) or (
                "Dropout" in kind and not self._dropout_training
            ):
                module.eval()

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Overridden.
        """
        spec = resolve_distance(self.distance)
        images, labels = prepare(self, images, labels, spec)
        if len(images) == 0:
            return images
        measure = self._measure(spec)  # before the members run: the LPIPS weights too
        targets = target_labels(self, images, labels) if self.targeted else None
        best = images.clone()
        best_distance = torch.full((len(images),), float("inf"), device=images.device)
        with _members_following(self.attacks, targets):
            for member in self.attacks:
                # the modes of this call (set_model_training_mode), for the next member and
                # for the judging: a member's torchattacks __call__ ends with model.train()
                with modes_kept(self.model):
                    outputs = member(images, labels)
                outputs = self._checked_output(member, outputs, images)
                success, distance = self._judge(outputs, images, labels, targets, measure)
                better = success & (distance < best_distance)
                best[better] = outputs[better]
                best_distance = torch.where(better, distance, best_distance)
        return best

    def _measure(self, spec: DistanceSpec) -> DistanceFunction:
        """D for comparing the members' outputs: the distance's function, or ``lpips``."""
        if spec.name != "lpips":
            return spec.function
        if self.lpips is None:
            from ..distances._lpips import default_lpips

            default_lpips()  # LPIPSWeightsNotFoundError now, not after every member ran
            return spec.function
        return checked_lpips(self.lpips, spec.name)

    @staticmethod
    def _checked_output(member: Attack, outputs: Any, images: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, tuple):  # e.g. attacks that also return labels
            outputs = outputs[0]
        if not isinstance(outputs, torch.Tensor) or outputs.shape != images.shape:
            shape = getattr(outputs, "shape", None)
            raise ValueError(
                f"{member.attack} returned {type(outputs).__name__} of shape {shape}, "
                f"expected a tensor of shape {tuple(images.shape)}"
            )
        return outputs.detach().to(images.device, images.dtype).clamp(0.0, 1.0)

    @torch.no_grad()
    def _judge(
        self,
        outputs: torch.Tensor,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        measure: DistanceFunction,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Success (re-evaluated on the model) and D(output, image) for each sample.

        An output can only succeed where it is finite, the model's logits on it are neither
        NaN nor +∞ and its distance is finite: a member that returns NaN images (DeepFool on a
        model whose gradients vanish or blow up) or reaches a region where the model answers
        NaN never counts, whatever argmax makes of NaN logits and whatever D makes of NaN
        pixels."""
        finite = torch.isfinite(outputs).flatten(1).all(1)
        logits = self.get_logits(outputs)
        if not isinstance(logits, torch.Tensor) or logits.shape[:1] != outputs.shape[:1]:
            raise ValueError(
                f"the model must return logits of shape (N={len(outputs)}, K), got "
                f"{type(logits).__name__} of shape {getattr(logits, 'shape', None)}"
            )
        finite &= valid_logit_rows(ep.astensor(logits)).raw  # the solvers' rule: −∞ is valid
        predictions = logits.argmax(1)
        success = predictions == targets if targets is not None else predictions != labels
        # Distances in float32 whatever the images' dtype (float16 rounds small distances).
        distance = measure(ep.astensor(outputs.float()), ep.astensor(images.float())).raw
        distance = distance.to(images.device, torch.float32)
        return success & finite & torch.isfinite(distance), distance
