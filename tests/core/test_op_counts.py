"""Tensor operations per solver step: a performance contract that does not depend on timing.

On a GPU every ATen operation is a kernel launch, and on a CPU with a small model the per-step
cost is dominated by their dispatch (docs/performance.md, "per-step overhead"). The counts are taken
with a ``TorchDispatchMode`` on a linear model (forward and backward included) as the
difference between a 12-step and a 2-step run, so step 0's one-off work (input checks, the η⁽⁰⁾
search) cancels out. Measured with torch 2.13 (constraints.txt): ALMA ℓ2 221, ℓ1 202, ALMA
prox 261 with the exact prox and 934 with Algorithm 5.1's ternary search (29 iterations); the
bounds leave room for other torch versions' decompositions, not for a loop over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alma_plugin import ProxParams, alma

pytestmark = pytest.mark.usefixtures("single_thread")


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def _ops_per_step(run: Callable[[int], Any]) -> float:
    counts = []
    for steps in (2, 12):
        with _CountOps() as counter:
            run(steps)
        counts.append(counter.count)
    return (counts[1] - counts[0]) / 10


def _attack(distance: str, **options: Any) -> Callable[[int], Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5)).eval()
    x, y = torch.rand(8, 3, 4, 4), torch.randint(0, 5, (8,))
    return lambda steps: alma(model, x, y, distance=distance, steps=steps, **options)


@pytest.mark.parametrize(("distance", "bound"), [("l2", 300), ("l1", 300), ("linf", 330)])
def test_operations_per_step_are_bounded(distance: str, bound: int) -> None:
    ops = _ops_per_step(_attack(distance))
    assert 50 < ops <= bound, f"{distance}: {ops} tensor operations per step (bound {bound})"


def test_exact_prox_saves_most_of_the_ternary_search() -> None:
    """The exact prox (the default) replaces 29 ternary iterations of ~25 operations each."""
    exact = _ops_per_step(_attack("linf"))
    ternary = _ops_per_step(_attack("linf", params=ProxParams(prox_precision=1e-5)))
    assert ternary > exact + 500, (exact, ternary)


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_solver_skips_the_distance_contract_inside_the_loop(
    distance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The iterates are finite and in the box: the solver calls the eagerpy function behind
    the distance, without the contract's finiteness test of x̃ and x (one product and one sum
    each, a ``where``, and their backward), and gets the same result."""
    from alma_plugin.core import solver

    fast = _ops_per_step(_attack(distance))
    result = _attack(distance)(12)
    monkeypatch.setattr(solver, "unchecked", lambda function: function)
    checked = _ops_per_step(_attack(distance))
    assert checked >= fast + 8, (fast, checked)
    assert torch.equal(_attack(distance)(12).distances, result.distances)
