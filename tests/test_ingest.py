"""Tests of the ingest stage. Every fixture is written here, by us; no network."""

from __future__ import annotations

import collections
import csv
import dataclasses
import doctest
import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psychocounsel import cleaning, ingest
from psychocounsel import dedupe as dedupe_module
from psychocounsel.cleaning import normalise_text, scrub_pii
from psychocounsel.config import IngestConfig
from psychocounsel.dedupe import dedupe, jaccard, shingles
from psychocounsel.errors import UserError
from psychocounsel.ingest import run
from psychocounsel.records import Speech
from psychocounsel.store import RunDir, read_jsonl

COUNSEL_CHAT = Path(__file__).resolve().parents[1].parent / "shared/data/counsel-chat/20200325_counsel_chat.csv"
SPEECHES = [
    "I have been feeling low for weeks and I cannot sleep at night.",
    "My partner and I argue about money every single day now.",
    "Work stress is making me snap at my kids and I hate it.",
]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def ingest_file(path: Path, tmp_path: Path, force: bool = False, **kw) -> tuple[dict, list[dict]]:
    """Ingest ``path`` into the run folder tmp_path/out; stats["log"] holds what ingest logged."""
    kw = {"min_chars": 0, "max_chars": 10_000, **kw}
    logger = logging.getLogger(ingest.__name__)
    handler, level = ListHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        stats = run(IngestConfig(input=path, **kw), RunDir(tmp_path / "out"), force=force)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    stats["log"] = handler.messages
    return stats, read_jsonl(tmp_path / "out" / "speeches.jsonl")


VOCAB = [w + str(i) for w in ("alpha", "bravo", "charlie", "delta", "echo", "fox", "golf") for i in range(100)]


def words(n: int, seed: int) -> list[str]:
    """n words drawn from 700, the same for the same seed."""
    return random.Random(seed).choices(VOCAB, k=n)


@pytest.mark.parametrize("module", [ingest, cleaning, dedupe_module])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted >= 2 and result.failed == 0


# ---------------------------------------------------------------- formats


def test_csv_round_trip_with_multiline_fields_and_index_column(tmp_path):
    path = tmp_path / "data.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "id", "text", "topic"])  # pandas' to_csv() writes an unnamed index
        w.writerow([0, "a1", 'First line,\nsecond line with a "quote".\n\n\n\nFourth.', "depression"])
        w.writerow([1, "a2", SPEECHES[1], ""])
    stats, rows = ingest_file(path, tmp_path, id_column="id", topic_column="topic")
    assert stats["items_in"] == 2 and stats["items_out"] == 2
    assert rows[0] == {
        "id": "a1",
        "text": 'First line,\nsecond line with a "quote".\n\nFourth.',
        "topic": "depression",
        "context": [],
        "source": "data.csv",
    }
    assert rows[1]["topic"] is None


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "data.ndjson"
    path.write_text("\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(SPEECHES)) + "\n\n")
    stats, rows = ingest_file(path, tmp_path, id_column="n")
    assert [r["text"] for r in rows] == SPEECHES
    assert [r["id"] for r in rows] == ["0", "1", "2"]


def test_speech_to_dict_is_asdict_with_its_turns_copied():
    import dataclasses

    from psychocounsel.records import Speech

    speech = Speech("s1", "text", "grief", [{"role": "client", "content": "earlier"}], "file.csv")
    row = speech.to_dict()
    assert row == dataclasses.asdict(speech) and list(row) == [f.name for f in dataclasses.fields(Speech)]
    row["context"][0]["content"] = "changed"
    assert speech.context[0]["content"] == "earlier"


def test_run_files_keep_unicode_line_breaks_inside_a_row(tmp_path):
    # json.dumps(ensure_ascii=False) escapes C0 controls (CR, VT, FF...) but writes U+2028, U+2029
    # and U+0085 raw inside a string; a model's reply may hold any of them, and reading the run
    # file back must not split the row at them.
    from psychocounsel.store import append_jsonl

    texts = ["a\u2028b", "c\x85d", "e\x0bf\x0cg", "h\ri", "j\u2029k\x1cl"]
    path = tmp_path / "responses.jsonl"
    append_jsonl(path, [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    with open(path, "ab") as f:
        f.write(b'{"id": "torn", "te')  # a killed writer's torn last line is still ignored
    assert [r["text"] for r in read_jsonl(path)] == texts
    append_jsonl(path, [{"id": "5", "text": "m"}])
    assert [r["id"] for r in read_jsonl(path)] == ["0", "1", "2", "3", "4", "5"]


@pytest.mark.parametrize("wrap", [lambda items: items, lambda items: {"data": items}])
def test_json_round_trip(tmp_path, wrap):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(wrap([{"body": t} for t in SPEECHES])))
    stats, rows = ingest_file(path, tmp_path, text_column="body")
    assert [r["text"] for r in rows] == SPEECHES


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    context = [[{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello, go on."}], [], None]
    pq.write_table(pa.table({"text": SPEECHES, "id": [7, 8, 9], "ctx": context}), path)
    stats, rows = ingest_file(path, tmp_path, id_column="id", context_column="ctx")
    assert [r["text"] for r in rows] == SPEECHES and [r["id"] for r in rows] == ["7", "8", "9"]
    assert rows[0]["context"] == [
        {"role": "client", "content": "Hi."},
        {"role": "counselor", "content": "Hello, go on."},
    ]
    assert rows[1]["context"] == rows[2]["context"] == []


def test_txt_round_trip(tmp_path):
    path = tmp_path / "speeches.txt"
    path.write_text(f"\n\n{SPEECHES[0]}\nstill the first.\r\n \r\n{SPEECHES[1]}\n\n\n\n{SPEECHES[2]}\n")
    stats, rows = ingest_file(path, tmp_path)
    assert [r["text"] for r in rows] == [SPEECHES[0] + "\nstill the first.", SPEECHES[1], SPEECHES[2]]
    assert stats["items_in"] == 3


def test_explicit_format_overrides_extension(tmp_path):
    path = tmp_path / "data.dat"
    path.write_text(json.dumps({"text": SPEECHES[0]}) + "\n")
    assert ingest_file(path, tmp_path, format="jsonl")[0]["items_out"] == 1


# ---------------------------------------------------------------- context


def test_context_column_as_json_string(tmp_path):
    path = tmp_path / "data.csv"
    turns = [{"role": "client", "content": "I  feel stuck."}, {"role": "counselor", "content": "Stuck how?"}]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "history"], [SPEECHES[0], json.dumps(turns)], [SPEECHES[0], ""]])
    stats, rows = ingest_file(path, tmp_path, context_column="history")
    # Same text, different context: two different speeches, with different ids.
    assert stats["items_out"] == 2 and rows[0]["id"] != rows[1]["id"]
    assert rows[0]["context"][0] == {"role": "client", "content": "I feel stuck."}
    assert rows[1]["context"] == []


@pytest.mark.parametrize(
    "cell, message",
    [
        ("[{not json", "context is not valid JSON"),
        ('{"role": "client"}', "context must be a list"),
        (
            '[{"role": "therapist", "content": "x"}]',
            "context turn 1 needs a role in client, counselor, user, assistant",
        ),
    ],
)
def test_bad_context_is_a_user_error(tmp_path, cell, message):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": SPEECHES[0], "ctx": cell}) + "\n")
    with pytest.raises(UserError, match="record 1: " + message):
        ingest_file(path, tmp_path, context_column="ctx")


# ---------------------------------------------------------------- filters


def test_filters_and_their_counts(tmp_path):
    path = tmp_path / "data.jsonl"
    long_text = "word " * 300
    records = [
        {"text": SPEECHES[0]},
        {"text": ""},
        {"text": "  \u200b "},
        {"other": 1},
        {"text": None},
        {"text": "too short"},
        {"text": long_text},
        {"text": SPEECHES[0].upper()},
        {"text": SPEECHES[1]},
        {"text": SPEECHES[2]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records))
    stats, rows = ingest_file(path, tmp_path, min_chars=20, max_chars=1000, limit=2)
    assert stats["items_in"] == 10 and stats["items_out"] == 2 and stats["failed"] == 0
    assert stats["dropped"] == {"empty": 4, "too_short": 1, "too_long": 1, "exact_duplicate": 1, "near_duplicate": 0}
    assert stats["over_limit"] == 1
    assert [r["text"] for r in rows] == SPEECHES[:2]
    log = "\n".join(stats["log"])
    for reason in (
        "empty: dropped 4",
        "too_short (< 20 chars): dropped 1",
        "too_long (> 1000 chars): dropped 1",
        "exact_duplicate: dropped 1",
        "near_duplicate",
        "limit 2: dropped 1",
        "wrote 2 speeches",
    ):
        assert reason in log
    assert not any(word in log for word in ("feeling", "money", "FEELING"))  # no speech text in logs


def test_length_is_measured_after_normalising(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("a   b \u200b\u200b c")  # 5 characters once normalised
    assert ingest_file(path, tmp_path, min_chars=5, max_chars=5)[0]["items_out"] == 1
    with pytest.raises(UserError, match=r"no speech is left after filtering \(1 too short\); nothing written"):
        ingest_file(path, tmp_path, min_chars=6)
    assert ingest_file(path, tmp_path, force=True, min_chars=6)[0]["dropped"]["too_short"] == 1


# ---------------------------------------------------------------- deduplication

FORTY = (
    "lately i have been waking up at four in the morning with my heart racing and i cannot get back "
    "to sleep because i keep going over everything i said at work the day before and wondering if "
    "people think"
).split()


def test_near_duplicate_one_word_changed_is_dropped_at_09(tmp_path):
    assert len(FORTY) == 40
    changed = FORTY[:-1] + ["believe"]
    # 38 shingles each; changing the last word changes 1 of them: Jaccard 37/39 = 0.95.
    assert jaccard(shingles(" ".join(FORTY)), shingles(" ".join(changed))) == pytest.approx(37 / 39)
    unrelated = " ".join(words(40, seed=1))
    path = tmp_path / "data.txt"
    path.write_text("\n\n".join([" ".join(FORTY), " ".join(changed), unrelated]))
    stats, rows = ingest_file(path, tmp_path, near_duplicate_threshold=0.9)
    assert stats["dropped"]["near_duplicate"] == 1
    assert [r["text"] for r in rows] == [" ".join(FORTY), unrelated]  # first occurrence wins
    assert ingest_file(path, tmp_path, near_duplicate_threshold=1.0)[0]["items_out"] == 3


def test_a_word_changed_mid_text_changes_three_shingles():
    # A word in the middle sits in 3 shingles: Jaccard (38-3)/(38+3) = 0.854 for 40 words, so at
    # 0.9 such a pair is kept; a 3-shingle measure needs ~60 words to call it a near duplicate.
    changed = FORTY[:20] + ["elephant"] + FORTY[21:]
    docs = [" ".join(FORTY), " ".join(changed)]
    assert jaccard(shingles(docs[0]), shingles(docs[1])) == pytest.approx(35 / 41)
    assert dedupe(docs, 0.9) == [None, None]
    assert dedupe(docs, 0.85) == [None, "near_duplicate"]


def test_dedupe_matches_brute_force():
    rng = random.Random(0)
    docs = []
    for i in range(300):
        if docs and rng.random() < 0.4:  # an edited copy of an earlier doc
            w = rng.choice(docs).split()
            for _ in range(rng.randrange(4)):
                w[rng.randrange(len(w))] = rng.choice(["x", "y", "z"])
            docs.append(" ".join(w + ["extra"] * rng.randrange(2)))
        else:
            docs.append(" ".join(words(rng.randrange(3, 60), seed=i)))
    for threshold in (0.5, 0.7, 0.9):
        kept: list[set] = []
        expected = []
        for i, d in enumerate(docs):
            if d.casefold() in {x.casefold() for x in docs[:i]}:
                expected.append("exact_duplicate")
            elif any(jaccard(shingles(d), k) >= threshold for k in kept):
                expected.append("near_duplicate")
            else:
                expected.append(None)
                kept.append(shingles(d))
        assert dedupe(docs, threshold) == expected


def test_dedupe_30k_speeches_in_seconds(monkeypatch):
    rng = random.Random(0)
    common = "i do not know what to do and i feel like".split()  # shared by every doc
    docs = [" ".join(common + words(rng.randrange(20, 120), seed=i)) for i in range(30_000)]
    docs += [d + " again" for d in docs[:1000]]
    # Not a wall-clock bound (flaky on a loaded machine): count the exact Jaccard checks instead.
    # The prefix index makes about one per near duplicate here; an all-pairs scan makes ~10^8.
    checks = []
    real = dedupe_module.jaccard
    monkeypatch.setattr(dedupe_module, "jaccard", lambda a, b: checks.append(1) or real(a, b))
    verdicts = dedupe(docs, 0.9)
    assert verdicts.count("near_duplicate") >= 1000
    assert len(checks) < 5 * len(docs)


# ---------------------------------------------------------------- normalising and PII


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("caf\u0065\u0301 \uff11\uff12", "caf\u00e9 12"),
        ("a\u200b\u200c\u200d\ufeffb\x00\x1b", "ab"),
        ("one\t\t two  \u00a0three", "one two three"),
        ("  x  \n\n\n\n  y  \n", "x\n\ny"),
        ("line\r\nbreak\u2028sep", "line\nbreak\nsep"),
    ],
)
def test_normalise_cases(raw, clean):
    assert normalise_text(raw) == clean


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
    | st.text(alphabet=" \t\n\r\u200b\u200d\u00a0\u0301\u00a8e\uff21x", max_size=40)
)
def test_normalise_is_idempotent(text):
    once = normalise_text(text)
    assert normalise_text(once) == once
    assert "\n\n\n" not in once and "  " not in once and once == once.strip()


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("write to me at sam_o'neil@example.co.uk.", "write to me at [EMAIL]."),
        ("My number is +1 (555) 010-9999 or 555.010.9999", "My number is [PHONE] or [PHONE]"),
        ("text 07700 900123, 06 12 34 56 78 or +447700900123", "text [PHONE], [PHONE] or [PHONE]"),
        ("born 01 02 1990, on 01.02.2019, 3 kids, 5551234567", "born 01 02 1990, on 01.02.2019, 3 kids, [PHONE]"),
        ("see http://x.org/path, or WWW.example.com/page)", "see [URL], or [URL])"),
        ("dm @therapy.fan.", "dm [HANDLE]."),
        (
            "I am 34 and have been married since 2019, 12 years after 2007.",
            "I am 34 and have been married since 2019, 12 years after 2007.",
        ),
        (
            "I earned 120,000 in 2018-2019 and lost 15 lbs in 3.5 months",
            "I earned 120,000 in 2018-2019 and lost 15 lbs in 3.5 months",
        ),
    ],
)
def test_scrub_pii_cases(raw, clean):
    assert scrub_pii(raw) == clean


def test_scrub_pii_in_run_and_context(tmp_path):
    path = tmp_path / "data.jsonl"
    ctx = [{"role": "user", "content": "I'm jo@example.com"}]
    path.write_text(json.dumps({"text": "Call me on 555-123-4567 please, I am 34.", "ctx": ctx}))
    rows = ingest_file(path, tmp_path, scrub_pii=True, context_column="ctx")[1]
    assert rows[0]["text"] == "Call me on [PHONE] please, I am 34."
    assert rows[0]["context"][0]["content"] == "I'm [EMAIL]"


# ---------------------------------------------------------------- ids


def test_ids_are_stable_and_content_based(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("\n\n".join(SPEECHES))
    first = [r["id"] for r in ingest_file(path, tmp_path)[1]]
    assert first == [r["id"] for r in ingest_file(path, tmp_path)[1]]
    assert all(i.startswith("s-") and len(i) == 14 for i in first) and len(set(first)) == 3
    path.write_text("\n\n".join(["  " + SPEECHES[0] + "\u200b"] + SPEECHES[1:]))  # same once normalised
    assert first == [r["id"] for r in ingest_file(path, tmp_path)[1]]


def test_reused_ids_are_made_unique(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"id": 5, "text": t}) for t in SPEECHES))
    stats, rows = ingest_file(path, tmp_path, id_column="id")
    assert [r["id"] for r in rows] == ["5", "5-2", "5-3"] and stats["ids_made_unique"] == 2


def test_each_line_written_is_the_json_of_its_row(tmp_path):
    # A kept row is copied from the spool as it was dumped there, a renamed one is dumped anew:
    # either way one json.dumps(row, ensure_ascii=False) a line, the keys in Speech's order.
    texts = ["Je suis épuisé, vraiment épuisé ce soir", "I can't sleep \u2014 again \U0001f614", "日本語で話します"]
    path = tmp_path / "data.jsonl"
    path.write_text(
        "\n".join(json.dumps({"id": "a", "text": t, "ctx": '[{"role": "client", "content": "ça"}]'}) for t in texts)
    )
    stats, rows = ingest_file(path, tmp_path, id_column="id", context_column="ctx")
    assert [r["id"] for r in rows] == ["a", "a-2", "a-3"] and rows[0]["context"][0]["content"] == "ça"
    assert list(rows[0]) == [f.name for f in dataclasses.fields(Speech)]
    written = (tmp_path / "out/speeches.jsonl").read_text(encoding="utf-8")
    assert written == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ---------------------------------------------------------------- user errors


def test_missing_text_column_lists_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(UserError) as e:
        ingest_file(path, tmp_path)
    assert str(e.value) == "data.csv has no column 'text'; its columns are: a, b, c (use --text-column)"
    with pytest.raises(UserError, match=r"no column 'topic'.*\(use --topic-column\)"):
        ingest_file(path, tmp_path, text_column="a", topic_column="topic")


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="no input file configured"):
        run(IngestConfig(), RunDir(tmp_path / "out"))
    with pytest.raises(UserError, match=f"input file not found: {tmp_path / 'nope.csv'}"):
        ingest_file(tmp_path / "nope.csv", tmp_path)
    with pytest.raises(UserError, match="is a directory, not a file"):
        ingest_file(tmp_path, tmp_path)
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(UserError) as e:
        ingest_file(tmp_path / "data.xlsx", tmp_path)
    assert str(e.value) == (
        f"unknown format '.xlsx' for {tmp_path / 'data.xlsx'}; use --format csv|jsonl|json|parquet|txt"
    )
    for name, content in [("empty.csv", b""), ("blank.jsonl", b"\n \n"), ("empty.parquet", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=f"{name} is empty$"):
            ingest_file(tmp_path / name, tmp_path)


def test_non_utf8_names_byte_and_offset(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError) as e:
        ingest_file(path, tmp_path)
    assert str(e.value) == f"{path} is not valid UTF-8 (byte 0xe9 at offset 8); re-encode it as UTF-8"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"text": "a"}\n\n{"text": oops}\n', "bad.jsonl line 3: not valid JSON"),
        ("list.jsonl", '{"text": "a"}\n[1]\n', "list.jsonl line 2: expected a JSON object"),
        ("bad.json", '[{"text": "a"},', r"bad.json: not valid JSON \(line 1 column"),
        ("scalar.json", '{"rows": []}', r'scalar.json: expected a list of objects or \{"data": \[...\]\}'),
        ("bad.parquet", "not parquet at all", "bad.parquet is not a readable Parquet file"),
        ("header.csv", "text,topic\n", "header.csv has no records"),
        ("nothing.json", '{"data": []}', "nothing.json has no records"),
    ],
)
def test_malformed_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        ingest_file(tmp_path / name, tmp_path)


def test_no_traceback_chain(tmp_path):
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(UserError) as e:
        ingest_file(tmp_path / "bad.jsonl", tmp_path)
    assert e.value.__cause__ is None and e.value.__suppress_context__ and "\n" not in str(e.value)


# ---------------------------------------------------------------- real data


def test_counsel_chat(tmp_path):
    if not COUNSEL_CHAT.is_file():
        pytest.skip(f"CounselChat CSV not found at {COUNSEL_CHAT} (the shared data folder is not checked out)")
    stats, rows = ingest_file(
        COUNSEL_CHAT,
        tmp_path,
        text_column="questionText",
        id_column="questionID",
        topic_column="topic",
        max_chars=100_000,
        near_duplicate_threshold=1.0,
    )
    # 2,129 rows = one per answer; the question text repeats once per answer. There are 815
    # questionID values but 824 distinct question texts: this export reuses ids 1-20 for two
    # different questions each, and gives 9 texts two ids each (e.g. the same question as 1 and
    # 12). So exact-text dedupe keeps 824 speeches; 9 of them get a -2 suffix on an id already
    # used, and their ids without that suffix are exactly the 815 questionIDs.
    assert stats["items_in"] == 2129
    assert stats["items_out"] == len(rows) == 824
    assert stats["dropped"] == {"empty": 0, "too_short": 0, "too_long": 0, "exact_duplicate": 1305, "near_duplicate": 0}
    assert stats["ids_made_unique"] == 9 and len({r["id"] for r in rows}) == 824
    assert len({r["id"].split("-")[0] for r in rows}) == 815
    assert len({r["text"].casefold() for r in rows}) == 824
    assert {r["source"] for r in rows} == {COUNSEL_CHAT.name} and all(r["topic"] for r in rows)
    assert "\n" in rows[0]["text"] and "   " not in rows[0]["text"]  # multi-line quoted, normalised


# ---------------------------------------------------------------- streaming (benchmarks/scale.py)


def speech_rows(n: int, seed: int = 0) -> list[list[str]]:
    """n CSV rows [id, text]: with exact (recased) and near duplicates and rows too short."""
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(n):
        if texts and rng.random() < 0.1:
            texts.append(rng.choice(texts).upper())
        elif texts and rng.random() < 0.1:
            texts.append(rng.choice(texts) + " again")
        else:
            texts.append(" ".join(words(rng.randrange(2, 60), seed=1000 + i)))
    return [[f"q{i % (n // 3)}", t] for i, t in enumerate(texts)]  # ids reused: made unique


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_streamed_input_bigger_than_a_batch_gives_what_one_batch_gives(tmp_path, monkeypatch, fmt):
    rows = speech_rows(400)
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["id", "text"], *rows])
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), path)
    kw = {"id_column": "id", "min_chars": 20, "near_duplicate_threshold": 0.8, "limit": 300}
    whole = ingest_file(path, tmp_path / "whole", **kw)
    whole_bytes = (tmp_path / "whole/out/speeches.jsonl").read_bytes()
    monkeypatch.setattr(ingest, "BATCH", 7)  # 58 batches of rows judged, 58 Parquet batches read
    streamed = ingest_file(path, tmp_path / "streamed", **kw)
    assert (tmp_path / "streamed/out/speeches.jsonl").read_bytes() == whole_bytes
    assert [p.name for p in (tmp_path / "streamed/out").iterdir()] == ["speeches.jsonl"]  # spools removed
    stats = whole[0]
    assert {**streamed[0], "log": None} == {**stats, "log": None}  # the log names the run folder
    assert min(stats["dropped"][k] for k in ("too_short", "exact_duplicate", "near_duplicate")) >= 5
    assert stats["ids_made_unique"] > 10 and stats["over_limit"] > 0
    kept = [r["text"] for r in whole[1]]
    # The streamed verdicts are the list function's, which test_dedupe_matches_brute_force checks.
    survivors = [t for _, t in rows if len(normalise_text(t)) >= 20]
    verdicts = dedupe(survivors, 0.8)
    assert kept == [t for t, v in zip(survivors, verdicts) if v is None][:300]


def test_dedupe_is_exact_even_when_the_shingle_filters_are_tiny(monkeypatch):
    # Filters sized for one shingle call nearly every shingle shared: more candidates are
    # checked, the verdicts do not change (a shingle in two documents is never called unique).
    rng = random.Random(3)
    docs = [" ".join(words(rng.randrange(3, 50), seed=i)) for i in range(200)]
    docs += [d + " more" for d in docs[:60]] + [" ".join(d.split()[1:]) for d in docs[60:120]]
    rng.shuffle(docs)
    expected = dedupe(docs, 0.85)
    assert expected.count("near_duplicate") >= 60
    counts = dedupe_module.ShingleCounts(1)
    assert counts.once.nbytes == 2**16 // 8
    for d in docs:
        counts.add(dedupe_module.shingle_hashes(d))
    assert dedupe_module.NearDuplicates(0.85, counts).judge(docs) == expected


def test_shingle_counts_memory_is_capped():
    counts = dedupe_module.ShingleCounts(10**12)  # a petabyte of text: the filters stop growing
    total = counts.once.nbytes + counts.twice.nbytes + counts.counts.nbytes
    assert total == 2**29 // 8 + 2**27 // 8 + 4 * 2**22 == 96 * 2**20


def test_shingle_hashes_are_the_shingles():
    for text in ["I feel  so TIRED, always", "Help me", "", "one two three one two three"]:
        assert len(dedupe_module.shingle_hashes(text)) == len(shingles(text))


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(max_codepoint=127), max_size=40) | st.text(max_size=20))
def test_words_are_the_regex_words_of_the_casefolded_text(text):
    # ASCII takes a translate-and-split path; it must give exactly what \w+ finds.
    assert dedupe_module.words(text) == re.findall(r"\w+", text.casefold())


def test_shingle_counts_mark_every_shingle_in_two_documents_shared():
    rng = random.Random(5)
    docs = [" ".join(rng.choices(VOCAB[:12], k=rng.randrange(3, 30))) for _ in range(300)]
    sets = [dedupe_module.shingle_hashes(d) for d in docs]
    counts = dedupe_module.ShingleCounts(500)  # small filters: many bytes hold several bits
    for i, s in enumerate(sets):
        counts.add(s)
        if i % 50 == 49:
            counts._flush()  # as a long input does: shared within a batch and across batches
    seen = collections.Counter(h for s in sets for h in s)
    assert sum(n > 1 for n in seen.values()) > 500
    flat = np.array(list(seen), dtype=np.int64)
    shared, estimate = counts.rank(flat)
    for h, is_shared, est in zip(flat.tolist(), shared.tolist(), estimate.tolist()):
        assert is_shared or seen[h] == 1
        assert est >= seen[h]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab,"\r\n ', max_size=30))
def test_csv_lines_split_as_reading_the_whole_text_did(text):
    import io

    whole = list(io.StringIO(text, newline=""))
    streamed = [piece for line in io.BytesIO(text.encode()) for piece in ingest._split_cr(line.decode()) if piece]
    assert streamed == whole


@pytest.mark.parametrize(
    "name, content, message",
    [
        # A problem of an earlier kind wins wherever it is in the file, as when it was read whole.
        ("late.csv", "a,b\n1,2\n3,\udcff\n", r"late.csv is not valid UTF-8 \(byte 0xff at offset 10\)"),
        ("late.jsonl", '{"text": "a"}\n[1]\n{"text": "b"}\n{oops\n', "late.jsonl line 4: not valid JSON"),
        ("badrow.jsonl", '{"text": "a", "ctx": "[{"}\n[2]\n', "badrow.jsonl line 2: expected a JSON object"),
    ],
)
def test_first_kind_of_problem_is_reported_wherever_it_is(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(UserError, match=message):
        ingest_file(tmp_path / name, tmp_path, context_column="ctx" if "badrow" in name else None)


def test_bad_utf8_far_into_a_file_names_its_offset(tmp_path):
    path = tmp_path / "late.jsonl"
    head = "".join(json.dumps({"text": f"speech number {i}"}) + "\n" for i in range(5000))
    path.write_bytes(head.encode() + b'{"oops\n' + b'{"text": "caf\xe9"}\n')
    with pytest.raises(UserError) as e:
        ingest_file(path, tmp_path)  # bad UTF-8 outranks the bad JSON line before it
    assert str(e.value) == f"{path} is not valid UTF-8 (byte 0xe9 at offset {len(head) + 20}); re-encode it as UTF-8"


def test_a_failed_ingest_leaves_the_run_folder_as_it_was(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": SPEECHES[0]}) + "\n")
    ingest_file(good, tmp_path)
    before = (tmp_path / "out/speeches.jsonl").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": t}) + "\n" for t in SPEECHES) + json.dumps({"text": 1, "ctx": "["}))
    with pytest.raises(UserError, match="record 4: context is not valid JSON"):
        ingest_file(bad, tmp_path, context_column="ctx")
    with pytest.raises(UserError, match="no speech is left"):
        ingest_file(bad, tmp_path, min_chars=5000)  # every row is read and spooled, then refused
    assert (tmp_path / "out/speeches.jsonl").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["speeches.jsonl"]  # no spool, no .tmp


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=60)
    | st.text(alphabet=" \t\n\r\x0b\x0c\x1c\x1fa.", max_size=30)  # ASCII's spaces and breaks, dense
)
def test_ascii_fast_path_is_the_unicode_path(text):
    assert cleaning._ascii_visible(text) == cleaning._unicode_visible(text)
    assert cleaning._visible_single_spaced(text) == cleaning._SPACES.sub(" ", cleaning._unicode_visible(text))


def test_invisible_characters_are_every_cc_and_cf_but_newline_and_tab():
    import sys
    import unicodedata

    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    kept = "".join(c for c in every if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf"))
    assert cleaning._strip_invisible(every) == kept
    assert cleaning._strip_invisible("a\u200bb\u2066c\x00d\n\te\U000e0001") == "abcd\n\te"
