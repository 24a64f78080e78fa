"""Full float32 precision of the distances whatever the device's reduced-precision modes.

On GPUs, matrix products and convolutions may round float32 inputs to TF32 (10 bits of
mantissa) or bfloat16: PyTorch's ``set_float32_matmul_precision("high" / "medium")`` for
matrix products, ``torch.backends.cudnn.allow_tf32`` (True by default) for convolutions, and
JAX's default precision on GPUs and TPUs. Measured on an H100 before this was handled: 1 − SSIM
2.5–4.5 % off under PyTorch's "high", 5 % under JAX's default; LPIPS 0.4 % off at 1.8·10⁻⁴ and
21 % at 1.9·10⁻⁶ under cuDNN's default. The CPU checks here (JAX's requested precision, the
CPU path's bits and flags) run everywhere; the device checks where there is a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alma_plugin.distances import msssim, ssim
from alma_plugin.distances._common import full_precision_cuda
from alma_plugin.distances._gaussian import full_precision_matmul
from tests.distances.test_distances_contract import _distance

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pair(side: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, x) float32: 4 smoothed random RGB images and a Gaussian perturbation."""
    generator = torch.Generator().manual_seed(side)
    x = torch.nn.functional.avg_pool2d(torch.rand(4, 3, side, side, generator=generator), 5, 1, 2)
    x_adv = (x + noise * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    return x_adv, x


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((value.double().cpu() - reference) / reference).abs().max())


@pytest.mark.parametrize("function", [ssim, msssim], ids=["ssim", "msssim"])
def test_jax_products_ask_for_the_highest_precision(function: Callable[..., Any]) -> None:
    """JAX's default precision rounds float32 products on GPUs and TPUs: every product of the
    SSIM filter asks for ``Precision.HIGHEST`` (read from the traced program, on any device)."""
    side = 176 if function is msssim else 32
    x_adv, x = (jnp.asarray(t.numpy()) for t in _pair(side, 0.01))
    program = str(jax.make_jaxpr(function)(x_adv, x))
    products = program.count("dot_general")
    assert products >= 2  # one filter pass (two products) per scale
    assert program.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == products


def test_cpu_products_keep_their_bits_and_the_flags() -> None:
    a, b = torch.rand(7, 5, dtype=torch.float32), torch.rand(5, 3, dtype=torch.float32)
    before = torch.get_float32_matmul_precision()
    out = full_precision_matmul(ep.astensor(a), ep.astensor(b)).raw
    assert torch.equal(out, a @ b) and torch.get_float32_matmul_precision() == before


@pytest.fixture
def restored_flags() -> Iterator[None]:
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


def _flags() -> tuple[str, bool]:
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


@pytest.mark.usefixtures("restored_flags")
@pytest.mark.parametrize("mode", ["high", "medium"])
def test_reduced_precision_is_lifted_for_the_block_and_restored(mode: str) -> None:
    """PyTorch's flags exist without a GPU: the CUDA path's bookkeeping is checked here."""
    torch.set_float32_matmul_precision(mode)
    torch.backends.cudnn.allow_tf32 = True
    with full_precision_cuda(matmul=True, convolutions=True):
        assert _flags() == ("highest", False)
    assert _flags() == (mode, True)
    with full_precision_cuda(convolutions=True):
        assert _flags() == (mode, False)
    with pytest.raises(RuntimeError, match="inside"):
        with full_precision_cuda(matmul=True):
            assert _flags() == ("highest", True)
            raise RuntimeError("inside")
    assert _flags() == (mode, True)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    with full_precision_cuda(matmul=True, convolutions=True):  # nothing to lift
        assert _flags() == ("highest", False)
    assert _flags() == ("highest", False)


@pytest.mark.usefixtures("restored_flags")
def test_two_threads_do_not_restore_the_flags_under_each_other() -> None:
    """Without the lock, a second thread entering while the first computes saw "highest" as
    the caller's setting and the first one's exit restored TF32 under it."""
    torch.set_float32_matmul_precision("high")
    first_inside, release_first = threading.Event(), threading.Event()
    seen: list[str] = []

    def first() -> None:
        with full_precision_cuda(matmul=True):
            first_inside.set()
            release_first.wait(10)
            seen.append(torch.get_float32_matmul_precision())

    def second() -> None:
        with full_precision_cuda(matmul=True):
            seen.append(torch.get_float32_matmul_precision())

    one = threading.Thread(target=first)
    one.start()
    assert first_inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.2)
    assert two.is_alive()  # waits for the first thread's block
    release_first.set()
    one.join(10)
    two.join(10)
    assert seen == ["highest", "highest"] and torch.get_float32_matmul_precision() == "high"


@CUDA
@pytest.mark.usefixtures("restored_flags")
@pytest.mark.parametrize("mode", ["high", "medium"])
@pytest.mark.parametrize("function", [ssim, msssim], ids=["ssim", "msssim"])
def test_cuda_ssim_is_exact_under_reduced_precision_matmul(
    function: Callable[..., Any], mode: str
) -> None:
    side = 176 if function is msssim else 32
    x_adv, x = _pair(side, 1e-3)
    reference = function(x_adv.double(), x.double())
    torch.set_float32_matmul_precision(mode)
    value = function(x_adv.cuda(), x.cuda())
    assert torch.get_float32_matmul_precision() == mode  # restored after the call
    assert _relative_error(value, reference) < 1e-4


@CUDA
@pytest.mark.usefixtures("restored_flags")
def test_cuda_lpips_forward_is_exact_under_cudnn_tf32() -> None:
    lpips = _distance("lpips")  # seeded random weights
    x_adv, x = _pair(64, 1e-3)
    reference = lpips(x_adv.double(), x.double())
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
    value = lpips(x_adv.cuda(), x.cuda())
    assert torch.backends.cudnn.allow_tf32  # restored after the call
    assert _relative_error(value, reference) < 1e-4


def _jax_gpu() -> Any:
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


@pytest.mark.skipif(_jax_gpu() is None, reason="needs JAX with a GPU")
@pytest.mark.parametrize("function", [ssim, msssim], ids=["ssim", "msssim"])
def test_jax_gpu_ssim_is_exact(function: Callable[..., Any]) -> None:
    side = 176 if function is msssim else 32
    x_adv, x = _pair(side, 1e-3)
    reference = function(x_adv.double(), x.double())
    on_gpu = [jax.device_put(jnp.asarray(t.numpy()), _jax_gpu()) for t in (x_adv, x)]
    value = torch.from_numpy(np.asarray(jax.jit(function)(*on_gpu)))
    assert _relative_error(value, reference) < 1e-4
