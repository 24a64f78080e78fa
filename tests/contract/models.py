"""The callers' side of a row: tiny seeded models (PyTorch and JAX, and the variants users
hit), clean inputs, labels in every container, and the device they sit on (:func:`on_device`)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import eagerpy as ep
import numpy as np
import torch
from torch import nn

from .core import flat, to_numpy

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


def labels_device() -> torch.device:
    return DEVICE if LABELS_DEVICE is None else LABELS_DEVICE


#: The invariants each row asserts (the same list for every row; some are vacuous for a row,
#: e.g. "claims" when the row must raise).
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


def count_call(calls: list[int], variant: str | None) -> None:
    """Count a call of a JAX / TensorFlow model; the variant "raise" fails on the 3rd."""
    calls[0] += 1
    if variant == "raise" and calls[0] >= 3:
        raise RuntimeError("model failed midway (contract test)")


def _tangent_lines(k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes and intercepts (float32) of the segmenters' classes: class k's logit is the
    tangent at uₖ of the parabola 20·u² (u the pixel's centred mean value, uₖ spread over the
    inputs' ±0.05 around the middle), so crossing a boundary moves a pixel into its runner-up
    class, and every pixel can be fooled within the box. (Random 1×1 weights gave three-class
    pixels whose runner-up is never the class they cross into: DLR⁺ then has a local minimum
    away from the boundary, and no row could show a success.) ``seed`` jitters the points."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.linspace(-0.05, 0.05, k) + 0.002 * torch.randn(k, generator=generator)
    return 40 * points, -20 * points**2  # the parabola's derivative at uₖ; the intercept


def torch_segmenter(
    channels: int, k: int, *, seed: int = 0, bounds: tuple[float, float] = (0.0, 1.0)
) -> nn.Module:
    """A 1×1 convolution: per-pixel logits (N, K, H, W), the classes of :func:`_tangent_lines`
    along the pixel's mean value."""
    net = nn.Sequential(Centre(bounds), nn.Conv2d(channels, k, 1))
    slopes, intercepts = _tangent_lines(k, seed)
    with torch.no_grad():
        net[1].weight.copy_((slopes / channels).view(k, 1, 1, 1).expand(k, channels, 1, 1))
        net[1].bias.copy_(intercepts)
    return net.to(DEVICE).eval()


def array_segmenter(
    framework: str,
    k: int,
    *,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    variant: str | None = None,
) -> Callable[[Any], Any]:
    """:func:`torch_segmenter` as a JAX or TensorFlow function of (N, C, H, W) arrays, with the
    variant "raise" (fails on the 3rd call) of :class:`Wrapped`."""
    slopes, intercepts = (t.double().numpy().reshape(1, k, 1, 1) for t in _tangent_lines(k, seed))
    lower, span = float(bounds[0]), float(bounds[1] - bounds[0])
    if framework == "jax":
        import jax.numpy as xp

        def cast(array: np.ndarray, like: Any) -> Any:
            return xp.asarray(array, dtype=like.dtype)

        def mean(u: Any) -> Any:
            return u.mean(1, keepdims=True)
    else:
        import tensorflow as tf

        def cast(array: np.ndarray, like: Any) -> Any:
            return tf.constant(array, dtype=like.dtype)

        def mean(u: Any) -> Any:
            return tf.reduce_mean(u, axis=1, keepdims=True)

    calls = [0]

    def model(x: Any) -> Any:
        count_call(calls, variant)
        u = (x - lower) / span - 0.5
        return mean(u) * cast(slopes, x) + cast(intercepts, x)

    return model


class Wrapped(nn.Module):
    """A model variant users hit: ``kind`` in numpy, list (non-tensor outputs), argmax
    (one-hot of the argmax: piecewise constant), detached, nan (everywhere), nan_far (NaN
    beyond a radius around the middle of the bounds), raise (fails on the 3rd call), offset64
    (a float64 head, logits around 1e5, where float32 rounds them to multiples of 1/128)."""

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
        if self.kind == "offset64":
            return 1e5 + z.double()
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
            module.kind = {"nan": "nan", "nan_far": "nan_far", "offset64": "offset64"}.get(
                module.kind, "ok"
            )
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
    if framework == "tf":
        import tensorflow as tf

        return tf.constant(array)
    return torch.from_numpy(array.copy()).to(labels_device())


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
# JAX and TensorFlow models: the same linear classifier


def _linear_parameters(
    shape: Sequence[int], k: int, seed: int, avoid_class0: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Seeded weights (features, K) and bias (K,) of the JAX / TensorFlow classifiers, and
    their feature count; class 0 is made unreachable with ``avoid_class0``."""
    rng = np.random.default_rng(seed)
    features = int(np.prod(shape))
    weights = rng.standard_normal((features, k)) * 4 / math.sqrt(features)
    bias = np.zeros(k)
    if avoid_class0:  # argmax of NaN logits is 0 in torch and JAX: keep labels ≠ 0
        bias[0] = -100.0
    return weights, bias, features


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

    weights_np, bias_np, features = _linear_parameters(shape, k, seed, avoid_class0)
    weights, bias = jnp.asarray(weights_np), jnp.asarray(bias_np)
    lower, span = float(bounds[0]), float(bounds[1] - bounds[0])
    calls = [0]

    def model(x: Any) -> Any:
        count_call(calls, variant)
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

    x = jnp.asarray(array, dtype=getattr(jnp, dtype))
    # without x64 JAX turns float64 into float32 silently: the row would not test float64
    assert x.dtype == getattr(jnp, dtype), f"JAX made {x.dtype} of {dtype}: a row with x64=True"
    return x


def tf_classifier(
    shape: Sequence[int],
    k: int,
    *,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    variant: str | None = None,
    avoid_class0: bool = False,
    radius: float = 0.08,
) -> Callable[[Any], Any]:
    """The linear classifier of :func:`jax_classifier` as a TensorFlow function, with the same
    variants (numpy, argmax, nan, nan_far, raise)."""
    import tensorflow as tf

    weights, bias, features = _linear_parameters(shape, k, seed, avoid_class0)
    lower, span = float(bounds[0]), float(bounds[1] - bounds[0])
    calls = [0]

    def model(x: Any) -> Any:
        count_call(calls, variant)
        u = (x - lower) / span - 0.5
        flat_u = tf.reshape(u, (-1, features))
        z = flat_u @ tf.constant(weights, dtype=x.dtype) + tf.constant(bias, dtype=x.dtype)
        if variant == "numpy":
            return z.numpy()
        if variant == "argmax":
            return tf.one_hot(tf.argmax(z, axis=1), k, dtype=z.dtype)
        if variant == "nan":
            return z * float("nan")
        if variant == "nan_far":
            far = tf.reduce_max(tf.abs(flat_u), axis=1) > radius
            return tf.where(far[:, None], tf.constant(float("nan"), dtype=z.dtype), z)
        return z

    return model


def tf_inputs(array: np.ndarray, dtype: str) -> Any:
    import tensorflow as tf

    return tf.constant(array, dtype=getattr(tf, dtype))
