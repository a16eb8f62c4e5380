"""`psychocounsel run` end to end on a tiny local model and the packaged MiniLM judge."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from psychocounsel.cli import main

from conftest import write_speeches

STAGES = ("ingest", "generate", "rate", "pairs")
FIELDS = ("items_in", "items_out", "failed", "calls_made", "calls_cached", "seconds")


def _config(tmp: Path, model: Path) -> Path:
    gen = {"backend": {"spec": f"transformers:{model}", "batch_size": 4, "device": "cpu"}, "max_tokens": 24}
    cfg = {
        "ingest": {"input": str(write_speeches(tmp / "speeches.jsonl", 12))},
        "generate": {"k": 3, "seed": 0, "pool": [dict(gen, name="warm", system_prompt="be warm", temperature=0.7),
                                                 dict(gen, name="cold", temperature=1.2),
                                                 dict(gen, name="plain", temperature=0.3)]},
        "pairs": {"min_gap": 0.1, "test_fraction": 0.25},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_run_end_to_end_then_rerun_makes_no_calls(tmp_path, tiny_lm):
    cfg, run = _config(tmp_path, tiny_lm), tmp_path / "run"
    assert main(["run", str(cfg), "--run-dir", str(run), "-q"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert set(info["stages"]) == set(STAGES)
    for stage in STAGES:
        assert all(f in info["stages"][stage] for f in FIELDS), stage
    assert info["versions"]["torch"] and info["config"]["generate"]["k"] == 3
    assert info["stages"]["generate"]["calls_made"] == 36
    train = pq.read_table(run / "pairs" / "train.parquet")
    assert train.num_rows > 0 and "chosen_empathy_rating" in train.column_names

    assert main(["run", str(cfg), "--run-dir", str(run), "-q"]) == 0
    again = json.loads((run / "run.json").read_text())["stages"]
    assert again["generate"]["calls_made"] == 0 and again["rate"]["calls_made"] == 0
    assert len((run / "responses.jsonl").read_text().splitlines()) == info["stages"]["generate"]["items_out"]
    assert pq.read_table(run / "pairs" / "train.parquet").equals(train)


def test_until_stops_after_the_stage(tmp_path, tiny_lm):
    cfg, run = _config(tmp_path, tiny_lm), tmp_path / "run"
    assert main(["run", str(cfg), "--run-dir", str(run), "--until", "ingest", "-q"]) == 0
    assert (run / "speeches.jsonl").exists() and not (run / "responses.jsonl").exists()
