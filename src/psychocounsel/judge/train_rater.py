"""``psychocounsel train-judge``: learn the default rater's heads from human labels and
length-matched contrastive pairs, and measure it on held-out speeches.

The data (EPITOME levels, CounselChat answers, rule-written contrastive pairs, each split by
speech) is built in ``rater_data.py``.

Every source is split by speech (a hash of its id: train 60%, dev 20%, test 20%) before anything
is fitted; hyperparameters are fixed here, and the report's ``test`` part is what the card quotes.
Before fitting, the directions of feature space that linearly predict log length are projected
out (iterated nullspace projection), so a head cannot read length off the features.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..config import TrainJudgeConfig
from .rater import FEATURES, WEIGHTS, featurize, head_scores, save_head
from .rater_data import EPITOME, Table, build_data, data_hash

log = logging.getLogger(__name__)
PRINCIPLES = ("empathy", "relevance", "clarity", "safety", "exploration", "autonomy", "staging")


def embed_table(table: Table, cache: Path | None) -> np.ndarray:
    """Features of every row, reusing those cached by (speech, response) hash in ``cache`` (.npz)."""
    from .minilm import Encoder

    keys = [hashlib.sha256(f"{s}\x00{r}".encode()).hexdigest() for s, r in table.rows]
    stored: dict[str, np.ndarray] = {}
    if cache and cache.is_file():
        z = np.load(cache)
        if z["x"].shape[1] == FEATURES:
            stored = dict(zip(map(str, z["keys"]), z["x"]))
    todo = sorted((i for i, k in enumerate(keys) if k not in stored), key=lambda i: table.rows[i][0])
    if todo:
        from ..progress import bar

        log.info("featurizing %d rows (%d cached)", len(todo), len(keys) - len(todo))
        encoder = Encoder()
        with bar(len(todo), "featurizing") as progress:
            for start in range(0, len(todo), 2048):
                chunk = todo[start : start + 2048]
                x = featurize(encoder, [table.rows[i][0] for i in chunk], [table.rows[i][1] for i in chunk])
                for i, row in zip(chunk, x):
                    stored[keys[i]] = row
                progress.update(len(chunk))
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            order = sorted(stored)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp.npz")  # two trainings may share a cache
            np.savez(tmp, keys=np.array(order), x=np.stack([stored[k] for k in order]))
            tmp.replace(cache)
    return np.stack([stored[k] for k in keys]) if keys else np.zeros((0, FEATURES), np.float32)


def length_nullspace(x: np.ndarray, log_len: np.ndarray, steps: int, l2: float = 1.0) -> np.ndarray:
    """Orthonormal rows U such that ``x - x @ U.T @ U`` no longer predicts ``log_len`` linearly
    (iterated nullspace projection: fit ridge, remove its direction, repeat ``steps`` times)."""
    dirs: list[np.ndarray] = []
    xc = x - x.mean(0)
    y = log_len - log_len.mean()
    for _ in range(steps):
        xp = xc - (xc @ np.array(dirs).T) @ np.array(dirs) if dirs else xc
        w = np.linalg.solve(xp.T @ xp + l2 * np.eye(x.shape[1]), xp.T @ y)
        for d in dirs:  # keep the directions orthonormal
            w = w - (w @ d) * d
        dirs.append(w / np.linalg.norm(w))
    return np.array(dirs).reshape(len(dirs), x.shape[1])


def fit_heads(x: np.ndarray, pairs: list[dict], cfg: TrainJudgeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Linear heads trained with a pairwise logistic loss per named head, and on the mean of
    all heads for pairs marked ``overall``. Returns (weight (7, d), bias (7,)) on ``x``'s scale."""
    import torch

    torch.manual_seed(cfg.seed)
    xt = torch.tensor(x, dtype=torch.float32)
    b = torch.tensor([p["better"] for p in pairs])
    w_ = torch.tensor([p["worse"] for p in pairs])
    weight = torch.tensor([p["w"] for p in pairs], dtype=torch.float32)
    mask = torch.zeros(len(pairs), len(PRINCIPLES))
    for i, p in enumerate(pairs):
        for h in p["heads"]:
            mask[i, PRINCIPLES.index(h)] = 1.0
    overall = torch.tensor([float(p["overall"]) for p in pairs])
    lin = torch.nn.Linear(x.shape[1], len(PRINCIPLES))
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.Adam(lin.parameters(), lr=cfg.lr, weight_decay=0)
    for step in range(cfg.steps):
        opt.zero_grad()
        d = lin(xt[b]) - lin(xt[w_])  # (pairs, heads)
        head_loss = (torch.nn.functional.softplus(-d) * mask).sum(1)
        all_loss = torch.nn.functional.softplus(-d.mean(1)) * overall
        loss = ((head_loss + all_loss) * weight).sum() / weight.sum() + cfg.l2 * lin.weight.pow(2).sum()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log.debug("step %d loss %.4f", step, loss.item())
    return lin.weight.detach().numpy().astype(np.float64), lin.bias.detach().numpy().astype(np.float64)


def _acc(d: np.ndarray) -> float:
    return float((d > 0).mean() + 0.5 * (d == 0).mean()) if len(d) else float("nan")


def _ci(d: np.ndarray, seed: int = 0) -> list[float]:
    from ..evaluate.stats import bootstrap_ci

    credit = (d > 0) + 0.5 * (d == 0)
    return [round(v, 3) for v in bootstrap_ci(credit.astype(float), seed=seed)] if len(d) else []


def pair_report(better: np.ndarray, worse: np.ndarray, len_b: np.ndarray, len_w: np.ndarray) -> dict:
    """Accuracy (ties half) with CI, "longer wins" on the same pairs, and the accuracy where the
    better reply is not the longer one."""
    d = better - worse
    robust = len_b <= len_w
    ld = (len_b - len_w).astype(float)
    return {
        "n": int(len(d)),
        "accuracy": round(_acc(d), 3),
        "accuracy_ci": _ci(d),
        "longer_wins": round(_acc(np.sign(ld)), 3),
        "length_robust": {"n": int(robust.sum()), "accuracy": round(_acc(d[robust]), 3), "accuracy_ci": _ci(d[robust])},
        "beats_longer_wins": bool(_acc(d) > _acc(np.sign(ld))),
    }


def evaluate(scores: np.ndarray, lengths: np.ndarray, data: dict, split: str) -> dict:
    """Every held-out measure of one split; ``scores`` is (rows, heads) in 1-5."""
    from scipy.stats import spearmanr

    overall = scores.mean(1)
    out: dict = {}
    ep = [r for r in data["epitome"] if r["split"] == split]
    for file, head in EPITOME.items():
        rows = np.array([r["row"] for r in ep])
        lv = np.array([r[file] for r in ep])
        s = scores[rows, PRINCIPLES.index(head)]
        hi, lo = np.where(lv == 2)[0], np.where(lv == 0)[0]
        a, b = np.repeat(hi, len(lo)), np.tile(lo, len(hi))
        rep = pair_report(s[a], s[b], lengths[rows][a], lengths[rows][b])
        rep.update(
            principle=head,
            replies=int(len(rows)),
            spearman_level=round(float(spearmanr(s, lv).statistic), 3),
            spearman_length=round(float(spearmanr(s, lengths[rows]).statistic), 3),
        )
        out[f"epitome-{file}"] = rep
    upvotes = [p for p in data["eval_pairs"][split] if p["source"] == "counselchat-upvotes"]
    matched = [p for p in upvotes if 0.8 <= lengths[p["better"]] / lengths[p["worse"]] <= 1.25]
    for source, ps in (
        ("counselchat-upvotes", upvotes),
        ("counselchat-upvotes-matched", matched),
        ("counselchat-relevance", [p for p in data["eval_pairs"][split] if p["source"] == "counselchat-relevance"]),
        ("annotations", [p for p in data["eval_pairs"][split] if p["source"] == "annotations"]),
    ):
        if ps:
            b, w = np.array([p["better"] for p in ps]), np.array([p["worse"] for p in ps])
            out[source] = pair_report(overall[b], overall[w], lengths[b], lengths[w])
    ps = [p for p in data["eval_pairs"][split] if p["source"].startswith("contrastive-")]
    if ps:
        b, w = np.array([p["better"] for p in ps]), np.array([p["worse"] for p in ps])
        rep = pair_report(overall[b], overall[w], lengths[b], lengths[w])
        rep["by_kind"] = {
            k: round(_acc(overall[b][kinds] - overall[w][kinds]), 3)
            for k in sorted({p["source"] for p in ps})
            for kinds in [np.array([p["source"] == k for p in ps])]
        }
        out["contrastive"] = rep
    rows = sorted({r for p in data["eval_pairs"][split] for r in (p["better"], p["worse"])} | {r["row"] for r in ep})
    out["overall_spearman_length"] = round(float(spearmanr(overall[rows], lengths[rows]).statistic), 3)
    return out


def train(cfg: TrainJudgeConfig) -> dict:
    """Build the data, fit the heads, measure dev and test, write the weights (and card)."""
    start = time.time()
    table, data = build_data(cfg)
    log.info("%d rows, %d train pairs", len(table.rows), len(data["train_pairs"]))
    x = embed_table(table, Path(cfg.cache).expanduser() if cfg.cache else None).astype(np.float64)
    lengths = np.array([len(r) for _, r in table.rows], dtype=float)
    train_rows = sorted({r for p in data["train_pairs"] for r in (p["better"], p["worse"])})
    mu, sd = x[train_rows].mean(0), x[train_rows].std(0) + 1e-6
    xs = (x - mu) / sd
    u = length_nullspace(xs[train_rows], np.log(lengths[train_rows]), cfg.length_directions)
    xp = xs - (xs @ u.T) @ u if len(u) else xs
    weight, bias = fit_heads(xp, data["train_pairs"], cfg)
    # Fold the projection and the standardisation into one linear map on raw features, then
    # centre and scale each head so that the training rows spread over the 1-5 scale.
    w_raw = (weight - (weight @ u.T) @ u) / sd if len(u) else weight / sd
    b_raw = bias - w_raw @ mu
    z = x[train_rows] @ w_raw.T + b_raw
    centre, spread = np.median(z, 0), z.std(0) + 1e-9
    w_final = w_raw * (cfg.scale / spread)[:, None]
    b_final = (b_raw - centre) * cfg.scale / spread
    scores = head_scores(x, w_final, b_final)
    report = {
        "config": cfg.model_dump(mode="json"),
        "rows": len(table.rows),
        "train_pairs": {
            s: sum(p["source"] == s for p in data["train_pairs"])
            for s in sorted({p["source"] for p in data["train_pairs"]})
        },
        "train_better_is_longer": round(
            float(np.mean([lengths[p["better"]] > lengths[p["worse"]] for p in data["train_pairs"]])), 3
        ),
        "dev": evaluate(scores, lengths, data, "dev"),
        "test": evaluate(scores, lengths, data, "test"),
        "data_hash": data_hash(table),
        "seconds": round(time.time() - start, 1),
    }
    if cfg.out:
        meta = {
            "principles": list(PRINCIPLES),
            "data_hash": report["data_hash"],
            "config": report["config"],
            "test": report["test"],
            "probe": probe_scores(w_final, b_final),
        }
        save_head(Path(cfg.out).expanduser(), w_final.astype(np.float32), b_final.astype(np.float32), meta)
    return report


def summary(report: dict) -> dict:
    """The test part in one line per set: accuracy, "longer wins", length-robust accuracy."""
    out = {"seconds": report["seconds"], "data_hash": report["data_hash"], "test": {}}
    for name, rep in report["test"].items():
        if isinstance(rep, dict):
            out["test"][name] = {
                "n": rep["n"],
                "accuracy": rep["accuracy"],
                "longer_wins": rep["longer_wins"],
                "length_robust": rep["length_robust"]["accuracy"],
                "beats_longer_wins": rep["beats_longer_wins"],
            }
    return out


PROBES = [
    (
        "I can't sleep and I keep thinking my boss will fire me.",
        "It sounds like the worry about your job follows you to bed and keeps you awake.",
    ),
    ("I can't sleep and I keep thinking my boss will fire me.", "Try melatonin and stop checking email at night."),
]


def probe_scores(weight: np.ndarray, bias: np.ndarray) -> list[list[float]]:
    """Scores of two fixed probes at training time: the tests check the shipped file reproduces them."""
    from .minilm import Encoder

    x = featurize(Encoder(), [s for s, _ in PROBES], [r for _, r in PROBES])
    return [[round(float(v), 4) for v in row] for row in head_scores(x, weight, bias)]


__all__ = ["train", "summary", "WEIGHTS", "PRINCIPLES"]
