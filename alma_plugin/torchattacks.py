"""torchattacks drop-ins: :class:`ALMA` and :class:`MinimalEnsemble`.

``ALMA`` is the Augmented Lagrangian attack of Rony, Granger, Pedersoli and Ben Ayed,
"Augmented Lagrangian Adversarial Attacks", ICCV 2021 (Algorithm 2 with the modifications of
§3.2), as a :class:`torchattacks.attack.Attack`: usable alone, inside
:class:`torchattacks.MultiAttack`, with ``set_normalization_used``, the targeted modes and
``save()``. The algorithm itself lives in :func:`alma_plugin.core.solver.alma_solve`; this
module only translates torchattacks' conventions (images in [0, 1], logits through
``get_logits``, targets through ``get_target_label``, device taken from the model).

``MinimalEnsemble`` runs several attacks on the same batch and keeps, per sample, the
successful output with the smallest distance, which is what an evaluation of *minimal*
attacks needs (``MultiAttack`` keeps the first success instead).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import eagerpy as ep
import torch
from torchattacks.attack import Attack

from .core.defaults import make_config
from .core.solver import ALMAConfig, alma_solve
from .core.validation import check_inputs, check_labels, check_positive_int
from .distances import DistanceSpec, get_distance

__all__ = ["ALMA", "MinimalEnsemble"]

_BOUNDS = (0.0, 1.0)
#: Names that belong to ALMA prox (ℓ∞), not to the smooth-distance ALMA of the ICCV paper.
_PROX_DISTANCES = ("linf", "l_inf", "inf")


def _resolve_distance(distance: Any) -> DistanceSpec:
    """The registry entry for ``distance``; ℓ∞ gets an error pointing at ALMA prox."""
    if isinstance(distance, str) and distance.lower() in _PROX_DISTANCES:
        raise ValueError(
            f"distance={distance!r} is not supported by ALMA: ℓ∞ is not differentiable and is "
            "handled by ALMA prox (Rony et al., CVPR 2023), which is not available in "
            "alma_plugin.torchattacks yet; use 'l2' or 'l1'"
        )
    return get_distance(distance)


def _check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _prepare(
    attack: Attack, inputs: Any, labels: Any, spec: DistanceSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated, detached copies of ``inputs`` (in [0, 1]) and ``labels`` on the attack's
    device, following torchattacks (``images.clone().detach().to(self.device)``)."""
    _check_tensor("inputs", inputs)
    if labels is None:
        raise ValueError(
            f"{attack.attack} needs labels: the true classes of shape (N,), or the target "
            "classes in targeted(label) mode; got labels=None"
        )
    _check_tensor("labels", labels)
    device = attack.device if attack.device is not None else inputs.device
    images = inputs.detach().clone().to(device)
    labels = labels.detach().clone().to(device)
    try:
        check_inputs(ep.astensor(images), _BOUNDS)
    except ValueError as error:
        raise ValueError(
            f"{error}. torchattacks attacks take images in [0, 1]; if the model expects "
            "normalised inputs, pass normalised images after set_normalization_used(mean, std)"
        ) from None
    check_labels(ep.astensor(labels), len(images))
    if spec.needs_color and (images.ndim != 4 or images.shape[1] != 3):
        raise ValueError(
            f"distance={spec.name!r} needs RGB images of shape (N, 3, H, W), got shape "
            f"{tuple(images.shape)}"
        )
    # Inverse normalisation may leave values a rounding error outside [0, 1].
    return images.clamp(0.0, 1.0), labels


def _target_labels(attack: Attack, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = attack.get_target_label(images, labels)
    targets = _check_tensor("target labels", targets).to(images.device)
    check_labels(ep.astensor(targets), len(images), name="target labels")
    return targets


class ALMA(Attack):
    r"""ALMA (Rony et al., "Augmented Lagrangian Adversarial Attacks", ICCV 2021).

    Distance Measure: ``distance`` ("l2", "l1", or any name of
    ``alma_plugin.distances.DISTANCES``), measured on images in [0, 1].

    Finds minimal adversarial perturbations by solving min_δ D(x + δ, x) s.t.
    DLR⁺(f(x + δ), y) < 0 (eq. 5; tDLR⁺ of eq. 18 when targeted) with the penalty-Lagrangian
    method of Algorithm 2. Each step costs one forward and one backward propagation. Samples
    for which no adversarial is found are returned unchanged.

    Arguments:
        model (nn.Module): model to attack.
        distance (str): D to minimise. (Default: "l2")
        steps (int): number of iterations. (Default: 1000)
        alpha (float): α of eq. 9; None: 0.5 for ≤100 steps, 0.9 for ≥1000 (Appendix E).
        init_lr_distance (float): ε of §3.2.3; "default" takes the distance's value in
            Table 3 (ℓ1 0.5, ℓ2 0.1, ...); None uses the constant step ``lr_init``.
        penalty (str): "P2" (eq. 10, default), "P1", "P3" or "PHR" (Appendix D).
        early_stop (float): stop once every sample has an adversarial with D below this.
        seed (int): seeds the random directions used where a gradient vanishes.
        **hyperparameters: ``mu_init``, ``rho_init``, ``mu_min``, ``mu_max``, ``gamma``,
            ``tau``, ``check_steps``, ``lr_init``, ``lr_reduction``, ``rmsprop_decay``,
            ``momentum``, ``levels`` (see :func:`alma_plugin.core.defaults.make_config`).

    Shape:
        - images: (N, C, H, W), values in [0, 1] (normalised values after
          ``set_normalization_used``).
        - labels: (N,), integer classes (targets in ``targeted(label)`` mode).
        - output: (N, C, H, W), on the model's device.

    Examples::
        >>> attack = ALMA(model, distance="l2", steps=1000)
        >>> adv_images = attack(images, labels)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        distance: str = "l2",
        steps: int = 1000,
        *,
        alpha: float | None = None,
        init_lr_distance: float | None | str = "default",
        penalty: str = "P2",
        early_stop: float | None = None,
        seed: int = 0,
        **hyperparameters: Any,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        super().__init__("ALMA", model)
        spec = _resolve_distance(distance)
        check_positive_int("steps", steps)
        check_positive_int("seed", seed, minimum=0)
        if early_stop is not None and not (isinstance(early_stop, int | float) and early_stop > 0):
            raise ValueError(f"early_stop must be a positive number or None, got {early_stop!r}")
        config = make_config(
            steps=steps,
            default_init_lr_distance=spec.init_lr_distance,
            alpha=alpha,
            init_lr_distance=init_lr_distance,
            penalty=penalty,
            **hyperparameters,
        )
        self.distance = spec.name
        self.steps = int(steps)
        self.alpha = config.alpha
        self.init_lr_distance = config.init_lr_distance
        self.penalty = penalty
        self.early_stop = early_stop
        self.seed = int(seed)
        self.hyperparameters = dict(hyperparameters)
        self.supported_mode = ["default", "targeted"]

    def config(self) -> ALMAConfig:
        """The validated :class:`ALMAConfig` of the current attributes (read at each call)."""
        return make_config(
            steps=self.steps,
            default_init_lr_distance=_resolve_distance(self.distance).init_lr_distance,
            alpha=self.alpha,
            init_lr_distance=self.init_lr_distance,
            penalty=self.penalty,
            **self.hyperparameters,
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Overridden.
        """
        spec = _resolve_distance(self.distance)
        config = self.config()
        images, labels = _prepare(self, images, labels, spec)
        if len(images) == 0:
            return images
        targets = _target_labels(self, images, labels) if self.targeted else labels

        def model_fn(batch: ep.Tensor) -> ep.Tensor:
            # get_logits applies the normalisation of set_normalization_used, if any.
            return ep.astensor(self.get_logits(batch.raw))

        result = alma_solve(
            model_fn,
            ep.astensor(images),
            ep.astensor(targets),
            distance=spec.function,
            config=config,
            steps=self.steps,
            bounds=_BOUNDS,
            targeted=bool(self.targeted),
            early_stop=self.early_stop,
            seed=self.seed,
        )
        adversarials: torch.Tensor = result.adversarials.raw
        return adversarials.detach()

    def __call__(self, inputs: Any, labels: Any = None, *args: Any, **kwargs: Any) -> Any:
        """torchattacks' ``Attack.__call__`` that also restores every module's train/eval flag
        and the normalisation state when the attack raises."""
        with _restored_state(self):
            return super().__call__(inputs, labels, *args, **kwargs)


@contextmanager
def _restored_state(attack: Attack) -> Iterator[None]:
    """Restore each module's ``training`` flag exactly (torchattacks only calls ``train()``
    again on a model that was training), the parameters' ``requires_grad`` and ``.grad``, and
    the normalisation flag, even after an error."""
    model = attack.model
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    flags = [m.training for m in modules]
    parameters = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    # Members of an ensemble may backpropagate into the parameters (torchattacks' DeepFool).
    saved = [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in parameters]
    applied = attack._normalization_applied
    try:
        yield
    finally:
        for module, flag in zip(modules, flags, strict=True):
            module.training = flag
        for parameter, (requires_grad, grad) in zip(parameters, saved, strict=True):
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad
        if attack._normalization_applied != applied:
            attack._set_normalization_applied(applied)


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


class MinimalEnsemble(Attack):
    r"""Per-sample best of several minimal attacks (any torchattacks ``Attack``).

    Every member attacks the whole batch; the model is re-evaluated on each member's output
    (clipped to [0, 1]) and, per sample, the successful output with the smallest ``distance``
    to the clean image (in [0, 1] image space) is kept. Success is argmax ≠ label, or
    argmax = target in the targeted modes, where the targets are drawn once by the ensemble
    and shared by all members. This is the "best of" evaluation of the ALMA paper's
    comparisons (Rony et al., ICCV 2021, §4), unlike ``MultiAttack``, which keeps the first
    success. Samples no member fools are returned unchanged.

    Arguments:
        attacks (list): the member attacks, all on the same model.
        distance (str): D used to compare outputs. (Default: "l2")

    Examples::
        >>> ensemble = MinimalEnsemble([ALMA(model, steps=100), torchattacks.DeepFool(model)])
        >>> adv_images = ensemble(images, labels)
    """

    def __init__(self, attacks: Sequence[Attack], distance: str = "l2") -> None:
        if isinstance(attacks, Attack) or not isinstance(attacks, Sequence) or not attacks:
            raise TypeError(
                f"attacks must be a non-empty list of torchattacks attacks, got {attacks!r}"
            )
        for index, member in enumerate(attacks):
            if not isinstance(member, Attack):
                raise TypeError(
                    f"attacks[{index}] must be a torchattacks.attack.Attack, got "
                    f"{type(member).__name__}"
                )
        if len({id(member.model) for member in attacks}) != 1:
            raise ValueError("attacks must all reference the same model")
        norms = {repr(_normalization_of(member)) for member in attacks}
        if len(norms) != 1:
            raise ValueError("attacks must all use the same set_normalization_used(mean, std)")
        spec = _resolve_distance(distance)
        super().__init__("MinimalEnsemble", attacks[0].model)
        self.attacks = list(attacks)
        self.distance = spec.name
        self.device = attacks[0].device
        targetable = all("targeted" in member.supported_mode for member in attacks)
        self.supported_mode = ["default", "targeted"] if targetable else ["default"]
        normalization = _normalization_of(attacks[0])
        if normalization is not None:
            self.set_normalization_used(*normalization)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Overridden.
        """
        spec = _resolve_distance(self.distance)
        images, labels = _prepare(self, images, labels, spec)
        targets = _target_labels(self, images, labels) if self.targeted else None
        best = images.clone()
        best_distance = torch.full((len(images),), float("inf"), device=images.device)
        with _members_following(self.attacks, targets):
            for member in self.attacks:
                outputs = member(images, labels)
                outputs = self._checked_output(member, outputs, images)
                success, distance = self._judge(outputs, images, labels, targets, spec)
                better = success & (distance < best_distance)
                best[better] = outputs[better]
                best_distance = torch.where(better, distance, best_distance)
        return best

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
        spec: DistanceSpec,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Success (re-evaluated on the model) and D(output, image) for each sample."""
        predictions = self.get_logits(outputs).argmax(1)
        success = predictions == targets if targets is not None else predictions != labels
        distance = spec.function(ep.astensor(outputs), ep.astensor(images)).raw
        distance = distance.to(images.device, torch.float32)
        return success & torch.isfinite(distance), distance

    def __call__(self, inputs: Any, labels: Any = None, *args: Any, **kwargs: Any) -> Any:
        """``Attack.__call__`` restoring module modes and normalisation state on errors."""
        with _restored_state(self):
            return super().__call__(inputs, labels, *args, **kwargs)
