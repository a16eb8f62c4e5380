"""The command line: bad input is one clear line and exit code 2, never a traceback; --help is fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-m", "psychocounsel.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def assert_clean_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    # Progress logs of earlier stages may come first; the error itself is one line, the last.
    assert errors == [lines[-1]] and lines[-1].startswith("psychocounsel: error:"), res.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_missing_file(tmp_path):
    assert_clean_error(cli("ingest", str(tmp_path / "nope.csv"), "--run-dir", str(tmp_path / "r")), "not found")


@pytest.mark.parametrize(
    "name, content, needles",
    [
        ("speeches.docx", b"hello", ["unknown format"]),
        ("s.csv", b"question,label\nI feel low,1\n", ["question", "label"]),  # lists the columns it has
        ("s.csv", "text\ncaf\xe9 and more\n".encode("latin-1"), ["UTF-8"]),
        ("s.jsonl", b"", ["empty"]),
    ],
)
def test_bad_input_file(tmp_path, name, content, needles):
    f = tmp_path / name
    f.write_bytes(content)
    assert_clean_error(cli("ingest", str(f), "--run-dir", str(tmp_path / "r")), *needles)


def test_unknown_config_key_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  kk: 3\npairs:\n  min_gapp: 1\n", encoding="utf-8")
    assert_clean_error(cli("run", str(cfg), "--run-dir", str(tmp_path / "r")), "generate.kk", "pairs.min_gapp")


def test_bad_config_value(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  k: 0\n", encoding="utf-8")
    assert_clean_error(cli("run", str(cfg), "--run-dir", str(tmp_path / "r")), "generate.k")


def test_stage_before_its_input(tmp_path):
    assert_clean_error(cli("rate", "--run-dir", str(tmp_path / "r")), "run 'psychocounsel ingest' first")


def test_missing_model_path(tmp_path):
    from conftest import write_speeches

    speeches = write_speeches(tmp_path / "s.jsonl", 2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"ingest: {{input: {speeches}}}\ngenerate:\n  pool:\n    - name: x\n"
        f"      backend: transformers:{tmp_path / 'no-model'}\n",
        encoding="utf-8",
    )
    assert_clean_error(cli("run", str(cfg), "--run-dir", str(tmp_path / "r")), "does not exist")


def test_unknown_backend(tmp_path):
    from conftest import write_speeches

    speeches = write_speeches(tmp_path / "s.jsonl", 2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"ingest: {{input: {speeches}}}\ngenerate:\n  pool:\n    - name: x\n      backend: vllm-direct:foo\n",
        encoding="utf-8",
    )
    assert_clean_error(cli("run", str(cfg), "--run-dir", str(tmp_path / "r")), "unknown backend")


@pytest.mark.parametrize("command", [[], ["run"], ["ingest"], ["generate"], ["rate"], ["pairs"]])
def test_help_is_useful_and_fast(command):
    # No wall-clock bound (flaky on a loaded machine); test_import_is_side_effect_free checks that
    # the CLI imports no torch/transformers, which is what keeps --help fast.
    res = cli(*command, "--help")
    assert res.returncode == 0
    assert "--run-dir" in res.stdout or "COMMAND" in res.stdout


def test_help_shows_float_defaults_short():
    # TrainJudgeConfig.robust_share is 2/3: --help reads "0.6667", not sixteen digits.
    res = cli("train-judge", "--help")
    assert res.returncode == 0
    assert "(default 0.6667)" in " ".join(res.stdout.split()) and "0.66666" not in res.stdout


def test_import_is_side_effect_free():
    code = (
        "import sys, logging, psychocounsel, psychocounsel.cli, psychocounsel.config;"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules;"
        "assert not logging.getLogger().handlers"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=SRC))


def _pairs_file(tmp_path: Path) -> Path:
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        '{"question": "I feel low", "chosen": "That sounds hard.", "rejected": "Cheer up."}\n', encoding="utf-8"
    )
    return f


def test_training_commands_report_bad_input_cleanly(tmp_path):
    assert_clean_error(cli("eval-rm", "--model", str(tmp_path / "no-rm"), "--data", str(_pairs_file(tmp_path))))
    assert_clean_error(cli("train-rm", "--pairs", str(tmp_path / "no-pairs"), "--out", str(tmp_path / "o")))
    assert_clean_error(
        cli(
            "train-dpo",
            "--pairs",
            str(_pairs_file(tmp_path)),
            "--base",
            str(tmp_path / "no-model"),
            "--out",
            str(tmp_path / "o"),
        ),
        "does not exist",
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    assert_clean_error(cli("train-dpo", "--pairs", str(bad), "--out", str(tmp_path / "o")), "chosen")


def test_training_config_sections_give_defaults(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("dpo: {base: /no/such/model, beta: 0.2}\n", encoding="utf-8")
    pairs = str(_pairs_file(tmp_path))
    # the section's base is used (and reported missing); a section that is absent is named
    assert_clean_error(
        cli("train-dpo", "--config", str(cfg), "--pairs", pairs, "--out", str(tmp_path / "o")), "/no/such/model"
    )
    assert_clean_error(
        cli("train-rm", "--config", str(cfg), "--pairs", pairs, "--out", str(tmp_path / "o")),
        "no 'reward_model' section",
    )


@pytest.mark.parametrize("command", ["train-rm", "eval-rm", "train-dpo", "train-online", "eval-winrate", "eval-judge"])
def test_training_help(command):
    res = cli(command, "--help")
    assert res.returncode == 0 and "--out" in res.stdout


def _unsupported_gguf(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "notarealarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_of_an_unsupported_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv("PSYCHOCOUNSEL_CACHE", str(tmp_path / "cache"))
    bad = _unsupported_gguf(tmp_path / "odd.gguf")
    res = cli("train-dpo", "--pairs", str(_pairs_file(tmp_path)), "--base", str(bad), "--out", str(tmp_path / "o"))
    assert_clean_error(res, "notarealarch")


def test_train_online_needs_its_inputs(tmp_path):
    assert_clean_error(
        cli(
            "train-online",
            "--reward-model",
            str(tmp_path / "rm"),
            "--speeches",
            str(tmp_path / "none.jsonl"),
            "--out",
            str(tmp_path / "o"),
        ),
        "not found",
    )
