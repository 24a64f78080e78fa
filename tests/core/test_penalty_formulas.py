"""PHR and P2 against the formulas of Birgin et al. (2005) (ALMA paper, eq. 10, Appendix D),
worked by hand at dyadic points: a change made alike to a penalty and its derivative keeps
them consistent with autograd, but not equal to these values."""

from __future__ import annotations

import eagerpy as ep
import pytest
import torch

from alma_plugin.core.penalties import PENALTIES


def _t(values: list[float]) -> ep.Tensor:
    return ep.astensor(torch.tensor(values, dtype=torch.float64))


# (y, ρ, μ, P, P′), by hand:
#   PHR (eq. 19): P = (max(0, μ + ρy)² − μ²) / (2ρ), P′ = max(0, μ + ρy);
#   P2 (eq. 10 / 21): P = μy + μρy² + ρ²y³/6, P′ = μ + 2μρy + ρ²y²/2 for y ≥ 0;
#                     P = μy / (1 − ρy), P′ = μ / (1 − ρy)² below.
CASES = {
    "PHR": [
        (1.0, 2.0, 1.0, 2.0, 3.0),
        (-0.25, 2.0, 1.0, -0.1875, 0.5),
        (-1.0, 2.0, 1.0, -0.25, 0.0),
    ],
    "P2": [(1.0, 2.0, 1.0, 3.0 + 2.0 / 3.0, 7.0), (-1.0, 2.0, 1.0, -1.0 / 3.0, 1.0 / 9.0)],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_penalty_and_derivative_equal_the_papers_formulas(name: str) -> None:
    penalty = PENALTIES[name]
    y, rho, mu, value, derivative = (list(column) for column in zip(*CASES[name], strict=True))
    got = penalty.value(_t(y), _t(rho), _t(mu)).raw
    got_derivative = penalty.derivative(_t(y), _t(rho), _t(mu)).raw
    torch.testing.assert_close(got, torch.tensor(value, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(
        got_derivative, torch.tensor(derivative, dtype=torch.float64), rtol=1e-14, atol=0
    )
