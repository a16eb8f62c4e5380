"""Weak human preference pairs from CounselChat: for answers by therapists to the same question,
the more-upvoted answer is "chosen". Writes a JSONL file in the published columns (question,
chosen, rejected) for ``psychocounsel eval-rm`` or ``eval-judge``:

    python benchmarks/counselchat_pairs.py --out runs/counselchat_pairs.jsonl
    psychocounsel eval-rm --model runs/rm --data runs/counselchat_pairs.jsonl

The output holds text from ../shared/data: keep it out of the repository (runs/ is ignored).
Therapist names and URLs are not written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from judge_agreement import DATA, load_counselchat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    ap.add_argument("--n", type=int, default=None, help="at most this many pairs (default: all of the split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--split",
        choices=["test", "dev", "all"],
        default="test",
        help="questions of the default rater's split (default test: held out from its training)",
    )
    args = ap.parse_args()
    if not (DATA / "counsel-chat").is_dir():
        print(f"needs the CounselChat CSV in {DATA}", file=sys.stderr)
        return 2
    items, pairs = load_counselchat(args.n, args.seed, args.split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for i, (a, b) in enumerate(pairs):
            row = {"ID": f"cc-{i}", "question": items[a][0], "chosen": items[a][1], "rejected": items[b][1]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(pairs)} pairs over {len(items)} answers to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
