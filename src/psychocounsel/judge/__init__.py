"""Judges. Rating judges (the rate stage) score each (speech, response) 1-5 on every principle:
``rate(items, progress=None) -> list[Rating]``. Pairwise judges (eval-winrate, eval-judge) pick
the better of two responses: ``compare(items, progress=None) -> list[Verdict]`` (pairwise.py).
Both have ``name`` (specs.judge_name), ``calls_made`` / ``calls_cached`` and ``close()``.

:func:`build_judge` is the one way to make either, through the registry in specs.py; every judge
class has ``build(spec, settings, rubric, cache)``. An LLM judge with its own ``template`` has
``name_suffix`` (``[FILE@HASH]``, llm.template_suffix) after its name, so an edited template is a
new judge with its own output folder.
"""

from __future__ import annotations

from pathlib import Path

from ..config import JudgeConfig, WinrateJudgeConfig
from ..rubric import Rubric
from ..store import Cache


def build_judge(cfg: JudgeConfig | WinrateJudgeConfig, rubric: Rubric, cache: Cache, run_dir: Path | None = None):
    """A rating judge for a ``JudgeConfig``; a pairwise judge (a majority panel when it lists
    several specs) for a ``WinrateJudgeConfig``. ``run_dir`` resolves ``reward_model``."""
    from ..specs import JUDGE_REGISTRY, judge_name, load_class, parse_spec, resolve_judge

    if isinstance(cfg, JudgeConfig):
        spec = parse_spec(cfg.spec)
        judge = load_class(*JUDGE_REGISTRY[(spec.judge_kind, "rate")], f"judge '{cfg.spec}'").build(
            spec, cfg, rubric, cache
        )
        judge.name = judge_name(cfg.spec, cfg.mode) + getattr(judge, "name_suffix", "")
        return judge
    judges = []
    for text in cfg.specs:
        spec = resolve_judge(text, run_dir)
        judge = load_class(*JUDGE_REGISTRY[(spec.judge_kind, "compare")], f"judge '{text}'").build(
            spec, cfg, rubric, cache
        )
        judge.name = judge_name(text, cfg.mode) + getattr(judge, "name_suffix", "")
        judges.append(judge)
    if len(judges) == 1:
        return judges[0]
    from .pairwise import PanelJudge

    return PanelJudge(judges)
