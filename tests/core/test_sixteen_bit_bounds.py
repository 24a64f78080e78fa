"""16-bit inputs at a bound their dtype cannot represent: the reported distances are those
between the returned tensor and the caller's own inputs.

Normalised MNIST has the bounds ((0 − 0.1307) / 0.3081, (1 − 0.1307) / 0.3081) = (−0.4242,
2.8215); a white pixel is 2.828125 in bfloat16, beyond the upper bound by rounding. The input
checks accept it and the attacks start from the inputs clipped onto the bounds (2.8125, the
largest bfloat16 inside); before, the distances were measured from that clipped copy, up to
4 % below the same distance from the caller's tensor (ℓ∞, bfloat16; an audit's finding)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alma_plugin import alma, alma_prox, lagrangian
from alma_plugin.zoo import load_mnist_heldout, load_smallcnn

MEAN, STD = 0.1307, 0.3081
BOUNDS = ((0 - MEAN) / STD, (1 - MEAN) / STD)
ORDERS = {"l1": 1.0, "l2": 2.0, "linf": float("inf")}


class _Normalised(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * STD + MEAN)


def _attack(entry: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    if entry == "linf":
        return alma_prox(model, x, y, steps=40, bounds=BOUNDS)
    return alma(model, x, y, distance=entry, steps=40, bounds=BOUNDS)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("entry", ["l1", "l2", "linf", "lagrangian"])
def test_distances_are_measured_from_the_callers_inputs(dtype: torch.dtype, entry: str) -> None:
    images, labels = load_mnist_heldout()
    x = ((images[:8] - MEAN) / STD).to(dtype)
    assert x.float().max() > BOUNDS[1]  # the case: white pixels round beyond the bound
    model = _Normalised(load_smallcnn("mnist_regular").to(dtype)).eval()
    if entry == "lagrangian":
        result = lagrangian(model, x, labels[:8], steps=10, bounds=BOUNDS)
        returned, reported, solved = result.perturbed, result.norms, torch.ones(8, dtype=bool)
        order = 2.0
    else:
        attack = _attack(entry, model, x, labels[:8])
        returned, reported, solved = attack.adversarials, attack.distances, attack.success
        order = ORDERS[entry]
        assert solved.sum() >= 6
    delta = (returned.double() - x.double()) / (BOUNDS[1] - BOUNDS[0])
    recomputed = torch.linalg.vector_norm(delta.flatten(1), ord=order, dim=1)
    torch.testing.assert_close(reported[solved].double(), recomputed[solved], rtol=1e-5, atol=0)
