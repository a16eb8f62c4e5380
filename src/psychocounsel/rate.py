"""rate: the judge scores every response 1-5 on each principle of the rubric.

Ratings are appended in chunks; a rerun rates only responses without a rating from the same
judge and rubric. A failed rating (unparseable after retries, backend error) is kept with its
reason and raw text and never given a score; delete ratings.jsonl rows to retry them. A reply to
a crisis speech (the screen, crisis.py) that does not handle the crisis scores at most 2 on
safety whatever the judge said (``crisis.cap_safety``; the rating's rationale says so). When every
rating of the first chunk fails and nothing was rated before, the stage stops with the reason
and writes nothing: a judge that cannot rate at all is a setup problem, not data.
"""

from __future__ import annotations

import logging
from typing import Any

from .config import NOT_IN_IDENTITY, RateConfig
from .crisis import CAP_NOTE, RULE_VERSION, cap_safety, crisis_ids
from .errors import UserError
from .judge import build_judge
from .progress import bar
from .rubric import Rubric, load_rubric
from .specs import judge_name
from .store import Cache, RunDir, append_jsonl, stable_hash

log = logging.getLogger(__name__)
CHUNK = 32  # responses rated per append: bounds the work lost to a kill


def chunk_size(concurrency: int) -> int:
    """Responses rated per append for a judge with ``concurrency`` requests in flight: every
    chunk waits for its slowest call, so a chunk holds several waves (32 at concurrency 32 kept
    the judge at 0.79 of its ideal throughput on a 200 ms server; benchmarks/api_throughput.py).

    >>> chunk_size(1), chunk_size(8), chunk_size(32)
    (32, 32, 128)
    """
    return max(CHUNK, 4 * concurrency)


def judge_key(cfg: RateConfig, rubric: Rubric, at_risk: set[str]) -> str:
    """Identifies judge + rubric + the speeches the crisis screen flags (their replies' safety is
    capped): ratings are reused only while all three are unchanged. The learned rater counts its
    weights too, so retrained heads are not mistaken for the old ones. A user template counts by
    its text (not its path), and structured outputs when they shape the requests (an openai: judge
    in json mode); at their defaults neither is in the key, so earlier runs keep theirs."""
    from .judge.llm import load_template
    from .judge.templates import template_id
    from .specs import parse_spec

    exclude = {**NOT_IN_IDENTITY, "template": True, "structured": True}
    judge = cfg.judge.model_dump(mode="json", exclude=exclude)
    if cfg.judge.template is not None:
        judge["template"] = template_id(load_template(cfg.judge.template, "rate", cfg.judge.mode))
    if cfg.judge.type == "llm" and cfg.judge.mode == "json" and cfg.judge.structured != "off":
        if parse_spec(cfg.judge.backend.spec).kind == "openai":
            judge["structured"] = cfg.judge.structured
    parts = [judge, rubric.model_dump(mode="json"), RULE_VERSION, sorted(at_risk)]
    if cfg.judge.type == "rater":
        from .judge.rater import weights_id

        parts.append(weights_id())
    return stable_hash(parts, 12)


def run(cfg: RateConfig, rundir: RunDir, meter=None) -> dict[str, Any]:
    """``meter`` (backends.cached.Meter): counts tokens and cost, and stops before max_cost."""
    rubric = load_rubric(cfg.rubric)
    speeches = {s.id: s for s in rundir.read_speeches()}
    responses = [r for r in rundir.read_responses() if r.speech_id in speeches]
    if not responses:
        raise UserError(f"no responses in {rundir.responses}; run 'psychocounsel generate' first")
    at_risk = crisis_ids(rundir)
    key = judge_key(cfg, rubric, at_risk)
    rated = rundir.read_ratings(key)
    done = {r.response_id for r in rated}
    todo = [(speeches[r.speech_id], r) for r in responses if r.id not in done]
    calls_made = calls_cached = 0
    if todo:
        by_id = {r.id: r for r in responses}
        cache = Cache(rundir.cache_path, meter=meter)
        judge = build_judge(cfg.judge, rubric, cache)
        progress = bar(len(todo), f"rate ({judge.name})")
        any_ok = any(not r.failed for r in rated)
        try:
            step = chunk_size(cfg.judge.backend.concurrency) if cfg.judge.type == "llm" else CHUNK
            for start in range(0, len(todo), step):
                ratings = judge.rate(todo[start : start + step], progress=progress.update)
                any_ok = any_ok or any(not r.failed for r in ratings)
                if not any_ok:
                    reasons = "; ".join(sorted({r.error for r in ratings}))[:300]
                    raise UserError(
                        f"the judge {judge.name} failed on all {len(ratings)} responses of the first "
                        f"chunk ({reasons}); nothing written. Check the judge and its mode"
                    )
                cap_safety(ratings, by_id, at_risk)
                for r in ratings:
                    r.judge = key
                    if r.failed:
                        log.warning("rating of response %s failed: %s", r.response_id, r.error[:200])
                append_jsonl(rundir.ratings, [r.to_dict() for r in ratings])
        finally:
            progress.close()
            calls_made, calls_cached = judge.calls_made, judge.calls_cached
            judge.close()
            cache.close()
    ratings = rundir.read_ratings(key)
    failed = sum(r.failed for r in ratings)
    return {
        "items_in": len(responses),
        "items_out": len(ratings) - failed,
        "failed": failed,
        "calls_made": calls_made,
        "calls_cached": calls_cached,
        "judge": key,
        "judge_name": judge_name(cfg.judge.spec, cfg.judge.mode),
        "safety_capped": sum(CAP_NOTE in r.rationale for r in ratings),
    }
