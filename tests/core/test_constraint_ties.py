"""DLR⁺ at its edges: the success predicate agrees with the constraint's sign exactly at the
logit tolerance, and a three-way tie of the top logits keeps d finite."""

from __future__ import annotations

import eagerpy as ep
import torch

from alma_plugin.core.constraints import LOGIT_TOLERANCE, dlr_plus, is_satisfied


def test_success_at_exactly_the_tolerance_agrees_with_the_constraint() -> None:
    """A margin of exactly −LOGIT_TOLERANCE (z_y = 0, max other = 1e-6, exact in float64) gives
    d = 0, not < 0: not a success, for ``is_satisfied`` as for the sign of DLR⁺ (eq. 4, "d < 0
    exactly when the goal is met"); a margin beyond it is one for both."""
    z = torch.tensor(
        [[0.0, LOGIT_TOLERANCE, -1.0, -2.0], [0.0, 2 * LOGIT_TOLERANCE, -1.0, -2.0]],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 0])
    d = dlr_plus(ep.astensor(z), ep.astensor(y)).raw
    satisfied = is_satisfied(ep.astensor(z), ep.astensor(y)).raw
    assert d[0].item() == 0.0 and d[1].item() < 0
    assert satisfied.tolist() == [False, True]
    assert torch.equal(satisfied, d < 0)


def test_three_tied_top_logits_give_a_finite_constraint() -> None:
    """z_π1 = z_π3: eq. 4's denominator is 0; the floor 1e-12 keeps d = 1e-6 / 1e-12 = 1e6
    (the tolerance over the floor), finite and positive (no success), not +∞ or NaN."""
    z = torch.tensor([[1.0, 1.0, 1.0, -3.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 3])
    d = dlr_plus(ep.astensor(z), ep.astensor(y)).raw
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d, torch.full((2,), LOGIT_TOLERANCE / 1e-12, dtype=torch.float64))
