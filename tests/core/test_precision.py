"""``ReducedPrecisionWarning``: float32 attacks judged through TF32 products on a GPU."""

from __future__ import annotations

import warnings

import eagerpy as ep
import pytest
import torch
from torch import nn

from alma_plugin import ReducedPrecisionWarning, alma, alma_prox, lagrangian
from alma_plugin.bench.reeval import tf32
from alma_plugin.core.precision import (
    jax_settings,
    tensorflow_settings,
    torch_settings,
    warn_if_reduced_precision,
)

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize(
    ("capability", "cudnn", "matmul", "expected"),
    [
        (7, True, "high", []),  # no TF32 before Ampere: nothing to warn about
        (8, False, "highest", []),
        (8, True, "highest", ["torch.backends.cudnn.allow_tf32 = True"]),
        (9, False, "high", ["torch.get_float32_matmul_precision() = 'high'"]),
        (9, False, "medium", ["torch.get_float32_matmul_precision() = 'medium'"]),
        (9, True, "high", ["cudnn.allow_tf32", "precision() = 'high'"]),
    ],
)
def test_the_settings_that_enable_tf32(
    capability: int, cudnn: bool, matmul: str, expected: list[str]
) -> None:
    found = torch_settings(capability, cudnn, matmul)
    assert len(found) == len(expected)
    for text, part in zip(found, expected, strict=True):
        assert part in text


@pytest.mark.parametrize(
    ("platform", "capability", "precision", "warns"),
    [
        ("cpu", None, None, False),
        ("gpu", 7, None, False),  # no TF32 before Ampere
        ("gpu", 8, None, True),  # JAX's default on GPUs
        ("gpu", None, None, True),  # capability unknown: as a recent GPU
        ("gpu", 9, "tensorfloat32", True),
        ("gpu", 9, "bfloat16", True),
        ("gpu", 9, "default", True),
        ("gpu", 9, "highest", False),
        ("gpu", 9, "float32", False),
        ("gpu", 9, "HIGHEST", False),
    ],
)
def test_the_jax_settings_that_reduce_precision(
    platform: str, capability: int | None, precision: str | None, warns: bool
) -> None:
    found = jax_settings(platform, capability, precision)
    assert bool(found) == warns
    if warns:
        assert "jax_default_matmul_precision" in found[0]


@pytest.mark.parametrize(
    ("device", "enabled", "warns"),
    [
        ("/job:localhost/replica:0/task:0/device:CPU:0", True, False),
        ("/job:localhost/replica:0/task:0/device:GPU:0", True, True),
        ("/job:localhost/replica:0/task:0/device:GPU:0", False, False),
    ],
)
def test_the_tensorflow_settings_that_reduce_precision(
    device: str, enabled: bool, warns: bool
) -> None:
    assert bool(tensorflow_settings(device, enabled)) == warns


def test_cpu_inputs_never_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tf32(True):  # the flags say TF32, but the CPU has none
            warn_if_reduced_precision(ep.astensor(torch.rand(2, 3)))
    jnp = pytest.importorskip("jax.numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_reduced_precision(ep.astensor(jnp.ones((2, 3))))
    tf = pytest.importorskip("tensorflow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tf.device("/CPU:0"):  # TF32 execution is enabled by default, but not on a CPU
            warn_if_reduced_precision(ep.astensor(tf.ones((2, 3))))


def _conv_model(device: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)]
    return nn.Sequential(*layers).to(device, dtype).eval()


def _tf32_hardware() -> bool:
    return CUDA and torch.cuda.get_device_capability()[0] >= 8


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_attacks_warn_exactly_when_tf32_is_in_force() -> None:
    import foolbox as fb

    from alma_plugin.foolbox import L2ALMA, LinfALMAProx
    from alma_plugin.torchattacks import ALMA

    model = _conv_model("cuda")
    x = torch.rand(4, 1, 8, 8, device="cuda")
    y = model(x).argmax(1)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cuda")
    calls = {
        "alma": lambda: alma(model, x, y, steps=3),
        "alma_prox": lambda: alma_prox(model, x, y, steps=3),
        "L2ALMA": lambda: L2ALMA(steps=3)(fmodel, x, y, epsilons=None),
        "LinfALMAProx": lambda: LinfALMAProx(steps=3)(fmodel, x, y, epsilons=None),
        "torchattacks ALMA": lambda: ALMA(model, steps=3)(x, y),
    }
    for name, call in calls.items():
        with tf32(True), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        found = [w for w in caught if issubclass(w.category, ReducedPrecisionWarning)]
        assert len(found) == (1 if _tf32_hardware() else 0), (name, [str(w.message) for w in found])
        if found:
            assert "allow_tf32" in str(found[0].message), name
        with tf32(False), warnings.catch_warnings():
            warnings.simplefilter("error", ReducedPrecisionWarning)
            call()
    # a training attack claims no success; a 16-bit model's rounding is the caller's choice
    with tf32(True), warnings.catch_warnings():
        warnings.simplefilter("error", ReducedPrecisionWarning)
        lagrangian(model, x, y, steps=2)
        half = _conv_model("cuda", torch.float16)
        alma(half, x.half(), half(x.half()).argmax(1), steps=3)


def _jax_gpu() -> bool:
    try:
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    except Exception:  # noqa: BLE001 - no JAX, or no GPU backend
        return False


@pytest.mark.skipif(not _jax_gpu(), reason="needs JAX with a GPU")
def test_jax_gpu_attacks_warn_unless_matmuls_are_full_precision() -> None:
    import foolbox as fb
    import jax

    from alma_plugin.foolbox import L2ALMA

    weights = jax.random.normal(jax.random.PRNGKey(0), (16, 3))

    def model(u: jax.Array) -> jax.Array:
        return u.reshape(u.shape[0], -1) @ weights

    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 1, 4, 4))
    y = model(x).argmax(1)
    calls = {
        "alma": lambda: alma(model, x, y, steps=3),
        "L2ALMA": lambda: L2ALMA(steps=3)(fb.JAXModel(model, (0, 1)), x, y, epsilons=None),
    }
    capability = getattr(jax.devices()[0], "compute_capability", None)
    expected = 0 if capability and int(str(capability).split(".")[0]) < 8 else 1
    for name, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        found = [w for w in caught if issubclass(w.category, ReducedPrecisionWarning)]
        assert len(found) == expected, (name, [str(w.message) for w in found])
        with jax.default_matmul_precision("highest"), warnings.catch_warnings():
            warnings.simplefilter("error", ReducedPrecisionWarning)
            call()
