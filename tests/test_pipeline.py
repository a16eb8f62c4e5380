"""`psychocounsel run` end to end on a tiny local model and the packaged MiniLM judge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from psychocounsel.cli import main, serve_command

from conftest import SRC, write_speeches

STAGES = ("ingest", "generate", "rate", "pairs")
WINRATE_KEYS = (
    "n",
    "wins",
    "ties",
    "losses",
    "win_rate",
    "ci_low",
    "ci_high",
    "lc_win_rate",
    "per_principle",
    "position_consistency",
    "avg_len_policy",
    "avg_len_reference",
    "judge",
)
FIELDS = ("items_in", "items_out", "failed", "calls_made", "calls_cached", "seconds", "peak_rss_mb")


def _config(tmp: Path, model: Path) -> Path:
    gen = {"backend": {"spec": f"transformers:{model}", "batch_size": 4, "device": "cpu"}, "max_tokens": 24}
    cfg = {
        "ingest": {"input": str(write_speeches(tmp / "speeches.jsonl", 12))},
        "generate": {
            "k": 3,
            "seed": 0,
            "pool": [
                dict(gen, name="warm", system_prompt="be warm", temperature=0.7),
                dict(gen, name="cold", temperature=1.2),
                dict(gen, name="plain", temperature=0.3),
            ],
        },
        "pairs": {"min_gap": 0.1, "test_fraction": 0.25},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_run_end_to_end_then_rerun_makes_no_calls(tmp_path, tiny_lm):
    cfg, run = _config(tmp_path, tiny_lm), tmp_path / "run"
    assert main(["run", str(cfg), "--run-dir", str(run), "-q"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert set(info["stages"]) == set(STAGES) | {"report"}  # the report always closes a run
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


def test_run_against_openai_compatible_endpoint(tmp_path):
    """Generators and an LLM json judge on a real HTTP server on 127.0.0.1: the same config path
    a vLLM or OpenAI user takes, including a 500 that is retried and an unparseable judge reply."""
    from openai_server import FakeOpenAI, Reply

    def handler(body):
        prompt = body["messages"][-1]["content"]
        if "Answer with one JSON object" in prompt:
            if "BROKEN" in prompt:
                return Reply.ok("I'd rather not score this.")
            # A deterministic judge: the warm generator's replies get higher empathy.
            empathy = 5 if "Warm-reply" in prompt else 2
            scores = {k: 3 for k in ("relevance", "clarity", "safety", "exploration", "autonomy", "staging")}
            return Reply.ok(json.dumps({"scores": dict(scores, empathy=empathy), "rationale": "ok"}))
        style = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        return Reply.ok(
            "Warm-reply: that sounds heavy. What feels hardest?"
            if "warm" in style
            else "BROKEN"
            if "x" in style
            else "ok."
        )

    with FakeOpenAI() as server:
        server.handler = handler
        server.push(Reply.error(500, "overloaded"))
        backend = {"spec": "openai:fake-model", "base_url": server.url, "max_retries": 2}
        cfg = {
            "ingest": {"input": str(write_speeches(tmp_path / "s.jsonl", 6))},
            "generate": {
                "k": 3,
                "pool": [
                    {"name": "warm", "backend": backend, "system_prompt": "be warm"},
                    {"name": "terse", "backend": backend, "system_prompt": "be terse"},
                    {"name": "broken", "backend": backend, "system_prompt": "x"},
                ],
            },
            "rate": {"judge": {"type": "llm", "backend": backend, "mode": "json", "retries": 1}},
            "pairs": {"test_fraction": 0.0, "min_gap": 0.4},
        }
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "-q"]) == 0
        n_requests = len(server.requests)
        assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "-q"]) == 0
        assert len(server.requests) == n_requests, "a rerun must make no calls"

    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    ratings = [json.loads(x) for x in (tmp_path / "run" / "ratings.jsonl").read_text().splitlines()]
    failed = [r for r in ratings if r["failed"]]
    assert len(failed) == 6 and all(r["scores"] == {} and "after 2 attempts" in r["error"] for r in failed)
    assert stages["rate"]["failed"] == 6
    # The rerun made no call, so it counts no token; unpriced models cost nothing (test_cost.py prices them).
    assert stages["rate"]["tokens"] == {"prompt": 0, "completion": 0} and stages["rate"]["cost"] == 0
    train = pq.read_table(tmp_path / "run" / "pairs" / "train.parquet").to_pylist()
    # warm (empathy 5) beats terse (empathy 2) on every speech: a gap of 3/7 ~ 0.43 >= 0.4.
    assert len(train) == 6 and {(r["chosen_model"], r["rejected_model"]) for r in train} == {("warm", "terse")}
    assert all(r["chosen_empathy_rating"] == 5 and r["rejected_empathy_rating"] == 2 for r in train)


def _serves(command: str) -> None:
    """Run the printed serve command (on a free port) until /health says ready, then stop it."""
    import shlex
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([*shlex.split(command), "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the printed serve command never became ready")
        body = {"model": "psychocounsel", "messages": [{"role": "user", "content": "i feel sad"}], "max_tokens": 4}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_training_stages_run_when_configured_and_are_skipped_when_done(tmp_path, tiny_lm, capsys):
    cfg_path, run = _config(tmp_path, tiny_lm), tmp_path / "run"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["reward_model"] = {"base": str(tiny_lm), "epochs": 1, "batch_size": 4, "lr": 1e-3, "max_length": 128}
    cfg["dpo"] = {
        "base": str(tiny_lm),
        "lr": 1e-3,
        "batch_size": 2,
        "max_length": 128,
        "max_prompt_length": 64,
        "max_steps": 2,
    }
    cfg["online"] = {
        "speeches_per_round": 2,
        "k": 2,
        "max_tokens": 8,
        "dev_fraction": 0.2,
        "dpo": {"max_steps": 1, "batch_size": 2, "lr": 1e-3, "max_length": 128, "max_prompt_length": 64},
    }
    cfg["eval"] = {
        "speeches": str(write_speeches(tmp_path / "heldout.jsonl", 4)),
        "max_tokens": 8,
        "policy": {"spec": "policy", "device": "cpu"},
        "reference": {"spec": f"transformers:{tiny_lm}", "device": "cpu"},
        "judges": ["reward_model"],
    }
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["run", str(cfg_path), "--run-dir", str(run), "-q"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1].strip()
    assert printed == serve_command(run) and f"--reward-model {run / 'reward_model'}" in printed
    _serves(printed)
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert {"reward_model", "dpo", "online", "eval", "report"} <= set(stages)
    assert all("tokens" in figures and "cost" in figures for figures in stages.values())  # every stage
    for name in ("generate", "online", "eval"):  # the stages that sample: their tokens are counted
        assert stages[name]["tokens"]["completion"] > 0, name
    result = json.loads((run / "eval" / "winrate.json").read_text())
    assert (
        set(WINRATE_KEYS) <= set(result)
        and result["n"] == 4
        and result["wins"] + result["ties"] + result["losses"] == 4
    )
    assert result["position_consistency"] == 1.0  # a reward model does not see positions
    assert {"mean_reward_policy", "mean_reward_reference"} <= set(result)
    assert (run / "report.html").is_file()
    metrics = json.loads((run / "reward_model" / "metrics.json").read_text())
    assert {"accuracy", "auc", "ece", "brier"} <= set(metrics)
    assert (run / "policy" / "model.safetensors").is_file() and (run / "reward_model" / "predictions.jsonl").is_file()
    assert (run / "online" / "round_1" / "DONE").is_file() and (run / "online" / "summary.json").is_file()

    assert main(["run", str(cfg_path), "--run-dir", str(run), "-q"]) == 0
    again = json.loads((run / "run.json").read_text())["stages"]
    assert again["reward_model"]["skipped"] and again["dpo"]["skipped"]


def test_stage_peak_memory_is_the_stages_own(tmp_path):
    """peak_rss_mb is reset per stage: a stage that allocates 200 MB reports it, the next
    stage (after the memory is freed) reports less."""
    import numpy as np

    from psychocounsel import pipeline

    reset = pipeline._reset_peak_rss()
    if not reset:
        pytest.skip("this kernel cannot reset the peak-RSS mark (/proc/self/clear_refs)")
    block = np.ones(25_000_000)  # 200 MB, touched
    big = pipeline._peak_rss_mb(reset)
    del block
    assert pipeline._reset_peak_rss()
    assert pipeline._peak_rss_mb(True) < big - 150
