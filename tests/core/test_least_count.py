"""``least_count`` against a brute-force enumeration: the smallest k ≥ 1 with k / ‖m‖₁ ≥ ν,
the ratio in float64 as Python computes it (eq. 5.19, "APSR ≥ ν")."""

from __future__ import annotations

import numpy as np

from alma_plugin.core.prox_schedule import least_count


def _enumerated(fraction: float, count: int) -> int:
    ratios = np.arange(1, count + 1) / count  # k / ‖m‖₁ in float64, as Python divides
    return int(np.argmax(ratios >= fraction)) + 1


def test_least_count_is_the_smallest_count_meeting_the_fraction() -> None:
    """Every count 1 … 100 and fractions where the product ν·‖m‖₁ rounds above an integer
    (0.7·10 = 7.000…01, yet 7/10 ≥ 0.7), or onto one the ratio does not reach (ν = 0.01·95 =
    0.9500000000000001: 20ν rounds to 19, yet 19/20 < ν), ν = 0 (k ≥ 1 still) and ν = 1."""
    counts = np.arange(1, 101)
    fractions = [0.0, 1e-9, 0.1, 0.3, 0.5, 0.5 + 1e-10, 0.57, 0.7, 0.9, 0.95, 0.99, 1.0]
    fractions += [0.01 * k for k in range(1, 100)] + [k / 49 for k in range(1, 49)]
    for fraction in fractions:
        expected = [_enumerated(fraction, int(c)) for c in counts]
        assert least_count(fraction, counts).tolist() == expected, fraction
