"""Pairwise judges: which of two responses to the same speech is better, overall and per principle.

The contract: a judge has ``name`` and ``compare(items, progress=None) -> list[Verdict]``, one
verdict per :class:`Comparison`, in the same order, computed as one batch. A judge that cannot
read a comparison returns a *failed* verdict (``overall`` None, ``error`` and ``raw`` set); it
never guesses.

- :class:`LLMPairwiseJudge`: a prompt template (templates/compare_*.txt) + a pure parser
  (parse.py) + any backend, like judge/llm.py. ``json`` mode asks once per comparison for every
  principle and "overall"; ``logprob`` mode asks once per (comparison, principle) plus once
  "overall" for a single letter and reads P(A) against P(B) (parse.letter_preference).
- :class:`RewardModelJudge`: the response with the higher reward wins. It scores each response
  on its own, so it has no position bias by construction.
- :class:`RaterJudge`: a rater's principle scores compared (``rater`` or ``minilm``), per principle and overall;
  also position-free.
- :class:`PanelJudge`: the majority of several judges.

Judges are made by ``judge.build_judge`` from a spec (specs.py): ``rm:PATH``, ``reward_model`` or a
folder holding a reward model is a reward-model judge; ``rater`` / ``minilm`` a rater; a backend spec
(``default``, ``transformers:PATH``, ``openai:MODEL``) an LLM judge.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import Backend, ChatRequest, load_backend
from ..config import BackendConfig, WinrateJudgeConfig
from ..errors import UserError
from ..records import Speech
from ..rubric import Rubric
from ..store import Cache
from .llm import (
    StructuredOutput,
    ask_per_key,
    ask_with_retries,
    load_template,
    render_context,
    render_principles,
    template_suffix,
)
from .parse import TIE_BAND, comparison_schema, letter_preference, parse_json_comparison

OVERALL = "overall"


@dataclass
class Comparison:
    """Two responses to one speech. ``id`` names the comparison in logs (never its text)."""

    speech: Speech
    a: str
    b: str
    id: str

    def swapped(self, suffix: str = ":ba") -> Comparison:
        """The same comparison with the responses in the other positions."""
        return Comparison(self.speech, self.b, self.a, self.id + suffix)


@dataclass
class Verdict:
    """A judge's answer to one comparison. ``overall`` and each ``per_principle`` value are "A",
    "B" or "tie"; a failed verdict has ``overall`` None, ``failed`` True, the reason in ``error``
    and the judge's raw text in ``raw``. ``scores`` holds the numbers behind a verdict where a
    judge has them (a reward model's ``{"a": r_a, "b": r_b}``)."""

    overall: str | None = None
    per_principle: dict[str, str] = field(default_factory=dict)
    failed: bool = False
    error: str = ""
    raw: str = ""
    scores: dict[str, float] | None = None
    rationale: str = ""

    @classmethod
    def failure(cls, error: str, raw: str = "") -> Verdict:
        return cls(failed=True, error=error, raw=raw[:2000])


Progress = Callable[[int], Any] | None


class LLMPairwiseJudge:
    """An LLM compares two responses, on ``backend`` (usually a CachedBackend), as ``settings``
    say (mode, retries, max_tokens, min_mass, per_principle, template, structured). Retries of
    unparseable json replies run at temperature 0.7 with a new seed, so each retry is a new cache
    key."""

    def __init__(self, backend: Backend, settings: WinrateJudgeConfig, rubric: Rubric, tie_band: float = TIE_BAND):
        if OVERALL in rubric.keys:
            raise UserError(f"a rubric principle may not be keyed '{OVERALL}': pairwise judges use it for the verdict")
        self.backend, self.settings, self.rubric, self.tie_band = backend, settings, rubric, tie_band
        self.mode = settings.mode
        text = load_template(settings.template, "compare", self.mode)
        self.name_suffix = template_suffix(settings.template, text)
        self.name = f"llm-{settings.mode}:{backend.model}" + self.name_suffix
        self.template = text.rstrip("\n")
        schema = comparison_schema(rubric.keys)
        self.structured = StructuredOutput(settings.structured, backend, self.mode, "comparison", schema)

    @classmethod
    def build(cls, spec, settings: WinrateJudgeConfig, rubric: Rubric, cache: Cache) -> LLMPairwiseJudge:
        return cls(load_backend(BackendConfig(spec=spec.text, base_url=settings.base_url), cache), settings, rubric)

    calls_made = property(lambda self: getattr(self.backend, "calls_made", 0))
    calls_cached = property(lambda self: getattr(self.backend, "calls_cached", 0))

    def _prompt(self, item: Comparison, rubric: Rubric, **extra: str) -> str:
        return self.template.format(
            principles=render_principles(rubric),
            context=render_context(item.speech),
            speech=item.speech.text,
            response_a=item.a,
            response_b=item.b,
            **extra,
        )

    def json_request(self, item: Comparison, attempt: int) -> ChatRequest:
        fields = ", ".join(f'"{k}": "A" | "B" | "tie"' for k in self.rubric.keys)
        params: dict[str, Any] = {
            "temperature": 0.0,
            "max_tokens": self.settings.max_tokens,
            **self.structured.params(),
        }
        if attempt:
            params.update(temperature=0.7, seed=attempt)
        return ChatRequest(
            [{"role": "user", "content": self._prompt(item, self.rubric, verdict_fields=fields)}], params
        )

    def logprob_request(self, item: Comparison, key: str) -> ChatRequest:
        """One letter for principle ``key``, or for all principles together when key is "overall"."""
        rubric = (
            self.rubric
            if key == OVERALL
            else self.rubric.model_copy(update={"principles": [p for p in self.rubric.principles if p.key == key]})
        )
        params = {"temperature": 0.0, "max_tokens": 1, "logprobs": True, "top_logprobs": 20}
        return ChatRequest([{"role": "user", "content": self._prompt(item, rubric)}], params)

    def compare(self, items: list[Comparison], progress: Progress = None) -> list[Verdict]:
        if self.mode == "json":
            return self._compare_json(items, progress)
        return self._compare_logprob(items, progress)

    def _compare_json(self, items: list[Comparison], progress: Progress) -> list[Verdict]:
        def parse(i: int, text: str) -> Verdict:
            verdicts, rationale = parse_json_comparison(text, self.rubric.keys)
            return Verdict(verdicts.pop(OVERALL), verdicts, rationale=rationale[:500])

        return ask_with_retries(
            self.backend,
            len(items),
            lambda i, a: self.json_request(items[i], a),
            parse,
            lambda i, error, raw: Verdict.failure(error, raw),
            self.settings.retries,
            progress,
            lambda comps: self.structured.refused(comps, self.name),
        )

    def _compare_logprob(self, items: list[Comparison], progress: Progress) -> list[Verdict]:
        # per_principle=False asks overall only, 8x fewer calls (SmolLM2-135M on 2 CPU cores: ~1 s
        # per 450-token call).
        keys = (self.rubric.keys if self.settings.per_principle else []) + [OVERALL]
        answers = ask_per_key(
            self.backend,
            len(items),
            keys,
            lambda i, k: self.logprob_request(items[i], k),
            lambda comp: letter_preference(comp.top_logprobs, self.settings.min_mass, self.tie_band),
        )
        verdicts = []
        for found, error, raw in answers:
            verdicts.append(Verdict.failure(error, raw) if error else Verdict(found.pop(OVERALL), found))
            if progress:
                progress(1)
        return verdicts

    def close(self) -> None:
        self.backend.close()


class RaterJudge:
    """A rating judge used pairwise: both responses are rated on every principle (``rater``, the
    rate stage's default, or ``minilm``); on each principle the higher score wins, and overall the
    higher weighted mean (rubric weights). Scores within ``tie_band`` of each other tie. Position
    plays no part. A failed rating fails the verdict with its reason."""

    def __init__(self, rubric: Rubric, tie_band: float = 0.1, embedding_model: str | None = None, kind: str = "rater"):
        from ..specs import JUDGE_REGISTRY, load_class

        self.rubric, self.tie_band = rubric, tie_band
        rater = load_class(*JUDGE_REGISTRY[(kind, "rate")], f"judge '{kind}'")
        self.rater = rater(rubric, embedding_model)
        self.name = kind

    calls_made = calls_cached = 0

    @classmethod
    def build(cls, spec, settings, rubric: Rubric, cache) -> RaterJudge:
        return cls(rubric, kind=spec.judge_kind)

    def _winner(self, a: float, b: float) -> str:
        return "tie" if abs(a - b) < self.tie_band else "A" if a > b else "B"

    def compare(self, items: list[Comparison], progress: Progress = None) -> list[Verdict]:
        from ..records import Response

        # Each distinct (speech, response) is rated once: both orders of a pair share their ratings.
        unique: dict[tuple[str, str], tuple] = {}
        for it in items:
            for text in (it.a, it.b):
                unique.setdefault(
                    (it.speech.id, text),
                    (
                        it.speech,
                        Response(id=f"r{len(unique)}", speech_id=it.speech.id, generator="", text=text, model=""),
                    ),
                )
        rated = dict(zip(unique, self.rater.rate(list(unique.values()))))
        verdicts = []
        for it in items:
            ra, rb = rated[(it.speech.id, it.a)], rated[(it.speech.id, it.b)]
            if ra.failed or rb.failed:
                verdicts.append(Verdict.failure(ra.error or rb.error or "rating failed"))
                continue
            per = {k: self._winner(ra.scores[k], rb.scores[k]) for k in self.rubric.keys}
            a, b = self.rubric.score(ra.scores), self.rubric.score(rb.scores)
            verdicts.append(Verdict(self._winner(a, b), per, scores={"a": a, "b": b}))
        if progress:
            progress(len(items))
        return verdicts

    def close(self) -> None:
        pass


class RewardModelJudge:
    """The response with the higher reward wins (exactly equal rewards: a tie). The prompt is
    the speech as the reward model was trained on it (pairs.as_question); the model is loaded on
    the first comparison."""

    calls_made = calls_cached = 0
    scores_are = "reward"  # winrate reports mean_reward_* (a rater judge's are mean_score_*)

    def __init__(self, model_dir: str | Path, batch_size: int = 16, max_length: int = 512):
        self.model_dir = Path(model_dir).expanduser()
        self.batch_size, self.max_length = batch_size, max_length
        self.name = f"rm:{model_dir}"
        self._loaded = None

    @classmethod
    def build(cls, spec, settings, rubric: Rubric, cache) -> RewardModelJudge:
        return cls(spec.arg)

    def compare(self, items: list[Comparison], progress: Progress = None) -> list[Verdict]:
        from ..pairs_io import as_question
        from ..reward_model import load_reward_model, score_responses

        if not items:
            return []
        if self._loaded is None:
            self._loaded = load_reward_model(self.model_dir)
        model, tokenizer = self._loaded
        prompts = [as_question(it.speech) for it in items]
        rewards = score_responses(
            model,
            tokenizer,
            prompts * 2,
            [it.a for it in items] + [it.b for it in items],
            self.batch_size,
            self.max_length,
        )
        verdicts = []
        for r_a, r_b in zip(rewards[: len(items)].tolist(), rewards[len(items) :].tolist()):
            overall = "A" if r_a > r_b else "B" if r_b > r_a else "tie"
            verdicts.append(Verdict(overall, {}, scores={"a": r_a, "b": r_b}))
        if progress:
            progress(len(items))
        return verdicts

    def close(self) -> None:
        self._loaded = None


def majority(votes: list[str]) -> str:
    """The verdict more than half of ``votes`` give, else "tie".

    >>> majority(["A", "A", "tie"]), majority(["A", "B"]), majority(["B", "tie", "B", "A"])
    ('A', 'tie', 'tie')
    """
    if not votes:
        raise ValueError("no votes")
    top, n = Counter(votes).most_common(1)[0]
    return top if n * 2 > len(votes) else "tie"


class PanelJudge:
    """The majority verdict of several judges, overall and per principle (over the members that
    give that principle). A member's failed verdict is left out of the vote; when every member
    failed the panel's verdict is failed, with each member's reason."""

    def __init__(self, judges: list):
        if not judges:
            raise UserError("a judge panel needs at least one judge")
        self.judges = judges
        self.name = "panel(" + ",".join(j.name for j in judges) + ")"

    calls_made = property(lambda self: sum(j.calls_made for j in self.judges))
    calls_cached = property(lambda self: sum(j.calls_cached for j in self.judges))

    def compare(self, items: list[Comparison], progress: Progress = None) -> list[Verdict]:
        per_judge = [judge.compare(items) for judge in self.judges]
        out = [self._combine([answers[i] for answers in per_judge]) for i in range(len(items))]
        if progress:
            progress(len(items))
        return out

    def _combine(self, verdicts: list[Verdict]) -> Verdict:
        ok = [(j, v) for j, v in zip(self.judges, verdicts) if not v.failed]
        if not ok:
            error = "; ".join(f"{j.name}: {v.error}" for j, v in zip(self.judges, verdicts))
            return Verdict.failure(f"every judge of the panel failed ({error})")
        keys = list(dict.fromkeys(k for _, v in ok for k in v.per_principle))
        per_principle = {k: majority([v.per_principle[k] for _, v in ok if k in v.per_principle]) for k in keys}
        votes = json.dumps({j.name: v.overall for j, v in ok})
        return Verdict(majority([v.overall for _, v in ok]), per_principle, rationale=f"votes: {votes}")

    def close(self) -> None:
        for judge in self.judges:
            getattr(judge, "close", lambda: None)()
