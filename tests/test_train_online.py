"""Tests of DPO-Iter (train/online.py) on a tiny Llama policy and a tiny random reward model, both
built here. Random rewards are enough for the mechanics: rounds, pairs, resume, best checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest

from psychocounsel.config import OnlineConfig, override
from psychocounsel.errors import UserError
from psychocounsel.store import read_jsonl
from psychocounsel.train import dpo, online

from conftest import WORDS, build_tiny_lm

DPO_OPTIONS = {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "max_length": 128, "max_prompt_length": 64}
RUN = {"speeches_per_round": 2, "k": 3, "max_tokens": 8, "dev_fraction": 0.25, "dpo": DPO_OPTIONS}


def config(**over) -> OnlineConfig:
    return OnlineConfig(**{**RUN, **over})


def build_tiny_rm(lm_path, path):
    """A 2-layer LlamaForSequenceClassification (1 output, random weights) with the LM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 11,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(lm_path).save_pretrained(path)
    return path


def speeches(n=8):
    return [{"id": f"s{i}", "text": " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(12))} for i in range(n)]


class CountingDPO:
    def __init__(self):
        self.calls = 0
        self.train_dpo = dpo.train_dpo  # the real one, taken before it is patched

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.train_dpo(*args, **kwargs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    lm = build_tiny_lm(tmp_path_factory.mktemp("policy"))
    return lm, build_tiny_rm(lm, tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="module")
def run(models, tmp_path_factory):
    """Round 1 alone, then resumed to 2 rounds; the state of round 1 between the two calls."""
    lm, rm = models
    out = tmp_path_factory.mktemp("online")
    online.train_online(str(lm), rm, speeches(), out, config(rounds=1))
    before = ((out / "round_1" / "DONE").stat().st_mtime_ns, (out / "round_1" / "pairs.jsonl").read_bytes())
    counter = CountingDPO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dpo, "train_dpo", counter)
        summary = online.train_online(str(lm), rm, speeches(), out, config(rounds=2))
    return out, summary, before, counter.calls


def test_rounds_write_pairs_policy_metrics_and_done(run):
    out = run[0]
    for r in (1, 2):
        folder = out / f"round_{r}"
        for name in ("pairs.jsonl", "policy/model.safetensors", "metrics.json", "DONE"):
            assert (folder / name).is_file(), f"round_{r}/{name}"
        pairs = read_jsonl(folder / "pairs.jsonl")
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n_pairs"] == len(pairs) > 0
        assert all(p["chosen_reward"] > p["rejected_reward"] and p["chosen"] != p["rejected"] for p in pairs)
        assert metrics["mean_gap"] > 0 and metrics["dpo"]["steps"] == 2
    assert "dev_mean_reward" in json.loads((out / "round_0" / "metrics.json").read_text())


def test_best_round_is_the_argmax_and_copied(run):
    out, summary, _, _ = run
    assert json.loads((out / "summary.json").read_text()) == summary
    rewards = [m["dev_mean_reward"] for m in summary["rounds"]]
    assert [m["round"] for m in summary["rounds"]] == [0, 1, 2]
    assert summary["best_round"] == rewards.index(max(rewards))
    assert (out / "best" / "config.json").is_file()


def test_round_one_changed_the_policy(run, models):
    from safetensors.torch import load_file

    base = load_file(models[0] / "model.safetensors")
    new = load_file(run[0] / "round_1" / "policy" / "model.safetensors")
    assert any(not new[name].equal(base[name]) for name in base)


def test_resume_skips_done_rounds(run):
    out, _, before, calls = run
    assert calls == 1  # round 2 only
    assert ((out / "round_1" / "DONE").stat().st_mtime_ns, (out / "round_1" / "pairs.jsonl").read_bytes()) == before


def test_round_without_done_is_redone_cleanly(run, models, tmp_path, monkeypatch):
    out = tmp_path / "online"
    shutil.copytree(run[0], out)
    (out / "round_2" / "DONE").unlink()
    (out / "round_2" / "partial.tmp").write_text("torn")
    round_1 = (out / "round_1" / "pairs.jsonl").read_bytes()
    counter = CountingDPO()
    monkeypatch.setattr(dpo, "train_dpo", counter)
    online.train_online(str(models[0]), models[1], speeches(), out, config(rounds=2))
    assert counter.calls == 1
    assert (out / "round_2" / "DONE").is_file() and not (out / "round_2" / "partial.tmp").exists()
    assert (out / "round_1" / "pairs.jsonl").read_bytes() == round_1


def test_a_different_run_in_the_same_folder_is_refused(run, models):
    with pytest.raises(UserError, match="different run.*seed"):
        online.train_online(str(models[0]), models[1], speeches(), run[0], config(rounds=2, seed=1))


def test_user_errors(models, tmp_path):
    lm, rm = models
    with pytest.raises(UserError, match=r"need at least 2 speeches.*\(0 given\)"):
        online.train_online(str(lm), rm, [], tmp_path / "o", config())
    # k, temperature, rounds and dev_fraction are config bounds now: a one-line UserError.
    with pytest.raises(UserError, match="^command line: k: Input should be greater than or equal to 2$"):
        override(OnlineConfig(), {"k": 1})
    with pytest.raises(UserError, match="reward model folder not found"):
        online.train_online(str(lm), tmp_path / "no-rm", speeches(), tmp_path / "o", config())
    with pytest.raises(UserError, match="policy path does not exist"):
        online.train_online(str(tmp_path / "no-policy"), rm, speeches(), tmp_path / "o", config())
    assert not (tmp_path / "o").exists()


def test_make_pairs_respects_min_gap():
    batch = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]
    texts = ["a0", "b0", "a1", None, "a2", "b2"]  # sample-major: sample j of speech i at j * 2 + i
    rewards = {0: 1.0, 1: 0.5, 2: 3.0, 4: 2.0, 5: 0.6}
    pairs = online.make_pairs(batch, texts, rewards, k=3, min_gap=0.5)
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "a1", "a0")]  # b's gap 0.1


def test_a_round_killed_in_its_dpo_resumes_from_the_checkpoint(models, tmp_path, monkeypatch, caplog):
    """A round that died in its DPO update after a checkpoint keeps its pairs and resumes the update
    (the SIGKILL itself is tested in test_train_dpo; here the process dies at the final save)."""
    lm, rm = models
    out = tmp_path / "online"
    killed = {**DPO_OPTIONS, "save_steps": 1}

    def die(trainer, path):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dpo, "save_merged", die)
        with pytest.raises(KeyboardInterrupt):
            online.train_online(str(lm), rm, speeches(), out, config(rounds=1, dpo=killed))
    assert (out / "round_1" / "policy" / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()
    pairs = (out / "round_1" / "pairs.jsonl").read_bytes()

    sampled = []
    real = online._sample_pairs
    monkeypatch.setattr(online, "_sample_pairs", lambda *a: sampled.append(1) or real(*a))
    caplog.set_level("INFO", logger="psychocounsel")
    # How often a round saves is not part of what it is made of: a resume may change it.
    summary = online.train_online(str(lm), rm, speeches(), out, config(rounds=1, dpo={**killed, "save_steps": 5}))
    assert not sampled and (out / "round_1" / "pairs.jsonl").read_bytes() == pairs
    assert "resuming from " + str(out / "round_1" / "policy" / "checkpoints" / "checkpoint-1") in caplog.text
    assert summary["rounds"][1]["dpo"]["steps"] == 2
    policy = out / "round_1" / "policy"
    assert (policy / "model.safetensors").is_file() and not (policy / "checkpoints").exists()
    assert not list(policy.glob("*.bin")) and (out / "round_1" / "DONE").is_file()
