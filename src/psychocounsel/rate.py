"""rate: the judge scores every response 1-5 on each principle of the rubric.

Ratings are appended in chunks; a rerun rates only responses without a rating from the same
judge and rubric. A failed rating (unparseable after retries, backend error) is kept with its
reason and raw text and never given a score; delete ratings.jsonl rows to retry them.
"""

from __future__ import annotations

import logging
from typing import Any

from .config import RateConfig
from .errors import UserError
from .generate import load_speeches
from .judge import build_judge, judge_name
from .progress import bar
from .records import Rating, Response
from .rubric import Rubric, load_rubric
from .store import Cache, RunDir, append_jsonl, read_jsonl, stable_hash

log = logging.getLogger(__name__)
CHUNK = 32  # responses rated per append: bounds the work lost to a kill


def judge_key(cfg: RateConfig, rubric: Rubric) -> str:
    """Identifies judge + rubric: ratings are reused only when both are unchanged."""
    return stable_hash([cfg.judge.model_dump(mode="json"), rubric.model_dump(mode="json")], 12)


def current_ratings(rundir: RunDir, key: str) -> list[Rating]:
    return [Rating.from_dict(d) for d in read_jsonl(rundir.ratings) if d.get("judge") == key]


def run(cfg: RateConfig, rundir: RunDir) -> dict[str, Any]:
    rubric = load_rubric(cfg.rubric)
    speeches = {s.id: s for s in load_speeches(rundir)}
    responses = [Response.from_dict(d) for d in read_jsonl(rundir.responses)]
    if not responses:
        raise UserError(f"no responses in {rundir.responses}; run 'psychocounsel generate' first")
    key = judge_key(cfg, rubric)
    done = {r.response_id for r in current_ratings(rundir, key)}
    todo = [(speeches[r.speech_id], r) for r in responses if r.id not in done and r.speech_id in speeches]
    cache = Cache(rundir.cache_path)
    calls_made = calls_cached = 0
    if todo:
        judge = build_judge(cfg.judge, rubric, cache)
        progress = bar(len(todo), f"rate ({judge.name})")
        try:
            for start in range(0, len(todo), CHUNK):
                ratings = judge.rate(todo[start : start + CHUNK], progress=progress.update)
                for r in ratings:
                    r.judge = key
                    if r.failed:
                        log.warning("rating of response %s failed: %s", r.response_id, r.error[:200])
                append_jsonl(rundir.ratings, [r.to_dict() for r in ratings])
        finally:
            progress.close()
            calls_made, calls_cached = judge.calls_made, judge.calls_cached
    cache.close()
    ratings = current_ratings(rundir, key)
    failed = sum(r.failed for r in ratings)
    return {"items_in": len(responses), "items_out": len(ratings) - failed, "failed": failed,
            "calls_made": calls_made, "calls_cached": calls_cached, "judge": key,
            "judge_name": judge_name(cfg.judge)}
