"""One process per run directory: a second `run` on the same folder exits 2 naming the holder,
and the folder ends up as one run leaves it; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from psychocounsel.errors import UserError
from psychocounsel.lock import LOCK_NAME, FolderLock

from conftest import write_speeches
from openai_server import FakeOpenAI, Reply

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLD = (
    "import sys, time; from psychocounsel.lock import FolderLock; FolderLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_with_the_holders_pid(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(UserError, match=rf"in use by pid {proc.pid} on .+, started "):
            FolderLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the dead process left its file behind
    with FolderLock(tmp_path):
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()  # released: no trace left


def test_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": 0}))
    with FolderLock(tmp_path):
        pass


def test_lock_is_released_when_the_work_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with FolderLock(tmp_path):
            raise RuntimeError("boom")
    with FolderLock(tmp_path):
        pass


def _judge_reply(body: dict) -> Reply:
    prompt = body["messages"][-1]["content"]
    if "Answer with one JSON object" in prompt:
        empathy = 5 if "Warm-reply" in prompt else 2
        scores = {k: 3 for k in ("relevance", "clarity", "safety", "exploration", "autonomy", "staging")}
        return Reply.ok(json.dumps({"scores": dict(scores, empathy=empathy), "rationale": "ok"}), delay=0.2)
    warm = body["messages"][0]["role"] == "system" and "warm" in body["messages"][0]["content"]
    speech = body["messages"][-1]["content"][:12]
    return Reply.ok(f"Warm-reply to {speech}. What feels hardest?" if warm else f"ok {speech}.", delay=0.2)


def _counts(run: Path) -> dict[str, tuple[int, int]]:
    """(rows, distinct keys) of each file a run appends to or writes."""

    def rows(name: str, key) -> tuple[int, int]:
        lines = [json.loads(x) for x in (run / name).read_text().splitlines() if x.strip()]
        return len(lines), len({key(r) for r in lines})

    return {
        "speeches": rows("speeches.jsonl", lambda r: r["id"]),
        "responses": rows("responses.jsonl", lambda r: r["id"]),
        "ratings": rows("ratings.jsonl", lambda r: (r["response_id"], r["judge"])),
        "train": rows("pairs/train.jsonl", lambda r: r["prefID"]),
    }


def test_two_runs_on_one_folder(tmp_path):
    with FakeOpenAI() as server:
        server.handler = _judge_reply
        backend = {"spec": "openai:fake-model", "base_url": server.url, "concurrency": 2}
        cfg = {
            "ingest": {"input": str(write_speeches(tmp_path / "s.jsonl", 6))},
            "generate": {
                "k": 2,
                "pool": [
                    {"name": "warm", "backend": backend, "system_prompt": "be warm"},
                    {"name": "terse", "backend": backend, "system_prompt": "be terse"},
                ],
            },
            "rate": {"judge": {"type": "llm", "backend": backend, "mode": "json"}},
            "pairs": {"test_fraction": 0.0, "min_gap": 0.4},
        }
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=SRC)
        command = [sys.executable, "-m", "psychocounsel", "run", str(path), "-q", "--run-dir"]
        run = tmp_path / "run"
        first = subprocess.Popen(command + [str(run)], env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (run / LOCK_NAME).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command + [str(run)], env=env, capture_output=True, text=True, timeout=120)
        _, first_err = first.communicate(timeout=300)
        assert first.returncode == 0, first_err
        assert second.returncode == 2, second.stderr
        lines = [x for x in second.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and f"is in use by pid {first.pid}" in lines[0], second.stderr

        alone = tmp_path / "alone"
        assert subprocess.run(command + [str(alone)], env=env, capture_output=True, timeout=300).returncode == 0
    together, single = _counts(run), _counts(alone)
    assert together == single
    assert all(n == distinct for n, distinct in together.values()), together  # no row twice
    assert together["responses"] == (12, 12) and together["train"][0] == 6
    assert not (run / LOCK_NAME).exists()
