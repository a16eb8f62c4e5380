"""Shared fixtures. Tests never touch the network or a hub: tiny models are built here, locally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PSYCHOCOUNSEL_PROGRESS", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SRC = str(Path(__file__).resolve().parents[1] / "src")

WORDS = (
    "i feel sad anxious tired alone scared angry lost hopeless my job mother father partner friend "
    "sleep work school today every night cannot stop thinking about it what how why you are not "
    "that sounds hard tell me more can we talk feeling help please thank"
).split()


@pytest.fixture(autouse=True)
def _no_real_openai(monkeypatch):
    """A developer's own OpenAI settings must not leak into a test."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def build_tiny_lm(path: Path) -> Path:
    """A 2-layer Llama with a word-level tokenizer and a chat template, saved to ``path`` (~1 s)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {
        t: i
        for i, t in enumerate(
            ["<pad>", "<unk>", "<s>", "</s>", ":", "?", ".", ","] + WORDS + ["system", "user", "assistant"]
        )
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = (
        "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant : {% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def write_speeches(path: Path, n: int) -> Path:
    """n distinct sample speeches (written for the tests, 100+ characters each)."""
    rows = []
    for i in range(n):
        words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(30))
        rows.append({"text": f"Speech {i}: {words}. I do not know what to do about it any more.", "topic": "test"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m psychocounsel ARGS`` in a fresh process, as a user runs it (stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "psychocounsel", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
        timeout=300,
    )


def kill_after_checkpoint(cmd: list[str], out: Path, timeout: float = 120) -> None:
    """Start ``cmd`` (a training command), SIGKILL it as soon as OUT/checkpoints holds a complete
    checkpoint (the Trainer writes trainer_state.json last)."""
    import signal
    import time

    proc = subprocess.Popen(
        cmd, env=dict(os.environ, PYTHONPATH=SRC), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "training finished (or failed) before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
