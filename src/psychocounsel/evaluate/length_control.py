"""length_control: a win rate with the judge's preference for longer answers taken out.

LLM judges prefer longer responses, so a policy can raise its raw win rate by padding.
AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled AlpacaEval") fits a logistic GLM to the
judge's preferences and reports the win rate it predicts when the two responses have the
*same* length. Its model, for instruction i and models m (policy) and b (baseline), is

    logit P(m beats b on i) = (theta_m - theta_b)
                              + phi_{m,b} * tanh((len_m(i) - len_b(i)) / std(len_m - len_b))
                              + (psi_m - psi_b) * gamma_i

and the length-controlled win rate is the mean over instructions of the prediction with the
length term zeroed.

One deliberate difference: we drop the instruction-difficulty term ``(psi_m - psi_b) * gamma_i``.
AlpacaEval estimates ``gamma_i`` from dozens of models on the same 805 instructions; we compare
one policy against one reference on a few hundred items, where the term is not identifiable.
Without it the prediction does not depend on i, so the LC win rate is simply ``sigmoid(b0)``
in ``logit p = b0 + b1 * x``, ``x = tanh(dlen / std(dlen))``.

The fit minimises the *mean* soft-label cross-entropy plus ``l2 / 2 * b1 ** 2``. Soft labels
let a tie count as 0.5. The penalty (on the length slope only, never the intercept) keeps b1
finite when length separates wins from losses; at ``l2 = 1e-3`` it shrinks a typical slope by
about 2% (per-item information for b1 is var(x) * p(1 - p), roughly 0.3 * 0.2 = 0.06).

Its uncertainty (``bootstrap_lc``): a percentile bootstrap over items, refitting the GLM on every
resample. AlpacaEval's ``lc_standard_error`` spreads its per-instruction predictions; without the
instruction term ours has none to spread, so the bootstrap's standard error stands in for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_ITER = 100  # Newton converges in < 10 steps here; 100 only guards against a bug
TOL = 1e-10  # stop when no coefficient moves more than this
MAX_HALVINGS = 50


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # The tanh form never overflows (np.exp(-z) does for z < -709).
    return 0.5 * (1.0 + np.tanh(z / 2.0))


def _checked(
    outcomes: Sequence[float], len_policy: Sequence[float], len_reference: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(outcomes, length differences) as float arrays, or ValueError naming the problem."""
    y = np.asarray(outcomes, dtype=float).ravel()
    lp = np.asarray(len_policy, dtype=float).ravel()
    lr = np.asarray(len_reference, dtype=float).ravel()
    if y.size == 0:
        raise ValueError("length-controlled win rate needs at least one outcome; got none")
    if not (y.size == lp.size == lr.size):
        raise ValueError(
            f"mismatched lengths: {y.size} outcomes, {lp.size} policy lengths, {lr.size} reference lengths"
        )
    if not np.all(np.isfinite(y)) or np.any((y < 0) | (y > 1)):
        raise ValueError("outcomes must be finite numbers in [0, 1] (1 win, 0.5 tie, 0 loss)")
    if not (np.all(np.isfinite(lp)) and np.all(np.isfinite(lr))):
        raise ValueError("response lengths must be finite numbers")
    return y, lp - lr


def length_feature(dlen: np.ndarray) -> tuple[np.ndarray, float]:
    """(x, std): ``x = tanh(dlen / std(dlen))`` with the population std; x = 0 when std is 0.

    >>> x, s = length_feature(np.array([-2.0, 0.0, 2.0]))
    >>> x.round(3).tolist(), round(s, 4)
    ([-0.841, 0.0, 0.841], 1.633)
    >>> length_feature(np.array([5.0, 5.0]))[0].tolist()   # a constant gap says nothing
    [0.0, 0.0]
    """
    std = float(np.std(dlen))
    if std == 0.0:
        return np.zeros_like(dlen, dtype=float), 0.0
    return np.tanh(dlen / std), std


def _objective(beta: np.ndarray, X: np.ndarray, y: np.ndarray, l2: float) -> float:
    z = X @ beta
    # Soft-label cross-entropy: -y log p - (1 - y) log(1 - p) = softplus(z) - y z.
    return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * beta[1] ** 2)


def _newton(X: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Minimise ``_objective`` by damped Newton; RuntimeError if it does not converge."""
    n = y.size
    penalty = np.array([0.0, l2])
    beta = np.zeros(2)
    loss = _objective(beta, X, y, l2)
    for _ in range(MAX_ITER):
        p = _sigmoid(X @ beta)
        grad = X.T @ (p - y) / n + penalty * beta
        hess = (X * (p * (1.0 - p))[:, None]).T @ X / n + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        # Halve the step until the objective does not rise: the objective is convex, so this
        # only bites far from the optimum (e.g. near-separable data) and keeps Newton monotone.
        for _ in range(MAX_HALVINGS):
            new_beta = beta - step
            new_loss = _objective(new_beta, X, y, l2)
            if new_loss <= loss + 1e-15:
                break
            step = step / 2.0
        beta, loss = new_beta, new_loss
        if np.max(np.abs(step)) < TOL:
            return beta
    raise RuntimeError(
        f"length GLM did not converge in {MAX_ITER} Newton steps (last coefficients {beta.tolist()}); try a larger l2"
    )


def fit_length_glm(
    outcomes: Sequence[float], len_policy: Sequence[float], len_reference: Sequence[float], l2: float = 1e-3
) -> dict[str, float]:
    """Fit ``logit p = b0 + b1 * tanh(dlen / std(dlen))`` to per-item outcomes.

    ``outcomes[i]`` is 1 when the policy wins item i, 0 when it loses, 0.5 for a tie (any value
    in [0, 1] is a soft label). Lengths are in any unit (tokens, words, characters), the same
    for both sides. Returns ``intercept`` (b0), ``length_coef`` (b1), ``lc_win_rate``
    (sigmoid(b0): the win rate at equal length), ``n`` and ``length_std`` (std of dlen).

    When every outcome is 1 (or every one is 0) the intercept's optimum is at +inf (-inf):
    the result then has ``intercept = ±inf``, ``length_coef = 0`` and ``lc_win_rate`` 1 (0),
    the limit of the fit. Otherwise both coefficients are finite, even for separable data.

    Raw win rate 3.5 / 6 = 0.583 here, but the wins lean to the longer answers:

    >>> fit = fit_length_glm([1, 0, 1, 0, 0.5, 1], [120, 80, 95, 110, 100, 130], [100] * 6)
    >>> round(fit["lc_win_rate"], 3), round(fit["length_coef"], 3), fit["n"]
    (0.525, 1.441, 6)
    >>> fit_length_glm([1, 1], [10, 20], [15, 15])["lc_win_rate"]
    1.0
    """
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a positive number, got {l2!r}")
    y, dlen = _checked(outcomes, len_policy, len_reference)
    x, std = length_feature(dlen)
    if np.all(y == y[0]) and y[0] in (0.0, 1.0):
        b0, b1 = (np.inf if y[0] == 1.0 else -np.inf), 0.0
    else:
        b0, b1 = _newton(np.column_stack([np.ones_like(x), x]), y, l2)
    return {
        "intercept": float(b0),
        "length_coef": float(b1),
        "lc_win_rate": float(_sigmoid(np.float64(b0))),
        "n": int(y.size),
        "length_std": std,
    }


def lc_win_rate(outcomes: Sequence[float], len_policy: Sequence[float], len_reference: Sequence[float]) -> float:
    """The length-controlled win rate: ``fit_length_glm(...)["lc_win_rate"]``.

    Here the policy wins exactly the two items where it is longer (raw win rate 0.5), so the
    length slope takes all the credit and the rate at equal length is exactly 0.5 by symmetry:

    >>> round(lc_win_rate([1, 1, 0, 0], [110, 130, 90, 70], [100, 100, 100, 100]), 6)
    0.5
    >>> lc_win_rate([], [], [])
    Traceback (most recent call last):
    ...
    ValueError: length-controlled win rate needs at least one outcome; got none
    """
    return fit_length_glm(outcomes, len_policy, len_reference)["lc_win_rate"]


def _batch_newton(X: np.ndarray, Y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """``_newton`` on every row of (X, Y) at once: (intercepts, converged). Each row's 2x2 Newton
    system is solved in closed form; the step is halved per row while it raises that row's
    objective, as in ``_newton``."""
    rows = Y.shape[0]
    b0, b1 = np.zeros(rows), np.zeros(rows)

    def objective(c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
        z = c0[:, None] + c1[:, None] * X
        return np.mean(np.logaddexp(0.0, z) - Y * z, axis=1) + 0.5 * l2 * c1**2

    loss = objective(b0, b1)
    done = np.zeros(rows, dtype=bool)
    for _ in range(MAX_ITER):
        p = _sigmoid(b0[:, None] + b1[:, None] * X)
        r, w = p - Y, p * (1.0 - p)
        g0, g1 = r.mean(axis=1), (r * X).mean(axis=1) + l2 * b1
        h00, h01, h11 = w.mean(axis=1), (w * X).mean(axis=1), (w * X * X).mean(axis=1) + l2
        det = h00 * h11 - h01**2
        with np.errstate(divide="ignore", invalid="ignore"):
            s0, s1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        bad = ~(np.isfinite(s0) & np.isfinite(s1))
        s0[bad | done], s1[bad | done] = 0.0, 0.0
        for _ in range(MAX_HALVINGS):
            new_loss = objective(b0 - s0, b1 - s1)
            rising = new_loss > loss + 1e-15
            if not rising.any():
                break
            s0[rising], s1[rising] = s0[rising] / 2.0, s1[rising] / 2.0
        b0, b1, loss = b0 - s0, b1 - s1, np.minimum(loss, new_loss)
        done |= (np.maximum(np.abs(s0), np.abs(s1)) < TOL) & ~bad
        if done.all():
            break
    return b0, done


def bootstrap_lc(
    outcomes: Sequence[float],
    len_policy: Sequence[float],
    len_reference: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    l2: float = 1e-3,
) -> dict[str, float]:
    """Percentile bootstrap of the length-controlled win rate: ``n_boot`` resamples of the items
    with replacement (``numpy.random.default_rng(seed)``), the GLM refitted on each, std(dlen)
    included, all resamples in one vectorised Newton fit. Returns ``ci_low``, ``ci_high`` (the
    ``(1 -/+ level) / 2`` quantiles) and ``standard_error`` (the std of the resampled rates, the
    bootstrap's standard error; AlpacaEval's ``lc_standard_error`` is on its 0-100 scale).

    A resample whose outcomes are all wins (all losses) has rate 1 (0), as fit_length_glm says.

    >>> b = bootstrap_lc([1, 0, 1, 0, 0.5, 1, 1, 0], [120, 80, 95, 110, 100, 130, 105, 90], [100] * 8, n_boot=400)
    >>> b["ci_low"] < 0.5 < b["ci_high"], 0 < b["standard_error"] < 0.5
    (True, True)
    """
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a positive number, got {l2!r}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot!r}")
    y, dlen = _checked(outcomes, len_policy, len_reference)
    n = y.size
    rng = np.random.default_rng(seed)
    rates = []
    # Resamples per batch: ~2**21 items (16 MB per float array; the fit holds a few) at a time.
    per_batch = max(1, (1 << 21) // n)
    for start in range(0, n_boot, per_batch):
        idx = rng.integers(0, n, size=(min(per_batch, n_boot - start), n))
        Y, D = y[idx], dlen[idx]
        std = D.std(axis=1)
        X = np.tanh(D / np.where(std > 0, std, 1.0)[:, None]) * (std > 0)[:, None]
        # All wins (all losses): the intercept's optimum is at +inf (-inf), so the rate is 1 (0).
        sure = np.all(Y == Y[:, :1], axis=1) & np.isin(Y[:, 0], (0.0, 1.0))
        rate = Y[:, 0].copy()
        b0, ok = _batch_newton(X[~sure], Y[~sure], l2)
        rate[~sure] = _sigmoid(b0)
        for i in np.flatnonzero(~sure)[~ok]:  # a row the batch fit could not settle: the scalar fit decides
            rate[i] = fit_length_glm(Y[i], D[i], np.zeros(n), l2)["lc_win_rate"]
        rates.append(rate)
    all_rates = np.concatenate(rates)
    lo, hi = np.quantile(all_rates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return {"ci_low": float(lo), "ci_high": float(hi), "standard_error": float(np.std(all_rates, ddof=1))}
