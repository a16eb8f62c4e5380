"""generate: seeded draws, and a run killed with SIGKILL resumes to the rows of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from psychocounsel.cleaning import trim_incomplete
from psychocounsel.config import GeneratorConfig
from psychocounsel.generate import assign, response_id
from psychocounsel.records import Speech

from conftest import write_speeches


def _config(tmp: Path, model: Path, speeches: Path, max_tokens: int) -> Path:
    gen = {
        "backend": {"spec": f"transformers:{model}", "batch_size": 2, "device": "cpu"},
        "temperature": 1.0,
        "max_tokens": max_tokens,
    }
    cfg = {
        "ingest": {"input": str(speeches)},
        "generate": {
            "k": 2,
            "seed": 3,
            "pool": [dict(gen, name="a", system_prompt="be kind"), dict(gen, name="b", temperature=0.7)],
        },
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _cmd(cfg: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "psychocounsel.cli", "run", str(cfg), "--run-dir", str(run), "--until", "generate"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "responses.jsonl").read_text(encoding="utf-8").splitlines()]


def test_draw_is_seeded_and_distinct():
    pool = [GeneratorConfig(name=n) for n in "abcde"]
    speeches = [Speech(id=f"s{i}", text="x") for i in range(20)]
    first = assign(speeches, pool, 3, seed=1)
    assert first == assign(speeches, pool, 3, seed=1)
    assert first != assign(speeches, pool, 3, seed=2)
    for s in speeches:
        names = [g.name for sp, g in first if sp.id == s.id]
        assert len(names) == 3 and len(set(names)) == 3
    # Adding a speech does not reshuffle the draws of the others.
    more = assign(speeches + [Speech(id="new", text="y")], pool, 3, seed=1)
    assert [(s.id, g.name) for s, g in more if s.id != "new"] == [(s.id, g.name) for s, g in first]


def test_response_id_depends_on_generator_settings():
    s = Speech(id="s1", text="x")
    assert response_id(s, GeneratorConfig(name="a")) != response_id(s, GeneratorConfig(name="a", temperature=0.1))


def test_response_id_is_stable_across_versions():
    """Ids are hashes of the generator's settings: one added later that cannot change the text
    (the reply size cap) must not change them, or every run made before would be regenerated
    and its pairs reordered. The id below is what psychocounsel 0.1.0 gave."""
    s = Speech(id="s1", text="x")
    capped = GeneratorConfig(name="a", backend={"spec": "default", "max_response_bytes": 2048})
    assert response_id(s, capped) == response_id(s, GeneratorConfig(name="a")) == "r-13bfbb504e470ac8"


def test_trim_incomplete():
    assert trim_incomplete('She said "stop." Then I') == 'She said "stop."'
    assert trim_incomplete("Really? Yes! And") == "Really? Yes!"


def test_sigkill_mid_generate_resumes_to_same_rows(tmp_path, tiny_lm):
    speeches = write_speeches(tmp_path / "speeches.jsonl", 30)
    cfg = _config(tmp_path, tiny_lm, speeches, max_tokens=120)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))

    reference = tmp_path / "uninterrupted"
    subprocess.run(_cmd(cfg, reference), check=True, env=env, capture_output=True)
    expected = _rows(reference)
    # A random tiny model sometimes ends at once; empty replies are failures, not rows.
    assert 50 <= len(expected) <= 60

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(cfg, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = killed / "responses.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "generation finished before it could be killed; make it slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.read_bytes().count(b"\n")
    assert 6 <= partial < len(expected)

    subprocess.run(_cmd(cfg, killed), check=True, env=env, capture_output=True)
    resumed = _rows(killed)
    assert len(resumed) == len({r["id"] for r in resumed}) == len(expected), "duplicated or lost rows"
    key = lambda r: r["id"]  # noqa: E731
    assert [(r["id"], r["text"]) for r in sorted(resumed, key=key)] == [
        (r["id"], r["text"]) for r in sorted(expected, key=key)
    ]
    stats = json.loads((killed / "run.json").read_text())["stages"]["generate"]
    assert 0 < stats["calls_made"] <= 60 - partial, "the resumed run redid finished work"
