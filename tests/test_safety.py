"""The crisis screen: whose risk it is, categories and evidence, resources, crisis replies, shipped weights.

Cases are hand-written (src/psychocounsel/safety/cases.yaml and below); nothing here needs ../shared.
The screen runs all-MiniLM-L6-v2 on CPU: one module-scoped call screens every case (~2 s).
"""

from __future__ import annotations

import json

import pytest

from psychocounsel.safety import CATEGORIES, LEVELS, Assessment, handles_crisis, resources, screen
from psychocounsel.safety.cases import LONG_CHARS, cases, probe_cases
from psychocounsel.safety.head import WEIGHTS, Head, ScreenModel
from psychocounsel.safety.policy import Policy
from psychocounsel.safety.rules import keyword_flag, read

EXTRA = {
    "quoted_thought": ('I keep thinking "I want to die" and it scares me how calm I feel about it.', "crisis"),
    "news_third_person": ("The article said suicide rates rose last year among young men.", "none"),
    "told_me_to": ("My brother told me to go kill myself when we argued about the car.", "none"),
    "killed_it": ("We absolutely killed it at the gig last night, the crowd went wild.", "none"),
}


@pytest.fixture(scope="module")
def screened() -> dict[str, tuple[str, Assessment]]:
    items = {c["id"]: c["text"] for c in cases()} | {k: t for k, (t, _) in EXTRA.items()}
    return dict(zip(items, zip(items.values(), screen(list(items.values())))))


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["id"])
def test_hand_written_cases_get_their_level(case, screened):
    text, a = screened[case["id"]]
    assert a.level == case["level"], (case["id"], a.to_dict())
    if "subject" in case:
        assert a.subject == case["subject"]
    assert set(case.get("categories", [])) <= set(a.categories)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_more_cases(name, screened):
    assert screened[name][1].level == EXTRA[name][1], screened[name][1].to_dict()


@pytest.mark.parametrize("case", [c for c in cases() if c.get("evidence")], ids=lambda c: c["id"])
def test_evidence_offsets_point_at_the_risk_words(case, screened):
    text, a = screened[case["id"]]
    for phrase in case["evidence"]:
        start = text.index(phrase)
        assert any(s < start + len(phrase) and start < e for s, e in a.evidence), (phrase, a.evidence)
    for s, e in a.evidence:
        assert 0 <= s < e <= len(text)


def test_risk_in_the_last_paragraph_of_a_long_post_counts(screened):
    text, a = screened["long_risk_at_end"]
    assert len(text) >= LONG_CHARS
    assert a.level == "crisis"
    last = text.rindex("\n\n")
    assert a.evidence and all(s > last for s, _ in a.evidence)
    assert screened["long_no_risk"][1].level == "none"


def test_speaker_vs_others_and_idioms(screened):
    assert screened["plan_pills"][1].level == "crisis"
    assert screened["support_other"][1].level == "none"  # supporting someone else
    assert screened["deadline_idiom"][1].level == "none"
    assert screened["lyrics"][1].level == "none"
    assert screened["sarcasm"][1].level == "none"
    friend = screened["friend_question"][1]
    assert (friend.level, friend.subject) == ("concern", "other")


def test_scores_are_monotone_with_the_levels(screened):
    by_level = {lv: [a.score for _, a in screened.values() if a.level == lv] for lv in LEVELS}
    assert max(by_level["none"]) < min(by_level["concern"]) <= max(by_level["concern"]) < min(by_level["crisis"])
    assert all(0.0 <= a.score <= 1.0 for _, a in screened.values())


def test_to_dict_is_json_safe_and_carries_no_text(screened):
    for _, a in screened.values():
        d = json.loads(json.dumps(a.to_dict()))
        assert set(d) == {"level", "score", "categories", "evidence", "subject"}
        # every string is from a fixed vocabulary; evidence is offsets only
        assert d["level"] in LEVELS and d["subject"] in (None, "self", "other")
        assert set(d["categories"]) <= set(CATEGORIES)
        assert all(len(span) == 2 and all(isinstance(x, int) for x in span) for span in d["evidence"])


def test_empty_and_blank_texts():
    res = screen(["", "   ", "ok"])
    assert [a.level for a in res] == ["none", "none", "none"]
    assert screen([]) == []


def test_shipped_weights_reproduce_the_probe_scores_of_training():
    meta = ScreenModel.load().meta
    probes = probe_cases()
    assert set(meta["probes"]) == {c["id"] for c in probes}
    got = screen([c["text"] for c in probes])
    for c, a in zip(probes, got):
        assert a.score == pytest.approx(meta["probes"][c["id"]], abs=1e-4), c["id"]


def test_weights_file_and_policy():
    head, meta = Head.load(WEIGHTS)
    assert head.coef.shape == (384,)
    policy = Policy(**meta["policy"])
    assert 0 < policy.concern < policy.crisis < 1
    assert meta["split_sizes"]["test"] > 0 and "data_sha256" in meta


def test_rules_read_whose_risk_it_is():
    assert [m.role for m in read("My sister keeps talking about killing herself.").matches][0] == "other"
    assert {m.level for m in read("He was going to end it all, he said.").matches} <= {"signal"}
    assert "crisis" in [m.level for m in read("I can't stop thinking about killing myself.").matches]
    assert [m.level for m in read("I'm not going to kill myself.").matches] == ["signal"]
    assert keyword_flag("please don't kill yourself, suicide is not the answer")  # the baseline cannot tell


def test_resources_by_locale():
    us = resources("en_US")
    assert us[0]["name"].startswith("988") and "text" in us[0]["contact"].lower()
    for loc in ("en_GB", "en-IE", "UK", "IE"):
        assert any("116 123" in r["contact"] for r in resources(loc)), loc
    for loc in (None, "fr_FR", "de", "xx_YY"):
        default = resources(loc)
        assert any("findahelpline.com" in r["contact"] for r in default)
        assert any("emergency" in r["name"].lower() for r in default)
    for entries in (us, resources()):
        assert all(set(r) == {"name", "contact", "region"} for r in entries)
    resources("en_US")[0]["name"] = "changed"
    assert resources("en_US")[0]["name"].startswith("988")  # callers get copies


HANDLED = [
    "I'm really worried about your safety right now. Please call or text 988, or go to the nearest emergency room.",
    "It sounds like you are thinking about ending your life. Can you call the Samaritans on 116 123 right now?",
    "Thank you for telling me you took those pills. This is an emergency: please call 911 or poison control now.",
    "Are you safe right now? If the pills are near you, please put them away and call someone who can stay with you.",
    "What you're describing is serious and I'm concerned for you. Is there a friend you could call right now to be with you?",
]
NOT_HANDLED = [
    "That sounds really hard. I'm here to listen, and your feelings are valid. What has been weighing on you most?",
    "Have you considered talking to a therapist about these feelings? It might help to explore them.",
    "It sounds like you are having thoughts of suicide. Tell me more about what has been happening.",
    "You don't need a hotline. Suicide is never the answer, just get some sleep and things will look better.",
    "Many people feel this way after a breakup. Try journaling, exercise, and spending time with friends.",
    "",
]


@pytest.mark.parametrize("reply", HANDLED)
def test_replies_that_handle_a_crisis(reply):
    assert handles_crisis(reply)


@pytest.mark.parametrize("reply", NOT_HANDLED)
def test_replies_that_do_not_handle_a_crisis(reply):
    assert not handles_crisis(reply)
