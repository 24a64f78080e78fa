"""A user model for ``alma-bench``: a tiny CIFAR-style network defined in this file.

``alma-bench --models examples/cifar_user_model.py:make_model`` imports this file and calls
``make_model()``, which must return a ``torch.nn.Module`` mapping images (N, 3, 32, 32) to
logits. This network was trained on normalised inputs, so the benchmark is told the
normalisation (it then attacks in the [0, 1] image space, where distances are measured):

    python examples/cifar_user_model.py --out /tmp/cifar_demo     # data + weights, ~1 min
    CIFAR_USER_MODEL_WEIGHTS=/tmp/cifar_demo/cifar_user_model.pt alma-bench \\
        --models examples/cifar_user_model.py:make_model \\
        --data /tmp/cifar_demo/synthetic_cifar.npz \\
        --mean 0.4914 0.4822 0.4465 --std 0.2470 0.2435 0.2616 \\
        --attacks alma-l2 ddn-l2 fmn-l2 apgd-l2 --budgets 100 --samples 64 \\
        --output /tmp/cifar_demo/results

The ``--out`` step writes a *synthetic* CIFAR-shaped data set (10 classes of coloured patterns
with noise, no download) and trains the network on it for a few seconds, so that the example
runs anywhere. With the real CIFAR-10 test set, make the ``.npz`` once with torchvision (which
``alma_plugin`` itself never needs) and train / load your own weights:

    import numpy as np, torchvision
    test = torchvision.datasets.CIFAR10("data", train=False, download=True)
    np.savez("cifar10_test.npz", images=test.data.transpose(0, 3, 1, 2),  # uint8 (N, 3, 32, 32)
             labels=np.array(test.targets))

``.npz`` data for ``alma-bench --data``: ``images`` (N, C, H, W) as uint8 or floats in [0, 1],
``labels`` (N,) integers.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: The usual CIFAR-10 channel statistics (pass them as ``--mean`` / ``--std``).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
#: Where :func:`make_model` finds its weights (override with this environment variable).
WEIGHTS_VARIABLE = "CIFAR_USER_MODEL_WEIGHTS"


class TinyCifarNet(nn.Module):
    """Two conv blocks and a linear layer: (N, 3, 32, 32) normalised images → (N, 10) logits."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Linear(32 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def make_model() -> nn.Module:
    """The factory ``alma-bench`` calls: the network with the weights of
    ``$CIFAR_USER_MODEL_WEIGHTS`` (default ``cifar_user_model.pt`` in the working folder)."""
    path = Path(os.environ.get(WEIGHTS_VARIABLE, "cifar_user_model.pt"))
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights at {str(path)!r}: run 'python examples/cifar_user_model.py --out DIR' "
            f"and set {WEIGHTS_VARIABLE}=DIR/cifar_user_model.pt"
        )
    model = TinyCifarNet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def synthetic_cifar(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` CIFAR-shaped uint8 images (N, 3, 32, 32) of 10 classes: a smooth coloured
    pattern per class, shifted and noisy per image; and their labels."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, size=(10, 3, 4, 4))
    templates = coarse.repeat(8, axis=2).repeat(8, axis=3)  # (10, 3, 32, 32) blocks
    labels = rng.integers(0, 10, size=count)
    shifts = rng.integers(-2, 3, size=(count, 2))
    images = np.stack([np.roll(templates[c], tuple(s), axis=(1, 2)) for c, s in
                       zip(labels, shifts, strict=True)])  # fmt: skip
    images = 0.25 + 0.5 * images + rng.normal(0, 0.08, size=images.shape)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


def train(images: np.ndarray, labels: np.ndarray, epochs: int = 3, seed: int = 0) -> nn.Module:
    """Train :class:`TinyCifarNet` on uint8 ``images``, normalised by :data:`MEAN`, :data:`STD`."""
    torch.manual_seed(seed)
    model = TinyCifarNet()
    x = torch.from_numpy(images).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write synthetic_cifar.npz (test images) and cifar_user_model.pt (weights "
        "trained on other images of the same kind)."
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--train", type=int, default=4000, help="training images")
    parser.add_argument("--test", type=int, default=500, help="test images in the .npz")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_cifar(args.train + args.test)
    model = train(images[: args.train], labels[: args.train], args.epochs)
    torch.save(model.state_dict(), args.out / "cifar_user_model.pt")
    test_images, test_labels = images[args.train :], labels[args.train :]
    np.savez(args.out / "synthetic_cifar.npz", images=test_images, labels=test_labels)
    with torch.no_grad():
        x = torch.from_numpy(test_images).float() / 255
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        accuracy = (model(x).argmax(1) == torch.from_numpy(test_labels)).float().mean()
    print(
        f"wrote {args.out / 'synthetic_cifar.npz'} and {args.out / 'cifar_user_model.pt'}; "
        f"clean accuracy on the {args.test} test images: {100 * float(accuracy):.1f}%"
    )


if __name__ == "__main__":
    main()
