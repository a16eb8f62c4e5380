"""Pairwise-preference statistics: both-order rule, win rate, bootstrap coverage, Cohen's kappa."""

from __future__ import annotations

import numpy as np
import pytest

from psychocounsel.evaluate.stats import (
    bootstrap_ci,
    cohen_kappa,
    combine_orders,
    counts,
    outcome_value,
    position_consistency,
    position_consistent,
    win_rate,
)


def _always_a_judge(policy_is_a: bool) -> str:
    """A judge that always prefers position A, its verdict mapped to policy/reference."""
    return "policy" if policy_is_a else "reference"


def test_position_biased_judge_yields_only_ties():
    first = [_always_a_judge(policy_is_a=True) for _ in range(20)]  # order 1: A = policy
    second = [_always_a_judge(policy_is_a=False) for _ in range(20)]  # order 2: A = reference
    verdicts = [combine_orders(f, s) for f, s in zip(first, second)]
    assert verdicts == ["tie"] * 20
    assert counts(verdicts) == {"wins": 0, "ties": 20, "losses": 0}
    assert win_rate(verdicts) == 0.5
    assert position_consistency(zip(first, second)) == 0.0


def test_combine_orders_table():
    expected = {("policy", "policy"): "policy", ("reference", "reference"): "reference"}
    for first in ("policy", "reference", "tie"):
        for second in ("policy", "reference", "tie"):
            assert combine_orders(first, second) == expected.get((first, second), "tie")
    with pytest.raises(ValueError, match="unknown verdict 'A'"):
        combine_orders("A", "policy")


def test_position_consistency_counts_agreements():
    pairs = [("policy", "policy"), ("tie", "tie"), ("reference", "policy"), ("A", "A")]
    assert position_consistency(pairs) == 0.75
    assert position_consistent("B", "B") and not position_consistent("A", "B")
    with pytest.raises(ValueError, match="at least one"):
        position_consistency([])


def test_outcome_values_win_rate_and_counts():
    verdicts = ["policy", "policy", "tie", "reference"]
    assert [outcome_value(v) for v in verdicts] == [1.0, 1.0, 0.5, 0.0]
    assert win_rate(verdicts) == 0.625
    assert counts(verdicts) == {"wins": 2, "ties": 1, "losses": 1}
    assert counts([]) == {"wins": 0, "ties": 0, "losses": 0}
    with pytest.raises(ValueError, match="at least one verdict"):
        win_rate([])
    with pytest.raises(ValueError, match="unknown verdict"):
        counts(["policy", "win"])


def test_bootstrap_coverage_of_bernoulli_mean():
    rng = np.random.default_rng(12345)
    data = (rng.random((300, 100)) < 0.6).astype(float)
    cis = np.array([bootstrap_ci(row, n_boot=1000, seed=i) for i, row in enumerate(data)])
    coverage = np.mean((cis[:, 0] <= 0.6) & (0.6 <= cis[:, 1]))
    # Nominal 0.95; the percentile bootstrap of a mean at n = 100 runs ~1 point low, and 300
    # datasets give a Monte Carlo SE of ~0.013, so [0.90, 0.98] is a ~3 SE band.
    assert 0.90 <= coverage <= 0.98


def test_bootstrap_ci_is_seeded_ordered_and_handles_edges():
    values = np.random.default_rng(0).random(50)
    lo, hi = bootstrap_ci(values, seed=7)
    assert lo < values.mean() < hi
    assert bootstrap_ci(values, seed=7) == (lo, hi)
    wide, narrow = bootstrap_ci(values, level=0.99), bootstrap_ci(values, level=0.5)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.0, 1.0], level=1.0)


def test_bootstrap_ci_chunks_large_inputs():
    # 2**22 // 300_000 = 13 resamples per chunk, so 40 resamples take 4 chunks.
    values = np.random.default_rng(1).random(300_000)
    lo, hi = bootstrap_ci(values, n_boot=40)
    assert lo < values.mean() < hi and hi - lo < 0.01


def test_kappa_hand_computed_three_labels():
    a = ["A", "A", "A", "A", "B", "B", "B", "tie", "tie", "A"]
    b = ["A", "A", "B", "A", "B", "B", "tie", "tie", "A", "A"]
    # Agreements at items 1, 2, 4, 5, 6, 8, 10: p_o = 7/10 = 0.7.
    # Marginals a: A 5, B 3, tie 2; b: A 5, B 3, tie 2.
    # p_e = (5*5 + 3*3 + 2*2) / 10^2 = 38/100 = 0.38.
    # kappa = (0.7 - 0.38) / (1 - 0.38) = 0.32 / 0.62 = 16/31 = 0.516129...
    assert abs(cohen_kappa(a, b) - 16 / 31) < 1e-12
    # An unused label changes neither p_o nor p_e.
    assert abs(cohen_kappa(a, b, labels=["A", "B", "tie", "unused"]) - 16 / 31) < 1e-12


def test_kappa_textbook_two_by_two():
    # Rater 1 x rater 2: yes/yes 20, yes/no 5, no/yes 10, no/no 15 (n = 50).
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert abs(cohen_kappa(a, b) - 0.4) < 1e-12


def test_kappa_edge_cases():
    labels = ["A", "B", "tie", "B", "A"]
    assert cohen_kappa(labels, labels) == 1.0
    assert cohen_kappa(["tie"] * 4, ["tie"] * 4) == 1.0  # p_e = 1: defined as 1.0
    # Systematic disagreement is below chance: p_o 0, p_e 0.5, kappa -1.
    assert cohen_kappa(["A", "B"], ["B", "A"]) == -1.0
    assert cohen_kappa([1, 2, 2], [1, 2, 1]) == pytest.approx(0.4)  # non-string labels work
    with pytest.raises(ValueError, match="different numbers"):
        cohen_kappa(["A"], ["A", "B"])
    with pytest.raises(ValueError, match="at least one item"):
        cohen_kappa([], [])
    with pytest.raises(ValueError, match="not in labels"):
        cohen_kappa(["A", "C"], ["A", "A"], labels=["A", "B"])
