"""Which offline judge agrees with people? Measures candidate judges against human labels.

    python benchmarks/judge_agreement.py --out benchmarks/results/judge_agreement.json

Human labels, from ../shared/data (see its README):
- EPITOME (Sharma et al., 2020): peer responses labelled 0/1/2 per empathy mechanism. Emotional
  reactions and interpretations are scored with the judge's ``empathy``, explorations with
  ``exploration``. Reported: Spearman correlation of score with level, and accuracy on level-2
  vs level-0 responses (share of all such pairs the judge orders correctly; ties count half).
- CounselChat: answers by therapists to the same question; the more-upvoted answer is taken as
  preferred (a weak, noisy label). Reported: pairwise accuracy of the overall (weighted) score.

Chance is Spearman 0 and accuracy 0.5. The default judge of configs/quickstart.yaml is the
candidate with the best mean accuracy (over the measures it was run on); the README quotes this
file's numbers. Model calls are cached beside --out, so a rerun only computes what is new.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from psychocounsel.config import JudgeConfig
from psychocounsel.records import Response, Speech
from psychocounsel.rubric import Rubric, load_rubric
from psychocounsel.store import Cache

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EPITOME = {"emotional-reactions": "empathy", "interpretations": "empathy", "explorations": "exploration"}


def pair_accuracy(pos: np.ndarray, neg: np.ndarray) -> float:
    """Share of (pos, neg) pairs with pos scored higher; ties count half."""
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def bootstrap_ci(metric, *arrays: np.ndarray, n: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of ``metric(*arrays)``, resampling rows."""
    rng = np.random.default_rng(seed)
    size = len(arrays[0])
    stats = []
    for _ in range(n):
        idx = rng.integers(0, size, size)
        stats.append(metric(*(a[idx] for a in arrays)))
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return [round(float(lo), 3), round(float(hi), 3)]


def _acc2v0(x: np.ndarray, lv: np.ndarray) -> float:
    return pair_accuracy(x[lv == 2], x[lv == 0])


def _pref_acc(d: np.ndarray) -> float:
    return float((d > 0).mean() + 0.5 * (d == 0).mean())


def load_epitome(name: str, n: int, seed: int) -> list[dict]:
    with open(DATA / "epitome-empathy" / f"{name}-reddit.csv", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["seeker_post"].strip() and r["response_post"].strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def load_counselchat(n: int | None, seed: int) -> tuple[list[tuple[str, str]], list[tuple[int, int]]]:
    """Unique (question, answer) items, and (preferred, other) index pairs between answers to the
    same question with different upvotes. Each answer is rated once, however many pairs it is in."""
    by_q: dict[str, list[dict]] = defaultdict(list)
    with open(DATA / "counsel-chat" / "20200325_counsel_chat.csv", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            if r["questionText"].strip() and r["answerText"].strip():
                by_q[r["questionID"]].append(r)
    items: list[tuple[str, str]] = []
    pairs = []
    for answers in by_q.values():
        base = len(items)
        items.extend((a["questionText"], a["answerText"]) for a in answers)
        for i, a in enumerate(answers):
            for j in range(i + 1, len(answers)):
                ua, ub = int(a["upvotes"]), int(answers[j]["upvotes"])
                if ua != ub:
                    pairs.append((base + i, base + j) if ua > ub else (base + j, base + i))
    random.Random(seed).shuffle(pairs)
    pairs = pairs[:n] if n else pairs
    used = sorted({i for p in pairs for i in p})
    index = {old: new for new, old in enumerate(used)}
    return [items[i] for i in used], [(index[a], index[b]) for a, b in pairs]


def rate(judge, speeches: list[str], responses: list[str]) -> list[dict[str, float] | None]:
    items = [
        (Speech(id=f"s{i}", text=s), Response(id=f"r{i}", speech_id=f"s{i}", generator="human", text=r, model="human"))
        for i, (s, r) in enumerate(zip(speeches, responses))
    ]
    return [None if x.failed else x.scores for x in judge.rate(items)]


class Similarity:
    """Baseline: cosine similarity of speech and response, the same for every principle."""

    name = "similarity"

    def __init__(self, rubric: Rubric):
        from psychocounsel.judge.minilm import Encoder

        self.rubric, self.encode = rubric, Encoder()

    def rate(self, items):
        from psychocounsel.records import Rating

        s, r = self.encode([x.text for x, _ in items]), self.encode([y.text for _, y in items])
        return [
            Rating(y.id, x.id, self.name, scores={k: float(s[i] @ r[i]) for k in self.rubric.keys})
            for i, (x, y) in enumerate(items)
        ]


def make_judge(name: str, rubric: Rubric, cache: Cache):
    from psychocounsel.judge import build_judge

    if name == "similarity":
        return Similarity(rubric)
    if name == "minilm":
        return build_judge(JudgeConfig(type="minilm"), rubric, cache)
    if name.startswith("smollm2-logprob"):
        # "-any": score from the digits' renormalised probabilities however little mass they hold,
        # to measure the ranking SmolLM2 would give if its non-answers were let through.
        min_mass = 0.0 if name.endswith("-any") else 0.5
        return build_judge(
            JudgeConfig(
                type="llm", mode="logprob", min_digit_mass=min_mass, backend={"spec": "default", "batch_size": 8}
            ),
            rubric,
            cache,
        )
    raise SystemExit(f"unknown candidate {name}")


def evaluate(name: str, n_epitome: int, n_pairs: int | None, seed: int, cache: Cache) -> dict:
    full = load_rubric()
    out: dict = {"judge": name}
    for file, key in EPITOME.items():
        rows = load_epitome(file, n_epitome, seed)
        sub = Rubric(name="sub", principles=[p for p in full.principles if p.key == key])
        judge = make_judge(name, sub, cache)
        scores = rate(judge, [r["seeker_post"] for r in rows], [r["response_post"] for r in rows])
        ok = [(s[key], int(r["level"])) for s, r in zip(scores, rows) if s is not None]
        x, lv = np.array([a for a, _ in ok]), np.array([b for _, b in ok])
        from scipy.stats import spearmanr

        out[file] = {
            "n": len(ok),
            "failed": len(rows) - len(ok),
            "principle": key,
            "spearman": float(spearmanr(x, lv).statistic),
            "acc_level2_vs_0": _acc2v0(x, lv),
            "acc_ci95": bootstrap_ci(_acc2v0, x, lv),
        }
    if n_pairs is not None and n_pairs <= 0:
        out["counselchat-upvotes"] = {"n": 0, "skipped": "not run (see --llm-pairs)"}
        accs = [out[f]["acc_level2_vs_0"] for f in EPITOME]
        out["mean_accuracy"] = float(np.mean(accs))
        return out
    items, pairs = load_counselchat(n_pairs, seed)
    judge = make_judge(name, full, cache)
    scores = rate(judge, [q for q, _ in items], [a for _, a in items])
    ok = [
        (full.score(scores[a]), full.score(scores[b]))
        for a, b in pairs
        if scores[a] is not None and scores[b] is not None
    ]
    d = np.array([a - b for a, b in ok])
    out["counselchat-upvotes"] = {
        "n": len(ok),
        "failed": len(pairs) - len(ok),
        "answers": len(items),
        "accuracy": _pref_acc(d),
        "acc_ci95": bootstrap_ci(_pref_acc, d),
    }
    accs = [out[f]["acc_level2_vs_0"] for f in EPITOME] + [out["counselchat-upvotes"]["accuracy"]]
    out["mean_accuracy"] = float(np.mean(accs))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--judges",
        default="similarity,minilm,smollm2-logprob,smollm2-logprob-any",
        help="comma-separated candidates: similarity, minilm, smollm2-logprob (SmolLM2-135M-"
        "Instruct as a logprob judge), smollm2-logprob-any (the same, scoring even replies that "
        "are not a digit)",
    )
    ap.add_argument("--n-epitome", type=int, default=600, help="responses sampled per EPITOME file")
    ap.add_argument(
        "--n-pairs",
        type=int,
        default=None,
        help="CounselChat answer pairs (default: all 2,523 pairs over 2,129 answers)",
    )
    ap.add_argument(
        "--llm-scale",
        type=float,
        default=0.25,
        help="LLM candidates use this fraction of the EPITOME samples: SmolLM2 reads a ~400-token "
        "prompt per judgement, ~1.5 s each on one CPU thread",
    )
    ap.add_argument(
        "--llm-pairs",
        type=int,
        default=0,
        help="CounselChat pairs for LLM candidates (7 judgements of a ~800-token prompt per "
        "answer: ~40 s a pair on CPU, so off by default)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/judge_agreement.json"))
    args = ap.parse_args()
    if not (DATA / "epitome-empathy").is_dir():
        print(f"needs the human-labelled data in {DATA}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)  # small models on 2 cores: one thread is fastest (see README)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cache = Cache(args.out.with_suffix(".cache.sqlite"))
    results = []
    for name in args.judges.split(","):
        is_llm = name.startswith("smollm2")
        n_epitome = int(args.n_epitome * args.llm_scale) if is_llm else args.n_epitome
        start = time.time()
        res = evaluate(name, n_epitome, args.llm_pairs if is_llm else args.n_pairs, args.seed, cache)
        res["seconds"] = round(time.time() - start, 1)
        results.append(res)
        print(json.dumps(res), flush=True)
    best = max(results, key=lambda r: r["mean_accuracy"])
    report = {"data": str(DATA), "seed": args.seed, "results": results, "best": best["judge"]}
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"best by mean accuracy: {best['judge']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
