"""Weighted, L2-regularised logistic regression, fitted deterministically with L-BFGS.

The screen's two learned parts (the bag-of-words read and the head on MiniLM embeddings) are
both this model; fitting it here keeps scikit-learn out of the dependencies.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    """
    >>> [round(float(v), 3) for v in sigmoid(np.array([-50.0, 0.0, 2.0]))]
    [0.0, 0.5, 0.881]
    """
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def fit_logistic(x, y, weights=None, l2: float = 1.0, max_iter: int = 500) -> tuple[np.ndarray, float]:
    """Minimise ``sum(w_i * logloss_i) / sum(w_i) + l2 / 2 * |coef|**2`` (the bias is not penalised).

    ``x`` is a dense array or a scipy sparse matrix (n, d); ``y`` holds 0/1 labels.

    >>> x = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> coef, bias = fit_logistic(x, y, l2=0.01)
    >>> [int(p > 0.5) for p in sigmoid(x @ coef + bias)]
    [0, 0, 1, 1]
    """
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    d = x.shape[1]

    def loss(theta):
        coef, bias = theta[:d], theta[d]
        z = x @ coef + bias
        # log(1 + e^z) - y z, written to stay finite for large |z|
        value = float(w @ (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * float(coef @ coef)
        r = w * (sigmoid(z) - y)
        grad = np.concatenate([x.T @ r + l2 * coef, [r.sum()]])
        return value, grad

    res = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return res.x[:d].astype(np.float32), float(res.x[d])
