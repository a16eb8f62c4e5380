"""Length-controlled win rate: the GLM recovers a planted length effect and survives edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from psychocounsel.evaluate.length_control import fit_length_glm, lc_win_rate, length_feature

TRUE_LC = 0.35
TRUE_B0 = float(np.log(TRUE_LC / (1 - TRUE_LC)))  # logit(0.35) = -0.619
TRUE_B1 = 1.5


def _lengths(rng: np.random.Generator, n: int, policy_extra: float):
    """Reference lengths ~ N(300, 60) words; the policy adds N(policy_extra, 100)."""
    len_reference = rng.normal(300, 60, n).round()
    len_policy = len_reference + rng.normal(policy_extra, 100, n).round()
    return len_policy, len_reference


def _simulate(seed: int, b0: float, b1: float, n: int = 4000, policy_extra: float = 80.0):
    rng = np.random.default_rng(seed)
    len_policy, len_reference = _lengths(rng, n, policy_extra)
    x, _ = length_feature(len_policy - len_reference)
    p = 1.0 / (1.0 + np.exp(-(b0 + b1 * x)))
    return (rng.random(n) < p).astype(float), len_policy, len_reference


def test_recovers_planted_length_effect():
    outcomes, len_policy, len_reference = _simulate(0, TRUE_B0, TRUE_B1)
    fit = fit_length_glm(outcomes, len_policy, len_reference)
    # Fisher standard errors at n = 4000 are 0.05 (b0) and 0.07 (b1): tolerances are 3-4 SE.
    assert fit["intercept"] == pytest.approx(TRUE_B0, abs=0.15)
    assert fit["length_coef"] == pytest.approx(TRUE_B1, abs=0.3)
    assert fit["lc_win_rate"] == pytest.approx(TRUE_LC, abs=0.035)
    assert fit["n"] == 4000 and fit["length_std"] > 0
    # The policy is longer on ~80% of items, so its raw win rate is inflated well past 0.35.
    assert outcomes.mean() > TRUE_LC + 0.1
    assert lc_win_rate(outcomes, len_policy, len_reference) == fit["lc_win_rate"]


def test_no_length_effect_lc_close_to_raw():
    outcomes, len_policy, len_reference = _simulate(1, 0.4, 0.0)
    fit = fit_length_glm(outcomes, len_policy, len_reference)
    assert abs(fit["length_coef"]) < 0.25
    assert fit["lc_win_rate"] == pytest.approx(outcomes.mean(), abs=0.03)


def test_soft_labels_equal_split_hard_labels():
    # A tie at 0.5 costs the same as one win and one loss at half weight each, so splitting
    # every tie into a win and a loss (and doubling every other item) gives the same fit.
    rng = np.random.default_rng(2)
    len_policy, len_reference = _lengths(rng, 200, 30.0)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=200, p=[0.3, 0.3, 0.4])
    soft = fit_length_glm(outcomes, len_policy, len_reference)
    hard_outcomes = np.concatenate([np.where(outcomes == 0.5, 1.0, outcomes), np.where(outcomes == 0.5, 0.0, outcomes)])
    hard = fit_length_glm(hard_outcomes, np.tile(len_policy, 2), np.tile(len_reference, 2))
    for key in ("intercept", "length_coef", "lc_win_rate", "length_std"):
        assert soft[key] == pytest.approx(hard[key], abs=1e-9)


def test_all_ties_is_half():
    fit = fit_length_glm([0.5] * 50, np.arange(50), np.full(50, 25))
    assert fit["lc_win_rate"] == pytest.approx(0.5, abs=1e-12)
    assert fit["length_coef"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("threshold", [0.0, 40.0, -60.0])
def test_separable_data_converges_to_finite_coefficients(threshold):
    rng = np.random.default_rng(3)
    len_policy, len_reference = _lengths(rng, 300, 0.0)
    outcomes = (len_policy - len_reference > threshold).astype(float)
    fit = fit_length_glm(outcomes, len_policy, len_reference)
    assert np.isfinite(fit["intercept"]) and np.isfinite(fit["length_coef"])
    assert fit["length_coef"] > 5  # length explains everything; only the penalty stops it


def test_constant_length_difference_gives_raw_win_rate():
    outcomes = [1, 0, 1, 1, 0.5, 0]
    fit = fit_length_glm(outcomes, [120] * 6, [100] * 6)
    assert fit["length_std"] == 0.0 and fit["length_coef"] == 0.0
    # With x = 0 the intercept-only fit is the mean: sigmoid(b0) = 3.5 / 6.
    assert fit["lc_win_rate"] == pytest.approx(3.5 / 6, abs=1e-12)


def test_unanimous_outcomes_give_limits():
    wins = fit_length_glm([1, 1, 1], [10, 20, 30], [20, 20, 20])
    assert wins["lc_win_rate"] == 1.0 and wins["intercept"] == np.inf and wins["length_coef"] == 0
    losses = fit_length_glm([0, 0], [10, 20], [20, 20])
    assert losses["lc_win_rate"] == 0.0 and losses["intercept"] == -np.inf


def test_single_item():
    assert lc_win_rate([0.5], [100], [80]) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(
    "args, match",
    [
        (([], [], []), "at least one outcome"),
        (([1, 0], [1, 2, 3], [1, 2]), "mismatched lengths"),
        (([1.5], [1], [1]), r"in \[0, 1\]"),
        (([np.nan], [1], [1]), r"in \[0, 1\]"),
        (([1], [np.inf], [1]), "finite"),
    ],
)
def test_bad_input_is_a_clear_error(args, match):
    with pytest.raises(ValueError, match=match):
        lc_win_rate(*args)


def test_l2_must_be_positive():
    with pytest.raises(ValueError, match="l2"):
        fit_length_glm([1, 0], [1, 2], [2, 1], l2=0.0)


def test_bootstrap_lc_equals_refitting_each_resample_one_by_one():
    from psychocounsel.evaluate.length_control import bootstrap_lc

    outcomes, len_policy, len_reference = _simulate(3, TRUE_B0, TRUE_B1, n=150)
    boot = bootstrap_lc(outcomes, len_policy, len_reference, n_boot=300, seed=7)
    rng = np.random.default_rng(7)  # the same draws, fitted by the scalar GLM one resample at a time
    rates = []
    for _ in range(300):
        i = rng.integers(0, 150, size=150)
        rates.append(fit_length_glm(outcomes[i], len_policy[i], len_reference[i])["lc_win_rate"])
    assert [boot["ci_low"], boot["ci_high"]] == pytest.approx(np.quantile(rates, [0.025, 0.975]), abs=1e-9)
    assert boot["standard_error"] == pytest.approx(np.std(rates, ddof=1), abs=1e-9)
    point = lc_win_rate(outcomes, len_policy, len_reference)
    assert boot["ci_low"] < point < boot["ci_high"]


def test_bootstrap_lc_edge_cases():
    from psychocounsel.evaluate.length_control import bootstrap_lc

    assert bootstrap_lc([1, 1, 1], [1, 2, 3], [2, 2, 2], n_boot=100) == {
        "ci_low": 1.0,
        "ci_high": 1.0,
        "standard_error": 0.0,
    }
    # Resamples that happen to hold only wins are rated 1, the fit's limit, not left unfitted.
    mixed = bootstrap_lc([1, 1, 1, 0], [110, 120, 130, 90], [100] * 4, n_boot=200)
    assert mixed["ci_high"] == 1.0 and 0.0 <= mixed["ci_low"] < 1.0
    with pytest.raises(ValueError, match="at least one outcome"):
        bootstrap_lc([], [], [])
    with pytest.raises(ValueError, match="n_boot must be at least 2"):
        bootstrap_lc([1, 0], [1, 2], [1, 1], n_boot=1)


def test_bootstrap_lc_of_a_large_eval_is_fast():
    import time

    from psychocounsel.evaluate.length_control import bootstrap_lc

    outcomes, len_policy, len_reference = _simulate(4, TRUE_B0, TRUE_B1, n=805)  # AlpacaEval's size
    start = time.perf_counter()
    bootstrap_lc(outcomes, len_policy, len_reference, n_boot=2000)
    assert time.perf_counter() - start < 10  # 0.5-1.3 s on one shared CPU core (at n = 100, 0.04 s)
