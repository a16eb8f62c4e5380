"""How well does the offline crisis screen notice a speaker's own risk? Numbers only, no text.

    OMP_NUM_THREADS=2 python benchmarks/crisis_screen.py --out benchmarks/results/crisis_screen.json

Data from ../shared/data (see its README); the screen's weights were fitted on the train split and
its thresholds chosen on dev (``python -m psychocounsel.safety.train``), so test is reported as
the honest number and dev beside it.

- reddit-mental-health: weak labels by subreddit (r/SuicideWatch = crisis). A crisis call counts
  as positive (recall, fpr, precision, F1); a concern or crisis call counts as a flag (flag rates
  per group and per subreddit); the score gives the AUC. Each with a bootstrap 95% CI. The same
  for the keyword baseline (``rules.keyword_flag``: a crisis call on any risk keyword).
- Operating points: recall and flag rates at a few fixed crisis thresholds (reported, not tuned).
- mentalchat16k-eval (200 questions, no labels) and counsel-chat (833 questions: 815 ids, some reused; by topic): call
  counts and flag rates; for counsel-chat, the share of therapist answers to flagged questions
  that ``handles_crisis`` accepts.
- Hand-written cases (``safety/cases.yaml``): how many get the expected level.
- Speed: speeches per second of ``screen`` on test posts under 1,000 characters (median of repeats).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from psychocounsel.safety import handles_crisis, screen
from psychocounsel.safety.cases import cases
from psychocounsel.safety.data import by_split, is_positive, load_posts
from psychocounsel.safety.head import ScreenModel
from psychocounsel.safety.metrics import flag_rates, screen_metrics
from psychocounsel.safety.policy import Policy
from psychocounsel.safety.rules import keyword_flag

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
POSTS = "reddit-mental-health/posts.jsonl"
MENTALCHAT = "mentalchat16k-eval/evalq_bench_question.jsonl"
COUNSELCHAT = "counsel-chat/20200325_counsel_chat.csv"
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)  # crisis thresholds of the reported operating points
SPEED_TEXTS = 200


def evaluate_split(rows: list[dict], results, seed: int, n_boot: int) -> dict:
    """Screen and keyword-baseline metrics on one split (``results``: the screen's assessments)."""
    labels = [int(is_positive(r)) for r in rows]
    groups = [r["group"] for r in rows]
    sources = [r["source_label"] for r in rows]
    flags = [a.level != "none" for a in results]
    out = screen_metrics(
        labels, flags, [a.level == "crisis" for a in results], [a.score for a in results], groups, seed, n_boot
    )
    out["flag_recall"] = round(float(np.mean([f for f, y in zip(flags, labels) if y])), 4)
    out["flag_rate_by_source"] = flag_rates(flags, sources, seed, n_boot)
    out["levels_by_group"] = {
        g: dict(Counter(a.level for a, gg in zip(results, groups) if gg == g)) for g in sorted(set(groups))
    }
    out["subject_other_in_crisis_group"] = sum(a.subject == "other" for a, g in zip(results, groups) if g == "crisis")
    kw = [keyword_flag(r["text"]) for r in rows]
    base = screen_metrics(labels, kw, kw, [float(k) for k in kw], groups, seed, n_boot)
    base["flag_rate_by_source"] = flag_rates(kw, sources, seed, n_boot)
    return {"screen": out, "keyword_baseline": base}


def operating_points(rows: list[dict], results, policy: Policy) -> list[dict]:
    """Recall and flag rates if the crisis threshold were moved (same score, same concern band)."""
    band = policy.crisis - policy.concern
    y = np.array([is_positive(r) for r in rows])
    g = np.array([r["group"] for r in rows])
    s = np.array([a.score for a in results])
    points = []
    for t in (*THRESHOLDS, policy.crisis):
        crisis, flag = s >= t, s >= t - band
        points.append(
            {
                "crisis_threshold": round(t, 4),
                "shipped": t == policy.crisis,
                "recall": round(float(crisis[y].mean()), 4),
                "distress_flag_rate": round(float(flag[g == "distress"].mean()), 4),
                "everyday_flag_rate": round(float(flag[g == "everyday"].mean()), 4),
            }
        )
    return points


def mentalchat(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [" ".join(r["turns"]) for r in rows]
    res = screen(texts)
    return {
        "n": len(rows),
        "levels": dict(Counter(a.level for a in res)),
        "keyword_baseline_flags": sum(keyword_flag(t) for t in texts),
        "flagged_question_ids": [r["question_id"] for r, a in zip(rows, res) if a.level != "none"],
        "crisis_question_ids": [r["question_id"] for r, a in zip(rows, res) if a.level == "crisis"],
    }


def counselchat(path: Path) -> dict:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    # Keyed by id and text: the export reuses some questionIDs for two different questions.
    questions: dict[tuple[str, str], dict] = {}
    answers: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in rows:
        questions.setdefault((r["questionID"], r["questionText"]), r)
        answers[r["questionID"], r["questionText"]].append(r["answerText"] or "")
    ids = sorted(questions)
    res = screen([f"{questions[i]['questionTitle']}\n{questions[i]['questionText']}" for i in ids])
    by_topic: dict[str, Counter] = defaultdict(Counter)
    for i, a in zip(ids, res):
        by_topic[questions[i]["topic"]][a.level] += 1
    crisis_ids = [i for i, a in zip(ids, res) if a.level == "crisis"]  # (id, text); only ids are written
    handled = [handles_crisis(ans) for i in crisis_ids for ans in answers[i]]
    return {
        "n_questions": len(ids),
        "levels": dict(Counter(a.level for a in res)),
        "levels_by_topic": {t: dict(c) for t, c in sorted(by_topic.items())},
        "crisis_question_ids": [i for i, _ in crisis_ids],
        "answers_to_crisis_questions": len(handled),
        "answers_that_handle_crisis": sum(handled),
        "answers_that_handle_crisis_share": round(sum(handled) / len(handled), 4) if handled else None,
    }


def hand_cases() -> dict:
    cs = cases()
    res = screen([c["text"] for c in cs])
    wrong = [c["id"] for c, a in zip(cs, res) if a.level != c["level"]]
    return {"n": len(cs), "correct": len(cs) - len(wrong), "wrong_ids": wrong}


def speed(rows: list[dict], repeats: int) -> dict:
    texts = [r["text"] for r in rows if len(r["text"]) < 1000][:SPEED_TEXTS]
    t0 = time.perf_counter()
    ScreenModel.load().encoder()  # load time, reported apart
    load_s = time.perf_counter() - t0
    screen(texts[:8])  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        screen(texts)
        rates.append(len(texts) / (time.perf_counter() - t0))
    import torch

    return {
        "speeches_per_s": round(statistics.median(rates), 1),
        "repeats": [round(r, 1) for r in rates],
        "n_texts": len(texts),
        "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
        "torch_threads": torch.get_num_threads(),
        "model_load_s": round(load_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/crisis_screen.json"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)
    posts = args.data_dir / POSTS
    if not posts.is_file():
        print(f"no data at {posts}; see ../shared/data/README.md", file=sys.stderr)
        return 2
    model = ScreenModel.load()
    seed = int(model.meta.get("seed", 0))
    splits = by_split(load_posts(posts), seed)
    out: dict = {
        "data_sha256": hashlib.sha256(posts.read_bytes()).hexdigest(),
        "seed": seed,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "split_positives": {k: sum(map(is_positive, v)) for k, v in splits.items()},
        "weights": {k: model.meta[k] for k in ("policy", "l2", "dev_auc_head", "data_sha256") if k in model.meta},
        "weights_match_data": model.meta.get("data_sha256") == hashlib.sha256(posts.read_bytes()).hexdigest(),
    }
    for name in ("dev", "test"):
        rows = splits[name]
        results = screen([r["text"] for r in rows])
        out[name] = evaluate_split(rows, results, seed, args.n_boot)
        out[name]["operating_points"] = operating_points(rows, results, model.policy)
    out["hand_cases"] = hand_cases()
    if (args.data_dir / MENTALCHAT).is_file():
        out["mentalchat16k_eval"] = mentalchat(args.data_dir / MENTALCHAT)
    if (args.data_dir / COUNSELCHAT).is_file():
        out["counsel_chat"] = counselchat(args.data_dir / COUNSELCHAT)
    out["speed"] = speed(splits["test"], args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    t = out["test"]["screen"]
    print(f"test: recall {t['recall']} fpr {t['fpr']} auc {t['auc']}; {out['speed']['speeches_per_s']} speeches/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
