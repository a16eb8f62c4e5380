"""eval-rm: a reward model on held-out preference pairs: accuracy, AUC, ECE and Brier (the
metrics themselves are in ``reward_model``, shared with train-rm's own evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RewardEvalConfig
from ..pairs_io import load_pairs
from ..reward_model import load_reward_model, pair_rewards, reward_metrics


def evaluate_file(
    model_dir: str | Path,
    data_file: str | Path,
    cfg: RewardEvalConfig | None = None,
    predictions: Path | None = None,
) -> dict[str, Any]:
    """{n, accuracy, auc, ece, brier} of the reward model on a pairs file (its test split when
    ``data_file`` is a pairs directory or a saved ``datasets`` folder). ``predictions``: write
    each pair's rewards there (JSONL ``{"r_chosen", "r_rejected"}``, in the file's row order)."""
    from ..store import write_jsonl

    cfg = cfg or RewardEvalConfig()
    rows = load_pairs(data_file, "test")
    model, tokenizer = load_reward_model(model_dir)
    chosen, rejected = pair_rewards(model, tokenizer, rows, cfg.batch_size, cfg.max_length)
    if predictions is not None:
        write_jsonl(predictions, [{"r_chosen": float(c), "r_rejected": float(r)} for c, r in zip(chosen, rejected)])
    return reward_metrics(chosen - rejected)
