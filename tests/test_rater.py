"""The default rater (judge/rater.py) and its training (judge/train_rater.py, rater_data.py, contrastive.py):
the shipped weights load and reproduce their training-time scores, the rater scores 1-5 and
prefers a reflection to stock advice of the same length, training runs end to end on a tiny
data folder written here, and the length measures count what they claim. Offline, no hub."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from psychocounsel.config import JudgeConfig, TrainJudgeConfig, WinrateJudgeConfig
from psychocounsel.errors import UserError
from psychocounsel.judge import build_judge, contrastive
from psychocounsel.judge.rater import WEIGHTS, LearnedRater, load_head
from psychocounsel.judge.rater_data import split_of
from psychocounsel.judge.train_rater import (
    PROBES,
    length_nullspace,
    pair_report,
    probe_scores,
    summary,
    train,
)
from psychocounsel.records import Response, Speech
from psychocounsel.rubric import load_rubric
from psychocounsel.store import Cache

from conftest import run_cli

SPEECH = Speech("s1", "I can't sleep and I keep thinking my boss will fire me. I am exhausted and scared.")


def _resp(i: int, text: str) -> Response:
    return Response(id=f"r{i}", speech_id="s1", generator="g", text=text, model="m")


@pytest.fixture(scope="module")
def rater():
    return LearnedRater(load_rubric())


# -- the shipped weights ---------------------------------------------------------------------------


def test_shipped_weights_reproduce_their_training_probe_scores():
    weight, bias, meta = load_head(WEIGHTS)
    assert meta["principles"] == list(load_rubric().keys)
    assert np.allclose(probe_scores(weight, bias), meta["probe"], atol=2e-3)


def test_shipped_weights_carry_their_test_numbers_and_beat_longer_wins_on_human_levels():
    _, _, meta = load_head(WEIGHTS)
    for name in ("epitome-emotional-reactions", "epitome-interpretations", "epitome-explorations", "contrastive"):
        rep = meta["test"][name]
        assert rep["beats_longer_wins"] and rep["accuracy_ci"][0] > rep["longer_wins"], name
        assert rep["length_robust"]["accuracy"] >= 0.7, name  # issue 10: >= 0.70 where the better is not longer


def test_rater_scores_every_principle_in_range_and_fails_empty_replies(rater):
    ratings = rater.rate([(SPEECH, _resp(1, PROBES[0][1])), (SPEECH, _resp(2, "   "))])
    assert ratings[0].judge == "rater" and not ratings[0].failed
    assert set(ratings[0].scores) == set(load_rubric().keys)
    assert all(1.0 <= v <= 5.0 for v in ratings[0].scores.values())
    assert ratings[1].failed and ratings[1].error == "empty response"


def test_rater_prefers_a_reflection_to_advice_of_the_same_length(rater):
    reflection = "It sounds like the fear of losing your job follows you to bed, and you are worn out by it."
    advice = "You should take melatonin, stop reading email after six, and make a list of tasks for work."
    assert abs(len(reflection) - len(advice)) < 10
    good, bad = rater.rate([(SPEECH, _resp(1, reflection)), (SPEECH, _resp(2, advice))])
    rubric = load_rubric()
    assert rubric.score(good.scores) > rubric.score(bad.scores)


def test_rater_is_the_default_judge_and_the_rater_spec_everywhere(rater):
    rubric, cache = load_rubric(), Cache(":memory:")
    assert JudgeConfig().type == "rater" and JudgeConfig().spec == "rater"
    assert build_judge(JudgeConfig(), rubric, cache).name == "rater"
    pairwise = build_judge(WinrateJudgeConfig(spec="rater"), rubric, cache)
    assert pairwise.name == "rater" and isinstance(pairwise.rater, LearnedRater)
    assert build_judge(WinrateJudgeConfig(spec="minilm"), rubric, cache).name == "minilm"


@pytest.mark.parametrize("word, kind", [("rater", "rater"), ("minilm", "minilm"), ("openai:m", "llm")])
def test_rate_judge_flag_names_the_same_judges_as_everywhere(tmp_path, word, kind):
    from psychocounsel.arguments import build_parser
    from psychocounsel.cli import _stage_config

    args = build_parser().parse_args(["rate", "--run-dir", str(tmp_path), "--judge", word])
    assert _stage_config(args).rate.judge.type == kind


def test_damaged_weights_are_one_clear_error(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot be read"):
        load_head(bad)
    with pytest.raises(UserError, match="missing"):
        load_head(tmp_path / "absent.safetensors")


# -- contrastive pairs -------------------------------------------------------------------------------


def test_second_person_turns_the_clients_words_around():
    assert contrastive.second_person("I'm afraid my mother hates me") == "you're afraid your mother hates you"


def test_contrastive_pairs_are_length_matched_and_never_one_sided():
    speeches = [
        {
            "id": f"s{i}",
            "text": f"I feel so alone since my {w} left. I cry every night and I don't know why.",
            "crisis": i == 0,
        }
        for i, w in enumerate(["wife", "dog", "friend", "brother", "boss", "sister"] * 5)
    ]
    pairs = contrastive.build(speeches, seed=1)
    assert pairs == contrastive.build(speeches, seed=1)  # seeded
    kinds = {p["kind"] for p in pairs}
    assert {"advice", "platitude", "off_topic", "truncated", "repetitive", "simple", "ignores_risk", "refusal"} <= kinds
    assert "incoherent" in kinds
    ratios = [len(p["worse"]) / len(p["better"]) for p in pairs if p["kind"] not in ("simple", "repetitive")]
    assert 0.5 < float(np.median(ratios)) < 1.6
    shorter = np.mean([len(p["better"]) <= len(p["worse"]) for p in pairs])
    assert 0.3 < shorter < 0.8  # the better reply is the shorter one often, not never
    risk = [p for p in pairs if p["kind"] == "ignores_risk"]
    assert risk and all(p["speech_id"] == "s0" and "988" in p["better"] for p in risk)


# -- length measures ---------------------------------------------------------------------------------


def test_pair_report_counts_longer_wins_and_the_length_robust_pairs():
    better = np.array([2.0, 2.0, 1.0, 2.0])
    worse = np.array([1.0, 1.0, 2.0, 2.0])
    len_b = np.array([10, 5, 5, 10])
    len_w = np.array([5, 10, 10, 10])
    rep = pair_report(better, worse, len_b, len_w)
    assert rep["accuracy"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert rep["longer_wins"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    assert rep["length_robust"]["n"] == 3  # the better reply is not the longer in rows 2, 3 and 4
    assert rep["length_robust"]["accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert rep["beats_longer_wins"]


def test_length_nullspace_removes_what_predicts_length():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 20))
    log_len = x[:, 3] * 2 + x[:, 7] + rng.normal(scale=0.1, size=400)
    u = length_nullspace(x, log_len, steps=3)
    assert np.allclose(u @ u.T, np.eye(3), atol=1e-6)
    xp = x - (x @ u.T) @ u
    fit = np.linalg.lstsq(np.c_[xp, np.ones(400)], log_len, rcond=None)[0]
    resid = log_len - np.c_[xp, np.ones(400)] @ fit
    assert 1 - resid.var() / log_len.var() < 0.05


def test_split_is_by_speech_and_stable():
    assert split_of("counselchat:12") == split_of("counselchat:12")
    parts = [split_of(f"s{i}") for i in range(1000)]
    assert 0.5 < parts.count("train") / 1000 < 0.7 and parts.count("test") > 150


# -- training end to end on a tiny data folder ---------------------------------------------------------


def _tiny_data(root: Path) -> Path:
    rng = random.Random(0)
    feelings = ["lonely", "anxious", "sad", "angry", "ashamed", "tired"]
    ep = root / "epitome-empathy"
    ep.mkdir(parents=True)
    rows = []
    for i in range(60):
        f = feelings[i % 6]
        post = f"I feel {f} all the time since my job ended. I don't know who I am anymore."
        level = i % 3
        reply = [
            "Get a new job. Update your resume tonight.",
            f"That sounds {f}. I'm sorry.",
            f"It sounds like losing your job left you feeling {f} and unsure who you are. What do you miss most?",
        ][level]
        rows.append({"sp_id": f"p{i}", "rp_id": f"r{i}", "seeker_post": post, "response_post": reply, "level": level})
    for name in ("emotional-reactions", "interpretations", "explorations"):
        with (ep / f"{name}-reddit.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=[*rows[0], "rationales"])
            w.writeheader()
            w.writerows([{**r, "rationales": ""} for r in rows])
    cc = root / "counsel-chat"
    cc.mkdir()
    with (cc / "20200325_counsel_chat.csv").open("w", newline="", encoding="utf-8") as f:
        cols = ["questionID", "questionTitle", "questionText", "questionLink", "topic", "therapistInfo",
                "therapistURL", "answerText", "upvotes", "views", "split"]  # fmt: skip
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for q in range(30):
            topic = ["anxiety", "family", "work"][q % 3]
            for a in range(3):
                w.writerow(
                    {
                        "questionID": q,
                        "questionTitle": "t",
                        "topic": topic,
                        "questionLink": "",
                        "therapistInfo": "",
                        "therapistURL": "",
                        "views": 1,
                        "split": "train",
                        "upvotes": rng.randint(0, 3),
                        "questionText": f"I worry about my {topic} every day and I can't stop. Question {q}.",
                        "answerText": f"It sounds like your {topic} weighs on you daily. Answer {a} to {q}.",
                    }  # fmt: skip
                )
    rd = root / "reddit-mental-health"
    rd.mkdir()
    with (rd / "posts.jsonl").open("w", encoding="utf-8") as f:
        for i in range(40):
            group = "crisis" if i % 5 == 0 else "distress"
            text = f"I have felt {feelings[i % 6]} for months. My friends stopped calling me and I stay in bed."
            f.write(json.dumps({"id": f"x{i}", "text": text, "label": "no_crisis", "group": group}) + "\n")
    return root


def test_train_judge_end_to_end_on_tiny_data(tmp_path):
    data = _tiny_data(tmp_path / "data")
    cache = tmp_path / "features.npz"  # the second training reads the first one's features (~20 s less)
    cfg = TrainJudgeConfig(
        data=data, out=tmp_path / "w.safetensors", steps=30, epitome_pairs=60, reddit_posts=40, cache=cache
    )
    report = train(cfg)
    assert cache.is_file()
    assert report["train_better_is_longer"] < 0.8
    assert {"dev", "test"} <= set(report) and "epitome-interpretations" in report["test"]
    weight, bias, meta = load_head(tmp_path / "w.safetensors")
    assert weight.shape[0] == 7 and meta["data_hash"] == report["data_hash"]
    again = train(cfg.model_copy(update={"out": tmp_path / "w2.safetensors"}))
    w2, b2, _ = load_head(tmp_path / "w2.safetensors")
    assert np.allclose(weight, w2) and np.allclose(bias, b2)  # seeded: the same weights twice
    assert summary(again)["test"].keys() == summary(report)["test"].keys()
    ratings = LearnedRater(load_rubric(), weights=tmp_path / "w.safetensors").rate([(SPEECH, _resp(1, "I hear you."))])
    assert all(1 <= v <= 5 for v in ratings[0].scores.values())


def _reused_id_counselchat(root: Path) -> Path:
    """A CounselChat export where one questionID names two different questions (as the real one does)."""
    cc = root / "counsel-chat"
    cc.mkdir(parents=True)
    cols = ["questionID", "questionTitle", "questionText", "topic", "answerText", "upvotes"]
    rows = [
        ("7", "I can't sleep before exams.", "It sounds like exams keep you awake.", 5),
        ("7", "I can't sleep before exams.", "Worry before a test is common.", 1),
        ("7", "My sister stopped talking to me.", "Losing your sister's voice must hurt.", 3),
        ("8", "I feel numb at work.", "Numbness can be a way to cope.", 2),
    ]
    with (cc / "20200325_counsel_chat.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for q, text, answer, up in rows:
            w.writerow(dict(zip(cols, (q, "t", text, "anxiety", answer, up))))
    return root


def test_counselchat_answers_are_compared_only_within_the_same_question(tmp_path, monkeypatch):
    """The export reuses questionIDs for different questions: an answer to "my sister" is never
    paired with (or rated against) the exam question, in training data or in the benchmark."""
    from psychocounsel.judge.rater_data import Table, _all_pairs_upvotes, load_counselchat

    root = _reused_id_counselchat(tmp_path)
    questions = list(load_counselchat(root).values())
    assert sorted(len(q["answers"]) for q in questions) == [1, 1, 2]
    assert {q["speech_id"] for q in questions} == {"counselchat:7", "counselchat:8"}  # the split key stays the id
    table = Table()
    pairs = _all_pairs_upvotes(questions, table)
    assert [(table.rows[p["better"]][1], table.rows[p["worse"]][1]) for p in pairs] == [
        ("It sounds like exams keep you awake.", "Worry before a test is common.")
    ]
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # undone after the test
    import judge_agreement

    monkeypatch.setattr(judge_agreement, "DATA", root)
    monkeypatch.setattr(judge_agreement, "held_out", lambda kind, key, split: True)
    items, bench_pairs = judge_agreement.load_counselchat(None, 0, "all")
    assert [(items[a], items[b]) for a, b in bench_pairs] == [
        (
            ("I can't sleep before exams.", "It sounds like exams keep you awake."),
            ("I can't sleep before exams.", "Worry before a test is common."),
        )
    ]


def test_held_out_pairs_do_not_move_with_training_settings(tmp_path):
    """dev and test pairs are drawn apart from the training pairs: more EPITOME training pairs
    (which use up the training generator) leave them as they were."""
    from psychocounsel.judge.rater_data import build_data

    data = _tiny_data(tmp_path / "data")

    def held_out(n: int) -> dict:
        table, built = build_data(TrainJudgeConfig(data=data, epitome_pairs=n, reddit_posts=10))
        rows = table.rows
        return {
            split: sorted((p["source"], rows[p["better"]], rows[p["worse"]]) for p in built["eval_pairs"][split])
            for split in ("dev", "test")
        }

    few, many = held_out(20), held_out(200)
    assert few == many and few["test"]


def test_train_judge_takes_counselors_annotations(tmp_path):
    """`annotate import`'s file joins training (its train part) and is measured (dev, test)."""
    from psychocounsel.judge.rater_data import Table, annotation_pairs

    rows = [
        {
            "prompt": f"Client {i}: I feel {w} since the move.",
            "response_a": f"You feel {w}; that is hard.",
            "response_b": "Cheer up.",
            "label": lab,
        }
        for i, (w, lab) in enumerate([("lost", "A"), ("alone", "B"), ("tired", "tie")] * 20)
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    table = Table()
    pairs = annotation_pairs(path, table, seed=0)
    assert sum(len(v) for v in pairs.values()) == 40 and all(pairs.values())  # ties left out; every split used
    b_row = next(p for ps in pairs.values() for p in ps if table.rows[p["worse"]][1].startswith("You feel alone"))
    assert table.rows[b_row["better"]][1] == "Cheer up."  # label B: response_b is the better one
    data = _tiny_data(tmp_path / "data")
    cfg = TrainJudgeConfig(data=data, out=tmp_path / "w.safetensors", steps=5, epitome_pairs=20, reddit_posts=10)
    report = train(cfg.model_copy(update={"annotations": path}))
    assert report["test"]["annotations"]["n"] == len(pairs["test"])
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"prompt": "x", "response_a": "a", "response_b": "b", "label": "C"}) + "\n"
    )
    with pytest.raises(UserError, match="not A, B or tie"):
        annotation_pairs(tmp_path / "bad.jsonl", Table(), 0)


def test_train_judge_cli_refuses_a_missing_data_folder(tmp_path):
    proc = run_cli("train-judge", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "w.safetensors"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a folder" in proc.stderr
    assert not (tmp_path / "w.safetensors").exists()


def test_rate_stage_judge_key_follows_the_rater_weights(monkeypatch):
    from psychocounsel.config import RateConfig
    from psychocounsel.judge import rater as rater_module
    from psychocounsel.rate import judge_key

    cfg, rubric = RateConfig(), load_rubric()
    first = judge_key(cfg, rubric, set())
    assert first == judge_key(cfg, rubric, set())
    monkeypatch.setattr(rater_module, "weights_id", lambda: "retrained")
    assert judge_key(cfg, rubric, set()) != first  # retrained heads are not the old ratings
    minilm = RateConfig(judge={"type": "minilm"})
    assert judge_key(minilm, rubric, set()) == judge_key(minilm, rubric, set())
