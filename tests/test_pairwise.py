"""Tests of the pairwise judges: the pure parsers, the LLM judge against a real HTTP server on
127.0.0.1 (tests/openai_server.py) and on conftest's tiny local model, the reward-model judge on
a tiny reward model built here, and the panel. Every speech and response is written by us."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from psychocounsel.backends import load_backend
from psychocounsel.config import BackendConfig, WinrateJudgeConfig
from psychocounsel.errors import UserError
from psychocounsel.judge import build_judge
from psychocounsel.judge.pairwise import (
    Comparison,
    LLMPairwiseJudge,
    PanelJudge,
    RaterJudge,
    RewardModelJudge,
    Verdict,
    majority,
)
from psychocounsel.judge.parse import ParseError, letter_preference, parse_choice, parse_json_comparison
from psychocounsel.records import Speech
from psychocounsel.rubric import PAPER_KEYS, load_rubric
from psychocounsel.store import Cache

from openai_server import FakeOpenAI, Reply, openai_server, prompt_of  # noqa: F401 (fixture)

KEYS = list(PAPER_KEYS)
FLIP = {"A": "B", "B": "A", "tie": "tie"}


# -- parse_json_comparison --------------------------------------------------------------------


def flat(overall="A", **over):
    return {**{k: "A" for k in KEYS}, **over, "overall": overall}


@pytest.mark.parametrize(
    "text, verdicts, rationale",
    [
        (json.dumps({**flat(), "rationale": "Warmer."}), flat(), "Warmer."),
        (json.dumps({"verdicts": flat("B"), "rationale": "Nested."}), flat("B"), "Nested."),
        (json.dumps({"verdicts": {k: "A" for k in KEYS}, "overall": "tie"}), flat("tie"), ""),
        ("```json\n" + json.dumps(flat(safety="B")) + "\n```", flat(safety="B"), ""),
        ("My verdict:\n" + json.dumps(flat(empathy="tie")) + "\nThanks!", flat(empathy="tie"), ""),
        (json.dumps({**flat(), "rationale": {"why": 1}}), flat(), '{"why": 1}'),
    ],
)
def test_parse_comparison_valid_forms(text, verdicts, rationale):
    assert parse_json_comparison(text, KEYS) == (verdicts, rationale)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("A", "A"),
        ("a", "A"),
        (" B ", "B"),
        ("Response A", "A"),
        ("response b", "B"),
        ("RESPONSE_A", "A"),
        ("tie", "tie"),
        ("Tie", "tie"),
        ("equal", "tie"),
        ("Equally good", "tie"),
        ('"B"', "B"),
        ("A.", "A"),
        ("**B**", "B"),
        ("draw", "tie"),
    ],
)
def test_parse_choice_variants(value, expected):
    assert parse_choice(value) == expected


@pytest.mark.parametrize("value", ["", "C", "AB", "A or B", "both", "neither", "Response C", None, 1, ["A"], True])
def test_parse_choice_refuses_anything_else(value):
    with pytest.raises(ParseError, match="is not A, B or tie"):
        parse_choice(value)


def test_parse_comparison_ignores_unasked_keys_and_dedupes_overall():
    text = json.dumps({"empathy": "B", "humour": "maybe", "overall": "b"})
    assert parse_json_comparison(text, ["empathy", "overall"]) == ({"empathy": "B", "overall": "B"}, "")


@pytest.mark.parametrize(
    "text, message",
    [
        ("Response A is better.", "no JSON object found"),
        ("", "no JSON object found"),
        ('{"empathy": "A",', "no JSON object found"),
        (json.dumps({"verdicts": ["A", "B"]}), "'verdicts' is not an object"),
        (json.dumps({k: "A" for k in KEYS}), "missing verdict for 'overall'"),
        (json.dumps({**flat(), "safety": None}), "missing verdict for 'safety'"),
        (json.dumps({k: v for k, v in flat().items() if k != "clarity"}), "missing verdict for 'clarity'"),
        (json.dumps(flat(safety="C")), "verdict for 'safety': 'C' is not A, B or tie"),
        (json.dumps(flat(empathy=4)), "verdict for 'empathy': 4 is not A, B or tie"),
        (json.dumps(flat(overall="both")), "verdict for 'overall': 'both' is not A, B or tie"),
    ],
)
def test_parse_comparison_errors_name_the_key(text, message):
    with pytest.raises(ParseError) as info:
        parse_json_comparison(text, KEYS)
    assert message in str(info.value)


# -- letter_preference ------------------------------------------------------------------------


def test_letter_preference_sums_spellings_and_renormalises():
    assert letter_preference({"A": math.log(0.3), " A": math.log(0.2), "B": math.log(0.4)}) == "A"  # 0.5 vs 0.4
    assert letter_preference({"(B": math.log(0.3), "B": math.log(0.3), "A": math.log(0.1)}) == "B"
    assert letter_preference({"A": math.log(0.45), "B": math.log(0.05), "The": math.log(0.5)}) == "A"
    assert letter_preference({"B": 0.0}) == "B"


def test_letter_preference_tie_band():
    assert letter_preference({"A": math.log(0.52), "B": math.log(0.48)}) == "tie"  # |0.04| < 0.1
    assert letter_preference({"A": math.log(0.56), "B": math.log(0.44)}) == "A"  # 0.12
    assert letter_preference({"A": math.log(0.56), "B": math.log(0.44)}, tie_band=0.2) == "tie"
    assert letter_preference({"A": math.log(0.5), "B": math.log(0.5)}, tie_band=0.0) == "tie"  # dead even


def test_letter_preference_lowercase_a_is_the_article_not_the_letter():
    with pytest.raises(ParseError, match="A and B hold 0%"):
        letter_preference({"a": math.log(0.9), "b": math.log(0.1)})


@pytest.mark.parametrize(
    "logprobs, kwargs, message",
    [
        (None, {}, "no logprobs returned"),
        ({}, {}, "no logprobs returned"),
        ({"Sure": -0.1, "I": -2.5}, {}, "A and B hold 0% of the probability (need 50%)"),
        ({"A": math.log(0.3), "B": math.log(0.19), "x": math.log(0.51)}, {}, "A and B hold 49%"),
        ({"A": math.log(0.6), "x": math.log(0.4)}, {"min_mass": 0.7}, "A and B hold 60% of the probability (need 70%)"),
    ],
)
def test_letter_preference_errors(logprobs, kwargs, message):
    with pytest.raises(ParseError) as info:
        letter_preference(logprobs, **kwargs)
    assert message in str(info.value)


def test_majority():
    assert majority(["A"]) == "A"
    assert majority(["A", "A", "B"]) == "A"
    assert majority(["A", "B", "tie"]) == "tie"
    assert majority(["tie", "tie", "A"]) == "tie"
    with pytest.raises(ValueError):
        majority([])


# -- LLMPairwiseJudge against a server on 127.0.0.1 -------------------------------------------

SAD = Speech("s1", "My dog died last week and the house feels empty. I keep expecting to hear her.")
MULTI = Speech(
    "s2",
    "It still hurts.",
    context=[
        {"role": "client", "content": "My friend moved away."},
        {"role": "counselor", "content": "How has that been?"},
    ],
)
WARM = "WARM-REPLY: I'm so sorry. What do you miss most about her?"
COLD = "COLD-REPLY: Just get over it."
ITEMS = [Comparison(SAD, WARM, COLD, "c1"), Comparison(MULTI, COLD, WARM, "c2")]


def which_first(prompt: str) -> str:
    """ "A" when the warm reply is in position A of this prompt, else "B"."""
    return "A" if prompt.index("WARM-REPLY") < prompt.index("COLD-REPLY") else "B"


def warm_wins(body: dict) -> Reply:
    """A judge that prefers the warm reply wherever it is, calls safety a tie."""
    side = which_first(prompt_of(body))
    verdicts = {k: ("tie" if k == "safety" else side.lower()) for k in KEYS}
    return Reply.ok(json.dumps({**verdicts, "overall": f"Response {side}", "rationale": "Warmer."}))


def llm_judge(server: FakeOpenAI, tmp_path, mode="json", retries=2, **settings) -> LLMPairwiseJudge:
    cfg = BackendConfig(spec="openai:judge-model", base_url=server.url, max_retries=0)
    backend = load_backend(cfg, Cache(tmp_path / "cache.sqlite"))
    return LLMPairwiseJudge(
        backend, WinrateJudgeConfig(spec=cfg.spec, mode=mode, retries=retries, **settings), load_rubric()
    )


def test_json_mode_verdicts_follow_the_better_response(openai_server, tmp_path):
    openai_server.handler = warm_wins
    judge = llm_judge(openai_server, tmp_path)
    v1, v2 = judge.compare(ITEMS)

    assert (v1.overall, v2.overall) == ("A", "B") and not v1.failed and not v2.failed
    assert v1.per_principle == {k: "tie" if k == "safety" else "A" for k in KEYS}
    assert v2.per_principle["empathy"] == "B" and "overall" not in v2.per_principle
    assert v1.rationale == "Warmer." and v1.scores is None
    assert len(openai_server.requests) == 2
    body = openai_server.requests[0].body
    assert body["temperature"] == 0.0 and body["max_tokens"] == 400 and "seed" not in body


def test_json_prompt_holds_rubric_speech_both_responses_and_context(openai_server, tmp_path):
    openai_server.handler = warm_wins
    llm_judge(openai_server, tmp_path).compare(ITEMS)
    one, two = sorted((prompt_of(r.body) for r in openai_server.requests), key=lambda p: SAD.text not in p)
    assert SAD.text in one and "<earlier_in_session>" not in one
    assert "Response A:\n<response_a>\n" + WARM in one and "Response B:\n<response_b>\n" + COLD in one
    assert "<earlier_in_session>\nClient: My friend moved away.\nCounselor: How has that been?" in two
    for p in load_rubric().principles:
        assert f"- {p.key} ({p.name}):" in one
    assert '{"empathy": "A" | "B" | "tie", "relevance": "A" | "B" | "tie"' in one
    assert '"overall": "A" | "B" | "tie", "rationale": "<one sentence>"}' in one


def test_json_mode_retries_malformed_output_then_fails_without_a_verdict(openai_server, tmp_path):
    openai_server.handler = lambda body: Reply.ok('{"empathy": "A", "overall": "A"')  # cut off
    [verdict] = llm_judge(openai_server, tmp_path).compare(ITEMS[:1])

    assert verdict.failed and verdict.overall is None and verdict.per_principle == {}
    assert verdict.error == "no JSON object found (after 3 attempts)"
    assert verdict.raw == '{"empathy": "A", "overall": "A"'
    bodies = [r.body for r in openai_server.requests]
    assert [(b["temperature"], b.get("seed")) for b in bodies] == [(0.0, None), (0.7, 1), (0.7, 2)]


def test_json_mode_retry_recovers_and_only_failing_items_are_retried(openai_server, tmp_path):
    openai_server.push(Reply.ok(json.dumps({"empathy": "A", "overall": "A"})))  # first item: no 'relevance'
    openai_server.handler = warm_wins
    verdicts = llm_judge(openai_server, tmp_path).compare(ITEMS)
    assert [v.overall for v in verdicts] == ["A", "B"]
    assert len(openai_server.requests) == 3


def test_json_mode_missing_key_is_named_in_the_failure(openai_server, tmp_path):
    reply = {k: "A" for k in KEYS if k != "autonomy"} | {"overall": "A"}
    openai_server.handler = lambda body: Reply.ok(json.dumps(reply))
    [verdict] = llm_judge(openai_server, tmp_path, retries=0).compare(ITEMS[:1])
    assert verdict.failed and verdict.error == "missing verdict for 'autonomy' (after 1 attempts)"


def test_json_mode_server_errors_are_failed_verdicts_and_not_cached(openai_server, tmp_path):
    openai_server.handler = lambda body: Reply.error(500, "overloaded")
    judge = llm_judge(openai_server, tmp_path, retries=1)
    verdicts = judge.compare(ITEMS)
    assert all(v.failed and v.overall is None for v in verdicts)
    # The status and the attempts, never the server's body text (it may echo the client's speech).
    assert verdicts[0].error == "HTTP 500 after 1 attempts (after 2 attempts)"
    assert "overloaded" not in verdicts[0].error
    assert len(openai_server.requests) == 4

    openai_server.handler = warm_wins  # the server recovers: a rerun asks again, nothing cached
    assert [v.overall for v in judge.compare(ITEMS)] == ["A", "B"]
    assert judge.calls_made == 6 and judge.calls_cached == 0
    judge.compare(ITEMS)
    assert len(openai_server.requests) == 6 and judge.calls_cached == 2


def logprob_handler(letter_probs: dict[str, dict[str, float]]):
    """Logprobs by which principle the prompt names ("overall" when it names them all)."""
    names = {p.name: p.key for p in load_rubric().principles}

    def handler(body):
        prompt = prompt_of(body)
        found = [k for n, k in names.items() if f"({n}):" in prompt]
        dist = letter_probs[found[0] if len(found) == 1 else "overall"]
        best = max(dist, key=dist.get)
        return Reply.ok(best, logprobs=[(t, math.log(p)) for t, p in sorted(dist.items(), key=lambda x: -x[1])])

    return handler


LETTERS = {k: {"A": 0.9, "B": 0.1} for k in KEYS} | {
    "safety": {"A": 0.5, "B": 0.48, "I": 0.02},
    "clarity": {" B": 0.5, "B": 0.2, "A": 0.3},
    "overall": {"A": 0.7, "B": 0.3},
}


def test_logprob_mode_one_letter_call_per_principle_plus_overall(openai_server, tmp_path):
    openai_server.handler = logprob_handler(LETTERS)
    judge = llm_judge(openai_server, tmp_path, mode="logprob")
    [verdict] = judge.compare(ITEMS[:1])

    assert not verdict.failed and verdict.overall == "A"
    assert verdict.per_principle == {k: {"safety": "tie", "clarity": "B"}.get(k, "A") for k in KEYS}
    assert len(openai_server.requests) == len(KEYS) + 1
    body = openai_server.requests[0].body
    assert (body["max_tokens"], body["logprobs"], body["top_logprobs"], body["temperature"]) == (1, True, 20, 0.0)
    assert prompt_of(body).endswith("Answer with a single letter: A or B.")


def test_logprob_mode_overall_only_makes_one_call(openai_server, tmp_path):
    openai_server.handler = logprob_handler(LETTERS)
    judge = llm_judge(openai_server, tmp_path, mode="logprob", per_principle=False)
    [verdict] = judge.compare(ITEMS[:1])
    assert (verdict.overall, verdict.per_principle, len(openai_server.requests)) == ("A", {}, 1)


# -- RaterJudge -------------------------------------------------------------------------------


def test_rater_judge_prefers_the_warm_reply_per_principle_and_ignores_position():
    speech = Speech("s", "I have not slept properly in weeks and I snap at everyone at work. I feel like a bad person.")
    warm = (
        "That sounds exhausting, and it makes sense you feel on edge. It takes courage to notice this. "
        "What do you think is keeping you awake at night?"
    )
    cold = "Everyone has bad weeks. Just go to bed earlier."
    judge = build_judge(WinrateJudgeConfig(spec="minilm"), load_rubric(), Cache(":memory:"))
    assert isinstance(judge, RaterJudge)
    first, second = judge.compare([Comparison(speech, warm, cold, "1"), Comparison(speech, cold, warm, "2")])
    assert first.overall == "A" and second.overall == "B"
    assert {k: FLIP[v] for k, v in first.per_principle.items()} == second.per_principle
    assert set(first.per_principle) == set(KEYS) and first.scores["a"] > first.scores["b"]
    assert judge.name == "minilm"


def test_logprob_mode_a_failed_principle_fails_the_verdict(openai_server, tmp_path):
    openai_server.handler = logprob_handler(LETTERS | {"empathy": {"Sure": 0.9, "A": 0.1}})
    [verdict] = llm_judge(openai_server, tmp_path, mode="logprob").compare(ITEMS[:1])
    assert verdict.failed and verdict.overall is None
    assert verdict.error == "empathy: A and B hold 10% of the probability (need 50%)"
    assert verdict.raw == "empathy: 'Sure'"


def test_logprob_mode_on_a_tiny_local_model_gives_verdicts_or_clear_failures(tiny_lm, tmp_path):
    judge = build_judge(
        WinrateJudgeConfig(spec=f"transformers:{tiny_lm}", mode="logprob"), load_rubric(), Cache(tmp_path / "c.sqlite")
    )
    assert isinstance(judge, LLMPairwiseJudge)
    assert judge.name == f"llm-logprob:transformers:{tiny_lm}"
    verdicts = judge.compare(ITEMS)
    assert len(verdicts) == 2
    for v in verdicts:
        if v.failed:  # the word-level tiny model has no "A" or "B" token
            assert v.overall is None and "A and B hold" in v.error
        else:
            assert v.overall in ("A", "B", "tie") and set(v.per_principle) == set(KEYS)


# -- RewardModelJudge -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rm(tiny_lm, tmp_path_factory):
    """conftest's tiny Llama as a randomly initialised one-output sequence classifier."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-rm")
    torch.manual_seed(0)
    LlamaForSequenceClassification(AutoConfig.from_pretrained(tiny_lm, num_labels=1)).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(path)
    return path


def test_reward_model_judge_swapping_swaps_the_verdict(tiny_rm):
    speech = Speech("s", "i feel sad and alone every night")
    items = [
        Comparison(speech, "that sounds hard . tell me more", "cannot stop thinking", "x"),
        Comparison(speech, "why", "you are not alone . can we talk", "y"),
    ]
    judge = RewardModelJudge(tiny_rm, batch_size=2, max_length=64)
    verdicts = judge.compare(items + [it.swapped() for it in items])

    for v, w in zip(verdicts[:2], verdicts[2:]):
        assert v.overall in ("A", "B") and w.overall == FLIP[v.overall]
        assert (v.scores["a"], v.scores["b"]) == pytest.approx((w.scores["b"], w.scores["a"]), abs=1e-5)
        assert v.per_principle == {} and not v.failed
    [same] = judge.compare([Comparison(speech, "tell me more", "tell me more", "z")])
    assert same.overall == "tie"
    assert judge.compare([]) == []


def pairwise_judge(spec, rubric, cache, **settings):
    return build_judge(WinrateJudgeConfig(spec=spec, **settings), rubric, cache)


def test_build_judge_recognises_reward_models(tiny_rm, tiny_lm, tmp_path):
    rubric, cache = load_rubric(), Cache(tmp_path / "c.sqlite")
    judge = pairwise_judge(f"rm:{tiny_rm}", rubric, cache)
    assert isinstance(judge, RewardModelJudge) and judge.name == f"rm:{tiny_rm}"
    assert isinstance(pairwise_judge(str(tiny_rm), rubric, cache), RewardModelJudge)
    with pytest.raises(UserError, match="is not a reward model"):
        pairwise_judge(f"rm:{tiny_lm}", rubric, cache)
    with pytest.raises(UserError, match="no config.json"):
        pairwise_judge(f"rm:{tmp_path / 'nowhere'}", rubric, cache)
    with pytest.raises(UserError, match="is a folder but not a reward model; use rm:PATH"):
        pairwise_judge(str(tiny_lm), rubric, cache)
    with pytest.raises(UserError, match="is not an existing path"):
        pairwise_judge(str(tmp_path / "missing-judge"), rubric, cache)
    with pytest.raises(UserError, match="model path does not exist"):
        pairwise_judge(f"transformers:{tmp_path / 'missing'}", rubric, cache)
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        pairwise_judge("nope:x", rubric, cache)
    # The mode is a config bound now (WinrateJudgeConfig.mode: json | logprob).
    with pytest.raises(ValidationError, match="mode"):
        pairwise_judge(f"transformers:{tiny_lm}", rubric, cache, mode="scores")


def test_build_judge_openai_with_base_url(openai_server, tmp_path):
    openai_server.handler = warm_wins
    judge = pairwise_judge("openai:m", load_rubric(), Cache(tmp_path / "c.sqlite"), base_url=openai_server.url)
    assert isinstance(judge, LLMPairwiseJudge) and judge.compare(ITEMS[:1])[0].overall == "A"
    assert judge.name == "llm-json:openai:m"
    logprob = pairwise_judge(
        "openai:m", load_rubric(), Cache(tmp_path / "c.sqlite"), mode="logprob", base_url=openai_server.url
    )
    assert logprob.name == "llm-logprob:openai:m"


# -- PanelJudge -------------------------------------------------------------------------------


class Scripted:
    """A test double: the same verdict for every item."""

    def __init__(self, name: str, verdict: Verdict):
        self.name, self.verdict = name, verdict

    def compare(self, items, progress=None):
        return [self.verdict for _ in items]


def vote(overall, **per_principle):
    return Verdict(overall, per_principle)


def panel_of(*verdicts):
    return PanelJudge([Scripted(f"j{i}", v) for i, v in enumerate(verdicts)])


def test_panel_majority_per_item_and_per_principle():
    panel = panel_of(vote("A", empathy="A", safety="B"), vote("A", empathy="B"), vote("B", empathy="B"))
    [v] = panel.compare(ITEMS[:1])
    assert v.overall == "A" and not v.failed
    assert v.per_principle == {"empathy": "B", "safety": "B"}  # safety: the one member that gave it
    assert panel.name == "panel(j0,j1,j2)"
    assert json.loads(v.rationale.removeprefix("votes: ")) == {"j0": "A", "j1": "A", "j2": "B"}


@pytest.mark.parametrize(
    "overalls, expected",
    [
        (["A", "B"], "tie"),
        (["A", "B", "tie"], "tie"),
        (["tie", "tie", "A"], "tie"),
        (["B", "B", "A"], "B"),
    ],
)
def test_panel_without_majority_is_a_tie(overalls, expected):
    assert panel_of(*(vote(o) for o in overalls)).compare(ITEMS)[1].overall == expected


def test_panel_leaves_failed_members_out_and_fails_only_when_all_fail():
    failed = Verdict.failure("no JSON object found", "junk")
    assert panel_of(failed, vote("B"), failed).compare(ITEMS[:1])[0].overall == "B"
    assert panel_of(failed, vote("B"), vote("A")).compare(ITEMS[:1])[0].overall == "tie"
    [v] = panel_of(failed, Verdict.failure("HTTP 500")).compare(ITEMS[:1])
    assert v.failed and v.overall is None
    assert v.error == "every judge of the panel failed (j0: no JSON object found; j1: HTTP 500)"


def test_build_judge_panel_of_one_spec_is_that_judge(tiny_rm, tmp_path):
    rubric, cache = load_rubric(), Cache(tmp_path / "c.sqlite")
    assert isinstance(pairwise_judge([f"rm:{tiny_rm}"], rubric, cache), RewardModelJudge)
    panel = pairwise_judge([f"rm:{tiny_rm}", str(tiny_rm)], rubric, cache)
    assert isinstance(panel, PanelJudge) and len(panel.judges) == 2
    assert panel.name == f"panel(rm:{tiny_rm},rm:{tiny_rm})"
    # An empty panel is a config error now (WinrateJudgeConfig.spec must not be empty).
    with pytest.raises(ValidationError, match="a judge needs a spec"):
        pairwise_judge([], rubric, cache)


# -- templates as config and structured outputs ------------------------------------------------

COMPARE_TEMPLATE = "MY COMPARISON\n{principles}\n{speech}\nFIRST: {response_a}\nSECOND: {response_b}\n"


def test_a_compare_template_file_replaces_the_packaged_prompt(openai_server, tmp_path):
    template = tmp_path / "compare.txt"
    template.write_text(COMPARE_TEMPLATE, encoding="utf-8")
    openai_server.handler = warm_wins
    judge = pairwise_judge(
        "openai:m", load_rubric(), Cache(tmp_path / "c.sqlite"), base_url=openai_server.url, template=template
    )
    assert judge.compare(ITEMS[:1])[0].overall == "A"
    prompt = prompt_of(openai_server.requests[0].body)
    assert prompt.startswith("MY COMPARISON\n- empathy (") and f"FIRST: {WARM}\nSECOND: {COLD}" in prompt
    assert judge.name.startswith("llm-json:openai:m[compare.txt@")


@pytest.mark.parametrize(
    "text, mode, message",
    [
        ("{principles} {speech} {response_a}", "json", "missing placeholder {response_b}"),
        ("{principles} {speech} {response_a} {response_b} {verdict_fields}", "logprob", "unknown placeholder"),
        ("{principles} {speech} {response_a} {response_b} {response}", "json", "unknown placeholder {response}"),
    ],
)
def test_a_compare_template_is_checked_for_its_placeholders(tmp_path, text, mode, message):
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        WinrateJudgeConfig(spec="openai:m", mode=mode, template=tmp_path / "t.txt")


def test_json_mode_sends_the_verdict_schema_and_falls_back_once_refused(openai_server, tmp_path):
    from openai_server import without_structured_outputs

    openai_server.handler = warm_wins
    judge = llm_judge(openai_server, tmp_path)
    assert [v.overall for v in judge.compare(ITEMS)] == ["A", "B"]
    schema = openai_server.requests[0].body["response_format"]["json_schema"]["schema"]
    assert schema["required"] == [*KEYS, "overall", "rationale"]
    assert schema["properties"]["overall"] == {"type": "string", "enum": ["A", "B", "tie"]}

    openai_server.handler = without_structured_outputs(warm_wins)
    refusing = llm_judge(openai_server, tmp_path / "other", retries=0)
    assert [v.overall for v in refusing.compare(ITEMS)] == ["A", "B"]
    assert ["response_format" in r.body for r in openai_server.requests[2:]] == [True, True, False, False]
