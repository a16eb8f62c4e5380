"""pairs: turn rated responses into a preference dataset in the published PsychoCounsel format.

- A response's score is the rubric's weighted mean of its principle scores.
- Speeches are split into train/test *by speech* (seeded), so no speech is in both.
- Train: every two responses of a speech whose scores differ by >= ``min_gap`` (the paper: 1.0).
- Test: the highest against the lowest response of each test speech, when their scores differ.

Columns: ID, prefID, question, chosen, rejected, chosen_model, rejected_model,
chosen_<key>_rating and rejected_<key>_rating per principle (ints, the 1-5 score rounded),
then chosen_score, rejected_score, margin (floats). ``question`` holds the speech; a multi-turn
speech is written as a transcript ("Client: ... / Counselor: ... / Client: ...").
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .config import PairsConfig
from .crisis import crisis_ids
from .errors import UserError
from .pairs_io import as_question
from .records import Rating, Response, Speech
from .rubric import Rubric, load_rubric
from .store import RunDir, stable_hash, write_jsonl


@dataclass
class Scored:
    response: Response
    rating: Rating
    score: float


def split_speeches(ids: list[str], test_fraction: float, seed: int) -> set[str]:
    """The test speech ids: a seeded shuffle of the sorted ids, first round(n * fraction) of them
    (at least one when the fraction is positive and there are two or more speeches).

    >>> sorted(split_speeches(["a", "b", "c", "d"], 0.5, 0))
    ['a', 'c']
    >>> split_speeches(["a"], 0.5, 0)
    set()
    """
    ids = sorted(set(ids))
    n_test = round(len(ids) * test_fraction)
    if test_fraction > 0 and len(ids) >= 2:
        n_test = min(max(n_test, 1), len(ids) - 1)
    random.Random(seed).shuffle(ids)
    return set(ids[:n_test])


def train_pairs(group: list[Scored], min_gap: float) -> list[tuple[Scored, Scored]]:
    """(chosen, rejected) for every two responses whose scores differ by at least min_gap."""
    out = []
    for a, b in itertools.combinations(group, 2):
        hi, lo = (a, b) if a.score >= b.score else (b, a)
        # A small tolerance so that a gap of exactly min_gap survives float rounding.
        if hi.score - lo.score >= min_gap - 1e-9 and hi.score > lo.score:
            out.append((hi, lo))
    return out


def best_worst_pair(group: list[Scored]) -> tuple[Scored, Scored] | None:
    """Highest against lowest; None when all scores are equal or there is only one response."""
    if len(group) < 2:
        return None
    ranked = sorted(group, key=lambda s: (-s.score, s.response.id))
    hi, lo = ranked[0], ranked[-1]
    return (hi, lo) if hi.score > lo.score else None


def rating_int(score: float) -> int:
    """Round half up into 1-5 (the published ratings are ints).

    >>> [rating_int(x) for x in (1.0, 2.5, 3.49, 4.99)]
    [1, 3, 3, 5]
    """
    return min(5, max(1, math.floor(score + 0.5)))


def pair_row(speech: Speech, chosen: Scored, rejected: Scored, keys: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ID": speech.id,
        "prefID": "p-" + stable_hash([chosen.response.id, rejected.response.id], 12),
        "question": as_question(speech),
        "chosen": chosen.response.text,
        "rejected": rejected.response.text,
        "chosen_model": chosen.response.generator,
        "rejected_model": rejected.response.generator,
    }
    for side, s in (("chosen", chosen), ("rejected", rejected)):
        for k in keys:
            row[f"{side}_{k}_rating"] = rating_int(s.rating.scores[k])
    row["chosen_score"] = round(chosen.score, 4)
    row["rejected_score"] = round(rejected.score, 4)
    row["margin"] = round(chosen.score - rejected.score, 4)
    return row


def build(
    speeches: dict[str, Speech], groups: dict[str, list[Scored]], rubric: Rubric, cfg: PairsConfig
) -> tuple[list[dict], list[dict]]:
    test_ids = split_speeches(list(groups), cfg.test_fraction, cfg.seed)
    train, test = [], []
    for sid in sorted(groups):
        group = sorted(groups[sid], key=lambda s: s.response.id)
        if sid in test_ids:
            pair = best_worst_pair(group)
            if pair:
                test.append(pair_row(speeches[sid], *pair, rubric.keys))
        else:
            train.extend(pair_row(speeches[sid], hi, lo, rubric.keys) for hi, lo in train_pairs(group, cfg.min_gap))
    return train, test


def write_parquet(path, rows: list[dict], keys: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [
        (c, pa.string()) for c in ("ID", "prefID", "question", "chosen", "rejected", "chosen_model", "rejected_model")
    ]
    fields += [(f"{side}_{k}_rating", pa.int64()) for side in ("chosen", "rejected") for k in keys]
    fields += [(c, pa.float64()) for c in ("chosen_score", "rejected_score", "margin")]
    schema = pa.schema(fields)
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _scored_groups(rundir: RunDir, rubric: Rubric, judge: str) -> tuple[dict, dict, int, int]:
    """(speeches, responses scored per speech, ratings read, failed ratings) of one judge's ratings
    of responses to the current speeches."""
    speeches = {s.id: s for s in rundir.read_speeches()}
    responses = {r.id: r for r in rundir.read_responses() if r.speech_id in speeches}
    ratings = [r for r in rundir.read_ratings(judge) if r.response_id in responses]
    if not ratings:
        raise UserError(f"no ratings in {rundir.ratings}; run 'psychocounsel rate' first")
    groups: dict[str, list[Scored]] = defaultdict(list)
    failed = 0
    for r in ratings:
        if r.failed or set(rubric.keys) - set(r.scores):
            failed += 1  # never scored by default: a failed rating keeps its response out of pairs
            continue
        groups[r.speech_id].append(Scored(responses[r.response_id], r, rubric.score(r.scores)))
    return speeches, groups, len(ratings), failed


def run(cfg: PairsConfig, rundir: RunDir, rubric_path=None, force: bool = False) -> dict[str, Any]:
    """Write RUN/pairs from the ratings of the last rate stage. No train pair at all is an error
    that writes nothing (unless ``force``): there is nothing to train on, and existing pairs stay."""
    from .card import write_card

    rubric = load_rubric(rubric_path)
    judge = rundir.read_run_json().get("stages", {}).get("rate", {}).get("judge")
    if not judge:
        raise UserError(f"no ratings recorded in {rundir.run_json}; run 'psychocounsel rate' first")
    speeches, groups, n_ratings, failed = _scored_groups(rundir, rubric, judge)
    train, test = build(speeches, groups, rubric, cfg)
    if not train and not force:
        raise UserError(
            f"no train pair: no two responses of a speech differ by min_gap {cfg.min_gap} or more "
            f"({n_ratings - failed} usable ratings); nothing written. Lower --min-gap, add generators, "
            "or --force to write empty pairs"
        )
    at_risk = crisis_ids(rundir, screen_if_absent=False)
    crisis = (
        None
        if at_risk is None
        else {
            "speeches": len(at_risk & set(groups)),
            "train_pairs": sum(r["ID"] in at_risk for r in train),
            "test_pairs": sum(r["ID"] in at_risk for r in test),
        }
    )
    out = rundir.pairs
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        write_parquet(out / f"{name}.parquet", rows, rubric.keys)
        write_jsonl(out / f"{name}.jsonl", rows)
    write_card(out / "README.md", (train, test), groups, rubric, cfg, crisis)
    return {
        "items_in": n_ratings,
        "items_out": len(train) + len(test),
        "failed": failed,
        "calls_made": 0,
        "calls_cached": 0,
        "train_pairs": len(train),
        "test_pairs": len(test),
        **({"crisis": crisis} if crisis else {}),
    }
