"""Tests of the embedded benchmark assets: SmallCNN weights and held-out MNIST images."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin.zoo import MODEL_NAMES, SmallCNN, load_mnist_heldout, load_smallcnn
from alma_plugin.zoo.data import read_idx_images, read_idx_labels

# Measured with the committed weights: 0.987, 0.985 and 0.988 (see
# alma_plugin/bench/train_mnist.py), minus a margin.
MIN_ACCURACY = {"mnist_regular": 0.98, "mnist_adversarial": 0.97, "mnist_lagrangian": 0.97}
#: The held-out clean accuracy train_mnist printed for the Lagrangian model when it was trained.
LAGRANGIAN_RECORDED_ACCURACY = 0.988


@pytest.fixture(scope="module")
def heldout() -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist_heldout()


def test_heldout_data(heldout: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = heldout
    assert x.shape == (1000, 1, 28, 28)
    assert x.dtype == torch.float32
    assert y.shape == (1000,)
    assert y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # uint8 grey levels: every value is a multiple of 1/255
    assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)
    assert set(y.tolist()) == set(range(10))
    counts = torch.bincount(y, minlength=10)
    assert int(counts.min()) >= 70  # every class well represented


def test_model_names() -> None:
    assert set(MODEL_NAMES) == {"mnist_regular", "mnist_adversarial", "mnist_lagrangian"}


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="mnist_regular"):
        load_smallcnn("cifar10_regular")


def test_architecture() -> None:
    model = SmallCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 32, (3, 3)),
        (32, 32, (3, 3)),
        (32, 64, (3, 3)),
        (64, 64, (3, 3)),
    ]
    assert [(f.in_features, f.out_features) for f in linears] == [
        (1024, 200),
        (200, 200),
        (200, 10),
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert sum(p.numel() for p in model.parameters()) == 312_202
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_loads_and_is_accurate(name: str, heldout: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = load_smallcnn(name)
    assert isinstance(model, SmallCNN)
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x, y = heldout
    with torch.no_grad():
        logits = model(x)
    assert torch.isfinite(logits).all()
    acc = float((logits.argmax(1) == y).float().mean())
    assert acc >= MIN_ACCURACY[name]


def test_models_differ() -> None:
    weights = [load_smallcnn(name).state_dict()["classifier.fc3.weight"] for name in MODEL_NAMES]
    for i, a in enumerate(weights):
        for b in weights[i + 1 :]:
            assert not torch.equal(a, b)


def test_lagrangian_model_scores_its_recorded_accuracy(
    heldout: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Within one point of the PGD-trained model's 0.985, as the paper compares models at
    similar clean accuracy; the tolerance only allows a near-tie argmax to flip."""
    x, y = heldout
    with torch.no_grad():
        accuracy = float((load_smallcnn("mnist_lagrangian")(x).argmax(1) == y).float().mean())
    assert abs(accuracy - LAGRANGIAN_RECORDED_ACCURACY) <= 0.002


def _write_idx(path: Path, data: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, data.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in data.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + data.astype(np.uint8).tobytes())


def test_idx_readers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(5,), dtype=np.uint8)
    _write_idx(tmp_path / "img.gz", images)
    _write_idx(tmp_path / "lab.gz", labels)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "img.gz"), images)
    np.testing.assert_array_equal(read_idx_labels(tmp_path / "lab.gz"), labels)
    with pytest.raises(ValueError, match="dimensions"):
        read_idx_labels(tmp_path / "img.gz")


SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="MNIST idx files not available")
def test_heldout_matches_source(heldout: tuple[torch.Tensor, torch.Tensor]) -> None:
    images = read_idx_images(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_labels(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    x, y = heldout
    np.testing.assert_array_equal((x[:, 0] * 255).round().to(torch.uint8).numpy(), images[9000:])
    np.testing.assert_array_equal(y.numpy(), labels[9000:])
