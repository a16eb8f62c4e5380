"""Agreement statistics of the annotations: hand-computed fixtures, the literature's worked examples,
properties, and the structure of agreement_report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from psychocounsel.annotate.stats import (
    agreement_report,
    bootstrap_stat,
    fleiss_kappa,
    krippendorff_alpha,
    majority_labels,
    percent_agreement,
)
from psychocounsel.evaluate.stats import cohen_kappa

N = None


# ---- hand-computed fixtures ------------------------------------------------------------------------


def test_cohen_kappa_and_percent_agreement_by_hand():
    a = ["chosen", "chosen", "rejected", "tie"]
    b = ["chosen", "rejected", "rejected", "chosen"]
    # p_o = 2/4; marginals a: c2 r1 t1, b: c2 r2 t0 -> p_e = (2*2 + 1*2 + 1*0) / 16 = 6/16;
    # kappa = (1/2 - 3/8) / (1 - 3/8) = 0.2
    assert percent_agreement(a, b) == 0.5
    assert cohen_kappa(a, b, ["chosen", "rejected", "tie"]) == pytest.approx(0.2)


def test_fleiss_kappa_by_hand():
    ratings = [
        ["chosen", "chosen", "chosen"],  # n = (3, 0, 0): P = 1
        ["chosen", "chosen", "rejected"],  # (2, 1, 0): P = 2*1 / (3*2) = 1/3
        ["rejected", "rejected", "rejected"],  # P = 1
        ["chosen", "rejected", "tie"],  # P = 0
        ["chosen", "chosen", N],  # n_i = 2, (2, 0, 0): P = 2 / 2 = 1
        ["tie", N, N],  # one rating: ignored, also in p_j
    ]
    # P_bar = (1 + 1/3 + 1 + 0 + 1) / 5 = 2/3; ratings: chosen 8, rejected 5, tie 1 of 14
    # P_e = (64 + 25 + 1) / 196 = 45/98; kappa = (2/3 - 45/98) / (1 - 45/98) = 61/159
    assert fleiss_kappa(ratings) == pytest.approx(61 / 159)


def test_ordinal_alpha_by_hand():
    units = [[1, 1], [1, 2], [2, 3], [3, 3], [3, N]]  # the last unit is not pairable
    # coincidences: o11 = 2, o12 = o21 = 1, o23 = o32 = 1, o33 = 2; n_c = (3, 2, 3), n = 8.
    # ordinal delta: d12 = (3 + 2 - (3 + 2)/2)^2 = 6.25, d23 = 6.25, d13 = (8 - (3 + 3)/2)^2 = 25.
    # sum o*d = 2*6.25 + 2*6.25 = 25; sum n_c n_k d = 2*(6*6.25 + 6*6.25 + 9*25) = 600.
    # alpha = 1 - (8 - 1) * 25 / 600 = 17/24.  Nominal: 1 - 7*4 / (2*(6 + 9 + 6)) = 1/3.
    assert krippendorff_alpha(units) == pytest.approx(17 / 24)
    assert krippendorff_alpha(units, "nominal") == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(units, "ratio")


# ---- the literature's worked examples ---------------------------------------------------------------


def test_fleiss_kappa_wikipedia_worked_example():
    # Wikipedia, "Fleiss' kappa", worked example (after Fleiss 1971): 10 items, 14 raters, 5 categories;
    # P_bar = 0.378, P_e = 0.213, kappa = 0.210.
    counts = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = [[category for category, c in enumerate(row) for _ in range(c)] for row in counts]
    assert all(len(row) == 14 for row in ratings)
    assert round(fleiss_kappa(ratings), 3) == 0.210


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units, missing data.
KRIPPENDORFF_2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    "C": [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
}


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_2011_worked_example(level, expected):
    units = [list(unit) for unit in zip(*KRIPPENDORFF_2011.values())]
    assert round(krippendorff_alpha(units, level), 3) == expected


# ---- properties ---------------------------------------------------------------------------------------


def test_perfect_agreement_is_one():
    labels = ["chosen", "rejected", "tie", "chosen"]
    assert fleiss_kappa([[x, x, x] for x in labels]) == 1.0
    for level in ("nominal", "ordinal", "interval"):
        assert krippendorff_alpha([[v, v, N] for v in (1, 3, 5, 2)], level) == pytest.approx(1.0)
    # One value throughout is 0/0; defined as 1.0, like cohen_kappa.
    assert fleiss_kappa([["tie", "tie"], ["tie", "tie"]]) == 1.0
    assert krippendorff_alpha([[4, 4], [4, 4, 4]]) == 1.0


def test_independent_raters_give_kappa_near_zero():
    rng = np.random.default_rng(7)
    a, b = rng.choice(["chosen", "rejected", "tie"], size=(2, 4000))
    assert abs(cohen_kappa(a.tolist(), b.tolist())) < 0.04
    assert abs(fleiss_kappa(list(zip(a.tolist(), b.tolist())))) < 0.04
    x, y = rng.integers(1, 6, size=(2, 4000))
    assert abs(krippendorff_alpha(list(zip(x.tolist(), y.tolist())))) < 0.04


def test_missing_values_are_skipped():
    rows = [["chosen", "rejected", "chosen"], ["tie", "tie", "rejected"], ["chosen", "chosen", "chosen"]]
    with_gaps = [row + [N] for row in rows] + [[N, N, "tie", N]]  # an absent rater, a lone rating
    assert fleiss_kappa(with_gaps) == pytest.approx(fleiss_kappa(rows))
    units = [list(unit) for unit in zip(*KRIPPENDORFF_2011.values())]
    assert krippendorff_alpha([u + [N] for u in units]) == pytest.approx(krippendorff_alpha(units))
    with pytest.raises(ValueError):
        fleiss_kappa([["chosen", N], [N, "tie"]])
    with pytest.raises(ValueError):
        krippendorff_alpha([[1, N], [N, 2]])


def test_bootstrap_ci_contains_the_estimate():
    rng = np.random.default_rng(3)
    a = rng.choice(["chosen", "rejected", "tie"], size=150)
    b = np.where(rng.random(150) < 0.7, a, rng.choice(["chosen", "rejected", "tie"], size=150))
    kappa = lambda idx: cohen_kappa(a[idx].tolist(), b[idx].tolist())
    point = kappa(np.arange(150))
    lo, hi = bootstrap_stat(kappa, 150, n_boot=300, seed=1)
    assert lo < point < hi and 0.4 < point < 0.8
    assert bootstrap_stat(kappa, 150, n_boot=300, seed=1) == (lo, hi)  # reproducible


def test_bootstrap_stat_skips_undefined_resamples():
    # Undefined (ValueError) on resamples holding item 0, nan on those holding item 1, else 0.5:
    # only the (3/5)^5 = 8% of resamples without either count.
    def fn(idx):
        if 0 in idx:
            raise ValueError("undefined")
        return math.nan if 1 in idx else 0.5

    assert bootstrap_stat(fn, 5, n_boot=200) == (0.5, 0.5)

    def never(idx):
        raise ValueError("undefined")

    with pytest.raises(ValueError, match="every bootstrap resample"):
        bootstrap_stat(never, 5, n_boot=10)
    with pytest.raises(ValueError):
        bootstrap_stat(lambda idx: 1.0, 0)


def test_majority_labels_skip_ties():
    labels = {"a": {"p1": "chosen", "p2": "tie", "p3": "rejected"}, "b": {"p1": "chosen", "p2": "rejected"}}
    assert majority_labels(labels) == {"p1": "chosen", "p3": "rejected"}


# ---- agreement_report ---------------------------------------------------------------------------------

LABELS = {
    "ann1": {"p1": "chosen", "p2": "chosen", "p3": "rejected", "p4": "tie", "p5": "chosen"},
    "ann2": {"p1": "chosen", "p2": "rejected", "p3": "rejected", "p4": "chosen"},
    "ann3": {"p1": "chosen", "p2": "chosen", "p3": "tie"},
}
REFERENCE = {f"p{i}": "chosen" for i in range(1, 6)}
JUDGES = {"j1": {"p1": "chosen", "p2": "chosen", "p3": "rejected", "p4": "rejected", "p5": "chosen"}}
SCORES = {  # empathy: the hand-computed ordinal table above (p5 not pairable); safety: one unit, all 5
    "ann1": {f"p{i}": {"empathy": v} for i, v in enumerate([1, 1, 2, 3, 3], 1)} | {"p1": {"empathy": 1, "safety": 5}},
    "ann2": {f"p{i}": {"empathy": v} for i, v in enumerate([1, 2, 3, 3], 1)} | {"p1": {"empathy": 1, "safety": 5}},
    "ann3": {"p1": {"safety": 5}, "p2": {"empathy": None}},
}


@pytest.fixture(scope="module")
def report():
    return agreement_report(LABELS, REFERENCE, JUDGES, subset={"p1", "p3"}, scores=SCORES, n_boot=200, seed=0)


def test_report_structure_and_pairwise(report):
    json.dumps(report)
    assert report["annotators"] == ["ann1", "ann2", "ann3"] and report["judges"] == ["j1"]
    for key in ("n_pairs", "pairwise", "fleiss", "vs_reference", "vs_judges", "alpha"):
        assert key in report and key in report["length_robust"]
    pw = report["pairwise"]
    assert set(pw) == {"ann1|ann2", "ann1|ann3", "ann2|ann3"}
    # ann1|ann2 is the Cohen fixture above (p1-p4): 0.5 and 0.2. ann1|ann3 on p1-p3: p_o 2/3, p_e 4/9,
    # kappa (2/9)/(5/9) = 0.4. ann2|ann3: p_o 1/3, p_e 2/9, kappa (1/9)/(7/9) = 1/7.
    assert pw["ann1|ann2"] | {"agreement_ci": None, "kappa_ci": None} == {
        "n": 4,
        "agreement": 0.5,
        "agreement_ci": None,
        "kappa": 0.2,
        "kappa_ci": None,
    }
    assert (pw["ann1|ann3"]["n"], pw["ann1|ann3"]["kappa"]) == (3, 0.4)
    assert pw["ann2|ann3"]["kappa"] == round(1 / 7, 4)
    for stat in pw.values():
        for name in ("agreement", "kappa"):
            lo, hi = stat[f"{name}_ci"]
            assert lo <= hi


def test_report_fleiss_reference_and_judges(report):
    # p1 (c,c,c) 1; p2 (c,r,c) 1/3; p3 (r,r,t) 1/3; p4 (t,c) 0; p5 has one label. P_bar = 5/12;
    # chosen 6, rejected 3, tie 2 of 11: P_e = 49/121; kappa = (5/12 - 49/121) / (72/121) = 17/864.
    assert report["fleiss"]["n"] == 4 and report["fleiss"]["kappa"] == round(17 / 864, 4)
    assert report["fleiss"]["n_annotators"] == 3
    ref = report["vs_reference"]
    assert [(ref[a]["n"], ref[a]["agreement"]) for a in ("ann1", "ann2", "ann3")] == [(5, 0.6), (4, 0.5), (3, 0.6667)]
    assert ref["ann1"]["kappa"] is None  # the reference is "chosen" throughout: kappa is uninformative
    j1 = report["vs_judges"]["j1"]
    assert (j1["annotators"]["ann1"]["n"], j1["annotators"]["ann1"]["agreement"]) == (5, 0.8)
    assert (j1["reference"]["n"], j1["reference"]["agreement"], j1["reference"]["kappa"]) == (5, 0.6, None)
    # majority: p1 c, p2 c, p3 r, p4 tied (skipped), p5 c (one label); j1 matches all four.
    assert (j1["annotators_majority"]["n"], j1["annotators_majority"]["kappa"]) == (4, 1.0)


def test_report_alpha(report):
    alpha = report["alpha"]
    assert (alpha["empathy"]["n"], alpha["empathy"]["alpha"]) == (4, round(17 / 24, 4))
    assert (alpha["safety"]["n"], alpha["safety"]["alpha"], alpha["safety"]["alpha_ci"]) == (1, 1.0, [1.0, 1.0])
    # pooled: add o55 = 3 (one unit of three 5s); n_c = (3, 2, 3, 0, 3), n = 11. Ordinal d15 = 8^2 = 64,
    # d25 = 5.5^2, d35 = 3^2; sum n_c n_k d = 2*(37.5 + 37.5 + 225 + 576 + 181.5 + 81) = 2277;
    # alpha = 1 - 10 * 25 / 2277.
    assert (alpha["all"]["n"], alpha["all"]["n_items"]) == (5, 4)
    assert alpha["all"]["alpha"] == round(1 - 250 / 2277, 4)


def test_report_subset_is_computed_on_the_subset_only(report):
    sub = report["length_robust"]
    assert sub["n_pairs"] == 2
    assert (sub["pairwise"]["ann1|ann2"]["n"], sub["pairwise"]["ann1|ann2"]["agreement"]) == (2, 1.0)
    assert sub["pairwise"]["ann1|ann3"]["agreement"] == 0.5
    # p1 (c,c,c) 1, p3 (r,r,t) 1/3: P_bar 2/3, P_e = (9 + 4 + 1)/36, kappa = 5/11
    assert (sub["fleiss"]["n"], sub["fleiss"]["kappa"]) == (2, round(5 / 11, 4))
    assert (sub["vs_reference"]["ann1"]["n"], sub["vs_reference"]["ann1"]["agreement"]) == (2, 0.5)
    assert sub["alpha"]["empathy"]["n"] == 2  # p1 (1, 1) and p3 (2, 3)
    assert "length_robust" not in agreement_report(LABELS, n_boot=10)


def test_report_degenerate_inputs_do_not_crash():
    solo = agreement_report(
        {"solo": {"p1": "chosen"}},
        reference={"p1": "chosen"},
        judges={"j": {}},
        subset=set(),
        scores={"solo": {"p1": {"empathy": 3}}},
        n_boot=20,
    )
    json.dumps(solo)
    assert solo["pairwise"] == {}
    assert solo["fleiss"] == {"n": 0, "kappa": None, "kappa_ci": None, "n_annotators": 1}
    assert solo["vs_reference"]["solo"]["agreement"] == 1.0 and solo["vs_reference"]["solo"]["kappa"] is None
    assert solo["vs_judges"]["j"]["annotators"]["solo"] == {
        "n": 0,
        "agreement": None,
        "agreement_ci": None,
        "kappa": None,
        "kappa_ci": None,
    }
    assert solo["alpha"]["empathy"] == {"n": 0, "alpha": None, "alpha_ci": None}
    assert solo["length_robust"]["n_pairs"] == 0 and solo["length_robust"]["pairwise"] == {}
    empty = agreement_report({}, n_boot=10)
    assert empty["fleiss"]["n"] == 0 and empty["vs_reference"] is None and empty["alpha"] is None


def test_report_rejects_bad_labels_and_scores():
    with pytest.raises(ValueError, match="'ann1' labelled pair 'p1' 'A'"):
        agreement_report({"ann1": {"p1": "A"}})
    with pytest.raises(ValueError, match="judge 'j'"):
        agreement_report(LABELS, judges={"j": {"p1": "better"}})
    with pytest.raises(ValueError, match="expected 1-5"):
        agreement_report(LABELS, scores={"ann1": {"p1": {"empathy": 6}}})
