"""LLM judges: a prompt template (templates/*.txt) + a pure parser (parse.py) + any backend.

- ``json`` mode: one call per response returns all principle scores and a rationale. Output that
  does not parse is retried (temperature 0.7 with a new seed, so the retry is a new cache key) up
  to ``retries`` times, then the rating is recorded as failed with the raw text.
- ``logprob`` mode: one call per (response, principle) with ``max_tokens=1``; the score is the
  expected value under the judge's probabilities for "1".."5" (parse.expected_score). Works with
  local transformers models and with OpenAI-compatible servers that return logprobs.

``template: FILE`` on the judge config replaces the packaged template (templates/__init__.py
checks its placeholders). An ``openai:`` judge in json mode sends the JSON schema of its answer as
``response_format`` (:class:`StructuredOutput`); the reply is read by the same parser either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends import Backend, ChatRequest, load_backend
from ..config import JudgeConfig
from ..errors import UserError
from ..records import Rating, Response, Speech
from ..rubric import Principle, Rubric
from ..store import Cache
from .parse import ParseError, expected_score, parse_json_scores, rating_schema
from .templates import packaged, read_template, template_id

log = logging.getLogger(__name__)


def load_template(path: Path | None, task: str, mode: str) -> str:
    """The judge's template text: the file ``path`` (checked; UserError naming the problem), or
    the packaged one for ``task`` and ``mode``."""
    if path is None:
        return packaged(task, mode).read_text(encoding="utf-8")
    try:
        return read_template(path, task, mode)
    except ValueError as e:
        raise UserError(str(e)) from None


def template_suffix(path: Path | None, text: str) -> str:
    """What a user template (file ``path``, read as ``text``) adds to a judge's name,
    ``[FILE@HASH]``; "" for the packaged one. The hash is of the text, so an edited template is a
    new judge (new folder in eval-winrate)."""
    if path is None:
        return ""
    return f"[{Path(path).name}@{template_id(text)}]"


class StructuredOutput:
    """Whether a json-mode judge asks for its answer's JSON schema (``response_format``).

    ``setting`` is the config's ``structured``: ``off`` never; ``on`` always (an ``openai:`` judge
    only; a server that rejects it fails those items); ``auto`` sends it to ``openai:`` judges and,
    the first time the server rejects it (HTTP 400 naming response_format), stops for the rest of
    the run, logging once. The schema is in the request's params, so in the call cache's key.
    """

    def __init__(self, setting: str, backend: Backend, mode: str, schema_name: str, schema: dict[str, Any]):
        if setting == "on" and (backend.name != "openai" or mode != "json"):
            raise UserError(
                f"structured: on needs an openai: judge in json mode (this one is {backend.name}, {mode} mode)"
            )
        self.setting = setting
        self.active = setting != "off" and mode == "json" and backend.name == "openai"
        self.format = {"type": "json_schema", "json_schema": {"name": schema_name, "strict": True, "schema": schema}}

    def params(self) -> dict[str, Any]:
        """What a json-mode request adds to its params: the response_format, while active."""
        return {"response_format": self.format} if self.active else {}

    def refused(self, comps: list, judge: str) -> list[int]:
        """Positions in ``comps`` to ask again because the server rejected the schema (``auto``
        only); the first such batch switches the schema off for good."""
        from ..backends.openai_compat import RESPONSE_FORMAT_REJECTED

        redo = [j for j, c in enumerate(comps) if RESPONSE_FORMAT_REJECTED in c.error]
        if not redo or self.setting != "auto" or not self.active:
            return []
        self.active = False
        log.warning(
            "judge %s: the server rejected response_format; using the plain prompt for the rest of the run", judge
        )
        return redo


def render_context(speech: Speech) -> str:
    """Earlier turns of a multi-turn session, as a block the templates put before the speech."""
    if not speech.context:
        return ""
    turns = "\n".join(speech.context_lines())
    return f"<earlier_in_session>\n{turns}\n</earlier_in_session>\n\n"


def render_principles(rubric: Rubric) -> str:
    blocks = []
    for p in rubric.principles:
        anchors = "; ".join(f"{s} = {t}" for s, t in sorted(p.anchors.items()))
        blocks.append(f"- {p.key} ({p.name}): {p.definition} Anchors: {anchors}")
    return "\n".join(blocks)


def ask_with_retries(
    backend: Backend,
    n: int,
    request: Callable[[int, int], ChatRequest],
    parse: Callable[[int, str], Any],
    failed: Callable[[int, str, str], Any],
    retries: int,
    progress=None,
    refused: Callable[[list], list[int]] | None = None,
) -> list:
    """Ask for items 0..n-1 (``request(i, attempt)``) and ``parse(i, text)`` each reply; a failed
    call or a reply that raises ParseError is asked again, up to ``retries`` more times (the
    request changes with the attempt, so a retry is a new cache key). What never parses becomes
    ``failed(i, reason, raw_text)``: recorded, never given a default. ``refused(completions)``
    names the positions of a batch to ask again at once, not as a retry, because the judge changed
    how it asks (StructuredOutput.refused)."""
    results: dict[int, Any] = {}
    last: dict[int, tuple[str, str]] = {}
    pending = list(range(n))
    for attempt in range(retries + 1):
        if not pending:
            break
        comps = backend.complete([request(i, attempt) for i in pending])
        redo = refused(comps) if refused is not None else []
        if redo:
            again = backend.complete([request(pending[j], attempt) for j in redo])
            for j, comp in zip(redo, again):
                comps[j] = comp
        still = []
        for i, comp in zip(pending, comps):
            try:
                if comp.error:
                    raise ParseError(comp.error)
                results[i] = parse(i, comp.text)
            except ParseError as e:
                last[i] = (str(e), comp.text)
                still.append(i)
                continue
            if progress:
                progress(1)
        pending = still
    for i in pending:
        error, raw = last[i]
        results[i] = failed(i, f"{error} (after {retries + 1} attempts)", raw)
        if progress:
            progress(1)
    return [results[i] for i in range(n)]


def ask_per_key(
    backend: Backend, n: int, keys: list[str], request: Callable[[int, str], ChatRequest], read: Callable[[Any], Any]
) -> list[tuple[dict[str, Any], str, str]]:
    """One call per (item, key), all in one batch, each completion turned into a value by
    ``read`` (which raises ParseError when it cannot). Per item: (values by key, error, raw),
    where error and raw join every key that failed ("" when none did)."""
    comps = backend.complete([request(i, k) for i in range(n) for k in keys])
    out = []
    for i in range(n):
        values, errors, raws = {}, [], []
        for key, comp in zip(keys, comps[i * len(keys) : (i + 1) * len(keys)]):
            try:
                if comp.error:
                    raise ParseError(comp.error)
                values[key] = read(comp)
            except ParseError as e:
                errors.append(f"{key}: {e}")
                raws.append(f"{key}: {comp.text!r}")
        out.append((values, "; ".join(errors), "; ".join(raws)))
    return out


class LLMJudge:
    """A rating judge on any backend (``backend`` is usually a CachedBackend)."""

    def __init__(self, cfg: JudgeConfig, rubric: Rubric, backend: Backend):
        self.cfg, self.rubric, self.backend = cfg, rubric, backend
        self.template = load_template(cfg.template, "rate", cfg.mode)
        self.name_suffix = template_suffix(cfg.template, self.template)
        self.name = f"llm-{cfg.mode}:{cfg.backend.spec}" + self.name_suffix
        self.structured = StructuredOutput(cfg.structured, backend, cfg.mode, "rating", rating_schema(rubric.keys))

    @classmethod
    def build(cls, spec, cfg: JudgeConfig, rubric: Rubric, cache: Cache) -> LLMJudge:
        return cls(cfg, rubric, load_backend(cfg.backend, cache))

    calls_made = property(lambda self: getattr(self.backend, "calls_made", 0))
    calls_cached = property(lambda self: getattr(self.backend, "calls_cached", 0))

    def close(self) -> None:
        self.backend.close()

    def json_request(self, speech: Speech, resp: Response, attempt: int) -> ChatRequest:
        prompt = self.template.format(
            principles=render_principles(self.rubric),
            context=render_context(speech),
            speech=speech.text,
            response=resp.text,
            score_fields=", ".join(f'"{k}": <1-5>' for k in self.rubric.keys),
        )
        params = {"temperature": 0.0, "max_tokens": self.cfg.max_tokens, **self.structured.params()}
        if attempt:
            params.update(temperature=0.7, seed=attempt)
        return ChatRequest([{"role": "user", "content": prompt}], params)

    def logprob_request(self, speech: Speech, resp: Response, p: Principle) -> ChatRequest:
        prompt = self.template.format(
            name=p.name,
            definition=p.definition,
            anchor_1=p.anchors[1],
            anchor_3=p.anchors[3],
            anchor_5=p.anchors[5],
            context=render_context(speech),
            speech=speech.text,
            response=resp.text,
        )
        params = {"temperature": 0.0, "max_tokens": 1, "logprobs": True, "top_logprobs": 20}
        return ChatRequest([{"role": "user", "content": prompt}], params)

    def rate(self, items: list[tuple[Speech, Response]], progress=None) -> list[Rating]:
        if self.cfg.mode == "json":
            return self._rate_json(items, progress)
        return self._rate_logprob(items, progress)

    def _rate_json(self, items, progress) -> list[Rating]:
        def parse(i: int, text: str) -> Rating:
            speech, resp = items[i]
            scores, rationale = parse_json_scores(text, self.rubric.keys)
            return Rating(resp.id, speech.id, self.name, scores=scores, rationale=rationale[:500])

        def failed(i: int, error: str, raw: str) -> Rating:
            speech, resp = items[i]
            return Rating(resp.id, speech.id, self.name, failed=True, error=error, raw=raw[:2000])

        return ask_with_retries(
            self.backend,
            len(items),
            lambda i, a: self.json_request(*items[i], a),
            parse,
            failed,
            self.cfg.retries,
            progress,
            lambda comps: self.structured.refused(comps, self.name),
        )

    def _rate_logprob(self, items, progress) -> list[Rating]:
        keys = self.rubric.keys
        principle = {p.key: p for p in self.rubric.principles}
        answers = ask_per_key(
            self.backend,
            len(items),
            keys,
            lambda i, k: self.logprob_request(*items[i], principle[k]),
            lambda comp: expected_score(comp.top_logprobs, self.cfg.min_digit_mass),
        )
        ratings = []
        for (speech, resp), (scores, error, raw) in zip(items, answers):
            if error:
                ratings.append(Rating(resp.id, speech.id, self.name, failed=True, error=error, raw=raw))
            else:
                ratings.append(Rating(resp.id, speech.id, self.name, scores=scores))
            if progress:
                progress(1)
        return ratings
