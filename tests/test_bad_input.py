"""Every bad input found by trying the tool as a hostile user would: each is one line on stderr,
exit 2, and the run directory is left byte for byte as it was (nothing lost, nothing half-written).

A finished run (ingest -> generate -> rate -> pairs against a scripted OpenAI-compatible server on
127.0.0.1) is built once; each case works on a fresh copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_speeches
from openai_server import FakeOpenAI, Reply

SRC = str(Path(__file__).resolve().parents[1] / "src")
KEYS = ("empathy", "relevance", "clarity", "safety", "exploration", "autonomy", "staging")


def _reply(body: dict) -> Reply:
    prompt = body["messages"][-1]["content"]
    if "Answer with one JSON object" in prompt:
        if "UNRATEABLE" in prompt:
            return Reply.ok("I'd rather not score this.")
        scores = dict.fromkeys(KEYS, 3) | {"empathy": 5 if "Warm-reply" in prompt else 2}
        return Reply.ok(json.dumps({"scores": scores, "rationale": "ok"}))
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    if "fail" in system:
        return Reply.error(500)
    speech = body["messages"][-1]["content"][:10]
    return Reply.ok(f"Warm-reply to {speech}. What feels hardest?" if "warm" in system else f"ok {speech}.")


@pytest.fixture(scope="module")
def server():
    with FakeOpenAI() as s:
        s.handler = _reply
        yield s


def _config(tmp: Path, server: FakeOpenAI, **changes) -> Path:
    backend = {"spec": "openai:fake-model", "base_url": server.url, "max_retries": 0}
    cfg = {
        "ingest": {"input": str(write_speeches(tmp / "speeches-in.jsonl", 6))},
        "generate": {
            "k": 2,
            "pool": [
                {"name": "warm", "backend": backend, "system_prompt": "be warm"},
                {"name": "terse", "backend": backend, "system_prompt": "be terse"},
            ],
        },
        "rate": {"judge": {"type": "llm", "backend": backend, "mode": "json", "retries": 0}},
        "pairs": {"test_fraction": 0.0, "min_gap": 0.4},
    }
    for section, value in changes.items():
        cfg[section] = value
    path = tmp / f"cfg-{len(list(tmp.glob('cfg-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "psychocounsel", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, server) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    res = cli("run", str(_config(tmp, server)), "--run-dir", str(tmp / "run"), "-q", "--until", "pairs")
    assert res.returncode == 0, res.stderr
    assert (tmp / "run" / "pairs" / "train.jsonl").read_text().strip()
    return tmp / "run"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _pairs_file(tmp: Path, content: bytes, name: str = "pairs.jsonl") -> str:
    (tmp / name).write_bytes(content)
    return str(tmp / name)


PAIR = b'{"question": "I feel low", "chosen": "That sounds hard.", "rejected": "Cheer up."}\n'
LABELLED = b'{"question": "I feel low", "response_a": "That sounds hard.", "response_b": "Cheer up.", "label": "A"}\n'
NOT_UTF8 = b'{"question": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
NOT_OBJECT = b'["I feel low", "That sounds hard.", "Cheer up."]\n'


def _case_args(case: str, run: Path, tmp: Path, server: FakeOpenAI) -> tuple[list[str], list[str]]:
    """(argv, words the error line must contain) for one bad input against the run ``run``."""
    run_s = str(run)
    if case == "ingest min-chars above max-chars":
        return [
            "ingest",
            str(tmp / "speeches-in.jsonl"),
            "--run-dir",
            run_s,
            "--min-chars",
            "900",
            "--max-chars",
            "100",
        ], ["min_chars"]
    if case == "ingest that would write no speech":
        return [
            "ingest",
            str(tmp / "speeches-in.jsonl"),
            "--run-dir",
            run_s,
            "--min-chars",
            "5000",
            "--max-chars",
            "6000",
        ], ["no speech is left"]
    if case == "re-ingest a different file into a run with responses":
        other = write_speeches(tmp / "other.jsonl", 9)
        other.write_text(other.read_text().replace("Speech", "Other speech"))
        return ["ingest", str(other), "--run-dir", run_s], ["would mix two data sets", "new --run-dir"]
    if case in ("rubric weight .inf", "run with a rubric weight .inf"):
        rubric = yaml.safe_load((Path(SRC) / "psychocounsel" / "rubrics" / "psychocounsel.yaml").read_text())
        rubric["principles"][0]["weight"] = float("inf")
        (tmp / "inf.yaml").write_text(yaml.safe_dump(rubric))
        if case.startswith("run"):
            cfg = yaml.safe_load(_config(tmp, server).read_text())
            cfg["rate"]["rubric"] = str(tmp / "inf.yaml")
            (tmp / "inf-run.yaml").write_text(yaml.safe_dump(cfg))
            return ["run", str(tmp / "inf-run.yaml"), "--run-dir", run_s], ["finite"]
        return ["pairs", "--run-dir", run_s, "--rubric", str(tmp / "inf.yaml")], ["finite"]
    if case == "pairs with no pair over min-gap":
        return ["pairs", "--run-dir", run_s, "--min-gap", "4.5"], ["no train pair"]
    if case == "train-dpo --epochs 0":
        return ["train-dpo", "--pairs", run_s, "--epochs", "0", "--out", str(run / "policy")], ["epochs"]
    if case == "train-dpo --lr -1":
        return ["train-dpo", "--pairs", run_s, "--lr", "-1", "--out", str(run / "policy")], ["lr"]
    if case == "train-rm --grad-accum 0":
        return ["train-rm", "--pairs", run_s, "--grad-accum", "0", "--out", str(run / "rm")], ["grad_accum"]
    if case == "eval-judge --limit -1":
        return [
            "eval-judge",
            "--judge",
            "minilm",
            "--data",
            _pairs_file(tmp, LABELLED),
            "--limit",
            "-1",
            "--out",
            str(run / "judge.json"),
        ], ["limit"]
    if case in ("eval-winrate --limit -1", "eval-winrate --max-tokens 0", "eval-winrate --batch-size 0"):
        flag, value = case.split()[1:]
        return [
            "eval-winrate",
            "--policy",
            "default",
            "--speeches",
            str(tmp / "speeches-in.jsonl"),
            "--out",
            str(run / "eval"),
            flag,
            value,
        ], [flag.strip("-").replace("-", "_")]
    if case == "typo inside online.dpo":
        cfg = _config(tmp, server, online={"rounds": 1, "dpo": {"max_stpes": 2}})
        return ["run", str(cfg), "--run-dir", run_s], ["online.dpo.max_stpes", "unknown key"]
    if case in ("pairs file not UTF-8", "pairs file with a non-object row"):
        content = NOT_UTF8 if "UTF-8" in case else NOT_OBJECT
        return ["train-dpo", "--pairs", _pairs_file(tmp, content), "--out", str(run / "policy")], [
            "UTF-8" if "UTF-8" in case else "JSON object"
        ]
    if case in ("labelled pairs not UTF-8", "labelled pairs with a non-object row"):
        content = NOT_UTF8 if "UTF-8" in case else NOT_OBJECT
        return ["eval-judge", "--judge", "minilm", "--data", _pairs_file(tmp, content, "labelled.jsonl")], [
            "UTF-8" if "UTF-8" in case else "JSON object"
        ]
    if case in ("run-dir jsonl not UTF-8", "run-dir jsonl with a non-object row"):
        rows = (run / "responses.jsonl").read_bytes()
        (run / "responses.jsonl").write_bytes(rows + (b'{"id": "caf\xe9"}\n' if "UTF-8" in case else NOT_OBJECT))
        return ["rate", "--run-dir", run_s, "--config", str(_config(tmp, server))], [
            "responses.jsonl:13",
            "UTF-8" if "UTF-8" in case else "JSON object",
        ]
    if case == "--run-dir names an existing file":
        return ["generate", "--run-dir", str(run / "run.json")], ["existing file"]
    if case == "--out names an existing file":
        return ["train-rm", "--pairs", run_s, "--out", str(run / "run.json")], ["existing file"]
    if case == "train-online speeches without id":
        (tmp / "noid.jsonl").write_text('{"text": "I feel low"}\n{"text": "I feel lost"}\n')
        return [
            "train-online",
            "--reward-model",
            str(run),
            "--speeches",
            str(tmp / "noid.jsonl"),
            "--out",
            str(run / "online"),
        ], ["'id'"]
    if case == "missing embedding_model path":
        cfg = _config(tmp, server, rate={"judge": {"type": "minilm", "embedding_model": str(tmp / "no-model")}})
        return ["rate", "--run-dir", run_s, "--config", str(cfg)], ["no-model"]
    if case == "corrupted cache.sqlite":
        (run / "cache.sqlite").write_bytes(b"this is not a database" * 100)
        for extra in ("cache.sqlite-wal", "cache.sqlite-shm"):
            (run / extra).unlink(missing_ok=True)
        cfg = _config(
            tmp,
            server,
            generate={
                "k": 3,
                "pool": [
                    {"name": n, "backend": {"spec": "openai:fake-model", "base_url": server.url}}
                    for n in ("a", "b", "c")
                ],
            },
        )
        return ["generate", "--run-dir", run_s, "--config", str(cfg)], ["cache.sqlite", "delete it"]
    if case == "generate whose every call fails":
        backend = {"spec": "openai:fake-model", "base_url": server.url, "max_retries": 0}
        cfg = _config(
            tmp, server, generate={"k": 1, "pool": [{"name": "down", "backend": backend, "system_prompt": "fail"}]}
        )
        return ["generate", "--run-dir", run_s, "--config", str(cfg)], ["all", "failed", "HTTP 500"]
    if case == "rate whose every rating fails":
        backend = {"spec": "openai:other-judge", "base_url": server.url, "max_retries": 0}
        cfg = _config(tmp, server, rate={"judge": {"type": "llm", "backend": backend, "retries": 0}})
        # This judge can read nothing: every reply it gets is unparseable.
        server.handler = lambda body: Reply.ok("UNRATEABLE") if body["model"] == "other-judge" else _reply(body)
        return ["rate", "--run-dir", run_s, "--config", str(cfg)], ["failed on all", "nothing written"]
    raise AssertionError(case)


CASES = [
    "ingest min-chars above max-chars",
    "ingest that would write no speech",
    "re-ingest a different file into a run with responses",
    "rubric weight .inf",
    "run with a rubric weight .inf",
    "pairs with no pair over min-gap",
    "train-dpo --epochs 0",
    "train-dpo --lr -1",
    "train-rm --grad-accum 0",
    "eval-judge --limit -1",
    "eval-winrate --limit -1",
    "eval-winrate --max-tokens 0",
    "eval-winrate --batch-size 0",
    "typo inside online.dpo",
    "pairs file not UTF-8",
    "pairs file with a non-object row",
    "labelled pairs not UTF-8",
    "labelled pairs with a non-object row",
    "run-dir jsonl not UTF-8",
    "run-dir jsonl with a non-object row",
    "--run-dir names an existing file",
    "--out names an existing file",
    "train-online speeches without id",
    "missing embedding_model path",
    "corrupted cache.sqlite",
    "generate whose every call fails",
    "rate whose every rating fails",
]
# The unparseable replies of a judge that read nothing are kept in the call cache (so they can be
# re-parsed without paying for them again); no row of the run changes.
CACHE_MAY_GROW = {"rate whose every rating fails"}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, finished_run, tmp_path, server):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.copy(finished_run.parent / "speeches-in.jsonl", tmp_path / "speeches-in.jsonl")
    try:
        argv, needles = _case_args(case, run, tmp_path, server)
        before = snapshot(run)
        res = cli(*argv)
    finally:
        server.handler = _reply
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("psychocounsel: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    after = snapshot(run)
    if case in CACHE_MAY_GROW:
        before = {k: v for k, v in before.items() if not k.startswith("cache.sqlite")}
        after = {k: v for k, v in after.items() if not k.startswith("cache.sqlite")}
    assert after == before


def test_force_lets_pairs_write_none(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    res = cli("pairs", "--run-dir", str(run), "--min-gap", "4.5", "--force", "-q")
    assert res.returncode == 0, res.stderr
    assert (run / "pairs" / "train.jsonl").read_text() == ""


def test_dpo_section_takes_every_option_its_flags_take(tmp_path):
    from psychocounsel.config import DPOConfig, load_config

    path = tmp_path / "c.yaml"
    path.write_text("dpo: {lora: true, lora_r: 8, log_every: 2}\nonline: {seed: 3, dpo: {lora_r: 4, max_steps: 3}}\n")
    cfg = load_config(path)
    assert cfg.dpo.lora_r == 8 and cfg.dpo.log_every == 2
    assert isinstance(cfg.online.dpo, DPOConfig) and cfg.online.dpo.lora_r == 4
    assert cfg.online.round_dpo().seed == 3  # the online seed, unless dpo sets its own
