"""stats: how far counselors agree with each other, with the data set and with the judges.

Counselors label preference pairs ``"chosen"``, ``"rejected"`` or ``"tie"`` (the side of the
data set's pair they preferred, already mapped back from the page's A/B) and may score each reply
1-5 on the rubric's principles. ``agreement_report`` turns those annotations into chance-corrected
agreement: Cohen's kappa per two annotators, Fleiss' kappa over all of them, agreement with the data
set's label and with the judges, and Krippendorff's ordinal alpha on the scores, each with its ``n``
and a percentile CI from an item-level bootstrap (``bootstrap_stat``: kappa and alpha are not means,
so ``bootstrap_ci`` alone cannot give theirs).

Two-rater kappa and the mean CI are ``psychocounsel.evaluate.stats``'s, reused here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from itertools import combinations

import numpy as np

from psychocounsel.evaluate.stats import bootstrap_ci, cohen_kappa

CHOSEN, REJECTED, TIE = "chosen", "rejected", "tie"
LABELS = (CHOSEN, REJECTED, TIE)
SCORES = (1, 2, 3, 4, 5)
ALPHA_LEVELS = ("nominal", "ordinal", "interval")


def percent_agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Share of items the two raters label alike.

    >>> percent_agreement(["chosen", "tie", "rejected", "chosen"], ["chosen", "chosen", "rejected", "tie"])
    0.5
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"raters labelled different numbers of items: {len(a)} and {len(b)}")
    if not a:
        raise ValueError("percent agreement needs at least one item")
    return sum(x == y for x, y in zip(a, b)) / len(a)


def _category_counts(ratings: Sequence[Sequence[Hashable | None]], categories: Sequence[Hashable]) -> np.ndarray:
    """Items x categories table of how many raters put each item in each category (None skipped)."""
    index = {c: j for j, c in enumerate(categories)}
    table = np.zeros((len(ratings), len(index)), dtype=np.int64)
    for i, row in enumerate(ratings):
        for label in row:
            if label is None:
                continue
            if label not in index:
                raise ValueError(f"label {label!r} is not one of {list(categories)!r}")
            table[i, index[label]] += 1
    return table


def _fleiss_from_counts(table: np.ndarray) -> float:
    """Fleiss' kappa from an items x categories count table; rows with under 2 ratings are ignored."""
    n_i = table.sum(axis=1)
    table, n_i = table[n_i >= 2], n_i[n_i >= 2]
    if len(n_i) == 0:
        raise ValueError("Fleiss' kappa needs at least one item with two or more ratings")
    p_bar = float(np.mean((table * (table - 1)).sum(axis=1) / (n_i * (n_i - 1))))
    p_j = table.sum(axis=0) / n_i.sum()
    p_e = float(p_j @ p_j)
    # p_e = 1 only when every rating is one category, which forces p_bar = 1 (as in cohen_kappa).
    if math.isclose(p_e, 1.0):
        return 1.0 if math.isclose(p_bar, 1.0) else 0.0
    return (p_bar - p_e) / (1.0 - p_e)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable | None]]) -> float:
    """Fleiss' (1971) kappa for items x raters, with None where a rater did not label an item.

    The number of raters may vary per item: item i with ``n_i >= 2`` ratings, ``n_ij`` of them in
    category j, agrees ``P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1))``; ``P_bar`` is the mean of
    ``P_i``, ``p_j`` category j's share of all ratings, ``P_e = sum_j p_j^2``, and kappa
    ``(P_bar - P_e) / (1 - P_e)``. Items with fewer than 2 ratings are ignored. When ``P_e = 1``
    (a single category throughout) the formula is 0/0: this returns 1.0, as ``cohen_kappa`` does.

    >>> round(fleiss_kappa([["A", "A", "A"], ["A", "B", None], ["B", "B", "B"], ["B", None, None]]), 4)
    0.3333
    >>> fleiss_kappa([["A", "A"], ["A", None]])
    1.0
    """
    categories = list(dict.fromkeys(x for row in ratings for x in row if x is not None))
    return _fleiss_from_counts(_category_counts(ratings, categories))


def _coincidences(ratings: Sequence[Sequence[object]], values: Sequence[object]) -> np.ndarray:
    """Units x values x values: unit u's share of Krippendorff's coincidence matrix.

    A unit with ``m_u >= 2`` values adds ``1 / (m_u - 1)`` for each ordered pair of its values taken
    from different coders; a unit with fewer adds nothing (it is not pairable).
    """
    index = {v: j for j, v in enumerate(values)}
    counts = np.zeros((len(ratings), len(values)))
    for u, row in enumerate(ratings):
        for value in row:
            if value is not None:
                counts[u, index[value]] += 1
    m = counts.sum(axis=1)
    pairs = counts[:, :, None] * counts[:, None, :] - counts[:, :, None] * np.eye(len(values))
    return np.where((m >= 2)[:, None, None], pairs / np.maximum(m - 1, 1)[:, None, None], 0.0)


def _distance(values: Sequence[object], n_c: np.ndarray, level: str) -> np.ndarray:
    """Squared metric differences delta^2(c, k) between the sorted ``values`` at ``level``."""
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "interval":
        v = np.asarray(values, dtype=float)
        return (v[:, None] - v[None, :]) ** 2
    # ordinal: (sum_{g=c}^{k} n_g - (n_c + n_k) / 2)^2, through cumulative sums of the marginals.
    cum = np.cumsum(n_c)
    j = np.arange(len(values))
    lo, hi = np.minimum.outer(j, j), np.maximum.outer(j, j)
    return (cum[hi] - cum[lo] + n_c[lo] - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2


def _alpha_from_coincidence(o: np.ndarray, values: Sequence[object], level: str) -> float:
    """``1 - (n - 1) sum o_ck delta_ck / sum n_c n_k delta_ck`` from a summed coincidence matrix."""
    n_c = o.sum(axis=1)
    n = float(n_c.sum())
    if n < 2:
        raise ValueError("Krippendorff's alpha needs at least one unit with two or more values")
    delta = _distance(values, n_c, level)
    expected = float(n_c @ delta @ n_c)
    # expected = 0 only when one value is used throughout, so nothing disagrees either: 0/0, 1.0
    # by the convention of cohen_kappa (Krippendorff leaves alpha undefined there).
    if math.isclose(expected, 0.0, abs_tol=1e-12):
        return 1.0
    return 1.0 - (n - 1.0) * float((o * delta).sum()) / expected


def krippendorff_alpha(ratings: Sequence[Sequence[float | int | None]], level: str = "ordinal") -> float:
    """Krippendorff's alpha for units x coders (None where a coder gave no value).

    Computed through the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's
    Alpha-Reliability") at ``level`` "nominal", "ordinal" or "interval". Units with fewer than two
    values are not pairable and are dropped. The ordinal distance uses the values' marginal
    frequencies ``n_g``: ``delta(c, k) = (sum_{g=c}^{k} n_g - (n_c + n_k) / 2)^2``. When every pairable
    value is the same, alpha is 0/0; this returns 1.0, as ``cohen_kappa`` does.

    >>> round(krippendorff_alpha([[1, 1], [1, 2], [2, 3], [3, 3], [3, None]]), 4)  # 17/24
    0.7083
    >>> krippendorff_alpha([[1, 2], [2, 1]], level="nominal")
    -0.5
    """
    if level not in ALPHA_LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {list(ALPHA_LEVELS)}")
    pairable = [row for row in ratings if sum(v is not None for v in row) >= 2]
    values = sorted({v for row in pairable for v in row if v is not None})
    return _alpha_from_coincidence(_coincidences(pairable, values).sum(axis=0), values, level)


def bootstrap_stat(
    fn: Callable[[np.ndarray], float], n_items: int, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of a statistic of items that is not a mean (a kappa, an alpha).

    Each of ``n_boot`` resamples draws ``n_items`` item indices with replacement from
    ``numpy.random.default_rng(seed)`` and calls ``fn(indices)``. Resamples on which the statistic is
    undefined (``fn`` raises ValueError or returns nan) are skipped; if all are, ValueError.

    >>> x = np.array([0.0, 1.0, 2.0, 3.0])
    >>> lo, hi = bootstrap_stat(lambda idx: float(np.median(x[idx])), 4, n_boot=500)
    >>> 0.0 <= lo <= 1.5 <= hi <= 3.0
    True
    """
    if n_items < 1:
        raise ValueError("bootstrap needs at least one item")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        try:
            value = float(fn(rng.integers(0, n_items, size=n_items)))
        except ValueError:
            continue
        if not math.isnan(value):
            stats.append(value)
    if not stats:
        raise ValueError("the statistic was undefined on every bootstrap resample")
    lo, hi = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


# ---- agreement_report and its sections -------------------------------------------------------------


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _round_ci(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [round(ci[0], 4), round(ci[1], 4)]


def _stat(name: str, n: int, fn: Callable[[np.ndarray], float] | None, n_boot: int, seed: int) -> dict:
    """``{"n", name, name_ci}`` for a statistic of ``n`` items; None where it is undefined."""
    value = ci = None
    if n and fn is not None:
        try:
            value = fn(np.arange(n))
            ci = bootstrap_stat(fn, n, n_boot, seed)
        except ValueError:
            value = ci = None
    return {"n": n, name: _round(value), f"{name}_ci": _round_ci(ci)}


def _agreement(a: dict[str, str], b: dict[str, str], n_boot: int, seed: int, constant_b_kappa: bool = True) -> dict:
    """Agreement and Cohen's kappa of rater ``a`` with ``b`` over the pairs both labelled.

    ``constant_b_kappa=False`` leaves kappa undefined where ``b`` gives one label throughout (the data
    set's reference is always "chosen"): kappa is then 0 or 1 by construction, not informative.
    """
    ids = sorted(a.keys() & b.keys())
    x, y = [a[i] for i in ids], [b[i] for i in ids]
    labels = None if set(x + y) - set(LABELS) else LABELS

    def kappa(idx: np.ndarray) -> float:
        yy = [y[i] for i in idx]
        if not constant_b_kappa and len(set(yy)) < 2:
            raise ValueError("kappa against a constant reference is not informative")
        return cohen_kappa([x[i] for i in idx], yy, labels)

    match = [float(p == q) for p, q in zip(x, y)]
    out = {"n": len(ids), "agreement": None, "agreement_ci": None}
    if ids:
        out["agreement"] = _round(sum(match) / len(match))
        out["agreement_ci"] = _round_ci(bootstrap_ci(match, n_boot, seed))
    return out | {k: v for k, v in _stat("kappa", len(ids), kappa, n_boot, seed).items() if k != "n"}


def _fleiss_section(labels: dict[str, dict[str, str]], n_boot: int, seed: int) -> dict:
    annotators = sorted(labels)
    ids = sorted({i for by_pair in labels.values() for i in by_pair})
    rows = [[labels[a].get(i) for a in annotators] for i in ids]
    table = _category_counts(rows, LABELS)
    table = table[table.sum(axis=1) >= 2]
    fn = (lambda idx: _fleiss_from_counts(table[idx])) if len(annotators) >= 2 else None
    return _stat("kappa", len(table) if fn else 0, fn, n_boot, seed) | {"n_annotators": len(annotators)}


def majority_labels(labels: dict[str, dict[str, str]]) -> dict[str, str]:
    """Per pair, the label most annotators gave it; pairs where two labels tie for most are left out.

    >>> majority_labels({"a": {"p1": "chosen", "p2": "tie"}, "b": {"p1": "chosen", "p2": "rejected"}})
    {'p1': 'chosen'}
    """
    by_pair: dict[str, Counter] = {}
    for by_id in labels.values():
        for pid, label in by_id.items():
            by_pair.setdefault(pid, Counter())[label] += 1
    out = {}
    for pid in sorted(by_pair):
        top = by_pair[pid].most_common(2)
        if len(top) == 1 or top[0][1] > top[1][1]:
            out[pid] = top[0][0]
    return out


def _judges_section(labels, reference, judges, n_boot: int, seed: int) -> dict:
    majority = majority_labels(labels)
    out = {}
    for judge in sorted(judges):
        verdicts = judges[judge]
        out[judge] = {
            "annotators": {a: _agreement(labels[a], verdicts, n_boot, seed) for a in sorted(labels)},
            "reference": None if reference is None else _agreement(verdicts, reference, n_boot, seed, False),
            "annotators_majority": _agreement(verdicts, majority, n_boot, seed),
        }
    return out


def _alpha_section(scores: dict[str, dict[str, dict[str, int]]], n_boot: int, seed: int) -> dict:
    """Ordinal alpha per principle over pairs (units) x annotators, and "all" pooling the principles.

    "all" pools every (pair, principle) unit; its bootstrap resamples the score ids (pairs), so that the
    correlated units of one id stay together; "n_items" counts those ids.
    """
    annotators = sorted(scores)
    ids = sorted({i for by_pair in scores.values() for i in by_pair})
    principles = sorted({p for by_pair in scores.values() for s in by_pair.values() for p in s})
    out, per_pair, n_all = {}, np.zeros((len(ids), len(SCORES), len(SCORES))), 0
    for principle in principles:
        rows = [[(scores[a].get(i) or {}).get(principle) for a in annotators] for i in ids]
        units = _coincidences(rows, SCORES)
        per_pair += units
        pairable = units[units.sum(axis=(1, 2)) > 0]
        n_all += len(pairable)
        fn = lambda idx, u=pairable: _alpha_from_coincidence(u[idx].sum(axis=0), SCORES, "ordinal")
        out[principle] = _stat("alpha", len(pairable), fn, n_boot, seed)
    pooled = per_pair[per_pair.sum(axis=(1, 2)) > 0]
    fn = lambda idx: _alpha_from_coincidence(pooled[idx].sum(axis=0), SCORES, "ordinal")
    out["all"] = _stat("alpha", len(pooled), fn, n_boot, seed) | {"n": n_all, "n_items": len(pooled)}
    return out


def _restrict(by_name: dict[str, dict] | None, ids: set[str] | None) -> dict[str, dict] | None:
    if by_name is None or ids is None:
        return by_name
    return {name: {i: v for i, v in by_id.items() if i in ids} for name, by_id in by_name.items()}


def _sections(labels, reference, judges, scores, n_boot: int, seed: int) -> dict:
    names = sorted(labels)
    return {
        "n_pairs": len({i for by_pair in labels.values() for i in by_pair}),
        "pairwise": {f"{a}|{b}": _agreement(labels[a], labels[b], n_boot, seed) for a, b in combinations(names, 2)},
        "fleiss": _fleiss_section(labels, n_boot, seed),
        "vs_reference": None
        if reference is None
        else {a: _agreement(labels[a], reference, n_boot, seed, False) for a in names},
        "vs_judges": None if judges is None else _judges_section(labels, reference, judges, n_boot, seed),
        "alpha": None if scores is None else _alpha_section(scores, n_boot, seed),
    }


def _validate(labels: dict[str, dict[str, str]], judges, scores) -> None:
    """A label outside chosen/rejected/tie, or a score outside 1-5, is an error naming where it is."""
    for kind, by_name in (("annotator", labels), ("judge", judges or {})):
        for name, by_pair in by_name.items():
            for pid, label in by_pair.items():
                if label not in LABELS:
                    raise ValueError(f"{kind} {name!r} labelled pair {pid!r} {label!r}; expected one of {list(LABELS)}")
    for name, by_pair in (scores or {}).items():
        for pid, by_principle in by_pair.items():
            for principle, score in (by_principle or {}).items():
                if score is not None and (isinstance(score, bool) or score not in SCORES):
                    raise ValueError(f"annotator {name!r} scored {principle!r} on pair {pid!r} {score!r}; expected 1-5")


def agreement_report(
    labels: dict[str, dict[str, str]],
    reference: dict[str, str] | None = None,
    judges: dict[str, dict[str, str]] | None = None,
    subset: set[str] | None = None,
    scores: dict[str, dict[str, dict[str, int]]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Every agreement statistic of the annotations, JSON-serialisable, values rounded to 4 places.

    ``labels``: annotator -> pair id -> "chosen"/"rejected"/"tie". ``reference``: pair id -> the data
    set's label. ``judges``: judge -> pair id -> label. ``scores``: annotator -> pair id -> principle ->
    1-5. ``subset``: the length-robust pair ids; every section is repeated on them under
    ``"length_robust"``. Each statistic carries its ``n`` and a 95% item-bootstrap CI; a statistic
    with no items, or undefined, is None (never an exception). Sections: ``pairwise`` ("a|b": n,
    agreement, kappa), ``fleiss``, ``vs_reference`` (annotator: agreement; kappa only where the
    reference varies), ``vs_judges`` (judge: annotators, reference, annotators_majority) and
    ``alpha`` (principle or "all": ordinal alpha); a section whose input is not given is None.
    """
    _validate(labels, judges, scores)
    out = {"annotators": sorted(labels), "judges": sorted(judges or {}), "n_boot": n_boot, "seed": seed, "level": 0.95}
    out |= _sections(labels, reference, judges, scores, n_boot, seed)
    if subset is not None:
        ids = set(subset)
        restricted = (_restrict(x, ids) for x in (labels, judges, scores))
        sub_labels, sub_judges, sub_scores = restricted
        sub_reference = None if reference is None else {i: v for i, v in reference.items() if i in ids}
        out["length_robust"] = _sections(sub_labels, sub_reference, sub_judges, sub_scores, n_boot, seed)
    return out
