"""Session fixtures: a small MNIST CNN trained once, in seconds, on the embedded MNIST images."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from alma_plugin.zoo import load_mnist_heldout
from tests.utils import tiny_mnist_cnn, train_classifier

# Two intra-op threads (the CI machines have 2 cores); ALMA_TEST_THREADS=1 checks the suite
# with one, as it must pass with either. Under pytest-xdist (`-n 2`, the README's command) each
# worker process takes one core: one thread per worker, for PyTorch and for the JAX and
# TensorFlow rows (their thread pools are sized from these variables when first imported).
_WORKER = "PYTEST_XDIST_WORKER" in os.environ
torch.set_num_threads(int(os.environ.get("ALMA_TEST_THREADS", "1" if _WORKER else "2")))
if _WORKER:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


@pytest.fixture(scope="session")
def mnist_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1000 MNIST images embedded in the package (values in [0, 1], labels int64)."""
    return load_mnist_heldout()


@pytest.fixture(scope="session")
def mnist_cnn(mnist_data: tuple[torch.Tensor, torch.Tensor]) -> torch.nn.Module:
    """A small CNN trained on the first 800 embedded images (eval mode)."""
    torch.manual_seed(0)
    images, labels = mnist_data
    return train_classifier(tiny_mnist_cnn(), images[:800], labels[:800], epochs=8)


@pytest.fixture(scope="session")
def mnist_samples(
    mnist_cnn: torch.nn.Module, mnist_data: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """32 held-out images (indices 800+) that ``mnist_cnn`` classifies correctly."""
    images, labels = mnist_data[0][800:], mnist_data[1][800:]
    with torch.no_grad():
        correct = mnist_cnn(images).argmax(1) == labels
    return images[correct][:32].clone(), labels[correct][:32].clone()


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch intra-op thread for a module of tiny models, restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _foolbox_models_default_to_the_cpu() -> Iterator[None]:
    """Given no device, Foolbox's ``PyTorchModel`` moves the model to CUDA (in place) whenever
    CUDA is present. The suite's tensors are on the CPU, so on a machine with a GPU that default
    becomes the CPU here; the CUDA tests name their device. The package itself always names it
    (``tests/bench/test_perf_cli.py`` checks the benchmarks that build Foolbox models)."""
    try:
        import foolbox.models.pytorch as fb_pytorch
    except ImportError:  # the Foolbox tests skip themselves then
        yield
        return
    get_device = fb_pytorch.get_device
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fb_pytorch, "get_device",
                      lambda device: get_device("cpu" if device is None else device))  # fmt: skip
        yield
