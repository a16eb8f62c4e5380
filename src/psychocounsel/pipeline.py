"""Runs stages and records what each did in run.json; ``run`` chains them, skipping done work."""

from __future__ import annotations

import logging
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .backends.cached import CostLimitReached, Meter
from .config import RunConfig
from .errors import UserError
from .store import RunDir

log = logging.getLogger(__name__)
STAGES = ("ingest", "generate", "rate", "pairs", "reward_model", "dpo", "online", "eval", "report")
OPTIONAL_STAGES = ("reward_model", "dpo", "online", "eval")  # run only when the config has their section
_PACKAGES = ("psychocounsel", "torch", "transformers", "trl", "httpx", "pydantic", "pyarrow")


def versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _ingest(cfg: RunConfig, rundir: RunDir, force: bool, meter: Meter) -> dict[str, Any]:
    from . import crisis, ingest

    if cfg.ingest.input is None:
        raise UserError("no input to ingest: set ingest.input in the config or pass INPUT")
    stats = ingest.run(cfg.ingest, rundir, force=force)
    return {**stats, "screen": crisis.screen_run(rundir, rundir.read_speeches())}


def _generate(cfg: RunConfig, rundir: RunDir, force: bool, meter: Meter) -> dict[str, Any]:
    from . import generate

    return generate.run(cfg.generate, rundir, meter=meter)


def _rate(cfg: RunConfig, rundir: RunDir, force: bool, meter: Meter) -> dict[str, Any]:
    from . import rate

    return rate.run(cfg.rate, rundir, meter=meter)


def _pairs(cfg: RunConfig, rundir: RunDir, force: bool, meter: Meter) -> dict[str, Any]:
    from . import pairs

    return pairs.run(cfg.pairs, rundir, cfg.rate.rubric, force=force)


def _training(name: str):
    def stage(cfg: RunConfig, rundir: RunDir, force: bool, meter: Meter) -> dict[str, Any]:
        from . import training_stages

        if name == "online":  # the one training stage that samples from a model
            return training_stages.online(cfg.online, rundir, meter)
        return getattr(training_stages, name)(getattr(cfg, name), rundir)

    return stage


def _eval(cfg: RunConfig, rundir: RunDir, force: bool, meter: Meter) -> dict[str, Any]:
    from .evaluate import winrate

    result = winrate.run(cfg.eval, rundir.root / "eval", run_dir=rundir.root, rubric_path=cfg.rate.rubric, meter=meter)
    return {
        "items_in": result["n_speeches"],
        "items_out": result["n"],
        "failed": result["failed"],
        "calls_made": result["calls_made"],
        "calls_cached": result["calls_cached"],
        "win_rate": result["win_rate"],
        "lc_win_rate": result["lc_win_rate"],
        "judge": result["judge"],
        "crisis": {k: v for k, v in result["crisis"].items() if not k.endswith(("_ids", "_failures"))},
    }


def _report(cfg: RunConfig, rundir: RunDir, force: bool, meter: Meter) -> dict[str, Any]:
    from .report import write_report

    path = write_report(rundir.root)
    return {"report": str(path)}


RUNNERS = {
    "ingest": _ingest,
    "generate": _generate,
    "rate": _rate,
    "pairs": _pairs,
    "eval": _eval,
    "report": _report,
    **{name: _training(name) for name in ("reward_model", "dpo", "online")},
}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux's ``/proc/self/clear_refs`` "5"),
    so that the next :func:`_peak_rss_mb` is the stage's own peak; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    """Peak resident memory in MB: since the last reset (``VmHWM``) where ``reset`` worked, else
    the process's peak so far (``ru_maxrss``, which a stage can only raise)."""
    if reset:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def run_stage(
    name: str, cfg: RunConfig, rundir: RunDir, force: bool = False, spent_before: float = 0.0
) -> dict[str, Any]:
    """Run one stage, time it, and overwrite ``stages.<name>`` in run.json with its figures, its
    tokens and cost among them (backends/cached.py's Meter). ``force``: let ingest and pairs
    replace existing rows with none (see their modules). ``spent_before``: USD that earlier stages
    of this command spent, counted against ``cfg.max_cost``. A stage stopped by max_cost records
    what it spent (``stopped: max_cost``) and raises; its finished work is kept for the rerun."""
    if name not in RUNNERS:
        raise UserError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    start, reset = time.perf_counter(), _reset_peak_rss()
    meter = Meter(cfg.prices, cfg.max_cost, spent_before)
    try:
        stats = RUNNERS[name](cfg, rundir, force, meter)
    except CostLimitReached:
        _record(rundir, name, {"stopped": "max_cost", **meter.figures()}, start, reset)
        raise
    stats.setdefault("calls_made", 0)  # stages without model calls report zeros, not gaps
    stats.setdefault("calls_cached", 0)
    stats.update(meter.figures())
    _record(rundir, name, stats, start, reset)
    log.info("%s: %s", name, ", ".join(f"{k}={v}" for k, v in stats.items() if not isinstance(v, dict)))
    return stats


def _record(rundir: RunDir, name: str, stats: dict[str, Any], start: float, reset: bool) -> None:
    """``stages.<name>`` = stats with its wall time and peak memory (``peak_rss_mb``: the
    stage's own where the peak could be reset, else the process's so far), and run.json's
    ``cost``: the total of the stages' latest figures."""
    stats["seconds"] = round(time.perf_counter() - start, 2)
    stats["peak_rss_mb"] = _peak_rss_mb(reset)
    rundir.record_stage(name, stats)
    stages = rundir.read_run_json().get("stages", {})
    rundir.update_run_json(cost=round(sum(s.get("cost", 0.0) for s in stages.values()), 6))


def run(
    cfg: RunConfig, run_dir: str | Path, until: str | None = None, config_path: str | None = None, force: bool = False
) -> dict:
    """All stages in order up to ``until``. Each stage skips what is already done, so rerunning
    an interrupted (or finished) run completes it without repeating or duplicating work."""
    from .rubric import load_rubric

    if until is not None and until not in STAGES:
        raise UserError(f"--until must be one of {', '.join(STAGES)}; got '{until}'")
    load_rubric(cfg.rate.rubric)  # a bad rubric stops the run before run.json is touched
    rundir = RunDir(run_dir)
    rundir.update_run_json(config=cfg.model_dump(mode="json"), config_path=config_path, versions=versions())
    results = {}
    for name in STAGES:
        if name not in OPTIONAL_STAGES or getattr(cfg, name) is not None:
            spent = sum(r["cost"] for r in results.values())
            results[name] = run_stage(name, cfg, rundir, force, spent_before=spent)
        if name == until:
            break
    return results
