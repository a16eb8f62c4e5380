"""Judges rate (speech, response) pairs on every principle of a rubric.

A judge has ``name``, ``rate(items, progress=None) -> list[Rating]`` (same order as ``items``)
and counters ``calls_made`` / ``calls_cached``.
"""

from __future__ import annotations

from ..config import JudgeConfig
from ..rubric import Rubric
from ..store import Cache


def judge_name(cfg: JudgeConfig) -> str:
    """How a judge is named in logs and run.json: ``minilm`` or ``llm-<mode>:<backend spec>``."""
    return "minilm" if cfg.type == "minilm" else f"llm-{cfg.mode}:{cfg.backend.spec}"


def build_judge(cfg: JudgeConfig, rubric: Rubric, cache: Cache):
    if cfg.type == "minilm":
        from .minilm import MiniLMJudge

        return MiniLMJudge(rubric, cfg.embedding_model)
    from .llm import LLMJudge

    return LLMJudge(cfg, rubric, cache)
