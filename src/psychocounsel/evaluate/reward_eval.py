"""eval-rm: a reward model on held-out preference pairs: accuracy, AUC, ECE and Brier (the
metrics themselves are in ``reward_model``, shared with train-rm's own evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RewardEvalConfig
from ..pairs_io import load_pairs
from ..reward_model import load_reward_model, reward_differences, reward_metrics


def evaluate_file(model_dir: str | Path, data_file: str | Path, cfg: RewardEvalConfig | None = None) -> dict[str, Any]:
    """{n, accuracy, auc, ece, brier} of the reward model on a pairs file (its test split when
    ``data_file`` is a pairs directory or a saved ``datasets`` folder)."""
    cfg = cfg or RewardEvalConfig()
    rows = load_pairs(data_file, "test")
    model, tokenizer = load_reward_model(model_dir)
    return reward_metrics(reward_differences(model, tokenizer, rows, cfg.batch_size, cfg.max_length))
