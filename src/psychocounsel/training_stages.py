"""The training commands as stages of ``psychocounsel run``: reward_model, dpo, online.

Each writes a fixed folder of the run directory and is skipped when that folder is complete,
so a rerun of a finished run trains nothing. A half-trained stage resumes from its last
checkpoint (``OUT/checkpoints``); ``online`` resumes by rounds, and a round's DPO by checkpoints.
"""

from __future__ import annotations

from typing import Any

from .config import DPOStageConfig, OnlineConfig, RewardModelConfig
from .errors import UserError
from .store import RunDir


def _done(stats: dict[str, Any], n: int) -> dict[str, Any]:
    return {"items_in": n, "items_out": n, "failed": 0, "calls_made": 0, "calls_cached": 0, **stats}


def reward_model(cfg: RewardModelConfig, rundir: RunDir) -> dict[str, Any]:
    from .train.reward import train_reward_model

    out = rundir.root / "reward_model"
    if (out / "metrics.json").is_file():
        return _done({"skipped": "already trained"}, 0)
    metrics = train_reward_model(rundir.pairs, cfg, out, resume=True)  # a half-trained stage continues
    return _done({k: metrics[k] for k in ("accuracy", "auc", "ece", "brier")}, metrics["n"])


def dpo(cfg: DPOStageConfig, rundir: RunDir) -> dict[str, Any]:
    from .pairs_io import load_pairs
    from .train.dpo import train_dpo

    out = rundir.root / "policy"
    if (out / "train_log.json").is_file():  # written after the model (which may be sharded files)
        return _done({"skipped": "already trained"}, 0)
    rows = load_pairs(rundir.pairs, "train")
    summary = train_dpo(rows, cfg, out, resume=True)
    return _done(summary, len(rows))


def online(cfg: OnlineConfig, rundir: RunDir, meter=None) -> dict[str, Any]:
    from .train.online import train_online

    policy, rm = rundir.root / "policy", rundir.root / "reward_model"
    if not (rm / "config.json").is_file():
        raise UserError("the online stage needs RUN/reward_model: add a reward_model section to the config")
    start = str(policy) if (policy / "train_log.json").is_file() else "default"
    speeches = [{"id": s.id, "text": s.text} for s in rundir.read_speeches()]
    summary = train_online(start, rm, speeches, rundir.root / "online", cfg, meter)
    return _done({"best_round": summary["best_round"]}, len(speeches))
