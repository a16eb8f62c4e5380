"""Which offline judge agrees with people? Measures candidate judges against human labels.

    python benchmarks/judge_agreement.py --out benchmarks/results/judge_agreement.json

Human labels, from ../shared/data (see its README):
- EPITOME (Sharma et al., 2020): peer responses labelled 0/1/2 per empathy mechanism. Emotional
  reactions and interpretations are scored with the judge's ``empathy``, explorations with
  ``exploration``. Reported: Spearman correlation of score with level, and accuracy on level-2
  vs level-0 responses (share of all such pairs the judge orders correctly; ties count half).
- CounselChat: answers by therapists to the same question; the more-upvoted answer is taken as
  preferred (a weak, noisy label). Reported: pairwise accuracy of the overall (weighted) score.

Judges are known to prefer longer replies, so every set also reports, beside the judge's accuracy:
``longer_wins`` (accuracy of "the longer response in characters wins" on the same pairs, ties
half), ``beats_longer_wins`` (accuracy > longer_wins; a flag line is printed when false),
``length_robust`` (n, accuracy, acc_ci95 on the pairs whose better response is not the longer
one) and ``length_spearman`` (Spearman of the judge's score with response length over every rated
response of the set; null when undefined).

Only the rater's held-out speeches are used (``--split test``, the default): the default rater
(``rater``) was trained on the other EPITOME seeker posts and CounselChat questions, split by a hash
of their id (``psychocounsel.judge.rater_data.split_of``), and every candidate is measured on the
same held-out rows. ``--split all`` measures on everything (the rater's numbers then mean nothing).

Chance is Spearman 0 and accuracy 0.5. The report names two winners: ``best`` by mean
length-robust accuracy (the measure a judge cannot pass by preferring longer replies; the
default judge of configs/quickstart.yaml is chosen by it) and ``best_by_accuracy`` by plain mean
accuracy; the README quotes this file's numbers. Model calls are cached beside --out, so a rerun only computes what is new.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from psychocounsel.config import JudgeConfig
from psychocounsel.evaluate.judge_eval import length_warning, spearman
from psychocounsel.records import Response, Speech
from psychocounsel.rubric import Rubric, load_rubric
from psychocounsel.store import Cache

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EPITOME = {"emotional-reactions": "empathy", "interpretations": "empathy", "explorations": "exploration"}


def pair_accuracy(pos: np.ndarray, neg: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Share of (pos, neg) pairs with pos scored higher; ties count half. ``keep``, a boolean
    (len(pos), len(neg)) matrix, restricts the pairs; nan when no pair is left.

    >>> pair_accuracy(np.array([3, 1]), np.array([1, 0])), pair_accuracy(np.array([3, 1]), np.array([1, 0]), np.eye(2) > 0)
    (0.875, 1.0)
    """
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    if keep is not None:
        diff = diff[keep]
        if not diff.size:
            return float("nan")
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


def _robust_acc2v0(x: np.ndarray, lv: np.ndarray, chars: np.ndarray) -> float:
    """_acc2v0 over the (level-2, level-0) pairs whose level-2 response is not the longer."""
    return pair_accuracy(x[lv == 2], x[lv == 0], chars[lv == 2][:, None] <= chars[lv == 0][None, :])


def _pref_acc(d: np.ndarray) -> float:
    return float((d > 0).mean() + 0.5 * (d == 0).mean())


# -- length: the "longer wins" baseline every judge must beat ------------------------------------
# Judge-agnostic: each helper takes scores (any judge's) and lengths in characters, so a new entry
# in JUDGES gets these columns with no change here.


def _length_columns(accuracy: float, longer_wins: float, robust_n: int, robust_acc, robust_ci) -> dict:
    return {
        "longer_wins": longer_wins,
        "beats_longer_wins": bool(accuracy > longer_wins),
        "length_robust": {
            "n": robust_n,
            "accuracy": robust_acc if robust_n else None,
            "acc_ci95": robust_ci if robust_n else None,
        },
    }


def epitome_length_columns(x: np.ndarray, lv: np.ndarray, chars: np.ndarray) -> dict:
    """Length columns of an EPITOME file: judge scores ``x``, levels ``lv`` and response lengths
    ``chars`` per rated response, compared over all (level-2, level-0) pairs.

    >>> x, lv, chars = np.array([3.0, 1.0, 2.0, 0.0]), np.array([2, 0, 2, 0]), np.array([10, 50, 30, 20])
    >>> cols = epitome_length_columns(x, lv, chars)
    >>> cols["longer_wins"], cols["beats_longer_wins"], cols["length_robust"]["n"], cols["length_robust"]["accuracy"]
    (0.25, True, 3, 1.0)
    """
    pos, neg = lv == 2, lv == 0
    robust_n = int((chars[pos][:, None] <= chars[neg][None, :]).sum())
    return _length_columns(
        _acc2v0(x, lv),
        pair_accuracy(chars[pos], chars[neg]),
        robust_n,
        _robust_acc2v0(x, lv, chars),
        bootstrap_ci(_robust_acc2v0, x, lv, chars) if robust_n else None,
    )


def pair_length_columns(d: np.ndarray, d_chars: np.ndarray) -> dict:
    """Length columns of explicit (better, worse) pairs: ``d`` the judge's score of the better
    response minus the worse one's, ``d_chars`` the same difference of lengths.

    >>> cols = pair_length_columns(np.array([1.0, -1.0, 0.5, 0.0]), np.array([40, 30, -5, 0]))
    >>> cols["longer_wins"], cols["beats_longer_wins"], cols["length_robust"]
    (0.625, False, {'n': 2, 'accuracy': 0.75, 'acc_ci95': [0.5, 1.0]})
    """
    robust = d[d_chars <= 0]
    return _length_columns(
        _pref_acc(d),
        _pref_acc(d_chars),
        len(robust),
        _pref_acc(robust) if len(robust) else None,
        bootstrap_ci(_pref_acc, robust) if len(robust) else None,
    )


def length_flags(result: dict) -> list[str]:
    """One flag line per set of ``result`` on which its judge does not beat "longer wins", or
    beats it by less than the lower end of its accuracy's 95% interval: ``eval-judge``'s
    ``length_warning``, naming the set.

    >>> length_flags({"judge": "j", "a": {"acc_level2_vs_0": 0.6, "longer_wins": 0.7, "beats_longer_wins": False},
    ...               "b": {"accuracy": 0.8, "acc_ci95": [0.7, 0.9], "longer_wins": 0.5, "beats_longer_wins": True},
    ...               "c": {"accuracy": 0.52, "acc_ci95": [0.47, 0.57], "longer_wins": 0.5, "beats_longer_wins": True}})
    ['warning: judge j does not beat "longer wins" (0.60 vs 0.70) on a', 'warning: judge j is not clear of "longer wins" (0.52 [0.47, 0.57] vs 0.50) on c']
    """
    out = []
    for name, cols in result.items():
        if isinstance(cols, dict):
            report = {
                "judge": result["judge"],
                "accuracy": cols.get("accuracy", cols.get("acc_level2_vs_0")),
                "accuracy_ci": cols.get("acc_ci95"),
                "longer_wins": cols.get("longer_wins"),
                "beats_longer_wins": cols.get("beats_longer_wins"),
            }
            line = length_warning(report, where=name)
            if line:
                out.append(line)
    return out


def held_out(kind: str, key: str, split: str) -> bool:
    """Whether a speech is in ``split`` of the rater's train/dev/test split (``all``: always)."""
    from psychocounsel.judge.rater_data import split_of

    return split == "all" or split_of(f"{kind}:{key}") == split


def load_epitome(name: str, n: int, seed: int, split: str = "test") -> list[dict]:
    with open(DATA / "epitome-empathy" / f"{name}-reddit.csv", encoding="utf-8", newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if r["seeker_post"].strip() and r["response_post"].strip() and held_out("epitome", r["sp_id"], split)
        ]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def load_counselchat(
    n: int | None, seed: int, split: str = "test"
) -> tuple[list[tuple[str, str]], list[tuple[int, int]]]:
    """Unique (question, answer) items, and (preferred, other) index pairs between answers to the
    same question with different upvotes. Each answer is rated once, however many pairs it is in.
    Answers are grouped by question id *and* text: the export reuses some ids for two questions."""
    by_q: dict[tuple[str, str], list[dict]] = defaultdict(list)
    with open(DATA / "counsel-chat" / "20200325_counsel_chat.csv", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            if (
                r["questionText"].strip()
                and r["answerText"].strip()
                and held_out("counselchat", r["questionID"], split)
            ):
                by_q[r["questionID"], r["questionText"]].append(r)
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


def _minilm(rubric: Rubric, cache: Cache):
    from psychocounsel.judge import build_judge

    return build_judge(JudgeConfig(type="minilm"), rubric, cache)


def _rater(rubric: Rubric, cache: Cache):
    from psychocounsel.judge import build_judge

    return build_judge(JudgeConfig(type="rater"), rubric, cache)


def _smollm2_logprob(min_mass: float):
    def build(rubric: Rubric, cache: Cache):
        from psychocounsel.judge import build_judge

        return build_judge(
            JudgeConfig(
                type="llm", mode="logprob", min_digit_mass=min_mass, backend={"spec": "default", "batch_size": 8}
            ),
            rubric,
            cache,
        )

    return build


@dataclass(frozen=True)
class Candidate:
    build: Callable[[Rubric, Cache], Any]  # a judge with .rate(items), for the given (sub-)rubric
    llm: bool = False  # runs on --llm-scale of the EPITOME samples and on --llm-pairs pairs


# The candidates by name; a new judge is one more entry (its measures, length ones included, follow).
JUDGES: dict[str, Candidate] = {
    "similarity": Candidate(lambda rubric, cache: Similarity(rubric)),
    "rater": Candidate(_rater),
    "minilm": Candidate(_minilm),
    "smollm2-logprob": Candidate(_smollm2_logprob(0.5), llm=True),
    # "-any": score from the digits' renormalised probabilities however little mass they hold,
    # to measure the ranking SmolLM2 would give if its non-answers were let through.
    "smollm2-logprob-any": Candidate(_smollm2_logprob(0.0), llm=True),
}


def make_judge(name: str, rubric: Rubric, cache: Cache):
    if name not in JUDGES:
        raise SystemExit(f"unknown candidate {name}; known: {', '.join(JUDGES)}")
    return JUDGES[name].build(rubric, cache)


def evaluate(name: str, n_epitome: int, n_pairs: int | None, seed: int, cache: Cache, split: str = "test") -> dict:
    full = load_rubric()
    out: dict = {"judge": name}
    for file, key in EPITOME.items():
        rows = load_epitome(file, n_epitome, seed, split)
        sub = Rubric(name="sub", principles=[p for p in full.principles if p.key == key])
        judge = make_judge(name, sub, cache)
        scores = rate(judge, [r["seeker_post"] for r in rows], [r["response_post"] for r in rows])
        ok = [(s[key], int(r["level"]), len(r["response_post"])) for s, r in zip(scores, rows) if s is not None]
        x, lv, chars = (np.array([t[i] for t in ok]) for i in range(3))
        from scipy.stats import spearmanr

        out[file] = {
            "n": len(ok),
            "failed": len(rows) - len(ok),
            "principle": key,
            "spearman": float(spearmanr(x, lv).statistic),
            "acc_level2_vs_0": _acc2v0(x, lv),
            "acc_ci95": bootstrap_ci(_acc2v0, x, lv),
            **epitome_length_columns(x, lv, chars),
            "length_spearman": spearman(x, chars),
        }
    if n_pairs is not None and n_pairs <= 0:
        out["counselchat-upvotes"] = {"n": 0, "skipped": "not run (see --llm-pairs)"}
        accs = [out[f]["acc_level2_vs_0"] for f in EPITOME]
        out["mean_accuracy"] = float(np.mean(accs))
        out["mean_length_robust_accuracy"] = mean_robust(out)
        return out
    items, pairs = load_counselchat(n_pairs, seed, split)
    judge = make_judge(name, full, cache)
    scores = rate(judge, [q for q, _ in items], [a for _, a in items])
    overall = [None if s is None else full.score(s) for s in scores]
    chars = [len(a) for _, a in items]
    ok = [(a, b) for a, b in pairs if overall[a] is not None and overall[b] is not None]
    d = np.array([overall[a] - overall[b] for a, b in ok])
    rated = [i for i, v in enumerate(overall) if v is not None]
    out["counselchat-upvotes"] = {
        "n": len(ok),
        "failed": len(pairs) - len(ok),
        "answers": len(items),
        "accuracy": _pref_acc(d),
        "acc_ci95": bootstrap_ci(_pref_acc, d),
        **pair_length_columns(d, np.array([chars[a] - chars[b] for a, b in ok])),
        "length_spearman": spearman([overall[i] for i in rated], [chars[i] for i in rated]),
    }
    accs = [out[f]["acc_level2_vs_0"] for f in EPITOME] + [out["counselchat-upvotes"]["accuracy"]]
    out["mean_accuracy"] = float(np.mean(accs))
    out["mean_length_robust_accuracy"] = mean_robust(out)
    return out


def mean_robust(result: dict) -> float:
    """Mean accuracy on the length-robust pairs over the sets a candidate was run on.

    >>> mean_robust({"a": {"length_robust": {"accuracy": 0.5}}, "b": {"length_robust": {"accuracy": 0.7}}})
    0.6
    """
    accs = [v["length_robust"]["accuracy"] for v in result.values() if isinstance(v, dict) and "length_robust" in v]
    return round(float(np.nanmean([a for a in accs if a is not None])), 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--judges",
        default="similarity,rater,minilm,smollm2-logprob,smollm2-logprob-any",
        help="comma-separated candidates: similarity, rater (the default rater), minilm, smollm2-logprob (SmolLM2-135M-"
        "Instruct as a logprob judge), smollm2-logprob-any (the same, scoring even replies that "
        "are not a digit)",
    )
    ap.add_argument(
        "--n-epitome", type=int, default=1000, help="responses sampled per EPITOME file (the test split has ~600)"
    )
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
    ap.add_argument(
        "--split",
        choices=["test", "dev", "all"],
        default="test",
        help="speeches of the rater's split to measure on (default test: held out from its training)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/judge_agreement.json"))
    args = ap.parse_args()
    names = args.judges.split(",")
    unknown = [n for n in names if n not in JUDGES]
    if unknown:  # before any model is loaded
        ap.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(JUDGES)}")
    if not (DATA / "epitome-empathy").is_dir():
        print(f"needs the human-labelled data in {DATA}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)  # small models on 2 cores: one thread is fastest (see README)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cache = Cache(args.out.with_suffix(".cache.sqlite"))
    results = []
    for name in names:
        is_llm = JUDGES[name].llm
        n_epitome = int(args.n_epitome * args.llm_scale) if is_llm else args.n_epitome
        start = time.time()
        res = evaluate(name, n_epitome, args.llm_pairs if is_llm else args.n_pairs, args.seed, cache, args.split)
        res["seconds"] = round(time.time() - start, 1)
        results.append(res)
        print(json.dumps(res), flush=True)
        for line in length_flags(res):
            print(line, flush=True)
    best = max(results, key=lambda r: r["mean_length_robust_accuracy"])
    plain = max(results, key=lambda r: r["mean_accuracy"])
    report = {
        "data": str(DATA),
        "seed": args.seed,
        "split": args.split,
        "results": results,
        "best": best["judge"],
        "best_by_accuracy": plain["judge"],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"best by length-robust accuracy: {best['judge']}; by accuracy: {plain['judge']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
