"""The quickstart's policy on real client speeches, and the offline judges against real people.

1. eval-winrate of RUN/policy against its base on the MentalChat16K evaluation questions
   (../shared/data/mentalchat16k-eval) of at most 1,000 characters (the paper's speech filter;
   the longest of the 200 runs to 19,822 characters, which a 135M model on a CPU cannot batch),
   judged by RUN/reward_model, by the default rater and by the older MiniLM rater.
2. eval-judge of the same three judges on the CounselChat upvote pairs of the questions the
   default rater was not trained on (its test split; counselchat_pairs.py, at most 600 pairs).

    python benchmarks/real_eval.py --run runs/quickstart      # ~10 minutes on 2 cores

Answers, caches and pairs (real text) stay under --work (default runs/real_eval, ignored by git);
only numbers go to benchmarks/results/real_eval.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MAX_CHARS = 1000
N_PAIRS = 600  # at most; the rater's test split of CounselChat has 529 upvote pairs
HEADLINE = (
    "n",
    "wins",
    "ties",
    "losses",
    "win_rate",
    "ci_low",
    "ci_high",
    "lc_win_rate",
    "position_consistency",
    "avg_len_policy",
    "avg_len_reference",
    "per_principle",
    "mean_reward_policy",
    "mean_reward_reference",
    "mean_score_policy",
    "mean_score_reference",
    "failed",
    "judge",
)


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "psychocounsel", *args, "-q"], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "quickstart", help="a finished quickstart run")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "real_eval")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_eval.json")
    ap.add_argument("--limit", type=int, help="only the first N speeches / pairs")
    args = ap.parse_args()
    speeches = DATA / "mentalchat16k-eval" / "evalq_bench_question.jsonl"
    if not speeches.is_file() or not (args.run / "policy" / "config.json").is_file():
        print(f"needs {speeches} and a trained {args.run}/policy", file=sys.stderr)
        return 2
    limit = ["--limit", str(args.limit)] if args.limit else []
    rows = [json.loads(line) for line in speeches.open(encoding="utf-8") if line.strip()]
    kept = [r for r in rows if len(r["turns"][0]) <= MAX_CHARS]
    args.work.mkdir(parents=True, exist_ok=True)
    speeches = args.work / "speeches.jsonl"
    speeches.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    results: dict = {
        "run": args.run.name,
        "speeches": f"mentalchat16k-eval: {len(kept)} of {len(rows)} questions (<= {MAX_CHARS} chars)",
    }
    for judge in (f"rm:{args.run / 'reward_model'}", "rater", "minilm"):
        name = "reward_model" if judge.startswith("rm:") else judge
        start = time.perf_counter()
        cli(
            "eval-winrate",
            "--policy",
            str(args.run / "policy"),
            "--reference",
            "default",
            "--judge",
            judge,
            "--speeches",
            str(speeches),
            "--out",
            str(args.work / "winrate"),
            "--max-tokens",
            "80",
            "--trim-incomplete",
            "--batch-size",
            "24",
            *limit,
        )
        w = json.loads((args.work / "winrate" / "winrate.json").read_text())
        results[f"winrate_{name}"] = {k: w[k] for k in HEADLINE if k in w} | {
            "seconds": round(time.perf_counter() - start, 1)
        }
    pairs = args.work / "counselchat_pairs.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "counselchat_pairs.py"), "--out", str(pairs), "--n", str(N_PAIRS)],
        check=True,
    )
    for judge in (f"rm:{args.run / 'reward_model'}", "rater", "minilm"):
        name = "reward_model" if judge.startswith("rm:") else judge
        out = args.work / f"judge_{name}.json"
        start = time.perf_counter()
        cli("eval-judge", "--judge", judge, "--data", str(pairs), "--out", str(out), *limit)
        report = json.loads(out.read_text())
        results[f"judge_{name}_counselchat"] = {k: v for k, v in report.items() if k != "failures"} | {
            "seconds": round(time.perf_counter() - start, 1)
        }
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
