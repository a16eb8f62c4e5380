"""stats: the statistics of pairwise preferences (both-order verdicts, win rates, CIs, kappa).

A pairwise judge sees the policy's and the reference's responses as A and B. Judges favour
one position, so each pair is judged twice, once in each order, and the two verdicts are
combined by ``combine_orders``: a win or a loss must survive the swap, anything else is a tie.
A judge that always picks A thus yields only ties, and ``position_consistency`` 0.

Verdicts are the strings ``"policy"``, ``"reference"`` and ``"tie"`` (already mapped from the
judge's A/B labels). ``position_consistent``, ``position_consistency`` and ``cohen_kappa`` work
on any hashable labels.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

POLICY, REFERENCE, TIE = "policy", "reference", "tie"
VERDICT_VALUE = {POLICY: 1.0, TIE: 0.5, REFERENCE: 0.0}
# Resamples per chunk in bootstrap_ci: n_boot * n indices at once would be 1.6 GB for 2000
# resamples of 100,000 values; chunks of ~2**22 indices (32 MB) keep it bounded.
_CHUNK_INDICES = 2**22


def outcome_value(verdict: str) -> float:
    """The verdict as a number: policy 1.0, tie 0.5, reference 0.0.

    >>> [outcome_value(v) for v in ("policy", "tie", "reference")]
    [1.0, 0.5, 0.0]
    """
    try:
        return VERDICT_VALUE[verdict]
    except (KeyError, TypeError):
        raise ValueError(f"unknown verdict {verdict!r}; expected one of {sorted(VERDICT_VALUE)}") from None


# A verdict in positions as a side, per order: the policy is A in the first order, B in the second.
AS_SIDE = ({"A": POLICY, "B": REFERENCE, "tie": TIE}, {"A": REFERENCE, "B": POLICY, "tie": TIE})


def combine_orders(first: str, second: str) -> str:
    """The both-order rule: ``first`` judged with the policy as A, ``second`` with it as B.

    "policy" only if both orders say "policy", "reference" only if both say "reference",
    otherwise "tie" (a disagreement is as uninformative as a tie).

    >>> combine_orders("policy", "policy"), combine_orders("policy", "reference")
    ('policy', 'tie')
    >>> combine_orders("reference", "reference"), combine_orders("tie", "policy")
    ('reference', 'tie')
    """
    outcome_value(first), outcome_value(second)  # validate both
    return first if first == second and first != TIE else TIE


def position_consistent(first: Hashable, second: Hashable) -> bool:
    """True when the two orders gave the same verdict (labels already in policy/reference terms).

    >>> position_consistent("policy", "policy"), position_consistent("policy", "reference")
    (True, False)
    """
    return first == second


def position_consistency(pairs: Iterable[tuple[Hashable, Hashable]]) -> float:
    """Share of (first, second) verdict pairs on which the two orders agree.

    >>> position_consistency([("policy", "policy"), ("tie", "tie"), ("policy", "reference")])
    0.6666666666666666
    """
    same = [position_consistent(first, second) for first, second in pairs]
    if not same:
        raise ValueError("position consistency needs at least one (first, second) pair")
    return sum(same) / len(same)


def win_rate(verdicts: Iterable[str]) -> float:
    """Mean outcome value of the verdicts: wins count 1, ties 0.5, losses 0.

    >>> win_rate(["policy", "tie", "reference", "policy"])
    0.625
    """
    values = [outcome_value(v) for v in verdicts]
    if not values:
        raise ValueError("win rate needs at least one verdict")
    return sum(values) / len(values)


def counts(verdicts: Iterable[str]) -> dict[str, int]:
    """How many wins, ties and losses (policy, tie, reference verdicts).

    >>> counts(["policy", "tie", "policy", "reference"])
    {'wins': 2, 'ties': 1, 'losses': 1}
    """
    out = {"wins": 0, "ties": 0, "losses": 0}
    key = {POLICY: "wins", TIE: "ties", REFERENCE: "losses"}
    for v in verdicts:
        outcome_value(v)  # validate
        out[key[v]] += 1
    return out


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of ``values``: ``std(values, ddof=1) / sqrt(n)``, as
    AlpacaEval computes its win rate's ``standard_error`` (pandas' ``sem`` of the per-example
    preferences, a tie counted 0.5; it reports it times 100). One value: 0.0.

    >>> round(standard_error([1.0] * 44 + [0.0] * 56) * 100, 4)   # AlpacaEval: 44 of 100 wins
    4.9889
    >>> standard_error([0.5])
    0.0
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("standard error needs at least one value")
    if x.size == 1:
        return 0.0
    return float(np.std(x, ddof=1) / np.sqrt(x.size))


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for the mean of ``values``.

    Draws ``n_boot`` resamples of size n with replacement from ``numpy.random.Generator(seed)``
    (``default_rng``) and returns the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
    their means. Reproducible for a given seed; one value gives ``(v, v)``.

    >>> lo, hi = bootstrap_ci([1, 1, 0, 1, 0.5, 0, 1, 1, 0, 1])
    >>> lo < 0.65 < hi, (round(lo, 2), round(hi, 2))
    (True, (0.35, 0.9))
    >>> bootstrap_ci([0.7])
    (0.7, 0.7)
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap CI needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap CI needs finite values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_INDICES // x.size)
    means = np.concatenate(
        [
            x[rng.integers(0, x.size, size=(min(rows, n_boot - start), x.size))].mean(axis=1)
            for start in range(0, n_boot, rows)
        ]
    )
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable], labels: Sequence[Hashable] | None = None) -> float:
    """Cohen's kappa between two raters: ``(p_o - p_e) / (1 - p_e)``.

    ``p_o`` is the share of items both raters label alike; ``p_e`` the agreement expected by
    chance, ``sum over labels of (share a gives it) * (share b gives it)``. ``labels`` fixes the
    label set (a label outside it is an error); by default it is every label either rater used.
    Computed from integer counts, so the result is exact up to one division.

    When ``p_e = 1`` the formula is 0/0: this returns 1.0 if ``p_o = 1`` and 0.0 otherwise.
    (p_e = 1 only when both raters used one and the same label throughout, which forces
    p_o = 1, so in practice that case is 1.0: perfect, if uninformative, agreement.)

    >>> cohen_kappa(["A", "A", "B", "tie"], ["A", "B", "B", "tie"])   # p_o 3/4, p_e 5/16
    0.6363636363636364
    >>> cohen_kappa(["A", "A"], ["A", "A"])
    1.0
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"raters labelled different numbers of items: {len(a)} and {len(b)}")
    if not a:
        raise ValueError("Cohen's kappa needs at least one item")
    index = {lab: i for i, lab in enumerate(dict.fromkeys(a + b) if labels is None else labels)}
    unknown = [lab for lab in dict.fromkeys(a + b) if lab not in index]
    if unknown:
        raise ValueError(f"labels {unknown!r} are not in labels={list(labels)!r}")
    table = np.zeros((len(index), len(index)), dtype=np.int64)
    np.add.at(table, ([index[x] for x in a], [index[y] for y in b]), 1)
    n = len(a)
    # kappa = (n * agree - chance) / (n^2 - chance), with chance = sum(row * col): p_o, p_e * n^2.
    agree = int(np.trace(table))
    chance = int(table.sum(axis=1) @ table.sum(axis=0))
    if chance == n * n:
        return 1.0 if agree == n else 0.0
    return (n * agree - chance) / (n * n - chance)
