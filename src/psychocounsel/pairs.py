"""pairs: turn rated responses into a preference dataset in the published PsychoCounsel format.

- A response's score is the rubric's weighted mean of its principle scores.
- Speeches are split into train/test *by speech* (seeded), so no speech is in both.
- Train: every two responses of a speech whose scores differ by >= ``min_gap`` (the paper: 1.0).
- Test: the highest against the lowest response of each test speech, when their scores differ.
- Length (``length_balance``): judges prefer longer replies, so the chosen reply is often the longer
  one, and a reward model or DPO policy trained on that learns "say more". With a cap, chosen-longer
  train pairs are dropped until their share is at most the cap; the test split is never changed.

Columns: ID, prefID, question, prompt, chosen, rejected, chosen_model, rejected_model,
chosen_<key>_rating and rejected_<key>_rating per principle (ints, the 1-5 score rounded),
then chosen_score, rejected_score, margin (floats). ``question`` holds the speech; a multi-turn
speech is written as a transcript ("Client: ... / Counselor: ... / Client: ..."). ``prompt`` is
``question`` and a blank line, so TRL's trainers, which join prompt + reply as they are, see the
speech (without it DPOTrainer takes the common start of chosen and rejected as the prompt).
``format="trl"`` writes TRL's conversational form instead (``pairs_io.as_conversation``).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .config import PairsConfig
from .crisis import crisis_ids
from .errors import UserError
from .pairs_io import as_conversation, as_prompt, as_question
from .records import Rating, Response, Speech
from .rubric import Rubric, load_rubric
from .store import RunDir, stable_hash, write_jsonl

log = logging.getLogger(__name__)


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
        "prompt": as_prompt(speech),
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


def is_chosen_longer(row: dict) -> bool:
    """The chosen reply has more characters than the rejected one (a tie is not longer)."""
    return len(row["chosen"]) > len(row["rejected"])


def chosen_longer(rows: list[dict]) -> dict[str, Any]:
    """How often the chosen reply is the longer one: n, of pairs, and the share (None without pairs).

    >>> chosen_longer([{"chosen": "abc", "rejected": "ab"}, {"chosen": "a", "rejected": "b"}])
    {'n': 1, 'pairs': 2, 'share': 0.5}
    """
    n = sum(map(is_chosen_longer, rows))
    return {"n": n, "pairs": len(rows), "share": round(n / len(rows), 4) if rows else None}


def balance_length(rows: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): the fewest chosen-longer rows dropped so that the chosen reply is the
    longer one in at most ``share`` of the kept rows; kept rows stay in their order.

    Every train pair of a speech is already in ``rows`` (any two responses min_gap apart), so
    there is no other pair to swap in: dropping is the only lever, and only chosen-longer rows go.
    Which ones is a seeded shuffle, not smallest margin first: that would leave the kept
    chosen-longer pairs with larger margins than the rest, and a margin-aware reward model would
    learn length back from them. A speech loses its last pair only when no other row can go.

    Chosen longer in 2 of 3 here; one must go, and s2 has no other pair, so s1's goes:

    >>> rows = [{"ID": s, "prefID": p, "chosen": c, "rejected": "ab"}
    ...         for s, p, c in [("s1", "p1", "abc"), ("s1", "p2", "a"), ("s2", "p3", "abc")]]
    >>> kept, dropped = balance_length(rows, 0.5, seed=0)
    >>> [r["prefID"] for r in kept], [r["prefID"] for r in dropped]
    (['p2', 'p3'], ['p1'])
    """
    longer = sorted((r for r in rows if is_chosen_longer(r)), key=lambda r: r["prefID"])
    random.Random(seed).shuffle(longer)
    last = {r["ID"]: r["prefID"] for r in longer}  # each speech's last chosen-longer row in that order
    with_other = {r["ID"] for r in rows if not is_chosen_longer(r)}
    protected = {p for sid, p in last.items() if sid not in with_other}
    order = [r for r in longer if r["prefID"] not in protected] + [r for r in longer if r["prefID"] in protected]
    n_drop = 0
    # 1e-9: a share of exactly the cap (0.6 of 10 pairs) must hold despite float rounding.
    while len(longer) - n_drop > share * (len(rows) - n_drop) + 1e-9:
        n_drop += 1
    gone = {r["prefID"] for r in order[:n_drop]}
    return [r for r in rows if r["prefID"] not in gone], [r for r in rows if r["prefID"] in gone]


def _balance_train(train: list[dict], cfg: PairsConfig, force: bool) -> tuple[list[dict], dict | None]:
    """The train rows after ``cfg.length_balance`` (unchanged when it is off) and its figures."""
    if cfg.length_balance is None or not train:
        return train, None
    kept, dropped = balance_length(train, cfg.length_balance, cfg.seed)
    before, after = chosen_longer(train), chosen_longer(kept)
    if not kept and not force:
        raise UserError(
            f"--length-balance {cfg.length_balance} would drop every train pair: the chosen reply is the longer "
            f"one in all {before['pairs']}; nothing written. Raise or unset --length-balance, or --force to write "
            "empty pairs"
        )
    log.info(
        "length balance %s: chosen longer in %d of %d train pairs, %d of %d after dropping %d",
        cfg.length_balance,
        before["n"],
        before["pairs"],
        after["n"],
        after["pairs"],
        len(dropped),
    )
    log.debug("length balance dropped prefIDs: %s", ", ".join(r["prefID"] for r in dropped))
    return kept, {"share": cfg.length_balance, "before": before, "dropped": len(dropped)}


def write_parquet(path, rows: list[dict], keys: list[str], form: str = "published") -> None:
    """``rows`` with an explicit schema (an empty split keeps its columns); ``form`` "trl": the
    rows are ``as_conversation``'s, prompt/chosen/rejected lists of {role, content}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if form == "trl":
        messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        fields = [("ID", pa.string()), ("prefID", pa.string())]
        fields += [(c, messages) for c in ("prompt", "chosen", "rejected")]
    else:
        fields = [(c, pa.string()) for c in ("ID", "prefID", "question", "prompt", "chosen", "rejected")]
    fields += [(c, pa.string()) for c in ("chosen_model", "rejected_model")]
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
    """Write RUN/pairs from the ratings of the last rate stage. No train pair at all (before or
    after ``cfg.length_balance``) is an error that writes nothing (unless ``force``): there is
    nothing to train on, and existing pairs stay."""
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
    train, balance = _balance_train(train, cfg, force)
    length = {"chosen_longer": {"train": chosen_longer(train), "test": chosen_longer(test)}}
    if balance:
        length["length_balance"] = balance
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
        if cfg.format == "trl":
            rows = [as_conversation(r, speeches[r["ID"]]) for r in rows]
        write_parquet(out / f"{name}.parquet", rows, rubric.keys, cfg.format)
        write_jsonl(out / f"{name}.jsonl", rows)
    write_card(out / "README.md", (train, test), groups, rubric, cfg, crisis, length)
    return {
        "items_in": n_ratings,
        "items_out": len(train) + len(test),
        "failed": failed,
        "calls_made": 0,
        "calls_cached": 0,
        "train_pairs": len(train),
        "test_pairs": len(test),
        **length,
        **({"crisis": crisis} if crisis else {}),
    }
