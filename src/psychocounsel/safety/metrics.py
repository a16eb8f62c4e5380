"""How well a screen's calls agree with labels: recall, false positive rate, precision, F1, AUC and
flag rates, each with a percentile bootstrap 95% CI over the items (one set of resamples for all).

Pure functions of lists; no text. ``screen_metrics`` is what the benchmark and the
``psychocounsel screen`` command report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BOOT = 2000


def auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes.

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([1, 1], [0.2, 0.3]) is None
    True
    """
    y = np.asarray(labels, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _counts(y: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts along the last axis (works on one sample or a matrix of resamples)."""
    tp = (y & pos).sum(-1)
    fp = (~y & pos).sum(-1)
    fn = (y & ~pos).sum(-1)
    tn = (~y & ~pos).sum(-1)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "recall": recall,
        "fpr": _ratio(fp, fp + tn),
        "precision": precision,
        "f1": _ratio(2 * precision * recall, precision + recall),
    }


def _ci(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    lo, hi = np.quantile(values, [0.025, 0.975])
    return [round(float(lo), 4), round(float(hi), 4)]


def _value(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def flag_rates(flags: Sequence[bool], groups: Sequence[str], seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Share of items flagged, per group, with a bootstrap CI.

    >>> flag_rates([True, False, False, False], ["a", "a", "b", "b"], n_boot=200)["a"]["rate"]
    0.5
    """
    f, g = np.asarray(flags, dtype=float), np.asarray(groups)
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(set(g.tolist())):
        x = f[g == name]
        means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
        out[name] = {"n": int(x.size), "flagged": int(x.sum()), "rate": _value(x.mean()), "ci95": _ci(means)}
    return out


def screen_metrics(
    labels: Sequence[int],
    flags: Sequence[bool],
    positives: Sequence[bool],
    scores: Sequence[float],
    groups: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> dict:
    """Metrics of screen calls against labels (1 = crisis).

    ``positives`` are the calls that count as a crisis call (recall, fpr, precision, F1),
    ``flags`` the calls that reach a human at all (concern or crisis: flag rates), ``scores``
    the continuous score (AUC). Every metric comes with ``<name>_ci95`` from ``n_boot``
    resamples of the items drawn with ``numpy.random.default_rng(seed)``.

    >>> m = screen_metrics([1, 1, 0, 0, 0], [True, True, True, False, False],
    ...                    [True, False, False, False, False], [0.9, 0.6, 0.7, 0.1, 0.2], n_boot=200)
    >>> m["n"], m["n_crisis"], m["recall"], m["fpr"], m["precision"], m["auc"]
    (5, 2, 0.5, 0.0, 1.0, 0.8333)
    """
    y, pos = np.asarray(labels, dtype=bool), np.asarray(positives, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if not len(y) == len(pos) == len(s) == len(flags):
        raise ValueError("labels, flags, positives and scores must have the same length")
    if not len(y):
        raise ValueError("screen metrics need at least one item")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    point, boot = _counts(y, pos), _counts(y[idx], pos[idx])
    out: dict = {"n": int(len(y)), "n_crisis": int(y.sum())}
    for name in ("recall", "fpr", "precision", "f1"):
        out[name], out[f"{name}_ci95"] = _value(point[name]), _ci(boot[name])
    out["auc"] = _value(auc(y, s))
    out["auc_ci95"] = _ci(np.array([np.nan if (a := auc(y[i], s[i])) is None else a for i in idx]))
    out["flag_rate"] = _value(np.mean(np.asarray(flags, dtype=float)))
    if groups is not None:
        out["flag_rate_by_group"] = flag_rates(flags, groups, seed, n_boot)
    return out
