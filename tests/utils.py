"""Small models and helpers shared by the tests (import as ``from tests.utils import ...``)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_mnist_cnn() -> nn.Module:
    """A small MNIST classifier that trains in a few seconds on CPU."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 5, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Train deterministically with Adam, then return the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def fit_full_batch(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float
) -> nn.Module:
    """Full-batch Adam on cross-entropy (per pixel for dense logits); eval mode, no grads."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


class CountingModel(nn.Module):
    """Wraps a model and counts forward propagations and backward propagations (by a hook on
    the output: it fires once per backward pass through the wrapped model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0
        self.forward_samples = 0

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backwards += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        self.forward_samples += len(x)
        out = self.model(x)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out


def predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's predicted classes, without a graph."""
    with torch.no_grad():
        return model(inputs).argmax(1)


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything an attack must leave unchanged on a model."""
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, object]) -> None:
    after = snapshot(model)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    for new, old in zip(after["grads"], before["grads"], strict=True):  # type: ignore[call-overload]
        assert (new is None and old is None) or torch.equal(new, old)
    for key, value in before["params"].items():  # type: ignore[attr-defined]
        assert torch.equal(after["params"][key], value), key  # type: ignore[index]


def linear_classifier(
    features: int = 16, classes: int = 5, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """A seeded linear classifier of flattened inputs, in eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).to(dtype).eval()
