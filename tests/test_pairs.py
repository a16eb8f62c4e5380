"""Tests of the pairs stage: the pairing rules as pure functions, then pairs.run on a run
directory written here, by us (speeches, responses, ratings, run.json); no network, no model."""

from __future__ import annotations

import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from psychocounsel import cli, pairs
from psychocounsel.config import PairsConfig
from psychocounsel.errors import UserError
from psychocounsel.pairs import (
    Scored,
    as_question,
    balance_length,
    best_worst_pair,
    chosen_longer,
    rating_int,
    split_speeches,
    train_pairs,
)
from psychocounsel.records import Rating, Response, Speech
from psychocounsel.rubric import DEFAULT_RUBRIC, PAPER_KEYS
from psychocounsel.store import RunDir, append_jsonl, read_jsonl, write_json

best_worst_pair.__test__ = False  # pairs.best_worst_pair is the function under test, not a pytest test

JUDGE = "judge-key-1"
COLUMNS = (
    ["ID", "prefID", "question", "prompt", "chosen", "rejected", "chosen_model", "rejected_model"]
    + [f"chosen_{k}_rating" for k in PAPER_KEYS]
    + [f"rejected_{k}_rating" for k in PAPER_KEYS]
    + ["chosen_score", "rejected_score", "margin"]
)


def scored(rid: str, score: float, sid: str = "s1") -> Scored:
    response = Response(rid, sid, f"gen-{rid}", f"text of {rid}", "m")
    return Scored(response, Rating(rid, sid, JUDGE, {k: score for k in PAPER_KEYS}), score)


def ids(pairs_: list[tuple[Scored, Scored]]) -> set[tuple[str, str]]:
    return {(hi.response.id, lo.response.id) for hi, lo in pairs_}


# -- train_pairs ------------------------------------------------------------------------------


def test_train_pairs_gap_at_exactly_min_gap_is_kept_and_just_below_dropped():
    group = [scored("a", 4.0), scored("b", 3.0), scored("c", 3.0000001), scored("d", 2.0)]
    assert ids(train_pairs(group, 1.0)) == {("a", "b"), ("a", "d"), ("b", "d"), ("c", "d")}
    # a - c = 0.9999999: just below the gap.
    assert ("a", "c") not in ids(train_pairs(group, 1.0))


def test_train_pairs_exact_gap_survives_weighted_mean_rounding():
    # 0.1 + 0.2 style rounding: 4.1 - 3.1 is 0.9999999999999996 in floats.
    assert 4.1 - 3.1 < 1.0
    group = [scored("a", 4.1), scored("b", 3.1)]
    assert ids(train_pairs(group, 1.0)) == {("a", "b")}


def test_train_pairs_never_pairs_ties_even_with_zero_gap():
    group = [scored("a", 3.0), scored("b", 3.0), scored("c", 2.5)]
    assert ids(train_pairs(group, 0.0)) == {("a", "c"), ("b", "c")}
    assert train_pairs([scored("a", 3.0), scored("b", 3.0)], 0.0) == []


def test_train_pairs_chosen_is_higher_whatever_the_input_order():
    group = [scored("low", 1.0), scored("high", 5.0)]
    [(hi, lo)] = train_pairs(group, 1.0)
    assert (hi.response.id, lo.response.id) == ("high", "low")
    [(hi, lo)] = train_pairs(group[::-1], 1.0)
    assert (hi.response.id, lo.response.id) == ("high", "low")


def test_train_pairs_custom_min_gap():
    group = [scored("a", 5.0), scored("b", 4.0), scored("c", 3.5), scored("d", 1.0)]
    assert ids(train_pairs(group, 2.0)) == {("a", "d"), ("b", "d"), ("c", "d")}
    assert ids(train_pairs(group, 0.5)) == {("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")}
    assert ids(train_pairs(group, 4.5)) == set()
    assert train_pairs([scored("a", 5.0)], 0.0) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(4, 20).map(lambda q: q / 4), min_size=0, max_size=7),
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0]),
)
def test_train_pairs_is_every_qualifying_combination(scores, gap):
    group = [scored(f"r{i}", s) for i, s in enumerate(scores)]
    expected = set()
    for (i, a), (j, b) in itertools.combinations(enumerate(scores), 2):
        if a != b and abs(a - b) >= gap:
            expected.add((f"r{i}", f"r{j}") if a > b else (f"r{j}", f"r{i}"))
    out = train_pairs(group, gap)
    assert len(out) == len(expected)  # no combination twice
    assert ids(out) == expected
    assert all(hi.score > lo.score for hi, lo in out)


# -- best_worst_pair --------------------------------------------------------------------------------


def test_test_pair_is_best_against_worst():
    group = [scored("a", 3.0), scored("b", 4.5), scored("c", 1.5), scored("d", 2.0)]
    hi, lo = best_worst_pair(group)
    assert (hi.response.id, lo.response.id) == ("b", "c")


def test_test_pair_none_when_all_equal_or_single():
    assert best_worst_pair([scored("a", 3.0), scored("b", 3.0), scored("c", 3.0)]) is None
    assert best_worst_pair([scored("a", 4.0)]) is None
    assert best_worst_pair([]) is None


def test_test_pair_breaks_ties_by_response_id_whatever_the_order():
    group = [scored("r2", 5.0), scored("r4", 1.0), scored("r1", 5.0), scored("r3", 1.0)]
    for perm in itertools.permutations(group):
        hi, lo = best_worst_pair(list(perm))
        # The best ranks first by (-score, id); the worst is last in that order.
        assert (hi.response.id, lo.response.id) == ("r1", "r4")


def test_test_pair_small_gap_is_still_a_pair():
    hi, lo = best_worst_pair([scored("a", 3.1), scored("b", 3.0)])
    assert (hi.response.id, lo.response.id) == ("a", "b")


# -- split_speeches ---------------------------------------------------------------------------

SPEECH_IDS = [f"s{i:02d}" for i in range(20)]


def test_split_is_deterministic_and_seed_dependent():
    a = split_speeches(SPEECH_IDS, 0.5, seed=0)
    assert a == split_speeches(SPEECH_IDS, 0.5, seed=0)
    assert a == split_speeches(list(reversed(SPEECH_IDS)), 0.5, seed=0)  # input order is irrelevant
    assert a != split_speeches(SPEECH_IDS, 0.5, seed=1)
    assert len({frozenset(split_speeches(SPEECH_IDS, 0.3, seed)) for seed in range(5)}) == 5


@pytest.mark.parametrize(
    "n, fraction, n_test",
    [
        (20, 0.1, 2),
        (20, 0.25, 5),
        (10, 0.5, 5),
        (10, 0.0, 0),
        (2, 0.01, 1),  # at least one test speech ...
        (2, 0.9, 1),  # ... and at least one train speech
        (5, 0.99, 4),
        (1, 0.5, 0),
    ],
)
def test_split_fraction(n, fraction, n_test):
    test_ids = split_speeches(SPEECH_IDS[:n], fraction, seed=3)
    assert len(test_ids) == n_test
    assert test_ids <= set(SPEECH_IDS[:n])


@settings(max_examples=200, deadline=None)
@given(st.sets(st.text("abcdef0123", min_size=1, max_size=4), max_size=30), st.floats(0, 0.99), st.integers(0, 2**32))
def test_split_properties(speech_ids, fraction, seed):
    ids_ = list(speech_ids)
    test_ids = split_speeches(ids_, fraction, seed)
    assert test_ids <= speech_ids
    assert test_ids == split_speeches(sorted(ids_, reverse=True), fraction, seed)
    n = len(ids_)
    if fraction > 0 and n >= 2:
        assert 1 <= len(test_ids) <= n - 1
    else:
        assert len(test_ids) == round(n * fraction)


# -- rating_int, as_question ------------------------------------------------------------------


@pytest.mark.parametrize(
    "score, expected",
    [
        (1.0, 1),
        (1.49, 1),
        (1.5, 2),
        (2.5, 3),
        (3.5, 4),
        (4.4999, 4),
        (4.5, 5),
        (5.0, 5),
        (0.2, 1),
        (5.7, 5),  # clamped into 1-5
    ],
)
def test_rating_int(score, expected):
    assert rating_int(score) == expected
    assert isinstance(rating_int(score), int)


def test_as_question_single_turn_is_the_text():
    assert as_question(Speech("s", "I feel lost.")) == "I feel lost."


def test_as_question_multi_turn_is_a_transcript():
    speech = Speech(
        "s",
        "It got worse this week.",
        context=[
            {"role": "client", "content": "I can't sleep."},
            {"role": "counselor", "content": "How long has this been going on?"},
            {"role": "user", "content": "About a month."},
            {"role": "assistant", "content": "That is a long time."},
        ],
    )
    assert as_question(speech) == (
        "Client: I can't sleep.\n\nCounselor: How long has this been going on?\n\n"
        "Client: About a month.\n\nCounselor: That is a long time.\n\nClient: It got worse this week."
    )


# -- pairs.run end to end ---------------------------------------------------------------------

# Per speech, per generator: the score given on every principle (None = a failed rating).
SCORES = {
    "s0": {"a": 5.0, "b": 4.0, "c": 2.0, "d": None},
    "s1": {"a": 3.0, "b": 3.0, "c": 3.0},
    "s2": {"a": 4.0, "b": 3.0, "c": 3.5, "d": None},
    "s3": {"a": 1.0, "b": 2.0, "c": 5.0, "d": 4.5},
    "s4": {"a": 2.0, "b": 4.0},
    "s5": {"a": 1.5, "b": 2.0},
}
# Worked out by hand from SCORES with min_gap 1.0.
TRAIN = {
    "s0": {("a", "b"), ("a", "c"), ("b", "c")},
    "s1": set(),
    "s2": {("a", "b")},
    "s3": {("c", "a"), ("c", "b"), ("d", "a"), ("d", "b"), ("b", "a")},
    "s4": {("b", "a")},
    "s5": set(),
}
TEST = {"s0": ("a", "c"), "s1": None, "s2": ("a", "b"), "s3": ("c", "a"), "s4": ("b", "a"), "s5": ("b", "a")}
CONTEXT = [{"role": "client", "content": "We split up."}, {"role": "counselor", "content": "How are you?"}]


def rid(sid: str, gen: str) -> str:
    return f"r-{sid}-{gen}"


def write_run(root, scores=SCORES, judge=JUDGE) -> RunDir:
    """A run directory as ingest, generate and rate would leave it."""
    rundir = RunDir(root)
    append_jsonl(
        rundir.speeches,
        [
            Speech(sid, f"Speech {sid}: I have been struggling.", context=CONTEXT if sid == "s3" else []).to_dict()
            for sid in scores
        ],
    )
    responses, ratings = [], []
    for sid, by_gen in scores.items():
        for gen, score in by_gen.items():
            responses.append(Response(rid(sid, gen), sid, f"gen-{gen}", f"Reply {gen} to {sid}.", "m").to_dict())
            if score is None:
                ratings.append(Rating(rid(sid, gen), sid, judge, failed=True, error="no JSON", raw="??").to_dict())
            elif isinstance(score, dict):
                ratings.append(Rating(rid(sid, gen), sid, judge, scores=score).to_dict())
            else:
                ratings.append(Rating(rid(sid, gen), sid, judge, scores={k: score for k in PAPER_KEYS}).to_dict())
    append_jsonl(rundir.responses, responses)
    append_jsonl(rundir.ratings, ratings)
    write_json(rundir.run_json, {"stages": {"rate": {"judge": judge}}})
    return rundir


def add_other_judge(rundir: RunDir) -> None:
    """Ratings by another judge (or an older rubric) that pairs must ignore: they would reverse
    s4's pair, add a scored response to s5, and rescue s0's failed response."""
    append_jsonl(rundir.responses, [Response(rid("s5", "c"), "s5", "gen-c", "Reply c to s5.", "m").to_dict()])
    other = [
        (rid("s4", "a"), "s4", 5.0),
        (rid("s4", "b"), "s4", 1.0),
        (rid("s5", "c"), "s5", 5.0),
        (rid("s0", "d"), "s0", 5.0),
    ]
    append_jsonl(
        rundir.ratings, [Rating(r, s, "other-judge", scores={k: v for k in PAPER_KEYS}).to_dict() for r, s, v in other]
    )


@pytest.fixture
def built(tmp_path):
    rundir = write_run(tmp_path / "run")
    add_other_judge(rundir)
    cfg = PairsConfig(min_gap=1.0, test_fraction=0.5, seed=7)
    stats = pairs.run(cfg, rundir)
    test_ids = split_speeches(list(SCORES), 0.5, 7)
    return rundir, stats, test_ids


def read_split(rundir: RunDir, name: str) -> pa.Table:
    return pq.read_table(rundir.pairs / f"{name}.parquet")


def test_run_writes_both_splits_in_the_published_schema(built):
    rundir, _, _ = built
    for name in ("train", "test"):
        table = read_split(rundir, name)
        assert table.num_rows > 0
        assert table.column_names == COLUMNS
        types = {f.name: f.type for f in table.schema}
        assert all(types[c] == pa.string() for c in COLUMNS[:8])
        assert all(types[c] == pa.int64() for c in COLUMNS if c.endswith("_rating"))
        assert all(types[c] == pa.float64() for c in ("chosen_score", "rejected_score", "margin"))


def test_run_pairs_follow_the_rules_split_by_speech(built):
    rundir, stats, test_ids = built
    train, test = read_split(rundir, "train").to_pylist(), read_split(rundir, "test").to_pylist()
    assert 0 < len(test_ids) < len(SCORES)
    assert {r["ID"] for r in train}.isdisjoint({r["ID"] for r in test})
    assert {r["ID"] for r in train} <= set(SCORES) - test_ids
    assert {r["ID"] for r in test} <= test_ids

    expected_train = {
        (sid, rid(sid, hi), rid(sid, lo)) for sid in SCORES if sid not in test_ids for hi, lo in TRAIN[sid]
    }
    assert sorted((r["ID"], *response_ids(r)) for r in train) == sorted(expected_train)
    expected_test = {(sid, rid(sid, TEST[sid][0]), rid(sid, TEST[sid][1])) for sid in test_ids if TEST[sid]}
    assert sorted((r["ID"], *response_ids(r)) for r in test) == sorted(expected_test)
    assert stats["train_pairs"] == len(train) and stats["test_pairs"] == len(test)
    assert stats["items_out"] == len(train) + len(test)


def response_ids(row: dict) -> tuple[str, str]:
    """The response ids of a row, recovered from its texts (the rows carry texts, not ids)."""
    (_, chosen_gen, _, sid), (_, rejected_gen, _, _) = row["chosen"].split(), row["rejected"].split()
    return rid(sid.rstrip("."), chosen_gen), rid(sid.rstrip("."), rejected_gen)


def test_run_row_values(built):
    rundir, _, _ = built
    for row in read_split(rundir, "train").to_pylist() + read_split(rundir, "test").to_pylist():
        sid = row["ID"]
        chosen, rejected = (SCORES[sid][rid_.rsplit("-", 1)[1]] for rid_ in response_ids(row))
        assert (row["chosen_score"], row["rejected_score"]) == (chosen, rejected)
        assert row["margin"] == pytest.approx(chosen - rejected) and row["margin"] > 0
        assert all(row[f"chosen_{k}_rating"] == rating_int(chosen) for k in PAPER_KEYS)
        assert all(row[f"rejected_{k}_rating"] == rating_int(rejected) for k in PAPER_KEYS)
        assert row["chosen_model"] == "gen-" + row["chosen"].split()[1]
        assert row["prefID"].startswith("p-") and len(row["prefID"]) == 14
        if sid == "s3":
            assert row["question"] == (
                "Client: We split up.\n\nCounselor: How are you?\n\nClient: Speech s3: I have been struggling."
            )
        else:
            assert row["question"] == f"Speech {sid}: I have been struggling."
        # TRL joins prompt + reply as they are: the prompt carries the separator.
        assert row["prompt"] == row["question"] + "\n\n"
    all_rows = read_split(rundir, "train").to_pylist() + read_split(rundir, "test").to_pylist()
    assert len({r["prefID"] for r in all_rows}) == len(all_rows)


def test_run_counts_failed_and_ignores_other_judges(built):
    rundir, stats, _ = built
    n_ratings = sum(len(g) for g in SCORES.values())
    assert stats["failed"] == 2  # s0-d and s2-d
    assert stats["items_in"] == n_ratings  # the other judge's four ratings are not read
    rows = read_split(rundir, "train").to_pylist() + read_split(rundir, "test").to_pylist()
    used = {r for row in rows for r in response_ids(row)}
    assert not used & {rid("s0", "d"), rid("s2", "d"), rid("s5", "c")}


def test_run_jsonl_matches_parquet(built):
    rundir, _, _ = built
    for name in ("train", "test"):
        rows = read_jsonl(rundir.pairs / f"{name}.jsonl")
        assert rows == read_split(rundir, name).to_pylist()
        assert all(list(r) == COLUMNS for r in rows)


def test_run_card_has_counts_and_intended_use(built):
    rundir, stats, test_ids = built
    card = (rundir.pairs / "README.md").read_text(encoding="utf-8")
    n_train_speeches = len({r["ID"] for r in read_split(rundir, "train").to_pylist()})
    assert f"| train | {stats['train_pairs']} | {n_train_speeches} |" in card
    assert f"| test | {stats['test_pairs']} | {stats['test_pairs']} |" in card
    n_rated = sum(v is not None for g in SCORES.values() for v in g.values())
    assert f"Rated responses: {n_rated} over {len(SCORES)} speeches." in card
    assert "not a substitute for professional care" in card


def test_run_format_trl_writes_conversations_the_loader_reads_like_the_published_form(tmp_path):
    from psychocounsel.pairs_io import load_pairs
    from psychocounsel.reward_model import as_text

    published, trl = write_run(tmp_path / "published"), write_run(tmp_path / "trl")
    pairs.run(PairsConfig(test_fraction=0.5, seed=7), published)
    pairs.run(PairsConfig(test_fraction=0.5, seed=7, format="trl"), trl)
    same = ("ID", "prefID", "chosen_model", "margin", f"chosen_{PAPER_KEYS[0]}_rating")
    for name in ("train", "test"):
        table = read_split(trl, name)
        assert table.column_names == [c for c in COLUMNS if c != "question"]
        assert str(table.schema.field("prompt").type) == "list<element: struct<role: string, content: string>>"
        rows, plain = table.to_pylist(), read_split(published, name).to_pylist()
        assert rows == read_jsonl(trl.pairs / f"{name}.jsonl") and len(rows) == len(plain) > 0
        for row, p in zip(rows, plain):
            assert [row[k] for k in same] == [p[k] for k in same]
            assert row["chosen"] == [{"role": "assistant", "content": p["chosen"]}]
            assert row["rejected"] == [{"role": "assistant", "content": p["rejected"]}]
            text = f"Speech {row['ID']}: I have been struggling."
            context = [{"role": "user", "content": "We split up."}, {"role": "assistant", "content": "How are you?"}]
            assert row["prompt"] == (context if row["ID"] == "s3" else []) + [{"role": "user", "content": text}]
        # The project's own loader reads both forms: the same replies and margins.
        a, b = load_pairs(published.pairs, name), load_pairs(trl.pairs, name)
        assert [(as_text(r["chosen"]), as_text(r["rejected"]), r["margin"]) for r in b] == [
            (r["chosen"], r["rejected"], r["margin"]) for r in a
        ]
    assert "TRL's conversational form (`--format trl`)" in (trl.pairs / "README.md").read_text(encoding="utf-8")


def test_format_and_license_flags(tmp_path, capsys):
    rundir = write_run(tmp_path / "run")
    argv = ["pairs", "--run-dir", str(rundir.root), "-q", "--test-fraction", "0.5"]
    assert cli.main([*argv, "--format", "trl", "--license", "cc-by-nc-4.0"]) == 0
    assert isinstance(read_split(rundir, "train").to_pylist()[0]["prompt"], list)
    assert "\nlicense: cc-by-nc-4.0\n" in (rundir.pairs / "README.md").read_text(encoding="utf-8")
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        cli.main([*argv, "--format", "chatml"])
    assert "invalid choice: 'chatml'" in capsys.readouterr().err
    assert cli.main([*argv, "--license", "CC BY 4.0"]) == 2
    assert "license" in capsys.readouterr().err


def test_run_is_reproducible(tmp_path):
    cfg = PairsConfig(test_fraction=0.5, seed=3)
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    pairs.run(cfg, a)
    pairs.run(cfg, b)
    for name in ("train.jsonl", "test.jsonl"):
        assert (a.pairs / name).read_bytes() == (b.pairs / name).read_bytes()


def test_run_min_gap_zero_pairs_every_unequal_two(tmp_path):
    rundir = write_run(tmp_path / "run")
    stats = pairs.run(PairsConfig(min_gap=0.0, test_fraction=0.0), rundir)
    expected = sum(
        1 for g in SCORES.values() for x, y in itertools.combinations([v for v in g.values() if v], 2) if x != y
    )
    assert stats["train_pairs"] == expected and stats["test_pairs"] == 0
    assert read_split(rundir, "test").num_rows == 0
    assert read_split(rundir, "test").column_names == COLUMNS


def test_run_reads_the_judge_recorded_in_run_json(tmp_path):
    # pairs.run no longer takes a judge argument: the rate stage's judge in run.json decides.
    rundir = write_run(tmp_path / "run")
    add_other_judge(rundir)
    write_json(rundir.run_json, {"stages": {"rate": {"judge": "other-judge"}}})
    stats = pairs.run(PairsConfig(test_fraction=0.0), rundir)
    assert stats["items_in"] == 4 and stats["failed"] == 0
    rows = read_jsonl(rundir.pairs / "train.jsonl")
    assert {response_ids(r) for r in rows} == {(rid("s4", "a"), rid("s4", "b"))}


def test_run_without_a_rate_stage_is_a_user_error(tmp_path):
    rundir = write_run(tmp_path / "run")
    write_json(rundir.run_json, {})
    with pytest.raises(UserError, match="run 'psychocounsel rate' first"):
        pairs.run(PairsConfig(), rundir)
    write_json(rundir.run_json, {"stages": {"rate": {"judge": "never-used"}}})
    with pytest.raises(UserError, match="no ratings in"):
        pairs.run(PairsConfig(), rundir)


# -- weights ----------------------------------------------------------------------------------


def weighted_rubric(tmp_path, weights: dict[str, float]):
    data = yaml.safe_load(DEFAULT_RUBRIC.read_text(encoding="utf-8"))
    for p in data["principles"]:
        p["weight"] = weights.get(p["key"], 1)
    path = tmp_path / "weighted.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_weights_change_which_response_is_chosen(tmp_path):
    # x: empathy 5, the rest 2 -> equal weights 17/7 = 2.43, empathy x3: 27/9 = 3.0
    # y: empathy 2, the rest 3 -> equal weights 20/7 = 2.86, empathy x3: 24/9 = 2.67
    x = {k: 5.0 if k == "empathy" else 2.0 for k in PAPER_KEYS}
    y = {k: 2.0 if k == "empathy" else 3.0 for k in PAPER_KEYS}
    rundir = write_run(tmp_path / "run", scores={"s0": {"x": x, "y": y}})
    cfg = PairsConfig(min_gap=0.0, test_fraction=0.0)

    pairs.run(cfg, rundir)
    [row] = read_jsonl(rundir.pairs / "train.jsonl")
    assert row["chosen"] == "Reply y to s0."
    assert (row["chosen_score"], row["rejected_score"]) == (round(20 / 7, 4), round(17 / 7, 4))

    pairs.run(cfg, rundir, rubric_path=weighted_rubric(tmp_path, {"empathy": 3}))
    [row] = read_jsonl(rundir.pairs / "train.jsonl")
    assert row["chosen"] == "Reply x to s0."
    assert (row["chosen_score"], row["rejected_score"], row["margin"]) == (3.0, round(24 / 9, 4), round(1 / 3, 4))
    assert row["chosen_empathy_rating"] == 5 and row["rejected_empathy_rating"] == 2
    card = (rundir.pairs / "README.md").read_text(encoding="utf-8")
    assert "empathy 0.333" in card and "relevance 0.111" in card


def test_weights_decide_the_min_gap(tmp_path):
    # Only empathy counts: the gap is 4 on empathy alone, 4/7 under equal weights.
    x = {k: 5.0 if k == "empathy" else 3.0 for k in PAPER_KEYS}
    y = {k: 1.0 if k == "empathy" else 3.0 for k in PAPER_KEYS}
    rundir = write_run(tmp_path / "run", scores={"s0": {"x": x, "y": y}})
    cfg = PairsConfig(min_gap=1.0, test_fraction=0.0)
    with pytest.raises(UserError, match="no train pair"):
        pairs.run(cfg, rundir)
    assert not rundir.pairs.exists()  # nothing written
    assert pairs.run(cfg, rundir, force=True)["train_pairs"] == 0
    only_empathy = weighted_rubric(tmp_path, {k: 0 for k in PAPER_KEYS if k != "empathy"})
    assert pairs.run(cfg, rundir, rubric_path=only_empathy)["train_pairs"] == 1


def test_rating_missing_a_rubric_key_counts_as_failed(tmp_path):
    partial = {k: 4.0 for k in PAPER_KEYS if k != "staging"}
    rundir = write_run(tmp_path / "run", scores={"s0": {"a": partial, "b": 1.0, "c": 3.0}})
    stats = pairs.run(PairsConfig(test_fraction=0.0), rundir)
    assert stats["failed"] == 1 and stats["train_pairs"] == 1


# -- CLI overrides ----------------------------------------------------------------------------


@pytest.mark.parametrize("option", [["--min-gap", "-1"], ["--test-fraction", "-0.5"], ["--test-fraction", "1.5"]])
def test_cli_rejects_out_of_range_pairs_options(tmp_path, capsys, option):
    write_run(tmp_path / "run")
    code = cli.main(["pairs", "--run-dir", str(tmp_path / "run"), "-q", *option])
    assert code == 2
    assert capsys.readouterr().err.startswith("psychocounsel: error:")


def test_card_escapes_generator_names(tmp_path):
    """A generator name holding a pipe or HTML must not break the card's table or inject markup."""
    rundir = write_run(tmp_path / "run", scores={"s0": {"x": 5.0, "y": 2.0}})
    rows = read_jsonl(rundir.responses)
    for r in rows:
        r["generator"] = "a|b <script>" if r["generator"] == "gen-x" else r["generator"]
    rundir.responses.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pairs.run(PairsConfig(min_gap=0.0, test_fraction=0.0), rundir)
    card = (rundir.pairs / "README.md").read_text(encoding="utf-8")
    line = next(x for x in card.splitlines() if x.startswith("| a"))
    assert line.startswith("| a\\|b &lt;script&gt; | 1 |") and "<script>" not in card
    assert line.count(" | ") == len(PAPER_KEYS) + 2  # name, responses, score, one cell per principle


# -- length: how often the chosen reply is the longer one, and length_balance -----------------

# A reply's text is "Reply <generator> to <speech>.", so a longer generator name is a longer reply.
# Every speech's best pair has the longer reply chosen; t1 and t4 also have a valid pair (gap >= 1)
# whose chosen reply is the shorter one. Train: 13 pairs, the chosen reply longer in 11.
LENGTHY = {
    "t0": {"aaaaaaaa": 5.0, "bbbb": 3.0, "c": 1.0},  # 3 pairs, all chosen-longer
    "t1": {"aaaaaaaa": 5.0, "b": 4.0, "cccc": 2.0},  # b > cccc: chosen shorter
    "t2": {"aaaaaaaa": 5.0, "b": 3.0},  # its one pair: chosen-longer
    "t3": {"aaaaaaaa": 4.0, "bbbb": 2.0, "cc": 1.0},  # 3 pairs, all chosen-longer
    "t4": {"aaaaaaaa": 5.0, "bb": 4.0, "ccccc": 1.0},  # bb > ccccc: chosen shorter
}


def longer(row: dict) -> bool:
    return len(row["chosen"]) > len(row["rejected"])


def keys(rows: list[dict]) -> set[tuple[str, str]]:
    return {response_ids(r) for r in rows}


@pytest.fixture
def unbalanced(tmp_path):
    rundir = write_run(tmp_path / "run", scores=LENGTHY)
    stats = pairs.run(PairsConfig(test_fraction=0.0), rundir)
    return rundir, stats, read_jsonl(rundir.pairs / "train.jsonl")


def test_card_and_stats_report_how_often_the_chosen_reply_is_longer(unbalanced):
    rundir, stats, train = unbalanced
    assert (len(train), sum(map(longer, train))) == (13, 11)
    assert stats["chosen_longer"] == {
        "train": {"n": 11, "pairs": 13, "share": round(11 / 13, 4)},
        "test": {"n": 0, "pairs": 0, "share": None},
    }
    assert "length_balance" not in stats
    card = (rundir.pairs / "README.md").read_text(encoding="utf-8")
    assert "| train | 13 | 11 | 85% |" in card and "| test | 0 | 0 | - |" in card
    assert "learns length when the chosen reply is nearly always" in card
    assert "`length_balance` is off" in card


def test_length_balance_drops_only_chosen_longer_pairs_and_keeps_every_speech(unbalanced, tmp_path, caplog):
    _, _, before = unbalanced
    rundir = write_run(tmp_path / "balanced", scores=LENGTHY)
    with caplog.at_level("INFO", logger="psychocounsel.pairs"):
        stats = pairs.run(PairsConfig(test_fraction=0.0, length_balance=0.6), rundir)
    train = read_jsonl(rundir.pairs / "train.jsonl")
    # (11 - d) / (13 - d) <= 0.6 first holds at d = 8: 3 of 5, exactly the cap.
    assert (len(train), sum(map(longer, train))) == (5, 3)
    assert stats["train_pairs"] == 5 and stats["chosen_longer"]["train"] == {"n": 3, "pairs": 5, "share": 0.6}
    assert stats["length_balance"] == {"share": 0.6, "before": {"n": 11, "pairs": 13, "share": 0.8462}, "dropped": 8}
    # Both chosen-shorter pairs stay (t1's and t4's alternative to their best pair), every row is an
    # unchanged row of the unbalanced run, in the same order, and no speech lost all its pairs.
    shorter = [r for r in before if not longer(r)]
    assert len(shorter) == 2 and all(r in train for r in shorter)
    assert train == [r for r in before if r in train]
    assert {r["ID"] for r in train} == set(LENGTHY)
    assert keys(train) >= {(rid("t1", "b"), rid("t1", "cccc")), (rid("t4", "bb"), rid("t4", "ccccc"))}
    card = (rundir.pairs / "README.md").read_text(encoding="utf-8")
    assert "| train | 5 | 3 | 60% |" in card
    assert "longer one in 11 of 13 train pairs (85%); 8 of those were dropped" in card
    [message] = [r.getMessage() for r in caplog.records if "length balance 0.6" in r.getMessage()]
    assert message.endswith("chosen longer in 11 of 13 train pairs, 3 of 5 after dropping 8")


def test_length_balance_drops_a_speech_last_pair_only_when_it_must(tmp_path):
    rundir = write_run(tmp_path / "run", scores=LENGTHY)
    stats = pairs.run(PairsConfig(test_fraction=0.0, length_balance=0.55), rundir)
    train = read_jsonl(rundir.pairs / "train.jsonl")
    # d = 9: the 8 pairs whose speech keeps another, then one of t0, t2, t3's last pair.
    assert stats["length_balance"]["dropped"] == 9
    assert (len(train), sum(map(longer, train))) == (4, 2)
    assert {"t1", "t4"} <= {r["ID"] for r in train} and len({r["ID"] for r in train}) == 4


def test_length_balance_at_or_above_the_share_changes_nothing(unbalanced, tmp_path):
    rundir, _, _ = unbalanced
    for cap in (1.0, 0.9):  # 11 of 13 is 0.846: already within both
        other = write_run(tmp_path / f"cap-{cap}", scores=LENGTHY)
        stats = pairs.run(PairsConfig(test_fraction=0.0, length_balance=cap), other)
        assert stats["length_balance"]["dropped"] == 0
        for name in ("train.jsonl", "test.jsonl", "train.parquet", "test.parquet"):
            assert (other.pairs / name).read_bytes() == (rundir.pairs / name).read_bytes()


def test_length_balance_never_touches_the_test_split(tmp_path):
    scores = LENGTHY | {f"u{i}": {"aaaaaaaa": 5.0, "b": 1.0} for i in range(4)}
    plain, capped = write_run(tmp_path / "plain", scores=scores), write_run(tmp_path / "capped", scores=scores)
    a = pairs.run(PairsConfig(test_fraction=0.4, seed=1), plain)
    b = pairs.run(PairsConfig(test_fraction=0.4, seed=1, length_balance=0.6), capped)
    assert a["test_pairs"] > 0 and b["length_balance"]["dropped"] > 0
    assert (capped.pairs / "test.jsonl").read_bytes() == (plain.pairs / "test.jsonl").read_bytes()
    assert a["chosen_longer"]["test"] == b["chosen_longer"]["test"]
    assert b["chosen_longer"]["train"]["share"] <= 0.6


def test_length_balance_that_would_drop_every_pair_is_a_user_error(tmp_path):
    rundir = write_run(tmp_path / "run", scores={"t2": LENGTHY["t2"], "t3": LENGTHY["t3"]})
    cfg = PairsConfig(test_fraction=0.0, length_balance=0.9)
    with pytest.raises(UserError, match="--length-balance 0.9 would drop every train pair") as err:
        pairs.run(cfg, rundir)
    assert "\n" not in str(err.value)
    assert not rundir.pairs.exists()  # nothing written
    stats = pairs.run(cfg, rundir, force=True)
    assert stats["train_pairs"] == 0 and stats["length_balance"]["dropped"] == 4
    assert (rundir.pairs / "train.jsonl").read_text() == ""


def test_length_balance_none_leaves_the_run_as_it_was(tmp_path):
    """length_balance off: the same bytes as a config that never heard of it (the pre-existing default)."""
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    pairs.run(PairsConfig(min_gap=1.0, test_fraction=0.5, seed=7), a)
    pairs.run(PairsConfig(min_gap=1.0, test_fraction=0.5, seed=7, length_balance=None), b)
    for name in ("train.jsonl", "test.jsonl", "train.parquet", "test.parquet"):
        assert (a.pairs / name).read_bytes() == (b.pairs / name).read_bytes()
    assert PairsConfig().length_balance is None


def test_chosen_longer_counts_ties_as_not_longer():
    rows = [{"chosen": "ab", "rejected": "cd"}, {"chosen": "abc", "rejected": "d"}]
    assert chosen_longer(rows) == {"n": 1, "pairs": 2, "share": 0.5}
    assert chosen_longer([]) == {"n": 0, "pairs": 0, "share": None}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=40),
    st.floats(0.5, 1.0, exclude_min=True),
    st.integers(0, 3),
)
def test_balance_length_properties(spec, share, seed):
    rows = [
        {"ID": f"s{sid}", "prefID": f"p{i}", "chosen": "long" if is_longer else "s", "rejected": "mid"}
        for i, (sid, is_longer) in enumerate(spec)
    ]
    kept, dropped = balance_length(rows, share, seed)
    assert (kept, dropped) == balance_length(rows, share, seed)
    assert sorted(kept + dropped, key=lambda r: int(r["prefID"][1:])) == rows
    assert kept == [r for r in rows if r in kept]
    assert all(map(longer, dropped))
    n_longer = sum(map(longer, kept))
    assert n_longer <= share * len(kept) + 1e-9
    if dropped:  # the fewest: one drop fewer would break the cap
        assert n_longer + 1 > share * (len(kept) + 1) + 1e-9
    # Speeches lost: only as many as the drops beyond the rows whose speech keeps another.
    lost = {r["ID"] for r in rows} - {r["ID"] for r in kept}
    by_speech = {sid: [r for r in rows if r["ID"] == sid] for sid in {r["ID"] for r in rows}}
    spare = sum(len(g) - 1 if all(map(longer, g)) else sum(map(longer, g)) for g in by_speech.values())
    assert len(lost) == max(0, len(dropped) - spare)


def test_length_balance_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["pairs", "--help"])
    assert "--length-balance LENGTH_BALANCE" in capsys.readouterr().out
    rundir = write_run(tmp_path / "run", scores=LENGTHY)
    assert (
        cli.main(["pairs", "--run-dir", str(rundir.root), "-q", "--test-fraction", "0", "--length-balance", "0.6"]) == 0
    )
    assert json.loads(rundir.run_json.read_text())["stages"]["pairs"]["length_balance"]["dropped"] == 8
    for bad in ("0.45", "1.5", "nan"):
        assert cli.main(["pairs", "--run-dir", str(rundir.root), "-q", "--length-balance", bad]) == 2
        assert capsys.readouterr().err.startswith("psychocounsel: error:")


# -- streaming (benchmarks/scale.py) ----------------------------------------------------------


def many_speeches(n: int) -> dict[str, dict[str, float]]:
    """n speeches, 3 rated responses each (of 3 lengths), with every kind of gap."""
    return {f"m{i:03d}": {"a": 1.0 + i % 5, "bbb": 1.0 + (i * 3) % 5, "cc": 5.0 - i % 4} for i in range(n)}


@pytest.mark.parametrize("form", ["published", "trl"])
def test_splits_bigger_than_a_row_group_hold_the_rows_of_one(tmp_path, monkeypatch, form):
    from psychocounsel import pairs_io

    cfg = PairsConfig(test_fraction=0.2, length_balance=0.5, format=form)
    one = write_run(tmp_path / "one", scores=many_speeches(60))
    pairs.run(cfg, one)
    monkeypatch.setattr(pairs_io, "ROW_GROUP", 4)
    many = write_run(tmp_path / "many", scores=many_speeches(60))
    stats = pairs.run(cfg, many)
    assert stats["train_pairs"] > 40 and stats["test_pairs"] > 8 and stats["length_balance"]["dropped"] > 0
    for name in ("train", "test"):
        assert pq.ParquetFile(many.pairs / f"{name}.parquet").metadata.num_row_groups > 2
        assert read_split(many, name).to_pylist() == read_split(one, name).to_pylist()
        assert (many.pairs / f"{name}.jsonl").read_bytes() == (one.pairs / f"{name}.jsonl").read_bytes()
    assert (many.pairs / "README.md").read_text() == (one.pairs / "README.md").read_text()


def test_a_small_split_is_byte_for_byte_the_whole_write(built, tmp_path):
    rundir, _, _ = built
    rows = read_split(rundir, "train").to_pylist()
    pairs.write_parquet(tmp_path / "whole.parquet", rows, list(PAPER_KEYS))
    assert (tmp_path / "whole.parquet").read_bytes() == (rundir.pairs / "train.parquet").read_bytes()


def test_a_failure_while_writing_leaves_the_pairs_as_they_were(tmp_path, monkeypatch):
    rundir = write_run(tmp_path / "run", scores=many_speeches(30))
    pairs.run(PairsConfig(), rundir)
    before = {p.name: p.read_bytes() for p in rundir.pairs.iterdir()}
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) > 5:
            raise OSError("disk full")
        return real(*args)

    real = pairs.pair_row
    monkeypatch.setattr(pairs, "pair_row", failing)
    with pytest.raises(OSError, match="disk full"):
        pairs.run(PairsConfig(min_gap=0.5), rundir)
    assert {p.name: p.read_bytes() for p in rundir.pairs.iterdir()} == before  # no .tmp left either


def test_rated_holds_no_text(tmp_path):
    import tracemalloc

    from psychocounsel.rubric import load_rubric

    rundir = write_run(tmp_path / "run", scores=many_speeches(300))
    rows = read_jsonl(rundir.responses)
    for r in rows:
        r["text"] = r["text"] * 500  # ~8 KB a reply, 7 MB in all
    rundir.responses.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tracemalloc.start()
    try:
        rated = pairs.Rated(rundir, load_rubric(), JUDGE)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert rated.n_ratings == 900 and held < 1_000_000  # ~350 bytes a rating; the replies are 7 MB
    group = rated.group("m007", open(rundir.responses, "rb"))
    assert [s.response.text for s in group] == [f"Reply {g} to m007." * 500 for g in ("a", "bbb", "cc")]


def test_run_reads_rows_as_the_run_readers_do(tmp_path):
    rundir = write_run(tmp_path / "run")
    expected = pairs.run(PairsConfig(test_fraction=0.5, seed=7), rundir)
    first = read_jsonl(rundir.ratings)[0]
    # A repeated rating (the first one wins) and a torn last line (a killed rate) change nothing.
    with open(rundir.ratings, "a", encoding="utf-8") as f:
        f.write(json.dumps({**first, "scores": {k: 1.0 for k in PAPER_KEYS}}) + "\n" + '{"response_id": "r-s0')
    assert pairs.run(PairsConfig(test_fraction=0.5, seed=7), rundir) == expected
    with open(rundir.ratings, "a", encoding="utf-8") as f:
        f.write("\n{}\n")
    with pytest.raises(UserError, match=r"ratings.jsonl:\d+: not valid JSON"):
        pairs.run(PairsConfig(), rundir)
