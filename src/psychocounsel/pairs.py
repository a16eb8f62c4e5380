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
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, BinaryIO

from .config import PairsConfig
from .crisis import crisis_ids
from .errors import UserError
from .pairs_io import SplitWriter, as_conversation, as_prompt, as_question, pairs_schema
from .records import Rating, Response, Speech
from .rubric import Rubric, load_rubric
from .store import DAMAGED, RunDir, iter_jsonl_lines, json_row, read_jsonl_at, stable_hash

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
        "prefID": pref_id(chosen.response.id, rejected.response.id),
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


def is_chosen_longer(row: dict) -> bool:
    """The chosen reply has more characters than the rejected one (a tie is not longer)."""
    return len(row["chosen"]) > len(row["rejected"])


def chosen_longer(rows: list[dict]) -> dict[str, Any]:
    """How often the chosen reply is the longer one: n, of pairs, and the share (None without pairs).

    >>> chosen_longer([{"chosen": "abc", "rejected": "ab"}, {"chosen": "a", "rejected": "b"}])
    {'n': 1, 'pairs': 2, 'share': 0.5}
    """
    return longer_figures(sum(map(is_chosen_longer, rows)), len(rows))


def longer_figures(n: int, pairs: int) -> dict[str, Any]:
    """``chosen_longer``'s figures from the counts: n chosen-longer of ``pairs``."""
    return {"n": n, "pairs": pairs, "share": round(n / pairs, 4) if pairs else None}


def balance_length(
    rows: list[dict], share: float, seed: int, longer: Callable[[dict], bool] = is_chosen_longer
) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): the fewest chosen-longer rows dropped so that the chosen reply is the
    longer one in at most ``share`` of the kept rows; kept rows stay in their order.

    Every train pair of a speech is already in ``rows`` (any two responses min_gap apart), so
    there is no other pair to swap in: dropping is the only lever, and only chosen-longer rows go.
    Which ones is a seeded shuffle, not smallest margin first: that would leave the kept
    chosen-longer pairs with larger margins than the rest, and a margin-aware reward model would
    learn length back from them. A speech loses its last pair only when no other row can go.
    ``longer``: how to tell a chosen-longer row (pairs.run passes rows without the texts).

    Chosen longer in 2 of 3 here; one must go, and s2 has no other pair, so s1's goes:

    >>> rows = [{"ID": s, "prefID": p, "chosen": c, "rejected": "ab"}
    ...         for s, p, c in [("s1", "p1", "abc"), ("s1", "p2", "a"), ("s2", "p3", "abc")]]
    >>> kept, dropped = balance_length(rows, 0.5, seed=0)
    >>> [r["prefID"] for r in kept], [r["prefID"] for r in dropped]
    (['p2', 'p3'], ['p1'])
    """
    chosen_longer = sorted((r for r in rows if longer(r)), key=lambda r: r["prefID"])
    random.Random(seed).shuffle(chosen_longer)
    last = {r["ID"]: r["prefID"] for r in chosen_longer}  # each speech's last chosen-longer row in that order
    with_other = {r["ID"] for r in rows if not longer(r)}
    protected = {p for sid, p in last.items() if sid not in with_other}
    order = [r for r in chosen_longer if r["prefID"] not in protected]
    order += [r for r in chosen_longer if r["prefID"] in protected]
    n_drop = 0
    # 1e-9: a share of exactly the cap (0.6 of 10 pairs) must hold despite float rounding.
    while len(chosen_longer) - n_drop > share * (len(rows) - n_drop) + 1e-9:
        n_drop += 1
    gone = {r["prefID"] for r in order[:n_drop]}
    return [r for r in rows if r["prefID"] not in gone], [r for r in rows if r["prefID"] in gone]


def _longer(rows: Plan) -> dict[str, Any]:
    return longer_figures(sum(rows.longer), len(rows))


def _balance_train(train: Plan, cfg: PairsConfig, force: bool) -> tuple[Plan, dict | None, set]:
    """The train pairs after ``cfg.length_balance`` (unchanged when it is off), the figures, and
    the prefIDs it dropped."""
    if cfg.length_balance is None or not train:
        return train, None, set()
    kept, dropped = balance_length(list(train), cfg.length_balance, cfg.seed, longer=lambda r: r.longer)
    kept = train.subset(kept)
    before, after = _longer(train), _longer(kept)
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
    return (
        kept,
        {"share": cfg.length_balance, "before": before, "dropped": len(dropped)},
        {r["prefID"] for r in dropped},
    )


def write_parquet(path, rows: list[dict], keys: list[str], form: str = "published") -> None:
    """``rows`` with an explicit schema (an empty split keeps its columns); ``form`` "trl": the
    rows are ``as_conversation``'s, prompt/chosen/rejected lists of {role, content}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pairs_schema(keys, form)
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


class Rated:
    """One judge's usable ratings of a run's current speeches, held without any text: per
    response its id, generator, length and place in responses.jsonl; per rating its principle
    scores and weighted score; rating indices grouped by speech id. ``group`` and ``speech``
    read what one speech needs when it is needed, so memory grows by a few hundred bytes a
    rating, not by the text (benchmarks/scale.py).

    The rows read are the ones ``RunDir.read_*`` would keep: the first of each id (speech,
    response) or of each response and judge (rating); responses to speeches no longer in
    speeches.jsonl, and their ratings, are left out.
    """

    def __init__(self, rundir: RunDir, rubric: Rubric, judge: str):
        self.rundir, self.keys, self.judge = rundir, rubric.keys, judge
        self.where = (str(rundir.speeches), str(rundir.responses))  # for errors naming the file
        self.speech_at: dict[str, int] = {}  # speech id -> offset in speeches.jsonl
        for at, sid, _ in _keyed_rows(rundir.speeches, lambda d: d["id"]):
            self.speech_at.setdefault(sid, at)
        if not self.speech_at:
            raise UserError(f"no speeches in {rundir.speeches}; run 'psychocounsel ingest' first")
        self.rid: list[str] = []  # per response: id, generator (index), characters, offset
        self.gen, self.chars, self.at = array("l"), array("q"), array("q")
        self.generators: dict[str, int] = {}
        index: dict[str, int] = {}  # response id -> its index above; -1: not a current speech's
        for at, rid, row in _keyed_rows(rundir.responses, lambda d: d["id"]):
            if rid in index:
                continue
            index[rid] = -1
            if row.get("speech_id") in self.speech_at:
                index[rid] = len(self.rid)
                self.rid.append(rid)
                self.gen.append(self.generators.setdefault(row.get("generator"), len(self.generators)))
                self.chars.append(len(row["text"]))
                self.at.append(at)
        self.generator_names = list(self.generators)
        self._read_ratings(rubric, index)

    def _read_ratings(self, rubric: Rubric, index: dict[str, int]) -> None:
        self.response, self.score, self.scores = array("l"), array("d"), array("d")  # per usable rating
        self.groups: dict[str, array] = {}  # speech id -> its usable ratings
        self.n_ratings = self.failed = 0
        rated = bytearray(len(self.rid))  # the first rating of a response by this judge counts
        for _, (rid, judge), row in _keyed_rows(self.rundir.ratings, lambda d: (d["response_id"], d.get("judge"))):
            i = index.get(rid, -1) if judge == self.judge else -1
            if i < 0 or rated[i]:
                continue
            rated[i], self.n_ratings = 1, self.n_ratings + 1
            scores = row.get("scores") or {}
            if row.get("failed") or set(self.keys) - set(scores):
                self.failed += 1  # never scored by default: a failed rating keeps its response out of pairs
                continue
            self.groups.setdefault(row["speech_id"], array("l")).append(len(self.response))
            self.response.append(i)
            self.score.append(rubric.score(scores))
            self.scores.extend(float(scores[k]) for k in self.keys)

    def group(self, sid: str, responses: BinaryIO | None = None) -> list[Scored]:
        """The speech's scored responses in response-id order: as they are in the run, read from
        ``responses`` (responses.jsonl, open), or without text and the rating index as ``rating``."""
        out, k, where = [], len(self.keys), self.where[1]
        for j in self.groups[sid]:
            i = self.response[j]
            if responses:
                response = Response.from_dict(read_jsonl_at(responses, self.at[i], where))
                scores = dict(zip(self.keys, self.scores[j * k : (j + 1) * k]))
                out.append(Scored(response, Rating(response.id, sid, self.judge, scores), self.score[j]))
            else:
                response = Response(self.rid[i], sid, self.generator_names[self.gen[i]], "", "")
                out.append(Scored(response, j, self.score[j]))  # type: ignore[arg-type]
        return sorted(out, key=lambda s: s.response.id)

    def speech(self, sid: str, speeches: BinaryIO) -> Speech:
        return Speech.from_dict(read_jsonl_at(speeches, self.speech_at[sid], self.where[0]))

    def card_groups(self) -> dict[str, _CardGroup]:
        """``groups`` as card.write_card reads them, one light view per rating."""
        return {sid: _CardGroup(self, idx) for sid, idx in self.groups.items()}


def _keyed_rows(path, key: Callable[[dict], Any]) -> Iterator[tuple[int, Any, dict]]:
    """(offset, key, row) of each row of a run's JSONL file, read a line at a time; a row that is
    not a JSON object, or lacks its key fields, is a UserError naming the file and line."""
    for n, at, line in iter_jsonl_lines(path):
        row = json_row(line, f"{path}:{n}", DAMAGED)
        try:
            k = key(row)
        except (KeyError, TypeError):
            raise UserError(f"{path}:{n}: the row lacks its key fields; the file is damaged") from None
        yield at, k, row


class _CardGroup:
    def __init__(self, rated: Rated, idx: array):
        self.rated, self.idx = rated, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __iter__(self):
        return (_CardScored(self.rated, j) for j in self.idx)


class _CardScored:
    """A rating as the card reads it: ``.response.generator``, ``.rating.scores[key]``, ``.score``."""

    __slots__ = ("rated", "j")

    def __init__(self, rated: Rated, j: int):
        self.rated, self.j = rated, j

    response = property(lambda self: SimpleNamespace(generator=self._generator()))
    rating = property(lambda self: self)
    scores = property(lambda self: self)
    score = property(lambda self: self.rated.score[self.j])

    def _generator(self) -> str:
        return self.rated.generator_names[self.rated.gen[self.rated.response[self.j]]]

    def __getitem__(self, key: str) -> float:
        keys = self.rated.keys
        return self.rated.scores[self.j * len(keys) + keys.index(key)]


class Plan:
    """Pairs without their texts, ~40 bytes each: the speech, the chosen and the rejected rating,
    the margin, whether the chosen reply is the longer. Iterating gives ``PairRef`` views that
    read like rows (``r["ID"]``, ``r["margin"]``, ``r["prefID"]``) for the balance and the card."""

    def __init__(self, rated: Rated):
        self.rated, self.sids = rated, []
        self.hi, self.lo, self.margin, self.longer = array("l"), array("l"), array("d"), bytearray()

    def add(self, sid: str, chosen: Scored, rejected: Scored) -> None:
        chars, response = self.rated.chars, self.rated.response
        self.sids.append(sid)
        self.hi.append(chosen.rating)  # the rating's index (``Rated.group`` without texts)
        self.lo.append(rejected.rating)
        self.margin.append(round(chosen.score - rejected.score, 4))
        self.longer.append(chars[response[chosen.rating]] > chars[response[rejected.rating]])

    def subset(self, keep: list[PairRef]) -> Plan:
        out = Plan(self.rated)
        for r in keep:
            out.sids.append(self.sids[r.k])
            out.hi.append(self.hi[r.k])
            out.lo.append(self.lo[r.k])
            out.margin.append(self.margin[r.k])
            out.longer.append(self.longer[r.k])
        return out

    def __len__(self) -> int:
        return len(self.sids)

    def __iter__(self) -> Iterator[PairRef]:
        return (PairRef(self, k) for k in range(len(self)))

    def __add__(self, other: Plan) -> list[PairRef]:
        return [*self, *other]


class PairRef:
    """One pair of a ``Plan``, read like a row: ``ID``, ``margin``, ``prefID``; ``longer``."""

    __slots__ = ("plan", "k", "_pref")

    def __init__(self, plan: Plan, k: int):
        self.plan, self.k, self._pref = plan, k, None

    longer = property(lambda self: bool(self.plan.longer[self.k]))

    def __getitem__(self, key: str) -> Any:
        plan, k = self.plan, self.k
        if key == "ID":
            return plan.sids[k]
        if key == "margin":
            return plan.margin[k]
        if key != "prefID":
            raise KeyError(key)
        if self._pref is None:
            rid, response = plan.rated.rid, plan.rated.response
            self._pref = pref_id(rid[response[plan.hi[k]]], rid[response[plan.lo[k]]])
        return self._pref


def pref_id(chosen_id: str, rejected_id: str) -> str:
    return "p-" + stable_hash([chosen_id, rejected_id], 12)


def _pairs_of(group: list[Scored], test: bool, min_gap: float) -> list[tuple[Scored, Scored]]:
    if test:
        pair = best_worst_pair(group)
        return [pair] if pair else []
    return train_pairs(group, min_gap)


def plan(rated: Rated, cfg: PairsConfig) -> tuple[Plan, Plan, set[str]]:
    """(train, test, test speech ids): every pair, without its texts, speeches in id order."""
    test_ids = split_speeches(list(rated.groups), cfg.test_fraction, cfg.seed)
    train, test = Plan(rated), Plan(rated)
    for sid in sorted(rated.groups):
        split = test if sid in test_ids else train
        for hi, lo in _pairs_of(rated.group(sid), sid in test_ids, cfg.min_gap):
            split.add(sid, hi, lo)
    return train, test, test_ids


def _write_splits(rated: Rated, cfg: PairsConfig, test_ids: set[str], dropped: set[str], out) -> dict[str, int]:
    """Write both splits a speech at a time (texts read then), leaving out ``dropped`` prefIDs."""
    writers = {name: SplitWriter(out, name, rated.keys, cfg.format) for name in ("train", "test")}
    try:
        with open(rated.rundir.speeches, "rb") as speeches, open(rated.rundir.responses, "rb") as responses:
            _write_pairs(rated, cfg, test_ids, dropped, writers, speeches, responses)
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    for w in writers.values():
        w.commit()
    return {name: w.rows for name, w in writers.items()}


def _write_pairs(rated: Rated, cfg: PairsConfig, test_ids: set[str], dropped: set[str], writers, speeches, responses):
    """Each speech's pairs, in speech-id order, with texts read from the open run files."""
    for sid in sorted(rated.groups):
        test = sid in test_ids
        pairs = _pairs_of(rated.group(sid, responses), test, cfg.min_gap)
        if pairs:
            speech = rated.speech(sid, speeches)
        for hi, lo in pairs:
            if test or pref_id(hi.response.id, lo.response.id) not in dropped:
                row = pair_row(speech, hi, lo, rated.keys)
                writers["test" if test else "train"].add(as_conversation(row, speech) if cfg.format == "trl" else row)


def run(cfg: PairsConfig, rundir: RunDir, rubric_path=None, force: bool = False) -> dict[str, Any]:
    """Write RUN/pairs from the ratings of the last rate stage. No train pair at all (before or
    after ``cfg.length_balance``) is an error that writes nothing (unless ``force``): there is
    nothing to train on, and existing pairs stay. Two passes: the pairs are planned from the
    scores alone, then written a speech at a time, so no text is held beyond one speech's."""
    from .card import write_card

    rubric = load_rubric(rubric_path)
    judge = rundir.read_run_json().get("stages", {}).get("rate", {}).get("judge")
    if not judge:
        raise UserError(f"no ratings recorded in {rundir.run_json}; run 'psychocounsel rate' first")
    rated = Rated(rundir, rubric, judge)
    if not rated.n_ratings:
        raise UserError(f"no ratings in {rundir.ratings}; run 'psychocounsel rate' first")
    train, test, test_ids = plan(rated, cfg)
    if not train and not force:
        raise UserError(
            f"no train pair: no two responses of a speech differ by min_gap {cfg.min_gap} or more "
            f"({rated.n_ratings - rated.failed} usable ratings); nothing written. Lower --min-gap, add generators, "
            "or --force to write empty pairs"
        )
    train, balance, dropped = _balance_train(train, cfg, force)
    length = {"chosen_longer": {"train": _longer(train), "test": _longer(test)}}
    if balance:
        length["length_balance"] = balance
    at_risk = crisis_ids(rundir, screen_if_absent=False)
    crisis = (
        None
        if at_risk is None
        else {
            "speeches": len(at_risk & set(rated.groups)),
            "train_pairs": sum(r["ID"] in at_risk for r in train),
            "test_pairs": sum(r["ID"] in at_risk for r in test),
        }
    )
    out = rundir.pairs
    out.mkdir(parents=True, exist_ok=True)
    _write_splits(rated, cfg, test_ids, dropped, out)
    write_card(out / "README.md", (train, test), rated.card_groups(), rubric, cfg, crisis, length)
    return {
        "items_in": rated.n_ratings,
        "items_out": len(train) + len(test),
        "failed": rated.failed,
        "calls_made": 0,
        "calls_cached": 0,
        "train_pairs": len(train),
        "test_pairs": len(test),
        **length,
        **({"crisis": crisis} if crisis else {}),
    }
