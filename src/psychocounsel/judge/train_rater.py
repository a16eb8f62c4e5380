"""``psychocounsel train-judge``: learn the default rater's heads from human labels and
length-matched contrastive pairs, and measure it on held-out speeches.

Data (a folder laid out like ``../shared/data``, see its README):

- EPITOME (Sharma et al., 2020): peer replies labelled 0/1/2 for emotional reactions and
  interpretations (-> ``empathy``) and explorations (-> ``exploration``). Trained on pairs of
  replies of different levels, half of them drawn so that the better reply is not the longer.
- CounselChat: a therapist's answer to *this* question against an answer of about the same
  length to another question (-> ``relevance``, ``empathy``); more-upvoted against less-upvoted
  answers to the same question only where both are about equally long (upvotes mostly reward
  length).
- Contrastive pairs (``contrastive.py``) on CounselChat questions and Reddit posts.

Every source is split by speech (a hash of its id: train 60%, dev 20%, test 20%) before anything
is fitted; hyperparameters are fixed here, and the report's ``test`` part is what the card quotes.
Before fitting, the directions of feature space that linearly predict log length are projected
out (iterated nullspace projection), so a head cannot read length off the features.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..config import TrainJudgeConfig
from ..errors import UserError
from . import contrastive
from .rater import FEATURES, WEIGHTS, featurize, head_scores, save_head

log = logging.getLogger(__name__)
PRINCIPLES = ("empathy", "relevance", "clarity", "safety", "exploration", "autonomy", "staging")
EPITOME = {"emotional-reactions": "empathy", "interpretations": "empathy", "explorations": "exploration"}


def split_of(key: str, seed: int = 0) -> str:
    """train, dev or test for a speech, from a hash of its id (fixed before any result is seen);
    the crisis screen's 60/20/20 hash split, in a namespace of its own.

    >>> split_of("epitome:65m92s"), split_of("epitome:65m92s") == split_of("epitome:65m92s", 0)
    ('train', True)
    """
    from ..safety.data import split_of as hashed_split

    return hashed_split(key, seed=f"rater{seed}")


class Table:
    """Unique (speech, response) rows; pairs refer to rows by index."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.index: dict[tuple[str, str], int] = {}

    def add(self, speech: str, response: str) -> int:
        key = (speech, response)
        if key not in self.index:
            self.index[key] = len(self.rows)
            self.rows.append(key)
        return self.index[key]


def _csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"train-judge needs {path} (see ../shared/data/README.md)")
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def load_epitome(data: Path) -> list[dict]:
    """One row per (seeker post, reply) with its three levels."""
    rows: dict[tuple[str, str], dict] = {}
    for file, _ in EPITOME.items():
        for r in _csv(data / "epitome-empathy" / f"{file}-reddit.csv"):
            if r["seeker_post"].strip() and r["response_post"].strip():
                row = rows.setdefault(
                    (r["sp_id"], r["rp_id"]),
                    {"speech_id": f"epitome:{r['sp_id']}", "speech": r["seeker_post"], "reply": r["response_post"]},
                )
                row[file] = int(r["level"])
    return [r for r in rows.values() if all(f in r for f in EPITOME)]


def load_counselchat(data: Path) -> dict[str, dict]:
    """Questions by id: ``{speech_id, speech, topic, answers: [(text, upvotes)]}``."""
    out: dict[str, dict] = {}
    for r in _csv(data / "counsel-chat" / "20200325_counsel_chat.csv"):
        text = (r["questionText"] or "").strip() or (r["questionTitle"] or "").strip()
        if text and (r["answerText"] or "").strip():
            q = out.setdefault(
                r["questionID"],
                {"speech_id": f"counselchat:{r['questionID']}", "speech": text, "topic": r["topic"], "answers": []},
            )
            q["answers"].append((r["answerText"].strip(), int(r["upvotes"] or 0)))
    return out


def load_posts(data: Path, n: int, seed: int) -> list[dict]:
    """Up to ``n`` Reddit posts from support forums (crisis ones marked), as contrastive speeches."""
    path = data / "reddit-mental-health" / "posts.jsonl"
    if not path.is_file():
        raise UserError(f"train-judge needs {path} (see ../shared/data/README.md)")
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    rows = [r for r in rows if r.get("group") in ("crisis", "distress")]
    random.Random(seed).shuffle(rows)
    return [
        {"id": f"reddit:{r['id']}", "text": r["text"], "crisis": r["group"] == "crisis"} for r in rows[:n] if r["text"]
    ]


def _pair(better: int, worse: int, heads: list[str], overall: bool, source: str, weight: float = 1.0) -> dict:
    return {"better": better, "worse": worse, "heads": heads, "overall": overall, "source": source, "w": weight}


def epitome_pairs(rows: list[dict], table: Table, n: int, rng: random.Random) -> list[dict]:
    """Pairs of replies with different levels, half of them drawn so that the better reply is no
    longer than the worse (level, not length, separates them): ``2 n`` for ``empathy`` by the sum
    of the emotional-reaction and interpretation levels (one head serves both mechanisms: trained
    on either alone it ranks the other below chance), ``n`` for ``exploration``."""
    idx = [table.add(r["speech"], r["reply"]) for r in rows]
    lengths = [len(r["reply"]) for r in rows]
    out = []
    tasks = (
        ("empathy", lambda r: r["emotional-reactions"] + r["interpretations"], 2 * n, "epitome-empathy"),
        ("exploration", lambda r: r["explorations"], n, "epitome-explorations"),
    )
    for head, level, count, source in tasks:
        by_level = defaultdict(list)
        for i, r in enumerate(rows):
            by_level[level(r)].append(i)
        levels = sorted(by_level)
        if len(levels) < 2:
            continue
        for k in range(count):
            hi = rng.choice(levels[1:])
            a = rng.choice(by_level[hi])
            lo = rng.choice([v for v in levels if v < hi])
            b = rng.choice(by_level[lo])
            if k % 2:  # length-robust: redraw the worse reply until it is at least as long
                for _ in range(20):
                    if lengths[b] >= lengths[a]:
                        break
                    b = rng.choice(by_level[lo])
            out.append(_pair(idx[a], idx[b], [head], False, source))
    return out


def counselchat_pairs(questions: list[dict], table: Table, rng: random.Random) -> list[dict]:
    """Answer to this question > answer of about the same length to another question; and, where
    two answers are within 20% of each other's length, more upvotes > fewer (weight 0.5)."""
    answers = [(q, a) for q in questions for a, _ in q["answers"]]
    out = []
    for q, a in answers:
        pool = rng.sample(answers, min(30, len(answers)))
        others = [x for x in pool if x[0]["speech_id"] != q["speech_id"] and x[0]["topic"] != q["topic"]]
        if others:
            other = min(others, key=lambda x: abs(len(x[1]) - len(a)))[1]
            out.append(
                _pair(
                    table.add(q["speech"], a),
                    table.add(q["speech"], other),
                    ["relevance", "empathy"],
                    True,
                    "counselchat-relevance",
                )
            )
        up_a = dict(q["answers"])[a]
        for b, up_b in q["answers"]:
            if up_a > up_b and 0.8 <= len(a) / len(b) <= 1.25:
                out.append(
                    _pair(table.add(q["speech"], a), table.add(q["speech"], b), [], True, "counselchat-upvotes", 0.5)
                )
    return out


def contrastive_pairs(speeches: list[dict], table: Table, seed: int) -> tuple[list[dict], list[dict]]:
    rows = contrastive.build(speeches, seed)
    pairs = [
        _pair(
            table.add(r["speech"], r["better"]),
            table.add(r["speech"], r["worse"]),
            r["principles"],
            True,
            f"contrastive-{r['kind']}",
        )
        for r in rows
    ]
    return pairs, rows


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
            tmp = cache.with_name(cache.name + ".tmp.npz")
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


def _all_pairs_upvotes(questions: list[dict], table: Table) -> list[dict]:
    """Every (more-upvoted, less-upvoted) answer pair of the same question: the evaluation set."""
    out = []
    for q in questions:
        for a, ua in q["answers"]:
            for b, ub in q["answers"]:
                if ua > ub:
                    out.append(
                        _pair(table.add(q["speech"], a), table.add(q["speech"], b), [], True, "counselchat-upvotes")
                    )
    return out


def build_data(cfg: TrainJudgeConfig) -> tuple[Table, dict]:
    """Every row and pair, split by speech; nothing here has seen a score."""
    data_dir = Path(cfg.data).expanduser()
    rng = random.Random(cfg.seed)
    table = Table()
    epitome = load_epitome(data_dir)
    for r in epitome:
        r["split"] = split_of(r["speech_id"], cfg.seed)
        r["row"] = table.add(r["speech"], r["reply"])
    questions = list(load_counselchat(data_dir).values())
    for q in questions:
        q["split"] = split_of(q["speech_id"], cfg.seed)
    posts = load_posts(data_dir, cfg.reddit_posts, cfg.seed)
    speeches = [{"id": q["speech_id"], "text": q["speech"], "crisis": False} for q in questions] + posts
    train_pairs: list[dict] = []
    eval_pairs: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    train_pairs += epitome_pairs([r for r in epitome if r["split"] == "train"], table, cfg.epitome_pairs, rng)
    train_pairs += counselchat_pairs([q for q in questions if q["split"] == "train"], table, rng)
    for split in ("dev", "test"):
        part = [q for q in questions if q["split"] == split]
        eval_pairs[split] += _all_pairs_upvotes(part, table)
        eval_pairs[split] += [p for p in counselchat_pairs(part, table, rng) if p["source"] == "counselchat-relevance"]
    contrast_rows = []
    for split in ("train", "dev", "test"):
        part = [s for s in speeches if split_of(s["id"], cfg.seed) == split]
        pairs, rows = contrastive_pairs(part, table, cfg.seed)
        contrast_rows += [dict(r, split=split) for r in rows]
        (train_pairs if split == "train" else eval_pairs[split]).extend(pairs)
    return table, {
        "epitome": epitome,
        "train_pairs": train_pairs,
        "eval_pairs": eval_pairs,
        "contrastive": contrast_rows,
    }


def data_hash(table: Table) -> str:
    h = hashlib.sha256()
    for s, r in table.rows:
        h.update(f"{s}\x00{r}\x01".encode())
    return h.hexdigest()[:16]


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
