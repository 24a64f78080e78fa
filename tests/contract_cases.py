"""The contract every public entry point honours, as data: tiny models, one builder per entry
point, and ONE checker (:func:`check`) shared by the contract table (``test_contract.py``) and
the property-based tests (``test_properties.py``).

A row (:class:`Case`) builds a fresh :class:`Setup` — the caller's tensors, the model, the call —
and :func:`check` runs the call and asserts the invariants of :data:`INVARIANTS`: either a clear
``ValueError``/``TypeError`` whose message names the offending argument, or a result whose every
claimed success re-verifies on the returned tensor, is finite, lies in bounds, carries no graph,
and leaves the caller's tensors, the model and the attack object untouched.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import eagerpy as ep
import numpy as np
import torch
from torch import nn

HAS_JAX = importlib.util.find_spec("jax") is not None

#: Where the PyTorch rows put the caller's tensors and models: the CPU, or a CUDA device for the
#: table's CUDA column (:func:`on_device`); their labels and masks may sit elsewhere.
DEVICE = torch.device("cpu")
LABELS_DEVICE: torch.device | None = None  # None: on DEVICE


@contextlib.contextmanager
def on_device(device: str, labels_device: str | None = None) -> Iterator[None]:
    """Build (and run) the PyTorch rows on ``device`` inside the block, their labels (and
    segmentation masks) on ``labels_device`` (default: the same device)."""
    global DEVICE, LABELS_DEVICE
    previous = DEVICE, LABELS_DEVICE
    DEVICE = torch.device(device)
    LABELS_DEVICE = None if labels_device is None else torch.device(labels_device)
    try:
        yield
    finally:
        DEVICE, LABELS_DEVICE = previous


def _labels_device() -> torch.device:
    return DEVICE if LABELS_DEVICE is None else LABELS_DEVICE


#: The invariants each row asserts (the same list for every row; some are vacuous for a row,
#: e.g. "claims" when the row must raise).
INVARIANTS = (
    "outcome: the row's clear error (type, message naming the argument) or a result",
    "warnings: TrainingModeWarning exactly when alma/alma_prox get a model in training mode",
    "types: each returned tensor has the caller's framework, shape, dtype and device",
    "finite: returned tensors are finite (distances: NaN exactly for NaN/Inf samples)",
    "bounds: returned inputs lie within the bounds (distances: >= 0, 0 at x_adv = x)",
    "claims: every claimed success re-verifies on the returned tensor (finite logits), "
    "reported distances/norms/APSR match, unclaimed samples come back unchanged, eps respected",
    "graph: returned tensors carry no autograd graph",
    "caller: the caller's tensors keep values, dtype, requires_grad and .grad",
    "model: parameters, buffers, .grad, requires_grad and every train/eval flag untouched",
    "attack: repr free of memory addresses and identical before and after the call",
)


def training_mode_warning() -> type[Warning]:
    """The core's ``TrainingModeWarning`` (a placeholder no warning matches if it is missing)."""
    from alma_plugin.core import validation

    found = getattr(validation, "TrainingModeWarning", None)
    if found is None:

        class MissingTrainingModeWarning(UserWarning):
            pass

        return MissingTrainingModeWarning
    return found


# --------------------------------------------------------------------------------------------
# Expectations, rows and outcomes


@dataclass(frozen=True)
class Expect:
    """``errors`` empty: a result is required. Otherwise an error of ``errors`` whose message
    matches ``match`` (the argument's name) is required, or accepted when ``result_ok``."""

    errors: tuple[type[BaseException], ...] = ()
    match: str = ""
    result_ok: bool = True


OK = Expect()
CLEAR = (ValueError, TypeError)


def raises(match: str, *errors: type[BaseException]) -> Expect:
    return Expect(errors or CLEAR, match, False)


def either(match: str, *errors: type[BaseException]) -> Expect:
    """A valid result, or a clear error naming the argument: both honour the contract."""
    return Expect(errors or CLEAR, match, True)


@dataclass
class Returned:
    """One tensor an entry point returned, and what the entry point claims about it.

    kind "input": an (adversarial) input batch (N, ...) of the caller's type, shape and dtype.
    kind "distance": per-sample distances (N,), NaN exactly where ``nan`` is True.
    """

    name: str
    tensor: Any
    kind: str = "input"
    claimed: np.ndarray | None = None  # (N,) samples reported successful
    verify: Callable[[Any], np.ndarray] | None = None  # re-evaluated success on ``tensor``
    unchanged: bool = True  # unclaimed samples must equal the clean inputs
    agree: list[tuple[str, np.ndarray, np.ndarray, float]] = field(default_factory=list)
    at_most: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    graph_free: bool = True
    nan: np.ndarray | None = None  # distances: samples that must be NaN
    zero: bool = False  # distances: every finite value must be ~0 (D(x, x))


@dataclass
class Setup:
    """A built row: the call, how to read its result, and what it must leave untouched."""

    run: Callable[[], Any]
    collect: Callable[[Any], list[Returned]]
    inputs: Any  # the clean input batch, as the caller passed it
    bounds: tuple[float, float] = (0.0, 1.0)
    caller: dict[str, Any] = field(default_factory=dict)
    modules: list[nn.Module] = field(default_factory=list)
    attack: Any = None
    check_address: bool = False  # the attack's repr must hold no memory address (Foolbox)
    buffers_may_change: bool = False  # batch norm in training mode (documented)
    sanity: Callable[[], None] | None = None  # asserts the row exercised what it claims to


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], Setup]
    expect: Expect = OK
    warns: bool = False


# --------------------------------------------------------------------------------------------
# Conversions


def to_numpy(tensor: Any) -> np.ndarray:
    """float64 (or bool/int) NumPy copy of a torch / JAX / eagerpy / NumPy tensor."""
    if isinstance(tensor, ep.Tensor):
        tensor = tensor.raw
    if isinstance(tensor, torch.Tensor):
        t = tensor.detach()
        if t.dtype.is_floating_point:
            t = t.to(torch.float64)
        return t.cpu().numpy().copy()
    array = np.asarray(tensor)
    if array.dtype.kind == "f" or "float" in str(array.dtype):
        return array.astype(np.float64)
    return array.copy()


def dtype_of(tensor: Any) -> Any:
    return (tensor.raw if isinstance(tensor, ep.Tensor) else tensor).dtype


def flat(a: np.ndarray) -> np.ndarray:
    """(N, everything else), also for N = 0."""
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:])))


def same_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-element equality where NaN equals NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b


# --------------------------------------------------------------------------------------------
# Tiny models (torch): a fixed affine map to centred [−0.5, 0.5] units, so one classifier
# behaves the same for any bounds; seeded weights.


class Centre(nn.Module):
    def __init__(self, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.lower, self.span = float(bounds[0]), float(bounds[1] - bounds[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.lower) / self.span - 0.5


def torch_classifier(
    shape: Sequence[int],
    k: int,
    *,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    conv: bool = False,
    avoid_class0: bool = False,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Linear (or 1-conv + linear) classifier on inputs of ``shape`` = (C, H, W), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    c, h, w = shape
    layers: list[nn.Module] = [Centre(bounds)]
    features = c * h * w
    if conv:
        layers += [nn.Conv2d(c, 2, 3, padding=1), nn.ReLU()]
        features = 2 * h * w
    layers += [nn.Flatten(), nn.Linear(features, k)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 4 / math.sqrt(features))
        if avoid_class0:  # argmax of NaN logits is 0 in torch and JAX: keep labels ≠ 0
            net[-1].bias[0] = -100.0
    return net.to(DEVICE, dtype).eval()


def torch_segmenter(
    channels: int, k: int, *, seed: int = 0, bounds: tuple[float, float] = (0.0, 1.0)
) -> nn.Module:
    """A 1×1 convolution: per-pixel logits (N, K, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(Centre(bounds), nn.Conv2d(channels, k, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 4)
    return net.to(DEVICE).eval()


class Wrapped(nn.Module):
    """A model variant users hit: ``kind`` in numpy, list (non-tensor outputs), argmax
    (one-hot of the argmax: piecewise constant), detached, nan (everywhere), nan_far (NaN
    beyond a radius around the middle of the bounds), raise (fails on the 3rd call)."""

    def __init__(
        self,
        net: nn.Module,
        kind: str,
        bounds: tuple[float, float] = (0.0, 1.0),
        radius: float = 0.08,
    ) -> None:
        super().__init__()
        self.net, self.kind, self.radius = net, kind, radius
        self.lower, self.span = float(bounds[0]), float(bounds[1] - bounds[0])
        self.calls = 0
        self.nan_outputs = 0

    def forward(self, x: torch.Tensor) -> Any:
        self.calls += 1
        if self.kind == "raise" and self.calls >= 3:
            raise RuntimeError("model failed midway (contract test)")
        z = self.net(x)
        if self.kind == "numpy":
            return z.detach().cpu().numpy()
        if self.kind == "list":
            return z.detach().cpu().tolist()
        if self.kind == "argmax":
            return nn.functional.one_hot(z.argmax(1), z.shape[1]).movedim(-1, 1).to(z.dtype)
        if self.kind == "detached":
            return z.detach()
        if self.kind == "nan":
            self.nan_outputs += len(x)
            return z * float("nan")
        if self.kind == "nan_far":
            u = (x - self.lower) / self.span
            far = (u - 0.5).flatten(1).abs().amax(1) > self.radius
            self.nan_outputs += int(far.sum())
            return torch.where(far.view((-1,) + (1,) * (z.ndim - 1)), float("nan"), z)
        return z


def train_mode(net: nn.Module, batchnorm: bool = False) -> nn.Module:
    """``net`` followed by Dropout(p=0) (training mode changes nothing, so successes still
    re-verify) or preceded by a BatchNorm2d (training mode changes the model); training mode."""
    if batchnorm:
        bn = nn.BatchNorm2d(net_channels(net))
        return nn.Sequential(bn, net).to(DEVICE).train()
    return nn.Sequential(net, nn.Dropout(0.0)).train()


def net_channels(net: nn.Module) -> int:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return 1
    return 1


def wrap_model(
    net: nn.Module, variant: str | None, bounds: tuple[float, float], radius: float = 0.08
) -> tuple[nn.Module, nn.Module, bool]:
    """(model, verifier, verifiable): the model to attack, a copy that re-evaluates successes
    (eval mode), and whether successes of this variant can be re-verified."""
    if variant in (None, "ok"):
        model = net
    elif variant == "train":
        model = train_mode(net)
    elif variant == "batchnorm":
        model = train_mode(net, batchnorm=True)
    elif variant == "raise_train":  # raises on the 3rd call, in training mode (with dropout)
        model = nn.Sequential(Wrapped(net, "raise", bounds), nn.Dropout(0.0)).train()
    else:
        model = Wrapped(net, variant, bounds, radius).eval()
    verifier = copy.deepcopy(model).eval()
    for module in verifier.modules():
        if isinstance(module, Wrapped):
            module.kind = {"nan": "nan", "nan_far": "nan_far"}.get(module.kind, "ok")
    return model, verifier, variant != "batchnorm"


# --------------------------------------------------------------------------------------------
# Inputs and labels


def clean_inputs(
    n: int,
    shape: Sequence[int],
    bounds: tuple[float, float],
    *,
    seed: int = 0,
    spread: float = 0.05,
) -> np.ndarray:
    """float64 inputs in the middle of the bounds (normalised values in 0.5 ± spread)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.5 - spread, 0.5 + spread, (n, *shape))
    return bounds[0] + u * (bounds[1] - bounds[0])


TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def torch_inputs(array: np.ndarray, dtype: str, mode: str | None) -> torch.Tensor:
    """The caller's input tensor; ``mode``: None, requires_grad, inference, channels_last."""
    if mode == "inference":
        with torch.inference_mode():
            return torch.tensor(array, dtype=TORCH_DTYPES[dtype], device=DEVICE)
    x = torch.tensor(array, dtype=TORCH_DTYPES[dtype], device=DEVICE)
    if mode == "requires_grad":
        x.requires_grad_(True)
    elif mode == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def labels_as(labels: np.ndarray, dtype: str, container: str, framework: str = "torch") -> Any:
    """The caller's labels: ``container`` tensor (of ``framework``), numpy or list."""
    if container == "list":
        return labels.astype(np.int64).tolist()
    array = labels.astype(dtype)
    if container == "numpy":
        return array
    if framework == "jax":
        import jax.numpy as jnp

        return jnp.asarray(array)
    return torch.from_numpy(array.copy()).to(_labels_device())


def predictions(model: Callable[[Any], Any], x: Any) -> np.ndarray:
    """Clean argmax of ``model`` (torch no_grad or JAX), as int64 NumPy."""
    if isinstance(x, torch.Tensor):
        with torch.no_grad():
            return to_numpy(model(x.detach().clone())).argmax(1).astype(np.int64)
    return np.asarray(to_numpy(model(x))).argmax(1).astype(np.int64)


def goal_labels(pred: np.ndarray, k: int, targeted: bool) -> np.ndarray:
    return (pred + 1) % k if targeted else pred


def verify_classification(
    logits: np.ndarray, labels: np.ndarray, targeted: bool, returned: np.ndarray
) -> np.ndarray:
    """argmax ≠ y (= t when targeted), with finite logits and a finite returned input."""
    n = len(labels)
    finite = np.isfinite(flat(logits)).all(1) & np.isfinite(flat(returned)).all(1)
    if n == 0:
        return finite
    pred = logits.argmax(1)
    hit = pred == labels if targeted else pred != labels
    return finite & hit


def torch_logits(verifier: nn.Module, x: Any) -> np.ndarray:
    raw = x.raw if isinstance(x, ep.Tensor) else x
    with torch.no_grad():
        return to_numpy(verifier(raw.detach().clone()))


# --------------------------------------------------------------------------------------------
# JAX models


def jax_classifier(
    shape: Sequence[int],
    k: int,
    *,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    variant: str | None = None,
    avoid_class0: bool = False,
    radius: float = 0.08,
) -> Callable[[Any], Any]:
    """A linear JAX classifier (flattened input, any layout) and the variants of
    :class:`Wrapped` (numpy, argmax, nan, nan_far, raise)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    features = int(np.prod(shape))
    weights = jnp.asarray(rng.standard_normal((features, k)) * 4 / math.sqrt(features))
    bias = np.zeros(k)
    if avoid_class0:
        bias[0] = -100.0
    bias = jnp.asarray(bias)
    lower, span = float(bounds[0]), float(bounds[1] - bounds[0])
    calls = [0]

    def model(x: Any) -> Any:
        calls[0] += 1
        if variant == "raise" and calls[0] >= 3:
            raise RuntimeError("model failed midway (contract test)")
        u = (x - lower) / span - 0.5
        z = u.reshape(u.shape[0], features) @ weights.astype(x.dtype) + bias.astype(x.dtype)
        if variant == "numpy":
            return np.asarray(z)
        if variant == "argmax":
            return jax.nn.one_hot(z.argmax(1), k, dtype=z.dtype)
        if variant == "nan":
            return z * jnp.nan
        if variant == "nan_far":
            far = jnp.abs(u).reshape(u.shape[0], features).max(1, initial=0.0) > radius
            return jnp.where(far[:, None], jnp.nan, z)
        return z

    return model


def jax_inputs(array: np.ndarray, dtype: str) -> Any:
    import jax.numpy as jnp

    return jnp.asarray(array, dtype=getattr(jnp, dtype))


# --------------------------------------------------------------------------------------------
# Entry points. Each builder takes keyword options and returns a Setup.


def _inputs_for(
    framework: str, n: int, shape: Sequence[int], bounds: tuple[float, float], dtype: str,
    mode: str | None, seed: int, spread: float = 0.05,
) -> tuple[Any, np.ndarray]:  # fmt: skip
    array = clean_inputs(n, shape, bounds, seed=seed, spread=spread)
    if framework == "jax":
        x = jax_inputs(array, dtype)
    else:
        x = torch_inputs(array, dtype, mode)
    return x, to_numpy(x)


def _models_for(
    framework: str, shape: Sequence[int], k: int, *, seed: int, bounds: tuple[float, float],
    variant: str | None, dtype: str, conv: bool = False, radius: float = 0.08,
) -> tuple[Any, Any, bool, list[nn.Module]]:  # fmt: skip
    """(model, verifier, verifiable, modules to watch) for a classifier."""
    avoid = variant in ("nan", "nan_far")
    if framework == "jax":
        jax_variant = {"raise_train": "raise", "train": None}.get(variant or "", variant)
        model = jax_classifier(
            shape, k, seed=seed, bounds=bounds, variant=jax_variant, avoid_class0=avoid,
            radius=radius,
        )  # fmt: skip
        verifier = jax_classifier(
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


def _logits(framework: str, verifier: Any, x: Any) -> np.ndarray:
    if framework == "jax":
        raw = x.raw if isinstance(x, ep.Tensor) else x
        return to_numpy(verifier(raw))
    return torch_logits(verifier, x)


def _nan_sanity(model: Any) -> Callable[[], None] | None:
    if isinstance(model, Wrapped) and model.kind in ("nan_far",):

        def sanity() -> None:
            assert model.nan_outputs > 0, "the NaN region was never reached: the row is vacuous"

        return sanity
    return None


def normalised_distance(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """D(a, b) recomputed in float64 from inputs already in [0, 1] (ℓp in NumPy, the others
    with the package's own function on float64 torch tensors)."""
    n = len(a)
    diff = flat(a - b)
    if name == "l1":
        return np.abs(diff).sum(1)
    if name == "l2":
        return np.sqrt((diff**2).sum(1))
    if name == "linf":
        return np.abs(diff).max(1) if diff.shape[1] else np.zeros(n)
    from alma_plugin.distances import get_distance

    function = get_distance(name).function
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
    nan_radius: float = 0.08,
    spread: float = 0.05,
    labels: Sequence[int] | None = None,
    **kwargs: Any,
) -> Setup:
    """``alma_plugin.alma`` (PyTorch or JAX). ``labels``: the classes (or targets) to use
    instead of the model's clean predictions (or their successors when targeted)."""
    from alma_plugin import alma

    x, x_np = _inputs_for(framework, n, shape, bounds, dtype, mode, seed, spread)
    model, verifier, verifiable, modules = _models_for(
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
        recomputed = normalised_distance(distance, (adv_np - lower) / span, (x_np - lower) / span)
        recomputed = np.where(claimed, recomputed, np.inf)

        def verify(tensor: Any) -> np.ndarray:
            if not verifiable:
                return claimed
            return verify_classification(
                _logits(framework, verifier, tensor), goal, targeted, to_numpy(tensor)
            )

        return [
            Returned(
                "adversarials",
                adv,
                claimed=claimed,
                verify=verify,
                agree=[("distances", to_numpy(result.distances), recomputed, tolerance(dtype))],
            ),  # fmt: skip
            Returned("distances", result.distances, kind="per-sample"),
            Returned("success", result.success, kind="per-sample"),
        ]

    return Setup(
        run, collect, x, bounds, caller={"inputs": x, "labels": caller_labels}, modules=modules,
        buffers_may_change=variant == "batchnorm", sanity=_nan_sanity(model),
    )  # fmt: skip


def make_predicate(kind: str, goal: np.ndarray, targeted: bool) -> Callable[[Any, Any], Any]:
    """Success predicates for ``alma(is_adversarial=...)``: "ok" (argmax test; NaN logits have
    argmax 0, so it calls them adversarial), and wrong shapes/dtypes."""

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
        return ep.astensor(hit) if wrapped else hit

    return predicate


def prox_case(
    *,
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
    **kwargs: Any,
) -> Setup:
    """``alma_plugin.alma_prox`` on per-pixel logits (N, K, H, W)."""
    from alma_plugin import alma_prox

    x, x_np = _inputs_for("torch", n, (channels, size, size), bounds, dtype, mode, seed)
    net = torch_segmenter(channels, max(k, 1), seed=seed, bounds=bounds).to(TORCH_DTYPES[dtype])
    model, verifier, verifiable = wrap_model(net, variant, bounds, nan_radius)
    with torch.no_grad():
        pred = to_numpy(verifier(x.detach().clone())).argmax(1)
    goal = goal_labels(pred, k, targeted)
    mask_np = np.ones(goal.shape, dtype=bool)
    if masked:
        mask_np[:, : size // 2] = False
        goal = np.where(mask_np, goal, 255)
    labels = labels_as(goal, labels_dtype if not masked else "int64", container)
    masks = _masks_as(mask_np, mask_container) if masked else None
    lower, span = bounds[0], bounds[1] - bounds[0]

    def apsr_of(tensor: Any) -> tuple[np.ndarray, np.ndarray]:
        logits = torch_logits(verifier, tensor)
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
        run, collect, x, bounds, caller=caller, modules=[model],
        buffers_may_change=variant == "batchnorm", sanity=_nan_sanity(model),
    )  # fmt: skip


def _masks_as(mask_np: np.ndarray, container: str) -> Any:
    """The caller's segmentation masks: a bool tensor (on the labels' device), a uint8 0/1
    tensor, a NumPy array, a nested list, a JAX array, or a string (refused)."""
    if container == "tensor":
        return torch.from_numpy(mask_np).to(_labels_device())
    if container == "uint8":
        return torch.from_numpy(mask_np.astype(np.uint8)).to(_labels_device())
    if container == "numpy":
        return mask_np
    if container == "list":
        return mask_np.tolist()
    if container == "jax":
        import jax.numpy as jnp

        return jnp.asarray(mask_np)
    return str(mask_np.tolist())


def deferred(make: Callable[[], Any]) -> tuple[Any, Callable[[], Any]]:
    """(instance or None, getter): a constructor error is raised by the row's call, where the
    checker judges it, not while building the row."""
    try:
        instance = make()
    except Exception as error:  # noqa: BLE001 - re-raised by the getter
        captured = error

        def fail() -> Any:
            raise captured

        return None, fail
    return instance, lambda: instance


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
    x, x_np = _inputs_for(framework, n, shape, bounds, dtype, mode, seed, spread)
    model, verifier, verifiable, modules = _models_for(
        framework, shape, k, seed=seed, bounds=bounds, variant=variant, dtype=dtype,
        radius=nan_radius or (0.01 if attack == "LinfALMAProx" else 0.08),
    )  # fmt: skip
    if framework == "jax":
        fmodel = fb.JAXModel(
            model, bounds=bounds,
            data_format=data_format or ("channels_last" if channels_last else "channels_first"),
        )  # fmt: skip
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Foolbox's own train-mode warning
            fmodel = fb.PyTorchModel(model, bounds=bounds, device=DEVICE)
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
                    _logits(framework, verifier, tensor), goal, targeted, to_numpy(tensor)
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
        sanity=_nan_sanity(model),
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
    x, x_np = _inputs_for("torch", n, shape, bounds, dtype, mode, seed)
    model, verifier, verifiable, modules = _models_for(
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
        attack=instance, sanity=_nan_sanity(model),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Distances

LPIPS_CHANNELS = (64, 192, 384, 256, 256)
LPIPS_CONVS = ((0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3),
               (10, 256, 256, 3))  # fmt: skip


def random_lpips() -> Any:
    """An LPIPS metric with seeded random weights (no weight files on CI)."""
    from alma_plugin import distances

    lpips_class = getattr(distances, "LPIPS", None)
    if lpips_class is None:
        from alma_plugin.distances.lpips import LPIPS as lpips_class  # type: ignore[no-redef]
    generator = torch.Generator().manual_seed(0)
    backbone = {}
    for index, c_in, c_out, size in LPIPS_CONVS:
        scale = (2 / (c_in * size * size)) ** 0.5
        backbone[f"features.{index}.weight"] = scale * torch.randn(
            c_out, c_in, size, size, generator=generator
        )
        backbone[f"features.{index}.bias"] = 0.1 * torch.randn(c_out, generator=generator)
    linear = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
        for i, c in enumerate(LPIPS_CHANNELS)
    }
    return lpips_class(backbone_weights=backbone, linear_weights=linear)


DISTANCE_SHAPES = {
    "l1": (1, 4, 4),
    "l2": (1, 4, 4),
    "linf": (1, 4, 4),
    "ciede2000": (3, 4, 4),
    "ssim": (1, 12, 12),
    "msssim": (1, 176, 176),
    "lpips": (3, 32, 32),
}


def public_distance(name: str) -> Callable[[Any, Any], Any]:
    """``alma_plugin.distances.<name>`` (a random-weight LPIPS for "lpips": no weight files)."""
    from alma_plugin import distances

    if name == "lpips":
        return random_lpips()
    function = getattr(distances, name)
    if not callable(function):
        raise AssertionError(f"alma_plugin.distances.{name} is not callable ({function!r})")
    return function


def distance_case(
    name: str,
    *,
    framework: str = "torch",
    n: int = 3,
    dtype: str = "float32",
    nan_rows: Sequence[int] = (),
    inf_rows: Sequence[int] = (),
    mode: str | None = None,
    seed: int = 0,
) -> Setup:
    """``alma_plugin.distances.<name>(x_adv, x)`` on raw tensors (``mode="eagerpy"``: wrapped)."""
    shape = DISTANCE_SHAPES[name]
    base = clean_inputs(n, shape, (0.0, 1.0), seed=seed, spread=0.3)
    other = np.clip(base + np.random.default_rng(seed + 1).normal(0, 0.05, base.shape), 0, 1)
    for i in nan_rows:
        other[i].flat[0] = np.nan
    for i in inf_rows:
        other[i].flat[-1] = np.inf
    if framework == "jax":
        x, x_adv = jax_inputs(base, dtype), jax_inputs(other, dtype)
    else:
        x = torch_inputs(base, dtype, mode if mode != "eagerpy" else None)
        x_adv = torch_inputs(other, dtype, mode if mode != "eagerpy" else None)
    if mode == "eagerpy":
        x, x_adv = ep.astensor(x), ep.astensor(x_adv)
    function = public_distance(name)
    broken = np.zeros(n, dtype=bool)
    broken[list(nan_rows) + list(inf_rows)] = True

    def run() -> Any:
        return function(x_adv, x), function(x, x)

    def collect(result: Any) -> list[Returned]:
        value, identity = result
        return [
            Returned("D(x_adv, x)", value, kind="distance", nan=broken, graph_free=False),
            Returned(
                "D(x, x)",
                identity,
                kind="distance",
                nan=np.zeros(n, dtype=bool),
                graph_free=False,
                zero=True,
            ),  # fmt: skip
        ]

    caller = {"x_adv": x_adv, "x": x}
    return Setup(run, collect, x, (0.0, 1.0), caller=caller)


# --------------------------------------------------------------------------------------------
# The checker


def _snapshot_value(value: Any) -> dict[str, Any]:
    if isinstance(value, ep.Tensor):
        value = value.raw
    if isinstance(value, torch.Tensor):
        state = {
            "values": to_numpy(value),
            "dtype": value.dtype,
            "requires_grad": value.requires_grad,
            "grad": None if value.grad is None else to_numpy(value.grad),
            "inference": value.is_inference(),
        }
        if not value.is_inference():
            state["version"] = value._version
        return state
    if isinstance(value, list):
        return {"values": copy.deepcopy(value)}
    return {"values": to_numpy(value), "dtype": str(getattr(value, "dtype", type(value)))}


def _same_snapshot(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    problems = []
    for key in a:
        left, right = a[key], b.get(key)
        if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
            if not (
                isinstance(left, np.ndarray)
                and isinstance(right, np.ndarray)
                and left.shape == right.shape
                and same_values(left, right).all()
            ):
                problems.append(key)
        elif left != right:
            problems.append(f"{key} ({left!r} -> {right!r})")
    return problems


def _module_state(modules: Sequence[nn.Module], with_buffers: bool) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for i, module in enumerate(modules):
        for name, p in module.named_parameters():
            state[f"{i}.{name}"] = to_numpy(p)
            state[f"{i}.{name}.requires_grad"] = p.requires_grad
            state[f"{i}.{name}.grad"] = None if p.grad is None else to_numpy(p.grad)
        if with_buffers:
            for name, b in module.named_buffers():
                state[f"{i}.{name} (buffer)"] = to_numpy(b)
        for name, m in module.named_modules():
            state[f"{i}.{name or 'model'}.training"] = m.training
    return state


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _framework_type(value: Any) -> str:
    if isinstance(value, ep.Tensor):
        return f"eagerpy.{type(value).__name__}"
    if isinstance(value, torch.Tensor):
        return "torch.Tensor"
    module = type(value).__module__.split(".")[0]
    return {"jaxlib": "jax.Array", "jax": "jax.Array"}.get(module, type(value).__name__)


def check(case: Case) -> tuple[Setup, Any]:
    """Run one row and assert every invariant of :data:`INVARIANTS`; return the built setup
    and the call's result (None after an expected error)."""
    setup = case.build()
    caller_before = {k: _snapshot_value(v) for k, v in setup.caller.items()}
    model_before = _module_state(setup.modules, not setup.buffers_may_change)
    repr_before = repr(setup.attack) if setup.attack is not None else None
    error: BaseException | None = None
    result: Any = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = setup.run()
        except Exception as raised:  # noqa: BLE001 - judged below
            error = raised

    # outcome
    expect = case.expect
    if error is not None:
        assert expect.errors and isinstance(error, expect.errors), (
            f"{case.id}: unexpected {type(error).__name__}: {error}"
        )
        assert re.search(expect.match, str(error)), (
            f"{case.id}: the {type(error).__name__} message does not name {expect.match!r}: {error}"
        )
    else:
        assert expect.result_ok, (
            f"{case.id}: expected a {'/'.join(e.__name__ for e in expect.errors)} naming "
            f"{expect.match!r}, got a result"
        )

    # warnings
    category = training_mode_warning()
    training = [w for w in caught if issubclass(w.category, category)]
    if case.warns:
        assert training, f"{case.id}: no {category.__name__} for a model in training mode"
    else:
        assert not training, f"{case.id}: unexpected warning {training[0].message}"

    # results
    if error is None:
        for returned in setup.collect(result):
            _check_returned(case.id, setup, returned)
        if setup.sanity is not None:
            setup.sanity()

    # caller
    for key, before in caller_before.items():
        problems = _same_snapshot(before, _snapshot_value(setup.caller[key]))
        assert not problems, f"{case.id}: the caller's {key} changed: {problems}"
    # model
    after = _module_state(setup.modules, not setup.buffers_may_change)
    changed = [k for k in model_before if _same_snapshot({k: model_before[k]}, {k: after.get(k)})]
    assert not changed and len(after) == len(model_before), (
        f"{case.id}: the model changed: {changed or sorted(set(after) ^ set(model_before))}"
    )
    # attack
    if setup.attack is not None:
        text = repr(setup.attack)
        assert text == repr_before, f"{case.id}: repr changed: {repr_before!r} -> {text!r}"
        if setup.check_address:
            assert not _ADDRESS.search(text), f"{case.id}: repr holds an address: {text}"
    return setup, result


def _check_returned(row: str, setup: Setup, r: Returned) -> None:
    where = f"{row}: {r.name}"
    tensor = r.tensor
    inputs = setup.inputs
    n = len(to_numpy(inputs)) if not isinstance(inputs, list) else len(inputs)
    # types
    assert _framework_type(tensor) == _framework_type(inputs), (
        f"{where}: type {_framework_type(tensor)}, the caller passed {_framework_type(inputs)}"
    )
    values = to_numpy(tensor)
    raw = tensor.raw if isinstance(tensor, ep.Tensor) else tensor
    # graph
    if isinstance(raw, torch.Tensor) and r.graph_free:
        assert raw.grad_fn is None and not raw.requires_grad, f"{where}: carries an autograd graph"
    # device: every returned torch tensor (results, distances, flags) where the inputs are
    raw_inputs = inputs.raw if isinstance(inputs, ep.Tensor) else inputs
    if isinstance(raw, torch.Tensor) and isinstance(raw_inputs, torch.Tensor):
        assert raw.device == raw_inputs.device, (
            f"{where}: on {raw.device}, the caller's inputs on {raw_inputs.device}"
        )
    if r.kind == "per-sample":
        assert values.shape == (n,), f"{where}: shape {values.shape}, expected ({n},)"
        return
    if r.kind == "distance":
        assert values.shape == (n,), f"{where}: shape {values.shape}, expected ({n},)"
        assert "float" in str(dtype_of(tensor)), f"{where}: dtype {dtype_of(tensor)}"
        assert r.nan is not None
        assert np.isnan(values[r.nan]).all(), (
            f"{where}: samples with NaN/Inf values must give NaN, got {values[r.nan]}"
        )
        good = values[~r.nan]
        assert np.isfinite(good).all() and (good >= 0).all(), f"{where}: {values}"
        if r.zero:
            assert np.abs(good).max(initial=0) <= 1e-3, f"{where}: D(x, x) = {good}"
        return
    x_np = to_numpy(inputs)
    assert values.shape == x_np.shape, f"{where}: shape {values.shape}, inputs {x_np.shape}"
    assert dtype_of(tensor) == dtype_of(inputs), (
        f"{where}: dtype {dtype_of(tensor)}, inputs {dtype_of(inputs)}"
    )
    # finite
    assert np.isfinite(values).all(), f"{where}: non-finite values in samples " + str(
        np.flatnonzero(~np.isfinite(flat(values)).all(1)).tolist()
    )
    # bounds
    lower, upper = setup.bounds
    slack = 1e-6 * (upper - lower)
    if values.size:
        assert values.min() >= lower - slack and values.max() <= upper + slack, (
            f"{where}: values in [{values.min()}, {values.max()}] outside {setup.bounds}"
        )
    # claims
    if r.claimed is not None:
        claimed = np.asarray(r.claimed, dtype=bool)
        assert claimed.shape == (n,), f"{where}: success shape {claimed.shape}"
        if r.verify is not None and claimed.any():
            verified = r.verify(tensor)
            bad = np.flatnonzero(claimed & ~verified)
            assert not len(bad), f"{where}: claimed successes {bad.tolist()} do not re-verify"
        if r.unchanged:
            same = flat(same_values(values, x_np)).all(1)
            bad = np.flatnonzero(~claimed & ~same)
            assert not len(bad), f"{where}: unsuccessful samples {bad.tolist()} were changed"
    for name, reported, recomputed, rtol in r.agree:
        both_inf = np.isinf(reported) & np.isinf(recomputed) & (reported == recomputed)
        with np.errstate(invalid="ignore"):  # inf - inf
            close = np.abs(reported - recomputed) <= rtol * (1 + np.abs(recomputed))
        bad = np.flatnonzero(~(both_inf | close))
        assert not len(bad), (
            f"{where}: reported {name} {reported[bad]} != recomputed {recomputed[bad]}"
        )
    for name, measured, limit in r.at_most:
        bad = np.flatnonzero(~(measured <= limit + 1e-6))
        assert not len(bad), f"{where}: {name} violated: {measured[bad]} > {limit[bad]}"


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
    **kwargs: Any,
) -> Setup:
    """``alma_plugin.lagrangian`` (PyTorch or JAX) or torchattacks ``Lagrangian`` (bounds
    [0, 1]). The attack claims no success (it returns a training perturbation for every
    sample): its outputs must be in bounds, finite, graph-free and ``norms`` must be ‖δ‖₂."""
    if torchattacks:
        bounds = (0.0, 1.0)
    x, x_np = _inputs_for(framework, n, shape, bounds, dtype, mode, seed)
    model, verifier, _, modules = _models_for(
        framework, shape, k, seed=seed, bounds=bounds, variant=variant, dtype=dtype, conv=conv,
    )  # fmt: skip
    goal = goal_labels(predictions(verifier, x), k, targeted) + label_offset
    caller_labels = labels_as(goal, labels_dtype, container, framework)
    lower, span = bounds[0], bounds[1] - bounds[0]
    attack = None
    if torchattacks:
        from alma_plugin.torchattacks import Lagrangian

        instance, run_call = deferred(
            lambda: _targeted(Lagrangian(model, steps=steps, seed=attack_seed, **kwargs), targeted)
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
        attack=attack, buffers_may_change=variant == "batchnorm", sanity=_nan_sanity(model),
    )  # fmt: skip


def _targeted(attack: Any, targeted: bool) -> Any:
    if targeted:
        attack.set_mode_targeted_by_label(quiet=True)
    return attack
