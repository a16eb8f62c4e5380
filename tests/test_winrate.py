"""eval-winrate: speech loading, the both-order numbers, and the whole command against a real
HTTP server on 127.0.0.1 standing in for policy, reference and judge. Speeches are ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from psychocounsel.cli import main
from psychocounsel.errors import UserError
from psychocounsel.evaluate.winrate import load_eval_speeches, summarize
from psychocounsel.rubric import PAPER_KEYS

from conftest import SHARED_DATA
from openai_server import FakeOpenAI, Reply, openai_server  # noqa: F401 (fixture)

KEYS = (
    "n",
    "wins",
    "ties",
    "losses",
    "win_rate",
    "ci_low",
    "ci_high",
    "lc_win_rate",
    "per_principle",
    "position_consistency",
    "avg_len_policy",
    "avg_len_reference",
    "judge",
)
SPEECHES = [
    "I keep cancelling plans with friends because I feel too tired to talk, then I feel guilty all weekend.",
    "My brother and I have not spoken since the funeral and every holiday now feels like a test I will fail.",
    "I was passed over for promotion again and I am starting to believe I am simply not good enough for it.",
    "Since the baby came I cry in the shower so nobody hears me, and I do not know who I could tell about it.",
]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- speeches ---------------------------------------------------------------------------------


def test_speeches_in_our_format_and_mentalchat_format(tmp_path):
    ours = load_eval_speeches(write(tmp_path / "a.jsonl", [{"id": "x1", "text": SPEECHES[0], "topic": "t"}]))
    assert (ours[0].id, ours[0].topic) == ("x1", "t")
    theirs = load_eval_speeches(
        write(tmp_path / "b.jsonl", [{"question_id": 7, "category": "grief", "turns": [SPEECHES[1]]}])
    )
    assert (theirs[0].id, theirs[0].text, theirs[0].topic) == ("7", SPEECHES[1], "grief")
    hashed = load_eval_speeches(write(tmp_path / "c.jsonl", [{"text": s} for s in SPEECHES]), limit=2)
    assert len(hashed) == 2 and all(s.id.startswith("s-") for s in hashed)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"id": "a", "text": "x" * 20}, {"id": "a", "text": "y" * 20}], "appears twice"),
        ([{"id": "a", "text": "  "}], ":1: no speech text"),
        ([{"id": "a", "body": "hello"}], "no speech text"),
        ([], "holds no speeches"),
    ],
)
def test_bad_speeches_files_say_why(tmp_path, rows, message):
    with pytest.raises(UserError, match=message):
        load_eval_speeches(write(tmp_path / "s.jsonl", rows))


@pytest.mark.skipif(not (SHARED_DATA / "mentalchat16k-eval").is_dir(), reason="../shared/data is absent")
def test_real_mentalchat_eval_questions_load():
    speeches = load_eval_speeches(SHARED_DATA / "mentalchat16k-eval" / "evalq_bench_question.jsonl")
    assert len(speeches) == 200 and len({s.id for s in speeches}) == 200


# -- numbers ----------------------------------------------------------------------------------


def row(first: str, second: str, lp: int = 100, lr: int = 100, **extra) -> dict:
    return {
        "speech_id": "s",
        "len_policy": lp,
        "len_reference": lr,
        "failed": False,
        "orders": [first, second],
        "per_principle": {"empathy": [first, second]},
        **extra,
    }


def test_a_judge_that_always_picks_position_a_gives_only_ties():
    # Position A is the policy in order 1 and the reference in order 2.
    result = summarize([row("policy", "reference")] * 20, "always-A", n_boot=200)
    assert (result["wins"], result["ties"], result["losses"]) == (0, 20, 0)
    assert result["win_rate"] == 0.5 and result["position_consistency"] == 0.0
    assert result["per_principle"] == {"empathy": 0.5}


def test_consistent_verdicts_count_and_failures_are_listed_not_scored():
    rows = [row("policy", "policy", 200, 100)] * 6 + [row("reference", "reference", 100, 200)] * 2
    rows += [{"speech_id": "bad", "len_policy": 1, "len_reference": 1, "failed": True, "error": "unparseable"}]
    result = summarize(rows, "j", n_boot=500)
    assert (result["n"], result["wins"], result["losses"], result["failed"]) == (8, 6, 2, 1)
    assert result["win_rate"] == 0.75 and result["ci_low"] <= 0.75 <= result["ci_high"]
    assert result["failures"] == [{"speech_id": "bad", "error": "unparseable"}]
    assert result["avg_len_policy"] == 175.0 and result["position_consistency"] == 1.0
    with pytest.raises(UserError, match="failed on every item"):
        summarize(rows[-1:], "j")


def test_reward_judges_add_mean_rewards():
    rows = [
        row("policy", "policy", score_policy=1.0, score_reference=0.0),
        row("reference", "reference", score_policy=0.0, score_reference=0.5),
    ]
    # The judge's kind no longer comes from its name: run() passes score_name="mean_reward" for
    # judges whose scores_are "reward" (RewardModelJudge).
    result = summarize(rows, "rm:x", n_boot=200, score_name="mean_reward")
    assert result["mean_reward_policy"] == 0.5 and result["mean_reward_reference"] == 0.25
    assert "mean_score_policy" not in result
    rated = summarize(rows, "minilm", n_boot=200)
    assert rated["mean_score_policy"] == 0.5 and "mean_reward_policy" not in rated


# -- the command, against an OpenAI-compatible server ---------------------------------------


def serve(body: dict) -> Reply:
    """policy-model answers long and warm, reference-model short; the judge prefers whichever
    response says 'POLICY', wherever it stands; other judges' prompts get a bad reply."""
    model, prompt = body["model"], body["messages"][-1]["content"]
    if model == "policy-model":
        return Reply.ok("POLICY: That sounds really heavy. What feels hardest about it right now?")
    if model == "reference-model":
        return Reply.ok("REFERENCE: Try to relax.")
    if model == "judge-model":
        first = "A" if prompt.index("POLICY:") < prompt.index("REFERENCE:") else "B"
        return Reply.ok(json.dumps({**{k: first for k in PAPER_KEYS}, "overall": first, "rationale": "warmer"}))
    return Reply.ok("I cannot decide.")


def test_eval_winrate_against_a_server_then_rerun_makes_no_calls(tmp_path, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    openai_server.handler = serve
    openai_server.push(Reply.error(500))  # the first call fails once and is retried
    speeches = write(tmp_path / "s.jsonl", [{"id": f"s{i}", "text": t} for i, t in enumerate(SPEECHES)])
    args = [
        "eval-winrate",
        "--policy",
        "openai:policy-model",
        "--policy-base-url",
        openai_server.url,
        "--reference",
        "openai:reference-model",
        "--reference-base-url",
        openai_server.url,
        "--judge",
        "openai:judge-model",
        "--judge-base-url",
        openai_server.url,
        "--speeches",
        str(speeches),
        "--out",
        str(tmp_path / "eval"),
        "-q",
    ]
    assert main(args) == 0
    result = json.loads((tmp_path / "eval" / "winrate.json").read_text())
    assert set(KEYS) <= set(result)
    assert (result["n"], result["wins"], result["win_rate"], result["position_consistency"]) == (4, 4, 1.0, 1.0)
    assert result["per_principle"] == {k: 1.0 for k in PAPER_KEYS}
    assert result["avg_len_policy"] > result["avg_len_reference"]
    calls = len(openai_server.requests)
    assert calls == 1 + 4 + 4 + 8  # the retried 500, two sides x 4 speeches, 4 speeches x 2 orders
    judged = [json.loads(x) for x in (tmp_path / "eval" / "llm-json-openai-judge-model" / "judgements.jsonl").open()]
    assert [r["orders"] for r in judged] == [["policy", "policy"]] * 4

    assert main(args) == 0
    assert len(openai_server.requests) == calls  # answers and verdicts come from the cache


def test_unparseable_judge_fails_items_with_reasons(tmp_path, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    openai_server.handler = serve
    speeches = write(tmp_path / "s.jsonl", [{"id": "s0", "text": SPEECHES[0]}])
    args = [
        "eval-winrate",
        "--policy",
        "openai:policy-model",
        "--policy-base-url",
        openai_server.url,
        "--reference",
        "openai:reference-model",
        "--reference-base-url",
        openai_server.url,
        "--judge",
        "openai:confused-judge",
        "--judge-base-url",
        openai_server.url,
        "--speeches",
        str(speeches),
        "--out",
        str(tmp_path / "eval"),
        "-q",
    ]
    assert main(args) == 2  # every item failed: nothing to score, and the reasons are on disk
    judged = [json.loads(x) for x in (tmp_path / "eval" / "llm-json-openai-confused-judge" / "judgements.jsonl").open()]
    assert judged[0]["failed"] and "attempts" in judged[0]["error"]


def test_policy_named_from_a_run_that_has_none_is_a_clear_error(tmp_path, capsys):
    speeches = write(tmp_path / "s.jsonl", [{"id": "s0", "text": SPEECHES[0]}])
    code = main(
        [
            "eval-winrate",
            "--policy",
            "policy",
            "--run-dir",
            str(tmp_path),
            "--speeches",
            str(speeches),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "mentalchat16k-eval").is_dir(), reason="../shared/data is absent")
def test_eval_winrate_on_real_mentalchat_speeches_over_http(tmp_path, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    openai_server.handler = serve
    speeches = SHARED_DATA / "mentalchat16k-eval" / "evalq_bench_question.jsonl"
    assert (
        main(
            [
                "eval-winrate",
                "--policy",
                "openai:policy-model",
                "--policy-base-url",
                openai_server.url,
                "--reference",
                "openai:reference-model",
                "--reference-base-url",
                openai_server.url,
                "--judge",
                "openai:judge-model",
                "--judge-base-url",
                openai_server.url,
                "--limit",
                "5",
                "--speeches",
                str(speeches),
                "--out",
                str(tmp_path / "eval"),
                "-q",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "eval" / "winrate.json").read_text())
    assert (result["n"], result["wins"]) == (5, 5)


def test_a_later_judge_that_fails_everywhere_is_reported_not_fatal(tmp_path, openai_server, monkeypatch):
    from psychocounsel.config import EvalConfig
    from psychocounsel.evaluate import winrate

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    openai_server.handler = serve
    side = lambda model: {"spec": f"openai:{model}", "base_url": openai_server.url}  # noqa: E731
    cfg = EvalConfig(
        speeches=write(tmp_path / "s.jsonl", [{"id": "s0", "text": SPEECHES[0]}]),
        policy=side("policy-model"),
        reference=side("reference-model"),
        judges=[side("judge-model"), side("confused-judge")],
    )
    result = winrate.run(cfg, tmp_path / "eval")
    assert (result["win_rate"], result["judge"]) == (1.0, "llm-json:openai:judge-model")
    failed = result["by_judge"]["llm-json-openai-confused-judge"]
    assert failed["n"] == 0 and failed["failed"] == 1 and "attempts" in failed["error"]


# -- standard errors, the LC interval and the leaderboard ---------------------------------------


def test_summarize_adds_alpacaeval_standard_error_and_an_lc_interval():
    import numpy as np

    rows = [row("policy", "policy", 180, 100)] * 5 + [row("reference", "reference", 90, 100)] * 3
    rows += [row("policy", "reference", 120, 100)] * 2  # ties: 0.5 each
    result = summarize(rows, "j", n_boot=300)
    values = np.array([1.0] * 5 + [0.0] * 3 + [0.5] * 2)
    assert result["standard_error"] == pytest.approx(values.std(ddof=1) / np.sqrt(10))
    low, high = result["lc_ci"]
    assert 0.0 <= low <= result["lc_win_rate"] <= high <= 1.0 and result["lc_standard_error"] > 0
    assert summarize(rows, "j", n_boot=300)["lc_ci"] == result["lc_ci"]  # seeded: reproducible


def test_leaderboard_csv_has_alpacaeval_columns_one_row_per_judge(tmp_path, openai_server, monkeypatch):
    import csv

    from psychocounsel.config import EvalConfig
    from psychocounsel.evaluate import winrate

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    openai_server.handler = serve
    side = lambda model: {"spec": f"openai:{model}", "base_url": openai_server.url}  # noqa: E731
    panel = {"spec": ["openai:judge-model", "openai:confused-judge"], "base_url": openai_server.url, "retries": 0}
    cfg = EvalConfig(
        speeches=write(tmp_path / "s.jsonl", [{"id": f"s{i}", "text": t} for i, t in enumerate(SPEECHES)]),
        policy=side("policy-model"),
        reference=side("reference-model"),
        judges=[side("judge-model"), panel, {**side("confused-judge"), "retries": 0}],
        n_boot=200,
    )
    result = winrate.run(cfg, tmp_path / "eval")
    with open(tmp_path / "eval" / "leaderboard.csv", encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(winrate.LEADERBOARD)
    assert {"win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total"} <= set(table[0])
    assert {"length_controlled_winrate", "lc_standard_error", "avg_length"} <= set(table[0])
    # The confused judge failed everywhere: no row. The panel is one row, like any judge.
    assert [r["judge"] for r in table] == [
        "llm-json:openai:judge-model",
        "panel(llm-json:openai:judge-model,llm-json:openai:confused-judge)",
    ]
    first = table[0]
    assert (float(first["win_rate"]), float(first["standard_error"])) == (100.0, 0.0)  # 0-100, as AlpacaEval
    assert (first["n_wins"], first["n_wins_base"], first["n_draws"], first["n_total"]) == ("4", "0", "0", "4")
    assert float(first["length_controlled_winrate"]) == pytest.approx(100 * result["lc_win_rate"])
    assert float(first["avg_length"]) == pytest.approx(result["avg_len_policy"])
    assert (first["generator"], first["reference"]) == ("openai:policy-model", "openai:reference-model")
    assert result["standard_error"] == 0.0 and result["lc_ci"] == [1.0, 1.0]  # every item won: no spread
