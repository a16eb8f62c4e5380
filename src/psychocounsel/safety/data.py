"""The screen's development data: posts with weak labels, split by a hash of their id.

The split is fixed before any result is seen: ``split_of`` hashes ``"{seed}:{id}"`` with SHA-256,
so a post stays in its split however the file is ordered or grown. Train 60%, dev 20%, test 20%.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SPLITS = (("train", 0.6), ("dev", 0.8), ("test", 1.0))  # cumulative upper bounds
DEFAULT_SEED = 0


def split_of(post_id: str, seed: int | str = DEFAULT_SEED) -> str:
    """The split of one post, from a hash of its id: the same on every machine and run.

    >>> split_of("rmhd-0"), split_of("rmhd-0") == split_of("rmhd-0", seed=0)
    ('train', True)
    >>> sorted({split_of(f"x{i}") for i in range(50)})
    ['dev', 'test', 'train']
    """
    digest = hashlib.sha256(f"{seed}:{post_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return next(name for name, upper in SPLITS if u < upper)


def load_posts(path: str | Path) -> list[dict]:
    """Rows of a posts file (JSON lines with ``id``, ``text``, ``label``, ``group``, ``source_label``)."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                missing = {"id", "text", "label"} - set(row)
                if missing:
                    raise ValueError(f"{path}:{n}: missing fields {sorted(missing)}")
                rows.append(row)
    return rows


def by_split(rows: list[dict], seed: int = DEFAULT_SEED) -> dict[str, list[dict]]:
    """Rows grouped by split.

    >>> parts = by_split([{"id": f"p{i}"} for i in range(100)])
    >>> sum(map(len, parts.values())), sorted(parts)
    (100, ['dev', 'test', 'train'])
    """
    out: dict[str, list[dict]] = {name: [] for name, _ in SPLITS}
    for row in rows:
        out[split_of(str(row["id"]), seed)].append(row)
    return out


def is_positive(row: dict) -> bool:
    """A weak label: the post came from a crisis forum.

    >>> is_positive({"label": "crisis"}), is_positive({"label": "no_crisis"})
    (True, False)
    """
    return row["label"] == "crisis"


def main(argv: list[str] | None = None) -> int:
    """``python -m psychocounsel.safety.data POSTS --split test --out test.jsonl``: one split of the
    posts as a file that ``psychocounsel screen --data`` reads (labels and source_label kept)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("posts", type=Path, help="reddit-mental-health/posts.jsonl")
    ap.add_argument("--split", choices=[name for name, _ in SPLITS], default="test")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = by_split(load_posts(args.posts), args.seed)[args.split]
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} posts of the {args.split} split -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
