"""Runs stages and records what each did in run.json; ``run`` chains them, skipping done work."""

from __future__ import annotations

import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import UserError
from .store import RunDir

log = logging.getLogger(__name__)
STAGES = ("ingest", "generate", "rate", "pairs", "reward_model", "dpo", "online")
TRAINING_STAGES = STAGES[4:]
_PACKAGES = ("psychocounsel", "torch", "transformers", "trl", "httpx", "pydantic", "pyarrow")


def versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_stage(name: str, cfg: RunConfig, rundir: RunDir) -> dict[str, Any]:
    """Run one stage, time it, and overwrite ``stages.<name>`` in run.json with its figures."""
    start = time.perf_counter()
    if name == "ingest":
        from . import ingest

        if cfg.ingest.input is None:
            raise UserError("no input to ingest: set ingest.input in the config or pass INPUT")
        stats = ingest.run(cfg.ingest, rundir.speeches, log=log.info)
    elif name == "generate":
        from . import generate

        stats = generate.run(cfg.generate, rundir)
    elif name == "rate":
        from . import rate

        stats = rate.run(cfg.rate, rundir)
    elif name == "pairs":
        from . import pairs

        stats = pairs.run(cfg.pairs, rundir, cfg.rate.rubric)
    elif name in TRAINING_STAGES:
        from . import training_stages

        stats = getattr(training_stages, name)(getattr(cfg, name), rundir)
    else:
        raise UserError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    stats.setdefault("calls_made", 0)  # stages without model calls report zeros, not gaps
    stats.setdefault("calls_cached", 0)
    stats["seconds"] = round(time.perf_counter() - start, 2)
    rundir.record_stage(name, stats)
    log.info("%s: %s", name, ", ".join(f"{k}={v}" for k, v in stats.items() if not isinstance(v, dict)))
    return stats


def run(cfg: RunConfig, run_dir: str | Path, until: str | None = None, config_path: str | None = None) -> dict:
    """All stages in order up to ``until``. Each stage skips what is already done, so rerunning
    an interrupted (or finished) run completes it without repeating or duplicating work."""
    if until is not None and until not in STAGES:
        raise UserError(f"--until must be one of {', '.join(STAGES)}; got '{until}'")
    rundir = RunDir(run_dir)
    rundir.update_run_json(config=cfg.model_dump(mode="json"), config_path=config_path, versions=versions())
    results = {}
    for name in STAGES:
        # A training stage runs only when the config has its section.
        if name not in TRAINING_STAGES or getattr(cfg, name) is not None:
            results[name] = run_stage(name, cfg, rundir)
        if name == until:
            break
    return results
