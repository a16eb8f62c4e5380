"""The default rater's training data: every source read from a folder laid out like
``../shared/data``, split by speech, and turned into (better, worse) pairs of rows of one
:class:`Table` of unique (speech, response) texts. Nothing here has seen a score; training and
measuring are in ``train_rater.py``.

Sources (see ../shared/data/README.md):

- EPITOME (Sharma et al., 2020): peer replies labelled 0/1/2 for emotional reactions and
  interpretations (-> ``empathy``) and explorations (-> ``exploration``). Trained on pairs of
  replies of different levels, a share of them (``robust_share``) drawn so that the better reply
  is not the longer.
- CounselChat: a therapist's answer to *this* question against an answer of about the same
  length to another question (-> ``relevance``, ``empathy``); more-upvoted against less-upvoted
  answers to the same question only where both are about equally long (upvotes mostly reward
  length). Questions are told apart by id and text (the export reuses some ids).
- Contrastive pairs (``contrastive.py``) on CounselChat questions and Reddit posts.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

from ..config import TrainJudgeConfig
from ..errors import UserError
from . import contrastive

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


def load_counselchat(data: Path) -> dict[tuple[str, str], dict]:
    """Questions by (id, text): ``{speech_id, speech, topic, answers: [(text, upvotes)]}``.

    The export reuses some questionIDs for two different questions, so answers are grouped by
    id *and* text: an answer is only ever compared with answers to the same question. Both
    questions of a reused id keep ``speech_id`` ``counselchat:<id>``, so they share a split."""
    out: dict[tuple[str, str], dict] = {}
    for r in _csv(data / "counsel-chat" / "20200325_counsel_chat.csv"):
        text = (r["questionText"] or "").strip() or (r["questionTitle"] or "").strip()
        if text and (r["answerText"] or "").strip():
            q = out.setdefault(
                (r["questionID"], text),
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


def epitome_pairs(rows: list[dict], table: Table, n: int, rng: random.Random, robust: float) -> list[dict]:
    """Pairs of replies with different levels, a share ``robust`` of them (spread evenly) drawn so
    that the better reply is no longer than the worse (level, not length, separates them), as far
    as 20 redraws find one: ``2 n`` for ``empathy`` by the sum of the emotional-reaction and
    interpretation levels (one head serves both mechanisms: trained on either alone it ranks the
    other below chance), ``n`` for ``exploration``."""
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
            if int((k + 1) * robust) > int(k * robust):  # length-robust: redraw until the worse is as long
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
    train_pairs += epitome_pairs(
        [r for r in epitome if r["split"] == "train"], table, cfg.epitome_pairs, rng, cfg.robust_share
    )
    train_pairs += counselchat_pairs([q for q in questions if q["split"] == "train"], table, rng)
    for split in ("dev", "test"):  # drawn with a generator of their own: training settings cannot move them
        part = [q for q in questions if q["split"] == split]
        eval_rng = random.Random(f"rater-eval-{cfg.seed}-{split}")
        eval_pairs[split] += _all_pairs_upvotes(part, table)
        eval_pairs[split] += [
            p for p in counselchat_pairs(part, table, eval_rng) if p["source"] == "counselchat-relevance"
        ]
    contrast_rows = []
    for split in ("train", "dev", "test"):
        part = [s for s in speeches if split_of(s["id"], cfg.seed) == split]
        pairs, rows = contrastive_pairs(part, table, cfg.seed)
        contrast_rows += [dict(r, split=split) for r in rows]
        (train_pairs if split == "train" else eval_pairs[split]).extend(pairs)
    if cfg.annotations is not None:  # counselors' own labels: trained on and measured like the rest
        for split, pairs in annotation_pairs(cfg.annotations, table, cfg.seed).items():
            (train_pairs if split == "train" else eval_pairs[split]).extend(pairs)
    return table, {
        "epitome": epitome,
        "train_pairs": train_pairs,
        "eval_pairs": eval_pairs,
        "contrastive": contrast_rows,
    }


def annotation_pairs(path: Path, table: Table, seed: int) -> dict[str, list[dict]]:
    """Counselors' labels (``annotate import``: prompt, response_a, response_b, label A or B;
    ties carry no order and are left out) as overall pairs, by split of their speech."""
    from ..pairs_io import read_table_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--annotations {path}: no such file (write it with `psychocounsel annotate import`)")
    out: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for n, r in enumerate(read_table_file(path), 1):
        if not all(isinstance(r.get(k), str) and r[k].strip() for k in ("prompt", "response_a", "response_b")):
            raise UserError(f"--annotations {path}: row {n} lacks prompt, response_a or response_b text")
        if r.get("label") not in ("A", "B", "tie"):
            raise UserError(f"--annotations {path}: row {n} has label {str(r.get('label'))[:10]!r}, not A, B or tie")
        if r["label"] == "tie":
            continue
        a, b = table.add(r["prompt"], r["response_a"]), table.add(r["prompt"], r["response_b"])
        better, worse = (a, b) if r["label"] == "A" else (b, a)
        key = "annotation:" + hashlib.sha256(r["prompt"].encode("utf-8")).hexdigest()[:16]
        out[split_of(key, seed)].append(_pair(better, worse, [], True, "annotations"))
    return out


def data_hash(table: Table) -> str:
    h = hashlib.sha256()
    for s, r in table.rows:
        h.update(f"{s}\x00{r}\x01".encode())
    return h.hexdigest()[:16]
