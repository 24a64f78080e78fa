"""Tests of :mod:`alma_plugin.bench.metrics`: optimality, best of all, wins, soft sparsity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from alma_plugin.bench.metrics import (
    HISTOGRAM_EDGES,
    abs_histogram,
    best_of_all,
    optimality,
    quartiles,
    soft_sparsity,
    tied_samples,
    win_counts,
)

INF = math.inf

# Three attacks on five samples; sample 0 is misclassified before any attack (0 everywhere).
HAND = {
    "A": np.array([0.0, 1.0, 2.0, INF, 4.0]),
    "B": np.array([0.0, 2.0, 1.0, 3.0, INF]),
    "C": np.array([0.0, INF, INF, INF, INF]),
}


def test_optimality_of_a_hand_computed_case() -> None:
    # d* = min(A, B, C) = [0, 1, 1, 3, 4]; D = max finite d* = 4.
    # A* = mean(min(d*, 4)) = (0 + 1 + 1 + 3 + 4) / 5 = 9/5 = 1.8.
    # A_worst = mean(4 · [d* > 0]) = 4 · 4/5 = 16/5 = 3.2 (clean accuracy 4/5 times D).
    # A_A = mean(min(A, 4)) = (0 + 1 + 2 + 4 + 4) / 5 = 11/5 = 2.2
    #   → optimality 1 − (2.2 − 1.8) / (3.2 − 1.8) = 1 − 0.4/1.4 = 5/7.
    # A_B = (0 + 2 + 1 + 3 + 4) / 5 = 10/5 = 2.0 → 1 − 0.2/1.4 = 6/7.
    # A_C = (0 + 4 + 4 + 4 + 4) / 5 = 16/5 = A_worst → 0 (fools no sample within [0, D]).
    np.testing.assert_array_equal(best_of_all(HAND), [0.0, 1.0, 1.0, 3.0, 4.0])
    scores = optimality(HAND)
    assert scores == pytest.approx({"A": 5 / 7, "B": 6 / 7, "C": 0.0}, abs=1e-12)
    # Wins: sample 1 → A, 2 → B, 3 → B, 4 → A; sample 0 (d* = 0) is nobody's.
    assert win_counts(HAND) == {"A": 2, "B": 2, "C": 0}
    assert tied_samples(HAND) == 0


def test_optimality_matches_a_numerical_integration_of_the_curves() -> None:
    # AttackBench integrates robust accuracy ρ(ε) = mean(d > ε) over [0, D] numerically: a fine
    # grid must agree with the exact areas to the grid's resolution.
    rng = np.random.default_rng(0)
    runs = {name: rng.exponential(1.0, 200) for name in "abc"}
    runs["a"][:10] = 0.0  # misclassified samples: 0 for every attack
    runs["b"][:10] = runs["c"][:10] = 0.0
    runs["c"][rng.random(200) < 0.2] = INF  # failures
    best = np.minimum.reduce(list(runs.values()))
    top = best[np.isfinite(best)].max()
    grid = np.linspace(0.0, top, 100_001)

    def area(d: np.ndarray) -> float:
        return float(np.trapezoid((d[None, :] > grid[:, None]).mean(axis=1), grid))

    def numeric(d: np.ndarray) -> float:
        worst = top * float((best > 0).mean())
        return 1 - (area(d) - area(best)) / (worst - area(best))

    scores = optimality(runs)
    for name, d in runs.items():
        assert scores[name] == pytest.approx(numeric(d), abs=1e-3)


def test_ties_give_every_tied_attack_the_win() -> None:
    runs = {"A": [1.0, 2.0, 5.0], "B": [1.0, 3.0, 5.0], "C": [2.0, 2.0, 5.0]}
    # sample 0: A and B tie at 1; sample 1: A and C tie at 2; sample 2: all three tie at 5.
    assert win_counts(runs) == {"A": 3, "B": 2, "C": 2}
    assert tied_samples(runs) == 3
    assert optimality(runs)["A"] == 1.0


def test_all_failed_is_undefined() -> None:
    runs = {"A": [INF, INF], "B": [INF, INF]}
    scores = optimality(runs)
    assert all(math.isnan(v) for v in scores.values())
    assert win_counts(runs) == {"A": 0, "B": 0}
    np.testing.assert_array_equal(best_of_all(runs), [INF, INF])


@pytest.mark.parametrize("second", [0.0, INF])
def test_no_fooled_sample_is_undefined_whatever_was_misclassified_before(second: float) -> None:
    # Only samples misclassified before the attack (d = 0), the rest failed: nobody fooled
    # anything, so D is undefined (it was taken as 0, and every run scored 1.0); zeros are
    # nobody's win.
    runs = {"A": [0.0, second, INF], "B": [0.0, second, INF]}
    assert all(math.isnan(v) for v in optimality(runs).values())
    assert win_counts(runs) == {"A": 0, "B": 0}


def test_the_best_attack_scores_one_and_the_worst_zero() -> None:
    best = np.array([0.5, 1.0, 2.0, 0.0])
    runs = {"best": best, "worse": best * 1.5, "none": np.where(best > 0, INF, 0.0)}
    scores = optimality(runs)
    assert scores["best"] == 1.0
    assert 0.0 < scores["worse"] < 1.0
    assert scores["none"] == 0.0
    assert win_counts(runs) == {"best": 3, "worse": 0, "none": 0}
    # A single attack is its own best of all.
    assert optimality({"alone": [0.3, INF, 0.0]}) == {"alone": 1.0}


def test_an_attack_beyond_d_on_its_successes_is_not_worse_than_failing() -> None:
    # Successes beyond D add nothing over failures on [0, D]: both areas are min(d, D).
    runs = {"A": [1.0, 1.0], "B": [1.0, 7.0], "C": [1.0, INF]}
    scores = optimality(runs)
    assert scores["B"] == scores["C"]


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ({}, "at least one attack"),
        ({"A": [1.0, 2.0], "B": [1.0]}, "same samples"),
        ({"A": [-1.0]}, "must be >= 0"),
        ({"A": [math.nan]}, "must be >= 0"),
        ({"A": [[1.0]]}, "must be 1-D"),
    ],
)
def test_bad_distances_are_named(runs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        optimality(runs)


def test_soft_sparsity_of_one_hot_and_constant_perturbations() -> None:
    n = 3 * 8 * 8
    one_hot = np.zeros((1, 3, 8, 8))
    one_hot[0, 1, 2, 3] = -0.4
    constant = np.full((1, 3, 8, 8), 0.05)
    two = np.zeros((1, 3, 8, 8))
    two[0, 0, 0, :2] = 0.2
    values = soft_sparsity(np.concatenate([one_hot, constant, two, np.zeros((1, 3, 8, 8))]))
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(math.sqrt(n))
    assert values[2] == pytest.approx(math.sqrt(2))
    assert math.isnan(values[3])  # unperturbed


def test_abs_histogram_uses_the_fixed_bins() -> None:
    delta = np.array([0.0, 5e-5, -5e-5, 0.5, -1.0, 1e-3])
    counts = abs_histogram(delta)
    assert len(counts) == len(HISTOGRAM_EDGES) - 1 and counts.sum() == len(delta)
    assert counts[0] == 3  # the [0, 1e-4) bin
    assert counts[-1] == 1  # |−1| lands in the last bin (right edge included)
    assert counts[np.searchsorted(HISTOGRAM_EDGES, 1e-3, side="right") - 1] == 1


def test_quartiles_ignore_nan() -> None:
    assert quartiles([math.nan, 1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    assert all(math.isnan(v) for v in quartiles([math.nan]))


def test_a_norm_with_no_success_gets_a_note_not_an_empty_legend(tmp_path: Path) -> None:
    """Before: matplotlib's "No artists with labels found to put in legend" on stderr and an
    empty panel when no attack of a norm fooled a sample."""
    import warnings

    from alma_plugin.bench.metrics import HISTOGRAM_EDGES
    from alma_plugin.bench.plots import plot_patterns
    from alma_plugin.bench.report import Record

    failed = Record(model="m", attack="alma-l2", label="ALMA", norm="l2", budget=2, note="",
                    indices=[0, 1], distances=[math.inf, math.inf], sparsity=[math.nan] * 2,
                    histogram=[0] * (len(HISTOGRAM_EDGES) - 1))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (path,) = plot_patterns([failed], tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
