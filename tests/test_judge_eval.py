"""Tests of judge_eval: loading human-labelled pairs and the agreement report, with test-double
judges (an always-"A" judge, a perfect one, a failing one, one that picks the longer reply).
Every text here is written by us."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psychocounsel.errors import UserError
from psychocounsel.evaluate.judge_eval import assign_positions, evaluate_judge, length_warning, load_labelled_pairs
from psychocounsel.judge.pairwise import Verdict

N = 20
FORM_A = [
    {"question": f"I feel lost, day {i}.", "chosen": f"GOOD {i}: tell me more.", "rejected": f"BAD {i}: cheer up."}
    for i in range(N)
]


def write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


class AlwaysA:
    name = "always-a"

    def compare(self, items):
        return [Verdict("A") for _ in items]


class Perfect:
    """Prefers the response starting GOOD; two responses of the same kind are a tie."""

    name = "perfect"

    def __init__(self):
        self.seen = []

    def compare(self, items):
        self.seen.extend(items)
        rank = lambda text: text.startswith("GOOD")  # noqa: E731
        return [Verdict("A" if rank(it.a) > rank(it.b) else "B" if rank(it.b) > rank(it.a) else "tie") for it in items]


class FailsOn(Perfect):
    """A perfect judge that fails whenever the speech mentions ``word``, in the swapped order only."""

    name = "flaky"

    def __init__(self, word):
        super().__init__()
        self.word = word

    def compare(self, items):
        verdicts = super().compare(items)
        return [
            Verdict.failure("no JSON object found", "junk")
            if self.word in it.speech.text and it.id.endswith(":ba")
            else v
            for it, v in zip(items, verdicts)
        ]


class Longer:
    """Picks the longer reply in characters; equal length is a tie."""

    name = "longer"

    def compare(self, items):
        return [Verdict("A" if len(it.a) > len(it.b) else "B" if len(it.b) > len(it.a) else "tie") for it in items]


def sized(label, good, bad, i):
    """A form (b) row whose GOOD reply (preferred, in position ``label``) has ``good`` characters
    and whose BAD reply has ``bad``."""
    good_text, bad_text = "GOOD" + "." * (good - 4), "BAD" + "." * (bad - 3)
    a, b = (good_text, bad_text) if label == "A" else (bad_text, good_text)
    return {"prompt": f"q{i}", "response_a": a, "response_b": b, "label": label}


# The preferred reply is longer by 10 (rows 1-2), shorter by 10 (rows 3-4), of equal length (5-6):
# chars(A) - chars(B) takes three values only, one per verdict of the longer-wins rule.
BY_LENGTH = [
    sized("A", 30, 20, 1),
    sized("B", 30, 20, 2),
    sized("A", 20, 30, 3),
    sized("B", 20, 30, 4),
    sized("A", 25, 25, 5),
    sized("B", 25, 25, 6),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_load_form_a_from_every_format(tmp_path, suffix):
    rows = load_labelled_pairs(write(tmp_path / f"pairs{suffix}", FORM_A))
    assert rows[3] == {
        "prompt": "I feel lost, day 3.",
        "chosen": "GOOD 3: tell me more.",
        "rejected": "BAD 3: cheer up.",
    }
    assert len(rows) == N


def test_form_a_puts_chosen_first_in_a_seeded_half():
    placed = assign_positions(
        [{"prompt": r["question"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in FORM_A], seed=3
    )
    assert [p["label"] for p in placed].count("A") == N // 2
    for p in placed:
        good = p["response_a"] if p["label"] == "A" else p["response_b"]
        assert good.startswith("GOOD")
    assert placed != assign_positions(
        [{"prompt": r["question"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in FORM_A], seed=4
    )


def test_always_a_judge_is_never_position_consistent_and_only_ties(tmp_path):
    report = evaluate_judge(AlwaysA(), load_labelled_pairs(write(tmp_path / "p.jsonl", FORM_A)))
    assert report["position_consistency"] == 0.0
    assert report["verdicts"] == {"A": 0, "B": 0, "tie": N}
    assert report["accuracy_strict"] == 0.0
    assert report["accuracy"] == 0.5  # no human ties: a tie counts half
    assert report["cohen_kappa"] == 0.0
    assert report["n"] == N and report["failed"] == 0 and report["judge"] == "always-a"


def test_perfect_judge_scores_one_and_sees_both_orders(tmp_path):
    judge = Perfect()
    report = evaluate_judge(judge, load_labelled_pairs(write(tmp_path / "p.csv", FORM_A)), seed=1)
    assert report["accuracy"] == report["accuracy_strict"] == 1.0
    assert report["cohen_kappa"] == 1.0 and report["position_consistency"] == 1.0
    assert report["accuracy_ci"] == [1.0, 1.0]
    assert report["verdicts"]["A"] == N // 2 and report["verdicts"]["B"] == N // 2
    assert len(judge.seen) == 2 * N
    ids = {it.id for it in judge.seen}
    assert "row-1:ab" in ids and "row-1:ab:ba" in ids
    assert all(it.speech.text.startswith("I feel lost") for it in judge.seen)


FORM_B = [
    {"prompt": "q1", "response_a": "GOOD one", "response_b": "BAD one", "label": "A"},
    {"prompt": "q2", "response_a": "BAD two", "response_b": "GOOD two", "label": "b"},
    {"prompt": "q3", "response_a": "GOOD three", "response_b": "GOOD 3", "label": "Tie"},
    {"prompt": "q4", "response_a": "BAD four", "response_b": "BAD 4", "label": " TIE "},
]


def test_form_b_with_ties(tmp_path):
    rows = load_labelled_pairs(write(tmp_path / "b.parquet", FORM_B))
    assert [r["label"] for r in rows] == ["A", "B", "tie", "tie"]
    perfect = evaluate_judge(Perfect(), rows)
    assert perfect["accuracy"] == perfect["accuracy_strict"] == 1.0 and perfect["cohen_kappa"] == 1.0
    assert perfect["verdicts"] == {"A": 1, "B": 1, "tie": 2}
    biased = evaluate_judge(AlwaysA(), rows)
    # The data has human ties, so a judge tie earns no half credit: right on the two ties only.
    assert biased["accuracy"] == biased["accuracy_strict"] == 0.5


def test_failed_pairs_are_listed_and_left_out(tmp_path):
    rows = load_labelled_pairs(write(tmp_path / "p.jsonl", FORM_A))
    report = evaluate_judge(FailsOn("day 7."), rows)
    assert report["failed"] == 1 and report["n"] == N - 1
    assert report["failures"] == [{"row": 8, "reason": "B/A: no JSON object found"}]
    assert report["accuracy"] == 1.0

    everything = evaluate_judge(FailsOn("I feel lost"), rows)
    assert everything["n"] == 0 and everything["failed"] == N and everything["accuracy"] is None


def test_a_judge_that_picks_the_longer_reply_is_the_longer_wins_baseline(tmp_path):
    rows = load_labelled_pairs(write(tmp_path / "len.jsonl", BY_LENGTH))
    report = evaluate_judge(Longer(), rows)
    # right on rows 1-2, wrong on 3-4, a tie (half) on 5-6: 3 of 6, exactly the baseline
    assert report["accuracy"] == report["longer_wins"] == 0.5
    assert report["beats_longer_wins"] is False
    assert report["length_spearman"] == pytest.approx(1.0)
    assert report["length_robust"]["n"] == 4  # rows 3-6: the preferred reply is not longer
    assert report["length_robust"]["accuracy"] == 0.25  # wrong on 3-4, ties on 5-6
    assert length_warning(report) == 'warning: judge longer does not beat "longer wins" (0.50 vs 0.50) on these pairs'


def test_a_judge_that_follows_the_humans_is_length_robust(tmp_path):
    rows = load_labelled_pairs(write(tmp_path / "len.jsonl", BY_LENGTH))
    report = evaluate_judge(Perfect(), rows)
    assert report["accuracy"] == 1.0 and report["longer_wins"] == 0.5 and report["beats_longer_wins"] is True
    assert report["length_robust"] == {"n": 4, "accuracy": 1.0, "accuracy_ci": [1.0, 1.0]}
    assert report["length_spearman"] == pytest.approx(0.0)  # verdicts +1 -1 +1 -1 +1 -1, diffs 10 -10 -10 10 0 0
    assert length_warning(report) is None


def test_length_robust_leaves_out_human_ties_and_longer_preferred_replies(tmp_path):
    rows = load_labelled_pairs(write(tmp_path / "b.jsonl", FORM_B))
    report = evaluate_judge(Perfect(), rows)
    # rows 1-2 prefer the longer reply ("GOOD one" 8 chars vs "BAD one" 7); rows 3-4 are human ties
    assert report["length_robust"] == {"n": 0, "accuracy": None, "accuracy_ci": None}
    # human ties: a tie is a label, so the baseline's equal-length tie gets no half credit
    assert report["longer_wins"] == 0.5 and report["beats_longer_wins"] is True
    always_a = evaluate_judge(AlwaysA(), rows)
    assert always_a["length_spearman"] is None  # a constant verdict (all ties) has no rank correlation


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"question": "q", "chosen": "x"}], "lacks column(s) rejected; columns present: question, chosen"),
        ([{"chosen": "x", "rejected": "y"}], "lacks column(s) question (or prompt)"),
        ([{"prompt": "q", "response_a": "x", "response_b": "y"}], "lacks column(s) label; columns present: prompt"),
        ([{"response_a": "x", "label": "A"}], "lacks column(s) response_b, question (or prompt)"),
        (
            [{"prompt": "q", "response_a": "x", "response_b": "y", "label": "first"}],
            "row 1 label 'first' is not A, B or tie",
        ),
        ([{"prompt": "q", "response_a": "", "response_b": "y", "label": "A"}], "row 1 'response_a' is empty"),
    ],
)
def test_bad_files_are_user_errors_naming_the_problem(tmp_path, rows, message):
    path = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as info:
        load_labelled_pairs(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_labelled_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="has no rows"):
        load_labelled_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(UserError, match="unsupported file type"):
        load_labelled_pairs(write(tmp_path / "p.jsonl", FORM_A).rename(tmp_path / "p.txt"))


def test_conversational_prompts_become_speeches_with_context(tmp_path):
    prompt = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "I feel low"},
    ]
    judge = Perfect()
    evaluate_judge(
        judge,
        load_labelled_pairs(write(tmp_path / "c.jsonl", [{"prompt": prompt, "chosen": "GOOD", "rejected": "BAD"}])),
    )
    speech = judge.seen[0].speech
    assert speech.text == "I feel low" and speech.context_lines() == ["Client: hi", "Counselor: hello"]


def test_eval_judge_command_against_an_openai_compatible_server(tmp_path, monkeypatch, capsys):
    """The whole command: a judge served over HTTP on 127.0.0.1 that prefers the GOOD reply
    wherever it stands; its verdicts are cached, so a rerun makes no calls. Every GOOD reply of
    FORM_A is also the longer one, so even this judge does not beat "longer wins", and says so."""
    from psychocounsel.cli import main
    from psychocounsel.rubric import PAPER_KEYS

    from openai_server import FakeOpenAI, Reply

    def judge(body):
        prompt = body["messages"][-1]["content"]
        a = prompt.split("<response_a>")[1].split("</response_a>")[0]
        better = "A" if "GOOD" in a else "B"
        return Reply.ok(json.dumps({**{k: better for k in PAPER_KEYS}, "overall": better}))

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    data = write(tmp_path / "pairs.jsonl", FORM_A[:6])
    with FakeOpenAI() as server:
        server.handler = judge
        args = [
            "eval-judge",
            "--judge",
            "openai:judge-model",
            "--judge-base-url",
            server.url,
            "--data",
            str(data),
            "--out",
            str(tmp_path / "judge.json"),
            "-q",
        ]
        assert main(args) == 0
        report = json.loads((tmp_path / "judge.json").read_text())
        assert (report["n"], report["accuracy"], report["cohen_kappa"], report["position_consistency"]) == (
            6,
            1.0,
            1.0,
            1.0,
        )
        assert report["longer_wins"] == 1.0 and report["beats_longer_wins"] is False
        out, err = capsys.readouterr()
        assert json.loads(out)["beats_longer_wins"] is False  # stdout stays one JSON line
        assert err == f'warning: judge {report["judge"]} does not beat "longer wins" (1.00 vs 1.00) on these pairs\n'
        calls = len(server.requests)
        assert calls == 12  # 6 pairs x 2 orders
        assert main(args) == 0 and len(server.requests) == calls
