"""Row builders for the functional entry points: ``alma``, ``alma_prox`` and ``lagrangian`` (and
torchattacks' ``Lagrangian``), with the helpers the other builders share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import eagerpy as ep
import numpy as np
import torch
from torch import nn

from .core import Returned, Setup, deferred, flat, targeted_by_label, to_numpy
from .models import (
    TORCH_DTYPES,
    Wrapped,
    array_segmenter,
    clean_inputs,
    goal_labels,
    jax_classifier,
    jax_inputs,
    labels_as,
    labels_device,
    predictions,
    tf_classifier,
    tf_inputs,
    torch_classifier,
    torch_inputs,
    torch_logits,
    torch_segmenter,
    verify_classification,
    wrap_model,
)

# --------------------------------------------------------------------------------------------
# Entry points. Each builder takes keyword options and returns a Setup.


def inputs_for(
    framework: str, n: int, shape: Sequence[int], bounds: tuple[float, float], dtype: str,
    mode: str | None, seed: int, spread: float = 0.05,
) -> tuple[Any, np.ndarray]:  # fmt: skip
    array = clean_inputs(n, shape, bounds, seed=seed, spread=spread)
    if framework == "jax":
        x = jax_inputs(array, dtype)
    elif framework == "tf":
        x = tf_inputs(array, dtype)
    else:
        x = torch_inputs(array, dtype, mode)
    return x, to_numpy(x)


def models_for(
    framework: str, shape: Sequence[int], k: int, *, seed: int, bounds: tuple[float, float],
    variant: str | None, dtype: str, conv: bool = False, radius: float = 0.08,
) -> tuple[Any, Any, bool, list[nn.Module]]:  # fmt: skip
    """(model, verifier, verifiable, modules to watch) for a classifier."""
    avoid = variant in ("nan", "nan_far")
    if framework in ("jax", "tf"):
        make = jax_classifier if framework == "jax" else tf_classifier
        jax_variant = {"raise_train": "raise", "train": None}.get(variant or "", variant)
        model = make(
            shape, k, seed=seed, bounds=bounds, variant=jax_variant, avoid_class0=avoid,
            radius=radius,
        )  # fmt: skip
        verifier = make(
            shape, k, seed=seed, bounds=bounds, avoid_class0=avoid, radius=radius,
            variant=variant if variant in ("nan", "nan_far") else None,
        )  # fmt: skip
        return model, verifier, True, []
    net = torch_classifier(
        shape, k, seed=seed, bounds=bounds, conv=conv, avoid_class0=avoid,
        dtype=TORCH_DTYPES[dtype],
    )  # fmt: skip
    model, verifier, verifiable = wrap_model(net, variant, bounds, radius)
    return model, verifier, verifiable, [model]


def logits_of(framework: str, verifier: Any, x: Any) -> np.ndarray:
    if framework in ("jax", "tf"):
        raw = x.raw if isinstance(x, ep.Tensor) else x
        return to_numpy(verifier(raw))
    return torch_logits(verifier, x)


def nan_sanity(model: Any) -> Callable[[], None] | None:
    if isinstance(model, Wrapped) and model.kind in ("nan_far",):

        def sanity() -> None:
            assert model.nan_outputs > 0, "the NaN region was never reached: the row is vacuous"

        return sanity
    return None


def normalised_distance(
    name: str, a: np.ndarray, b: np.ndarray, function: Callable[[Any, Any], Any] | None = None
) -> np.ndarray:
    """D(a, b) recomputed in float64 from inputs already in [0, 1] (ℓp in NumPy, the others
    with the package's own function, or ``function`` (an LPIPS network), on float64 torch
    tensors)."""
    n = len(a)
    diff = flat(a - b)
    if name == "l1":
        return np.abs(diff).sum(1)
    if name == "l2":
        return np.sqrt((diff**2).sum(1))
    if name == "linf":
        return np.abs(diff).max(1) if diff.shape[1] else np.zeros(n)
    from alma_plugin.distances import get_distance

    function = function or get_distance(name).function
    value = function(ep.astensor(torch.from_numpy(a)), ep.astensor(torch.from_numpy(b)))
    return to_numpy(value)


def tolerance(dtype: Any) -> float:
    return 5e-2 if "16" in str(dtype) else 1e-4


def alma_case(
    *,
    framework: str = "torch",
    distance: str = "l2",
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
    predicate: str | None = None,
    conv: bool = False,
    label_offset: int = 0,
    call_bounds: tuple[float, float] | None = None,
    nan_radius: float | None = None,
    spread: float = 0.05,
    labels: Sequence[int] | None = None,
    **kwargs: Any,
) -> Setup:
    """``alma_plugin.alma`` (PyTorch or JAX). ``labels``: the classes (or targets) to use
    instead of the model's clean predictions (or their successors when targeted).
    ``nan_radius``: ℓ2 radius of the "nan_far" model's finite region (default 0.08; 0.01 for
    "linf", whose ℓ∞ steps stay closer to x in ℓ2)."""
    from alma_plugin import alma

    if nan_radius is None:
        nan_radius = 0.01 if distance == "linf" else 0.08

    x, x_np = inputs_for(framework, n, shape, bounds, dtype, mode, seed, spread)
    model, verifier, verifiable, modules = models_for(
        framework, shape, k, seed=seed, bounds=bounds, variant=variant, dtype=dtype, conv=conv,
        radius=nan_radius,
    )  # fmt: skip
    goal = goal_labels(predictions(verifier, x), k, targeted) + label_offset
    if labels is not None:
        goal = np.asarray(labels, dtype=np.int64)
    caller_labels = labels_as(goal, labels_dtype, container, framework)
    pred_fn = make_predicate(predicate, goal, targeted) if predicate else None
    lower, span = bounds[0], bounds[1] - bounds[0]

    def run() -> Any:
        return alma(
            model, x, caller_labels, distance=distance, steps=steps, targeted=targeted,
            bounds=call_bounds or bounds, is_adversarial=pred_fn, **kwargs,
        )  # fmt: skip

    def collect(result: Any) -> list[Returned]:
        adv = result.adversarials
        adv_np = to_numpy(adv)
        claimed = to_numpy(result.success).astype(bool)
        recomputed = normalised_distance(
            distance, (adv_np - lower) / span, (x_np - lower) / span, kwargs.get("lpips")
        )
        recomputed = np.where(claimed, recomputed, np.inf)

        def verify(tensor: Any) -> np.ndarray:
            if not verifiable:
                return claimed
            return verify_classification(
                logits_of(framework, verifier, tensor), goal, targeted, to_numpy(tensor)
            )

        agree = [("distances", to_numpy(result.distances), recomputed, tolerance(dtype))]
        if verifiable and result.predictions is not None:  # the model's class, −1: no success
            classes = logits_of(framework, verifier, adv).argmax(1)
            expected = np.where(claimed, classes, -1).astype(np.float64)
            agree.append(("predictions", to_numpy(result.predictions).astype(np.float64),
                          expected, 0.0))  # fmt: skip
        return [
            Returned("adversarials", adv, claimed=claimed, verify=verify, agree=agree),
            Returned("distances", result.distances, kind="per-sample"),
            Returned("success", result.success, kind="per-sample"),
        ]

    return Setup(
        run, collect, x, bounds, caller={"inputs": x, "labels": caller_labels}, modules=modules,
        buffers_may_change=variant == "batchnorm", sanity=nan_sanity(model),
    )  # fmt: skip


def make_predicate(kind: str, goal: np.ndarray, targeted: bool) -> Callable[[Any, Any], Any]:
    """Success predicates for ``alma(is_adversarial=...)``: "ok" (argmax test; NaN logits have
    argmax 0, so it calls them adversarial), "host" (its answer on the CPU whatever the logits'
    device), and wrong shapes/dtypes."""

    def predicate(inputs: Any, logits: Any) -> Any:
        wrapped = isinstance(logits, ep.Tensor)
        raw = logits.raw if wrapped else logits
        if isinstance(raw, torch.Tensor):
            y = torch.as_tensor(goal, device=raw.device)
            pred = raw.argmax(1)
        else:
            import jax.numpy as jnp

            y = jnp.asarray(goal)
            pred = raw.argmax(1)
        hit = pred == y if targeted else pred != y
        if kind == "column":
            hit = hit[:, None]
        elif kind == "longer":
            hit = hit.repeat(2) if isinstance(hit, torch.Tensor) else hit.repeat(2)
        elif kind == "scalar":
            hit = hit.all()
        elif kind == "float":
            hit = hit * 1.0
        elif kind == "none":
            return None
        elif kind == "numpy":
            return np.asarray(to_numpy(hit), dtype=bool)
        elif kind == "host" and isinstance(hit, torch.Tensor):  # computed on the CPU
            hit = hit.cpu()
        return ep.astensor(hit) if wrapped else hit

    return predicate


def prox_case(
    *,
    framework: str = "torch",
    n: int = 2,
    channels: int = 1,
    size: int = 6,
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
    masked: bool = False,
    mask_container: str = "tensor",
    adv_threshold: float = 0.6,
    nan_radius: float = 0.01,
    spread: float = 0.05,
    **kwargs: Any,
) -> Setup:
    """``alma_plugin.alma_prox`` on per-pixel logits (N, K, H, W) of PyTorch, JAX or
    TensorFlow. λ⁽⁰⁾ = 0.05 unless a row sets it: the segmentation default (10⁻³, for real
    networks' ε ≈ 1/255) does not reach this tiny net's adversarials in a row's few steps, and
    every row must show a success."""
    from alma_plugin import alma_prox

    if kwargs.get("params") is None:
        kwargs.setdefault("init_lr", 0.05)

    x, x_np = inputs_for(framework, n, (channels, size, size), bounds, dtype, mode, seed, spread)
    if framework == "torch":
        net = torch_segmenter(channels, max(k, 1), seed=seed, bounds=bounds)
        model, verifier, verifiable = wrap_model(net.to(TORCH_DTYPES[dtype]), variant, bounds,
                                                 nan_radius)  # fmt: skip
        modules = [model]
    else:
        model = array_segmenter(framework, max(k, 1), seed=seed, bounds=bounds, variant=variant)
        verifier, verifiable = array_segmenter(framework, max(k, 1), seed=seed, bounds=bounds), True
        modules = []
    pred = logits_of(framework, verifier, x).argmax(1)
    goal = goal_labels(pred, k, targeted)
    mask_np = np.ones(goal.shape, dtype=bool)
    if masked:
        mask_np[:, : size // 2] = False
        goal = np.where(mask_np, goal, 255)
    labels = labels_as(goal, labels_dtype if not masked else "int64", container, framework)
    masks = masks_as(mask_np, mask_container) if masked else None
    lower, span = bounds[0], bounds[1] - bounds[0]

    def apsr_of(tensor: Any) -> tuple[np.ndarray, np.ndarray]:
        logits = logits_of(framework, verifier, tensor)
        finite = np.isfinite(flat(logits)).all(1)
        pixel = logits.argmax(1)
        hit = pixel == goal if targeted else pixel != goal
        hits = flat(hit & mask_np).sum(1)
        return hits / flat(mask_np).sum(1), finite

    def run() -> Any:
        return alma_prox(
            model, x, labels, masks=masks, targeted=targeted, adv_threshold=adv_threshold,
            steps=steps, bounds=bounds, **kwargs,
        )  # fmt: skip

    def collect(result: Any) -> list[Returned]:
        adv = result.adversarials
        adv_np = to_numpy(adv)
        claimed = to_numpy(result.success).astype(bool)
        apsr, _ = apsr_of(adv)

        def verify(tensor: Any) -> np.ndarray:
            if not verifiable:
                return claimed
            rate, finite = apsr_of(tensor)
            return (rate >= adv_threshold - 1e-9) & finite & np.isfinite(adv_np).all((1, 2, 3))

        norms = normalised_distance("linf", (adv_np - lower) / span, (x_np - lower) / span)
        norms = np.where(claimed, norms, np.inf)  # +inf where no adversarial was found
        agree = [("distances", to_numpy(result.distances), norms, tolerance(dtype))]
        at_most = [("apsr", to_numpy(result.apsr), apsr)] if verifiable else []
        return [
            Returned(
                "adversarials", adv, claimed=claimed, verify=verify, agree=agree, at_most=at_most
            ),  # fmt: skip
            Returned("apsr", result.apsr, kind="per-sample"),
            Returned("distances", result.distances, kind="per-sample"),
            Returned("success", result.success, kind="per-sample"),
        ]

    caller = {"inputs": x, "labels": labels}
    if masks is not None:
        caller["masks"] = masks
    return Setup(
        run, collect, x, bounds, caller=caller, modules=modules,
        buffers_may_change=variant == "batchnorm", sanity=nan_sanity(model),
    )  # fmt: skip


def masks_as(mask_np: np.ndarray, container: str) -> Any:
    """The caller's segmentation masks: a bool tensor (on the labels' device), a uint8 0/1
    tensor, a NumPy array, a nested list, a JAX or TensorFlow array, or a string (refused)."""
    if container == "tensor":
        return torch.from_numpy(mask_np).to(labels_device())
    if container == "uint8":
        return torch.from_numpy(mask_np.astype(np.uint8)).to(labels_device())
    if container == "numpy":
        return mask_np
    if container == "list":
        return mask_np.tolist()
    if container == "jax":
        import jax.numpy as jnp

        return jnp.asarray(mask_np)
    if container == "tf":
        import tensorflow as tf

        return tf.constant(mask_np)
    return str(mask_np.tolist())


# --------------------------------------------------------------------------------------------
# The Lagrangian training attack (functional and torchattacks)


def lagrangian_case(
    *,
    torchattacks: bool = False,
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
    steps: Any = 5,
    seed: int = 0,
    conv: bool = False,
    label_offset: int = 0,
    call_bounds: tuple[float, float] | None = None,
    attack_seed: int | None = 0,
    spread: float = 0.05,
    **kwargs: Any,
) -> Setup:
    """``alma_plugin.lagrangian`` (PyTorch or JAX) or torchattacks ``Lagrangian`` (bounds
    [0, 1]). The attack claims no success (it returns a training perturbation for every
    sample): its outputs must be in bounds, finite, graph-free and ``norms`` must be ‖δ‖₂."""
    if torchattacks:
        bounds = (0.0, 1.0)
    x, x_np = inputs_for(framework, n, shape, bounds, dtype, mode, seed, spread)
    model, verifier, _, modules = models_for(
        framework, shape, k, seed=seed, bounds=bounds, variant=variant, dtype=dtype, conv=conv,
    )  # fmt: skip
    goal = goal_labels(predictions(verifier, x), k, targeted) + label_offset
    caller_labels = labels_as(goal, labels_dtype, container, framework)
    lower, span = bounds[0], bounds[1] - bounds[0]
    attack = None
    if torchattacks:
        from alma_plugin.torchattacks import Lagrangian

        instance, run_call = deferred(
            lambda: targeted_by_label(
                Lagrangian(model, steps=steps, seed=attack_seed, **kwargs), targeted
            )
        )
        attack = instance

        def run() -> Any:
            return run_call()(x, caller_labels)

    else:
        from alma_plugin import lagrangian

        def run() -> Any:
            return lagrangian(
                model, x, caller_labels, steps=steps, targeted=targeted,
                bounds=call_bounds or bounds, seed=attack_seed, **kwargs,
            )  # fmt: skip

    def collect(result: Any) -> list[Returned]:
        perturbed = result if torchattacks else result.perturbed
        norms = normalised_distance("l2", (to_numpy(perturbed) - lower) / span,
                                    (x_np - lower) / span)  # fmt: skip
        returned = [Returned("perturbed", perturbed)]
        if not torchattacks:
            agree = [("norms", to_numpy(result.norms), norms, tolerance(dtype))]
            returned[0].agree = agree
            returned.append(Returned("norms", result.norms, kind="per-sample"))
        return returned

    return Setup(
        run, collect, x, bounds, caller={"inputs": x, "labels": caller_labels}, modules=modules,
        attack=attack, buffers_may_change=variant == "batchnorm", sanity=nan_sanity(model),
    )  # fmt: skip
