"""Tests of the judges: the pure parsers, the LLM judge against a real HTTP server on 127.0.0.1
(tests/openai_server.py), and the offline MiniLM judge on the packaged all-MiniLM-L6-v2.
Every speech and response here is written by us; no network, no hub."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from psychocounsel.config import JudgeConfig
from psychocounsel.errors import UserError
from psychocounsel.judge import build_judge
from psychocounsel.judge.llm import LLMJudge
from psychocounsel.judge.minilm import MiniLMJudge, split_sentences, surface_cues, to_scale
from psychocounsel.judge.parse import ParseError, expected_score, parse_json_scores
from psychocounsel.records import Response, Speech
from psychocounsel.rubric import PAPER_KEYS, Rubric, load_rubric
from psychocounsel.store import Cache

from openai_server import FakeOpenAI, Reply, openai_server, prompt_of  # noqa: F401 (fixture)

KEYS = list(PAPER_KEYS)
FULL = {k: float(i % 5 + 1) for i, k in enumerate(KEYS)}  # 1, 2, 3, 4, 5, 1, 2


# -- parse_json_scores ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, rationale",
    [
        (json.dumps({**FULL, "rationale": "Flat."}), "Flat."),
        (json.dumps({"scores": FULL, "rationale": "Nested."}), "Nested."),
        (json.dumps({"scores": FULL}), ""),
        ("```json\n" + json.dumps({"scores": FULL, "rationale": "Fenced."}) + "\n```", "Fenced."),
        ("```\n" + json.dumps(FULL) + "\n```", ""),
        ("Here is my rating:\n" + json.dumps({"scores": FULL, "rationale": "x"}) + "\nHope it helps!", "x"),
        ("I think {this} part is prose. " + json.dumps({"scores": FULL, "rationale": "y"}), "y"),
        (
            '{"rationale": "uses } and { and \\"quotes\\"", "scores": ' + json.dumps(FULL) + "}",
            'uses } and { and "quotes"',
        ),
        (json.dumps({"scores": FULL, "rationale": ["a", "b"]}), '["a", "b"]'),
    ],
)
def test_parse_valid_forms(text, rationale):
    assert parse_json_scores(text, KEYS) == (FULL, rationale)


def test_parse_numeric_strings_and_ints():
    scores, _ = parse_json_scores('{"empathy": "4.5", "safety": 3, "clarity": " 2 "}', ["empathy", "safety", "clarity"])
    assert scores == {"empathy": 4.5, "safety": 3.0, "clarity": 2.0}
    assert all(type(v) is float for v in scores.values())


def test_parse_ignores_keys_it_was_not_asked_for():
    assert parse_json_scores('{"empathy": 2, "humour": 9}', ["empathy"]) == ({"empathy": 2.0}, "")


def test_parse_takes_the_first_object_in_a_fence_before_bare_text():
    text = '{"empathy": 1} and then ```json\n{"empathy": 5}\n```'
    assert parse_json_scores(text, ["empathy"])[0] == {"empathy": 5.0}


@pytest.mark.parametrize(
    "text, message",
    [
        ("I would rate this response highly.", "no JSON object found"),
        ("", "no JSON object found"),
        ('{"empathy": 4,', "no JSON object found"),
        ("[1, 2, 3]", "no JSON object found"),
        ('"just a string"', "no JSON object found"),
        ('{"scores": [4, 4, 4]}', "'scores' is not an object"),
        ('{"empathy": 4}', "missing score for 'safety'"),
        ('{"scores": {"empathy": 4}, "safety": 5}', "missing score for 'safety'"),
        ('{"empathy": 4, "safety": "high"}', "score for 'safety' is not a number"),
        ('{"empathy": 4, "safety": null}', "score for 'safety' is not a number"),
        ('{"empathy": 4, "safety": [5]}', "score for 'safety' is not a number"),
        ('{"empathy": 4, "safety": true}', "score for 'safety' is not a number"),
        ('{"empathy": false, "safety": 4}', "score for 'empathy' is not a number"),
        ('{"empathy": 0, "safety": 4}', "score for 'empathy' is 0.0, outside 1-5"),
        ('{"empathy": 6, "safety": 4}', "score for 'empathy' is 6.0, outside 1-5"),
        ('{"empathy": 0.999, "safety": 4}', "outside 1-5"),
        ('{"empathy": -3, "safety": 4}', "outside 1-5"),
        ('{"empathy": NaN, "safety": 4}', "score for 'empathy' is nan, outside 1-5"),
        ('{"empathy": Infinity, "safety": 4}', "score for 'empathy' is inf, outside 1-5"),
        ('{"empathy": "nan", "safety": 4}', "outside 1-5"),
        ('{"empathy": "-inf", "safety": 4}', "outside 1-5"),
        ('{"empathy": 1e999, "safety": 4}', "outside 1-5"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ParseError) as info:
        parse_json_scores(text, ["empathy", "safety"])
    assert message in str(info.value)


@pytest.mark.parametrize("value", ["1", "5", "1.0", "5.0", '"1"', '"5"'])
def test_parse_accepts_the_bounds(value):
    [score] = parse_json_scores(f'{{"empathy": {value}}}', ["empathy"])[0].values()
    assert score in (1.0, 5.0)


def test_parse_huge_integer_is_a_parse_error():
    with pytest.raises(ParseError):
        parse_json_scores('{"empathy": 1' + "0" * 400 + "}", ["empathy"])


def test_parse_over_long_integer_is_a_parse_error():
    with pytest.raises(ParseError):
        parse_json_scores('{"empathy": ' + "9" * 5000 + "}", ["empathy"])


def test_parse_deeply_nested_json_is_a_parse_error():
    with pytest.raises(ParseError):
        parse_json_scores('{"empathy": ' + "[" * 100_000 + "]" * 100_000 + "}", ["empathy"])


NO_BRACES = st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=60)
SCORE = st.floats(1, 5, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({k: SCORE for k in KEYS}), NO_BRACES, NO_BRACES, st.booleans())
def test_parse_recovers_scores_from_any_surrounding_text(scores, prefix, suffix, nested):
    body = {"scores": scores, "rationale": "r"} if nested else scores
    parsed, _ = parse_json_scores(prefix + json.dumps(body) + suffix, KEYS)
    assert parsed == scores


JSONISH = st.lists(
    st.sampled_from(list('{}[]":,. -+0123456789eEaflnrstu\\') + KEYS + ["scores", "NaN", "Infinity"]), max_size=80
).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS + ["scores", "x"]), inner, max_size=8)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(),
        JSONISH,
        JSON_VALUES.map(json.dumps),
        st.tuples(st.text(max_size=10), JSON_VALUES.map(json.dumps)).map("".join),
    )
)
def test_parse_never_raises_anything_but_parse_error(text):
    try:
        scores, rationale = parse_json_scores(text, KEYS)
    except ParseError:
        return
    assert set(scores) == set(KEYS)
    assert all(1 <= v <= 5 for v in scores.values())
    assert isinstance(rationale, str)


# -- expected_score ---------------------------------------------------------------------------


def test_expected_score_values():
    assert expected_score({"3": 0.0}) == 3.0
    assert expected_score({"1": math.log(0.5), "5": math.log(0.5)}) == pytest.approx(3.0)
    # Renormalised over the digits: 0.2 of junk does not pull the score down.
    assert expected_score({"2": math.log(0.4), "4": math.log(0.4), "Sure": math.log(0.2)}) == pytest.approx(3.0)
    assert expected_score({"5": math.log(0.5), "I": math.log(0.5)}) == pytest.approx(5.0)  # exactly 50% is enough


@pytest.mark.parametrize(
    "logprobs, message",
    [
        (None, "no logprobs returned"),
        ({}, "no logprobs returned"),
        ({"Sure": -0.1, "I": -2.5}, "digits 1-5 hold 0%"),
        ({"6": -0.1, "0": -3.0}, "digits 1-5 hold 0%"),
        ({"4": math.log(0.49), "x": math.log(0.51)}, "digits 1-5 hold 49% of the probability (need 50%)"),
    ],
)
def test_expected_score_errors(logprobs, message):
    with pytest.raises(ParseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expected_score(logprobs)


DIGITS = ["1", "2", "3", "4", "5"]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(DIGITS), st.floats(1e-6, 1.0), max_size=5),
    st.dictionaries(st.sampled_from(["The", "Sure", " ", "6", "0", "10", "four"]), st.floats(1e-6, 1.0), max_size=7),
)
def test_expected_score_property(digit_weights, junk_weights):
    total = sum(digit_weights.values()) + sum(junk_weights.values())
    assume(total > 0)
    probs = {t: w / total for t, w in {**digit_weights, **junk_weights}.items()}
    digit_mass = sum(p for t, p in probs.items() if t in DIGITS)
    assume(abs(digit_mass - 0.5) > 1e-9)  # exactly at the threshold, float rounding decides
    logprobs = {t: math.log(p) for t, p in probs.items()}
    if digit_mass >= 0.5:
        score = expected_score(logprobs)
        assert 1 <= score <= 5
        present = [int(d) for d in digit_weights]
        assert min(present) - 1e-9 <= score <= max(present) + 1e-9
    else:
        with pytest.raises(ParseError):
            expected_score(logprobs)


# -- LLMJudge against a server on 127.0.0.1 ---------------------------------------------------

SAD = Speech("s1", "My dog died last week and the house feels empty. I keep expecting to hear her.")
MULTI = Speech(
    "s2",
    "It still hurts.",
    context=[
        {"role": "client", "content": "My friend moved away."},
        {"role": "counselor", "content": "How has that been?"},
    ],
)
WARM = Response("r1", "s1", "gen-a", "RESPONSE-ONE: I'm so sorry. What do you miss most about her?", "m")
COLD = Response("r2", "s2", "gen-b", "RESPONSE-TWO: Just get over it.", "m")
ITEMS = [(SAD, WARM), (MULTI, COLD)]
SCORES_BY_RESPONSE = {
    "RESPONSE-ONE": {k: 5.0 if k == "empathy" else 4.0 for k in KEYS},
    "RESPONSE-TWO": {k: 1.0 if k == "safety" else 2.5 for k in KEYS},
}


def json_judge(server: FakeOpenAI, tmp_path, mode: str = "json", retries: int = 2) -> LLMJudge:
    cfg = JudgeConfig(
        type="llm",
        backend={"spec": "openai:judge-model", "base_url": server.url, "max_retries": 0},
        mode=mode,
        retries=retries,
    )
    judge = build_judge(cfg, load_rubric(), Cache(tmp_path / "cache.sqlite"))
    assert isinstance(judge, LLMJudge)
    return judge


def scores_handler(body: dict) -> Reply:
    """Valid JSON scores chosen by which response the prompt holds."""
    prompt = prompt_of(body)
    tag = next(t for t in SCORES_BY_RESPONSE if t in prompt)
    return Reply.ok(json.dumps({"scores": SCORES_BY_RESPONSE[tag], "rationale": f"Rated {tag}."}))


def test_json_mode_returns_the_server_scores(openai_server, tmp_path):
    openai_server.handler = scores_handler
    judge = json_judge(openai_server, tmp_path)
    ratings = judge.rate(ITEMS)

    assert [r.response_id for r in ratings] == ["r1", "r2"]
    assert [r.speech_id for r in ratings] == ["s1", "s2"]
    assert ratings[0].scores == SCORES_BY_RESPONSE["RESPONSE-ONE"]
    assert ratings[1].scores == SCORES_BY_RESPONSE["RESPONSE-TWO"]
    assert ratings[0].rationale == "Rated RESPONSE-ONE." and not ratings[0].failed
    assert ratings[0].judge == "llm-json:openai:judge-model"
    assert len(openai_server.requests) == 2 and judge.calls_made == 2
    body = openai_server.requests[0].body
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 400
    assert "seed" not in body


def test_json_prompt_holds_rubric_speech_response_and_context(openai_server, tmp_path):
    openai_server.handler = scores_handler
    json_judge(openai_server, tmp_path).rate(ITEMS)
    prompts = {
        next(t for t in SCORES_BY_RESPONSE if t in prompt_of(r.body)): prompt_of(r.body) for r in openai_server.requests
    }
    one, two = prompts["RESPONSE-ONE"], prompts["RESPONSE-TWO"]
    assert SAD.text in one and WARM.text in one and "<earlier_in_session>" not in one
    assert (
        "<earlier_in_session>\nClient: My friend moved away.\nCounselor: How has that been?\n</earlier_in_session>"
        in two
    )
    for p in load_rubric().principles:
        assert f"- {p.key} ({p.name}):" in one
    assert '"scores": {"empathy": <1-5>, "relevance": <1-5>' in one


def test_json_mode_retries_garbage_at_temperature_0_7(openai_server, tmp_path):
    openai_server.push(Reply.ok("Great response, I'd give it a four!"))
    openai_server.handler = scores_handler
    [rating] = json_judge(openai_server, tmp_path).rate([(SAD, WARM)])

    assert not rating.failed and rating.scores == SCORES_BY_RESPONSE["RESPONSE-ONE"]
    bodies = [r.body for r in openai_server.requests]
    assert [b["temperature"] for b in bodies] == [0.0, 0.7]
    assert bodies[1]["seed"] == 1  # a new seed: the retry is a new cache key, not the cached garbage
    assert prompt_of(bodies[0]) == prompt_of(bodies[1])


def test_json_mode_gives_up_after_all_attempts(openai_server, tmp_path):
    openai_server.handler = lambda body: Reply.ok("I cannot rate this.")
    judge = json_judge(openai_server, tmp_path)
    [rating] = judge.rate([(SAD, WARM)])

    assert rating.failed and rating.scores == {}
    assert rating.error == "no JSON object found (after 3 attempts)"
    assert rating.raw == "I cannot rate this."
    bodies = [r.body for r in openai_server.requests]
    assert [(b["temperature"], b.get("seed")) for b in bodies] == [(0.0, None), (0.7, 1), (0.7, 2)]


def test_json_mode_progress_counts_failed_items(openai_server, tmp_path):
    openai_server.handler = lambda body: Reply.ok("no idea")
    seen = []
    json_judge(openai_server, tmp_path, retries=0).rate([(SAD, WARM)], progress=seen.append)
    assert seen == [1]


def test_json_mode_only_failing_items_are_retried(openai_server, tmp_path):
    def handler(body):
        return Reply.ok("no idea") if "RESPONSE-TWO" in prompt_of(body) else scores_handler(body)

    openai_server.handler = handler
    ratings = json_judge(openai_server, tmp_path, retries=1).rate(ITEMS)
    assert not ratings[0].failed and ratings[1].failed
    assert "after 2 attempts" in ratings[1].error
    assert len(openai_server.requests) == 3  # 2 first attempts + 1 retry of the failing one


def test_json_mode_out_of_range_score_is_retried_then_failed(openai_server, tmp_path):
    openai_server.handler = lambda body: Reply.ok(json.dumps({"scores": {**FULL, "safety": 7}}))
    [rating] = json_judge(openai_server, tmp_path, retries=0).rate([(SAD, WARM)])
    assert rating.failed and rating.error == "score for 'safety' is 7.0, outside 1-5 (after 1 attempts)"
    assert json.loads(rating.raw)["scores"]["safety"] == 7


def test_json_mode_http_error_is_a_failed_rating(openai_server, tmp_path):
    openai_server.handler = lambda body: Reply.error(400, "context too long")
    judge = json_judge(openai_server, tmp_path)
    [rating] = judge.rate([(SAD, WARM)])
    assert rating.failed and rating.scores == {}
    # The status and the attempts, never the server's body text (it may echo the client's speech).
    assert rating.error == "HTTP 400 (after 3 attempts)" and "context too long" not in rating.error
    assert len(openai_server.requests) == 3
    judge.rate([(SAD, WARM)])
    assert len(openai_server.requests) == 6  # errors are not cached: a rerun asks again


def test_json_mode_second_rate_is_served_from_the_cache(openai_server, tmp_path):
    openai_server.push(Reply.ok("garbage"))  # the first item's first attempt: forces one retry
    openai_server.handler = scores_handler
    judge = json_judge(openai_server, tmp_path)
    first = judge.rate(ITEMS)
    sent = len(openai_server.requests)
    assert sent == 3

    again = judge.rate(ITEMS)
    assert len(openai_server.requests) == sent  # no new HTTP request
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]
    assert judge.calls_made == 3 and judge.calls_cached == 3

    # A new judge on the same cache file (a rerun of the stage) is served from disk too.
    judge.close()
    judge.backend.cache.close()  # the judge's backend is the CachedBackend around the HTTP backend
    fresh = json_judge(openai_server, tmp_path)
    assert [r.scores for r in fresh.rate(ITEMS)] == [r.scores for r in first]
    assert len(openai_server.requests) == sent


# Logprob mode: a distribution over "1".."5" per principle, by the principle named in the prompt.
DISTRIBUTIONS = {
    "empathy": {"5": 0.6, "4": 0.3, "3": 0.1},  # 4.5
    "relevance": {"4": 1.0},  # 4.0
    "clarity": {"1": 0.3, "5": 0.3, "Sure": 0.4},  # 3.0: the junk token is renormalised away
    "safety": {"2": 0.5, "3": 0.3, "The": 0.2},  # (1.0 + 0.9) / 0.8 = 2.375
    "exploration": {"1": 0.9, "2": 0.1},  # 1.1
    "autonomy": {"3": 0.7, " 3": 0.2, "4": 0.1},  # " 3" strips to "3" and the larger is kept: 3.125
    "staging": {"5": 0.99, "x": 0.01},  # 5.0
}
EXPECTED = {
    "empathy": 4.5,
    "relevance": 4.0,
    "clarity": 3.0,
    "safety": 2.375,
    "exploration": 1.1,
    "autonomy": 3.125,
    "staging": 5.0,
}


def logprob_handler(distributions):
    names = {p.name: p.key for p in load_rubric().principles}

    def handler(body):
        key = next(k for n, k in names.items() if f"Principle: {n}\n" in prompt_of(body))
        dist = distributions[key]
        best = max(dist, key=dist.get)
        return Reply.ok(best, logprobs=[(t, math.log(p)) for t, p in sorted(dist.items(), key=lambda x: -x[1])])

    return handler


def test_logprob_mode_expected_scores(openai_server, tmp_path):
    openai_server.handler = logprob_handler(DISTRIBUTIONS)
    ratings = json_judge(openai_server, tmp_path, mode="logprob").rate(ITEMS)

    assert len(openai_server.requests) == 7 * len(ITEMS)  # one request per principle
    for rating in ratings:
        assert not rating.failed and list(rating.scores) == KEYS
        assert rating.scores == pytest.approx(EXPECTED)
        assert rating.judge == "llm-logprob:openai:judge-model"
    body = openai_server.requests[0].body
    assert (body["max_tokens"], body["logprobs"], body["top_logprobs"], body["temperature"]) == (1, True, 20, 0.0)
    prompt = prompt_of(body)
    assert "Score 1: " in prompt and "Score 5: " in prompt and "Answer with a single digit." in prompt


def test_logprob_mode_without_digits_is_a_failed_rating(openai_server, tmp_path):
    openai_server.handler = logprob_handler({**DISTRIBUTIONS, "safety": {"Sure": 0.9, "I": 0.1}})
    [rating] = json_judge(openai_server, tmp_path, mode="logprob").rate([(SAD, WARM)])
    assert rating.failed and rating.scores == {}
    assert rating.error == "safety: digits 1-5 hold 0% of the probability (need 50%)"
    assert rating.raw == "safety: 'Sure'"


def test_logprob_mode_server_without_logprobs(openai_server, tmp_path):
    openai_server.handler = lambda body: Reply.ok("4")  # answers, but sends no logprobs
    [rating] = json_judge(openai_server, tmp_path, mode="logprob").rate([(SAD, WARM)])
    assert rating.failed and rating.scores == {}
    assert rating.error.count("no logprobs returned") == 7
    assert rating.error.startswith("empathy: no logprobs returned")


# -- templates as config and structured outputs ------------------------------------------------

RATE_TEMPLATE = "CUSTOM RATER\n{principles}\n{context}SPEECH: {speech}\nREPLY: {response}\nJSON: {{{score_fields}}}\n"


def llm_judge_cfg(server: FakeOpenAI, **settings) -> JudgeConfig:
    backend = {"spec": "openai:judge-model", "base_url": server.url, "max_retries": 0}
    return JudgeConfig(type="llm", backend=backend, **settings)


def test_a_template_file_replaces_the_packaged_prompt_and_names_the_judge(openai_server, tmp_path):
    from psychocounsel.judge.templates import template_id

    template = tmp_path / "mine.txt"
    template.write_text(RATE_TEMPLATE, encoding="utf-8")
    openai_server.handler = scores_handler
    cfg = llm_judge_cfg(openai_server, template=template)
    judge = build_judge(cfg, load_rubric(), Cache(tmp_path / "c.sqlite"))
    [rating] = judge.rate([(SAD, WARM)])
    prompt = prompt_of(openai_server.requests[0].body)
    assert prompt.startswith("CUSTOM RATER\n- empathy (") and f"SPEECH: {SAD.text}" in prompt
    assert not rating.failed and judge.name == f"llm-json:openai:judge-model[mine.txt@{template_id(RATE_TEMPLATE)}]"


@pytest.mark.parametrize(
    "text, mode, message",
    [
        ("{principles} {speech}", "json", "missing placeholder {response}"),
        ("{principles} {speech} {response} {respnse}", "json", "unknown placeholder {respnse}"),
        ("{speech} {respnse}", "json", "missing placeholders {principles}, {response}; unknown placeholder {respnse}"),
        ("{principles} {speech} {response}", "logprob", "missing placeholders {definition}, {name}"),
        ("{name} {definition} {speech} {response} {} {", "logprob", "not a valid template"),
    ],
)
def test_a_template_is_checked_when_the_config_is_loaded(tmp_path, text, mode, message):
    from psychocounsel.config import load_config

    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(f"rate:\n  judge:\n    type: llm\n    mode: {mode}\n    template: {tmp_path / 't.txt'}\n")
    with pytest.raises(UserError) as info:
        load_config(config)
    assert message in str(info.value) and "\n" not in str(info.value) and "rate.judge" in str(info.value)


def test_a_relative_template_path_is_read_from_the_config_files_folder(tmp_path, monkeypatch):
    from psychocounsel.config import load_config

    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "mine.txt").write_text(RATE_TEMPLATE, encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(
        "rate:\n  judge: {type: llm, mode: json, template: prompts/mine.txt}\n"
        "eval:\n  speeches: s.jsonl\n  judges: [{spec: 'openai:x', template: prompts/mine.txt}]\n"
    )
    monkeypatch.chdir(tmp_path.parent)  # anywhere but the config's folder
    with pytest.raises(UserError) as info:  # found beside the config, and checked: a rating prompt cannot compare
        load_config(config)
    assert "missing placeholders {response_a}, {response_b}" in str(info.value) and "\n" not in str(info.value)
    config.write_text("rate:\n  judge: {type: llm, mode: json, template: prompts/mine.txt}\n")
    assert load_config(config).rate.judge.template == tmp_path / "prompts" / "mine.txt"


def test_a_template_on_a_rater_or_missing_at_build_is_an_error(openai_server, tmp_path):
    with pytest.raises(ValueError, match="template applies to llm judges only"):
        JudgeConfig(type="rater", template=tmp_path / "t.txt")
    cfg = llm_judge_cfg(openai_server, template=tmp_path / "absent.txt")  # maybe relative to a config file
    with pytest.raises(UserError, match="template file not found: .*absent.txt"):
        build_judge(cfg, load_rubric(), Cache(tmp_path / "c.sqlite"))


def test_rate_judge_key_follows_the_template_text_and_keeps_old_keys(openai_server, tmp_path):
    from psychocounsel.config import NOT_IN_IDENTITY, RateConfig
    from psychocounsel.crisis import RULE_VERSION
    from psychocounsel.rate import judge_key
    from psychocounsel.store import stable_hash

    rubric, template = load_rubric(), tmp_path / "mine.txt"
    template.write_text(RATE_TEMPLATE, encoding="utf-8")
    plain = RateConfig(judge=llm_judge_cfg(openai_server, structured="off"))
    # Before templates and structured outputs existed the key hashed the judge's fields alone.
    old = plain.judge.model_dump(mode="json", exclude={**NOT_IN_IDENTITY, "template": True, "structured": True})
    assert judge_key(plain, rubric, set()) == stable_hash([old, rubric.model_dump(mode="json"), RULE_VERSION, []], 12)
    assert judge_key(RateConfig(), rubric, set()) != judge_key(plain, rubric, set())

    custom = RateConfig(judge=llm_judge_cfg(openai_server, structured="off", template=template))
    first = judge_key(custom, rubric, set())
    assert first != judge_key(plain, rubric, set())
    template.write_text(RATE_TEMPLATE + "Be brief.\n", encoding="utf-8")
    assert judge_key(custom, rubric, set()) != first  # same path, new text: new ratings
    template.write_text(RATE_TEMPLATE, encoding="utf-8")
    assert judge_key(custom, rubric, set()) == first
    structured = RateConfig(judge=llm_judge_cfg(openai_server, structured="auto"))
    assert judge_key(structured, rubric, set()) != judge_key(plain, rubric, set())


def test_json_mode_sends_the_scores_schema_as_response_format(openai_server, tmp_path):
    openai_server.handler = scores_handler
    judge = build_judge(llm_judge_cfg(openai_server), load_rubric(), Cache(tmp_path / "c.sqlite"))
    ratings = judge.rate(ITEMS)
    assert [r.scores for r in ratings] == [SCORES_BY_RESPONSE["RESPONSE-ONE"], SCORES_BY_RESPONSE["RESPONSE-TWO"]]
    fmt = openai_server.requests[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == ["scores", "rationale"] and schema["properties"]["rationale"] == {"type": "string"}
    scores = schema["properties"]["scores"]
    assert scores["required"] == KEYS and len(KEYS) == 7
    assert all(v == {"type": "integer", "enum": [1, 2, 3, 4, 5]} for v in scores["properties"].values())


def test_structured_off_and_logprob_mode_send_no_response_format(openai_server, tmp_path):
    openai_server.handler = scores_handler
    build_judge(llm_judge_cfg(openai_server, structured="off"), load_rubric(), Cache(tmp_path / "c.sqlite")).rate(
        ITEMS[:1]
    )
    assert "response_format" not in openai_server.requests[0].body
    with pytest.raises(UserError, match="structured: on needs an openai: judge in json mode"):
        build_judge(llm_judge_cfg(openai_server, mode="logprob", structured="on"), load_rubric(), None)


def test_a_server_that_refuses_the_schema_gets_the_plain_prompt_for_the_rest_of_the_run(
    openai_server, tmp_path, caplog
):
    from openai_server import without_structured_outputs

    openai_server.handler = without_structured_outputs(scores_handler)
    judge = build_judge(llm_judge_cfg(openai_server, retries=0), load_rubric(), Cache(tmp_path / "c.sqlite"))
    with caplog.at_level("WARNING", logger="psychocounsel.judge.llm"):
        first = judge.rate(ITEMS)
        again = judge.rate([(MULTI, WARM)])
    assert not any(r.failed for r in first + again)  # the refusal was not spent as the one attempt
    assert first[1].scores == SCORES_BY_RESPONSE["RESPONSE-TWO"]
    sent = ["response_format" in r.body for r in openai_server.requests]
    assert sent == [True, True, False, False, False]  # both refused, both asked again, then plain only
    warnings = [r for r in caplog.records if "rejected response_format" in r.getMessage()]
    assert len(warnings) == 1 and "llm-json:openai:judge-model" in warnings[0].getMessage()


def test_structured_on_does_not_fall_back(openai_server, tmp_path):
    from openai_server import without_structured_outputs

    openai_server.handler = without_structured_outputs(scores_handler)
    cfg = llm_judge_cfg(openai_server, structured="on", retries=1)
    [rating] = build_judge(cfg, load_rubric(), Cache(tmp_path / "c.sqlite")).rate([(SAD, WARM)])
    assert rating.failed and rating.error == "HTTP 400: response_format rejected (after 2 attempts)"
    assert all("response_format" in r.body for r in openai_server.requests)


def test_the_schema_is_part_of_the_cache_key(openai_server, tmp_path):
    openai_server.handler = scores_handler
    cache = Cache(tmp_path / "c.sqlite")
    build_judge(llm_judge_cfg(openai_server), load_rubric(), cache).rate(ITEMS[:1])
    build_judge(llm_judge_cfg(openai_server), load_rubric(), cache).rate(ITEMS[:1])
    assert len(openai_server.requests) == 1  # the same structured request: served from the cache
    build_judge(llm_judge_cfg(openai_server, structured="off"), load_rubric(), cache).rate(ITEMS[:1])
    assert len(openai_server.requests) == 2  # without the schema: a different request, asked anew


# -- MiniLMJudge ------------------------------------------------------------------------------

GRIEF = Speech(
    "g1",
    "My mother died last month and I can't stop crying. I feel so alone at night "
    "and I don't know how to get through the days anymore.",
)
KIND = Response(
    "k1",
    "g1",
    "gen-a",
    "I'm so sorry about your mother. Losing her so recently, it makes sense "
    "that you feel alone and that the nights are the hardest. What has helped you, even a little, "
    "on the days since she died? How are you sleeping?",
    "m",
)
CURT = Response("c1", "g1", "gen-b", "Just get over it. Everyone has problems.", "m")
EMPTY = Response("e1", "g1", "gen-c", "", "m")
BLANK = Response("b1", "g1", "gen-c", "  \n ", "m")


@pytest.fixture(scope="module")
def minilm():
    return MiniLMJudge(load_rubric())


@pytest.fixture(scope="module")
def minilm_ratings(minilm):
    return minilm.rate([(GRIEF, KIND), (GRIEF, CURT), (GRIEF, EMPTY), (GRIEF, BLANK)])


def test_minilm_scores_every_key_within_1_to_5(minilm_ratings):
    for rating in minilm_ratings[:2]:
        assert not rating.failed and list(rating.scores) == KEYS
        assert all(1 <= v <= 5 for v in rating.scores.values())
        assert rating.judge == "minilm"
    assert [r.response_id for r in minilm_ratings] == ["k1", "c1", "e1", "b1"]


def test_minilm_prefers_the_empathic_questioning_response(minilm_ratings):
    kind, curt = minilm_ratings[0].scores, minilm_ratings[1].scores
    # Measured: empathy 4.9 vs 2.4, exploration 5.0 vs 3.0, safety 4.7 vs 1.5.
    assert kind["empathy"] > curt["empathy"] + 1
    assert kind["exploration"] > curt["exploration"] + 1
    assert curt["safety"] < kind["safety"] - 1
    assert load_rubric().score(kind) > load_rubric().score(curt)


def test_minilm_empty_response_is_a_failed_rating(minilm_ratings):
    for rating in minilm_ratings[2:]:
        assert rating.failed and rating.scores == {} and rating.error == "empty response"


def test_minilm_is_deterministic_and_counts_calls(minilm, minilm_ratings):
    before = minilm.calls_made
    again = minilm.rate([(GRIEF, CURT)])
    assert again[0].scores == pytest.approx(minilm_ratings[1].scores, abs=1e-3)
    assert minilm.calls_made == before + 1 and minilm.calls_cached == 0


def test_minilm_progress_counts_rated_items(minilm):
    seen = []
    minilm.rate([(GRIEF, KIND), (GRIEF, CURT)], progress=seen.append)
    assert seen == [1, 1]


def test_minilm_progress_counts_failed_items(minilm):
    seen = []
    minilm.rate([(GRIEF, EMPTY)], progress=seen.append)
    assert seen == [1]


def test_minilm_refuses_principles_without_exemplars():
    rubric = Rubric.model_validate(
        {
            "principles": [
                {"key": "humour", "name": "Humour", "definition": "Funny.", "anchors": {1: "a", 3: "b", 5: "c"}}
            ]
        }
    )
    with pytest.raises(UserError, match=r"no exemplars for principles \['humour'\]"):
        MiniLMJudge(rubric)


def test_split_sentences():
    assert split_sentences("I hear you. What happened next?\nTake care!") == [
        "I hear you.",
        "What happened next?",
        "Take care!",
    ]
    assert split_sentences("One.  Two!\n\n  Three") == ["One.", "Two!", "Three"]
    assert split_sentences("Mr.Smith said hi") == ["Mr.Smith said hi"]  # no space after the stop: one sentence
    assert split_sentences("") == [] and split_sentences(" \n ") == []


def test_surface_cues():
    cues = surface_cues("How do you feel? Is it ok? I care.")
    assert cues == {"open_questions": 1.0, "questions": 2.0, "truncated": 0.0, "chars": 34.0}
    assert surface_cues("Tell me more? could you say why?")["open_questions"] == 2.0
    assert surface_cues("I wonder what")["truncated"] == 1.0
    assert surface_cues('She said "stop."')["truncated"] == 0.0
    assert surface_cues("")["truncated"] == 0.0 and surface_cues("")["chars"] == 0.0


def test_to_scale():
    assert to_scale(0.5, centre=0.5, scale=0.1) == 3.0
    assert to_scale(0.5 + 0.1 * math.log(3), centre=0.5, scale=0.1) == pytest.approx(4.0)
    assert to_scale(-5.0, centre=0.5, scale=0.1) == pytest.approx(1.0)
    assert to_scale(5.0, centre=0.5, scale=0.1) == pytest.approx(5.0)
    values = [to_scale(x / 10, centre=0.3, scale=0.08) for x in range(-10, 11)]
    assert values == sorted(values) and all(1 <= v <= 5 for v in values)
