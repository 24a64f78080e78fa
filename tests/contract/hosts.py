"""Row builders for the host libraries' attacks: Foolbox's classes of ``alma_plugin.foolbox``
and torchattacks' ``ALMA`` and ``MinimalEnsemble``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import models
from .core import Returned, Setup, deferred, dtype_of, flat, same_values, to_numpy
from .entry_points import inputs_for, logits_of, models_for, nan_sanity
from .models import goal_labels, labels_as, predictions, torch_logits, verify_classification


def foolbox_case(
    attack: str,
    *,
    framework: str = "torch",
    n: int = 4,
    shape: Sequence[int] = (1, 8, 8),
    k: int = 3,
    dtype: str = "float32",
    bounds: tuple[float, float] = (0.0, 1.0),
    labels_dtype: str = "int64",
    container: str = "tensor",
    targeted: bool = False,
    variant: str | None = None,
    mode: str | None = None,
    steps: Any = 10,
    seed: int = 0,
    epsilons: Any = (0.0, 100.0),
    data_format: str | None = None,
    nan_radius: float | None = None,
    spread: float = 0.05,
    labels: Sequence[int] | None = None,
    **kwargs: Any,
) -> Setup:
    """A Foolbox attack of ``alma_plugin.foolbox`` on ``fb.PyTorchModel`` or ``fb.JAXModel``."""
    import foolbox as fb

    import alma_plugin.foolbox as afb

    channels_last = data_format == "channels_last"
    x, x_np = inputs_for(framework, n, shape, bounds, dtype, mode, seed, spread)
    model, verifier, verifiable, modules = models_for(
        framework, shape, k, seed=seed, bounds=bounds, variant=variant, dtype=dtype,
        radius=nan_radius or (0.01 if attack == "LinfALMAProx" else 0.08),
    )  # fmt: skip
    if framework == "tf":
        fmodel = fb.TensorFlowModel(model, bounds=bounds)
    elif framework == "jax":
        fmodel = fb.JAXModel(
            model, bounds=bounds,
            data_format=data_format or ("channels_last" if channels_last else "channels_first"),
        )  # fmt: skip
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Foolbox's own train-mode warning
            fmodel = fb.PyTorchModel(model, bounds=bounds, device=models.DEVICE)
    goal = goal_labels(predictions(verifier, x), k, targeted)
    if labels is not None:
        goal = np.asarray(labels, dtype=np.int64)
    caller_labels = labels_as(goal, labels_dtype, container, framework)
    criterion = fb.criteria.TargetedMisclassification(caller_labels) if targeted else caller_labels
    instance, get_instance = deferred(lambda: getattr(afb, attack)(steps=steps, **kwargs))
    eps_list = list(epsilons) if isinstance(epsilons, list | tuple) else [epsilons]

    def run() -> Any:
        eps = list(epsilons) if isinstance(epsilons, list | tuple) else epsilons
        return get_instance()(fmodel, x, criterion, epsilons=eps)

    def collect(result: Any) -> list[Returned]:
        raw, clipped, success = result
        if not isinstance(epsilons, list | tuple):
            raw, clipped, success = [raw], [clipped], success[None]
        success_np = to_numpy(success).astype(bool)
        for_model = getattr(instance, "for_model", None)
        distance = (for_model(fmodel) if for_model else instance).distance
        out = []
        for i, eps in enumerate(eps_list):

            def verify(tensor: Any, i: int = i) -> np.ndarray:
                if not verifiable:
                    return success_np[i]
                return verify_classification(
                    logits_of(framework, verifier, tensor), goal, targeted, to_numpy(tensor)
                )

            at_most = []
            if eps is not None and len(x_np):
                measured = to_numpy(distance(x, clipped[i]))
                slack = 1.05 if "16" in str(dtype_of(x)) else 1.001
                at_most = [
                    # 16-bit dtypes: the clipped image is rounded after clipping (≤ 5%)
                    (f"distance <= eps={eps}", measured, np.full(len(x_np), eps * slack + 1e-5))
                ]
            numeric = eps is not None
            out.append(Returned(f"raw[eps={eps}]", raw[i], unchanged=False))
            out.append(
                Returned(
                    f"clipped[eps={eps}]", clipped[i], claimed=success_np[i], verify=verify,
                    unchanged=False, at_most=at_most,
                    # Foolbox's own clip_perturbation differentiates through a requires_grad x
                    graph_free=not (numeric and mode == "requires_grad"),
                )
            )  # fmt: skip
        return out

    return Setup(
        run, collect, x, bounds, caller={"inputs": x, "labels": caller_labels}, modules=modules,
        attack=instance, check_address=True, buffers_may_change=variant == "batchnorm",
        sanity=nan_sanity(model),
    )  # fmt: skip


def torchattacks_case(
    *,
    ensemble: bool = False,
    distance: str = "l2",
    n: int = 4,
    shape: Sequence[int] = (1, 8, 8),
    k: int = 3,
    dtype: str = "float32",
    labels_dtype: str = "int64",
    container: str = "tensor",
    targeted: bool = False,
    variant: str | None = None,
    mode: str | None = None,
    steps: Any = 10,
    seed: int = 0,
    members: Sequence[str] = ("l2", "l1"),
    deepfool: bool = False,
    nan_radius: float | None = None,
    **kwargs: Any,
) -> Setup:
    """torchattacks ``alma_plugin.torchattacks.ALMA`` or ``MinimalEnsemble`` (bounds [0, 1])."""
    import torchattacks as ta

    from alma_plugin.torchattacks import ALMA, MinimalEnsemble

    bounds = (0.0, 1.0)
    x, x_np = inputs_for("torch", n, shape, bounds, dtype, mode, seed)
    model, verifier, verifiable, modules = models_for(
        "torch", shape, k, seed=seed, bounds=bounds, variant=variant, dtype=dtype,
        radius=nan_radius or (0.01 if "linf" in (distance, *members) else 0.08),
    )  # fmt: skip
    goal = goal_labels(predictions(verifier, x), k, targeted)
    labels = labels_as(goal, labels_dtype, container)

    def make() -> Any:
        if ensemble:
            parts: list[Any] = [ALMA(model, distance=d, steps=steps, **kwargs) for d in members]
            if deepfool:
                parts.append(ta.DeepFool(model, steps=5))
            made = MinimalEnsemble(parts, distance=distance)
        else:
            made = ALMA(model, distance=distance, steps=steps, **kwargs)
        if targeted:
            made.set_mode_targeted_by_label(quiet=True)
        return made

    instance, run_call = deferred(make)

    def run() -> Any:
        return run_call()(x, labels)

    def collect(adv: Any) -> list[Returned]:
        adv_np = to_numpy(adv)
        changed = ~flat(same_values(adv_np, x_np)).all(1)

        def verify(tensor: Any) -> np.ndarray:
            if not verifiable:
                return changed
            return verify_classification(
                torch_logits(verifier, tensor), goal, targeted, to_numpy(tensor)
            )

        # torchattacks returns no success flags: a changed sample claims to be adversarial
        # ("samples for which no adversarial is found are returned unchanged").
        return [Returned("adv_images", adv, claimed=changed, verify=verify, unchanged=False)]

    return Setup(
        run, collect, x, bounds, caller={"inputs": x, "labels": labels}, modules=modules,
        attack=instance, sanity=nan_sanity(model),
    )  # fmt: skip
