"""Pairs into the annotation store, and answers out of it: ``annotate export`` (JSONL or CSV,
one row per answer) and ``annotate import`` (a labelled-pairs file for ``eval-judge`` and
``train-judge --annotations``)."""

from __future__ import annotations

import csv
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from ..config import AnnotateConfig
from ..errors import UserError
from .store import AnnotationStore, Item, pair_id

log = logging.getLogger(__name__)
TO_AB = {"chosen": "A", "rejected": "B", "tie": "tie"}  # import writes chosen as response_a


def open_store(db: Path, must_exist: bool = True) -> AnnotationStore:
    db = Path(db).expanduser()
    if must_exist and not db.is_file():
        raise UserError(f"no such annotation database: {db} (make it with `psychocounsel annotate serve`)")
    return AnnotationStore(db)


def prepare(cfg: AnnotateConfig) -> tuple[AnnotationStore, dict[str, str]]:
    """The store of ``cfg.db``, filled from ``cfg.pairs`` the first time (sampled, screened for
    crisis); tokens for annotators it does not know yet (name -> token, to hand out once)."""
    from ..pairs_io import load_pairs
    from ..reward_model import as_text
    from ..safety import screen

    store = open_store(cfg.db, must_exist=False)
    meta = store.meta()
    if not meta:
        # TRL's conversational pairs (--format trl) hold messages: the page shows them as text.
        rows = [{k: as_text(r[k]) for k in ("prompt", "chosen", "rejected")} for r in load_pairs(cfg.pairs, cfg.split)]
        if cfg.sample and cfg.sample < len(rows):
            rows = random.Random(cfg.seed).sample(rows, cfg.sample)
        levels = [a.level for a in screen([r["prompt"] for r in rows])]
        items = [
            Item(pair_id(r), r["prompt"], r["chosen"], r["rejected"], level, len(r["chosen"]) <= len(r["rejected"]))
            for r, level in zip(rows, levels)
        ]
        store.add_items(items)
        store.set_meta(source=str(cfg.pairs), split=cfg.split, seed=cfg.seed, principles=cfg.principles)
        log.info(
            "annotation store: %d pairs (%d flagged by the crisis screen)",
            len(items),
            sum(lv != "none" for lv in levels),
        )
    elif meta.get("source") != str(cfg.pairs):
        raise UserError(f"{cfg.db} holds pairs from {meta.get('source')}; give that --pairs or a new --db")
    elif cfg.principles != meta.get("principles"):
        store.set_meta(principles=cfg.principles)
    known = set(store.annotators())
    names = [n.strip() for n in (cfg.annotators or "").split(",") if n.strip()]
    bad = [n for n in names if not n.replace("-", "").replace("_", "").isalnum() or len(n) > 40]
    if bad:
        raise UserError(f"--annotators: names are letters, digits, - and _ (at most 40): {', '.join(bad)}")
    if not names and not known:
        raise UserError("--annotators: name at least one annotator, e.g. --annotators ana,ben")
    tokens = {n: store.issue_token(n) for n in names if n not in known or cfg.reissue_tokens}
    return store, tokens


def export_rows(store: AnnotationStore) -> list[dict[str, Any]]:
    """One row per answer: ids, the label in the pair's terms, scores, comment, flag; no text."""
    items = {i.pair_id: i for i in store.items()}
    return [
        {
            "pair_id": a["pair_id"],
            "annotator": a["annotator"],
            "label": a["label"],
            **{
                f"score_{side}_{k}": v
                for side, values in sorted(a["scores"].items())
                for k, v in sorted(values.items())
            },
            "comment": a["comment"],
            "flagged": a["flagged"],
            "crisis": items[a["pair_id"]].crisis,
            "length_robust": items[a["pair_id"]].length_robust,
        }
        for a in store.all_answers()
    ]


def export(store: AnnotationStore, out: Path) -> int:
    """Write every answer to ``out`` (.jsonl or .csv); returns the number of rows."""
    from ..store import write_jsonl

    rows = export_rows(store)
    out = Path(out)
    if out.suffix == ".csv":
        columns = list(dict.fromkeys(k for r in rows for k in r)) or ["pair_id", "annotator", "label"]
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(out)  # never a half-written file
    elif out.suffix == ".jsonl":
        write_jsonl(out, rows)
    else:
        raise UserError(f"--out {out}: give a .jsonl or .csv file")
    return len(rows)


def consensus(labels: list[str]) -> str | None:
    """The label most annotators gave; None when two labels tie for most.

    >>> consensus(["chosen", "chosen", "tie"]), consensus(["chosen", "rejected"]), consensus(["tie"])
    ('chosen', None, 'tie')
    """
    top = Counter(labels).most_common()
    if not top or (len(top) > 1 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def labelled_pairs(store: AnnotationStore) -> tuple[list[dict[str, Any]], int]:
    """(rows, pairs without a consensus): each annotated pair as eval-judge's labelled form
    (prompt, response_a = the data set's chosen reply, response_b = its rejected one, label =
    the annotators' consensus as A, B or tie)."""
    by_pair: dict[str, list[str]] = {}
    for a in store.all_answers():
        if a["label"]:
            by_pair.setdefault(a["pair_id"], []).append(a["label"])
    rows, split = [], 0
    for item in store.items():
        labels = by_pair.get(item.pair_id)
        if not labels:
            continue
        label = consensus(labels)
        if label is None:
            split += 1
            continue
        rows.append(
            {
                "pair_id": item.pair_id,
                "prompt": item.prompt,
                "response_a": item.chosen,
                "response_b": item.rejected,
                "label": TO_AB[label],
                "annotators": len(labels),
                "agreeing": labels.count(label),
            }
        )
    return rows, split


def import_labels(store: AnnotationStore, out: Path) -> dict[str, int]:
    from ..store import write_jsonl

    rows, split = labelled_pairs(store)
    if not rows:
        raise UserError(f"{store.path} has no annotated pairs yet")
    if Path(out).suffix != ".jsonl":
        raise UserError(f"--out {out}: give a .jsonl file")
    write_jsonl(out, rows)
    return {"pairs": len(rows), "no_consensus": split, **Counter(r["label"] for r in rows)}
