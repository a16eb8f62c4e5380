"""Tests of reward-model training and evaluation: the metrics as pure functions checked against
hand-computed values, pair loading from every supported source (files written here, by us), and
training on a tiny Llama built locally. No network, no hub."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psychocounsel.config import RewardEvalConfig, RewardModelConfig, override
from psychocounsel.errors import UserError
from psychocounsel.evaluate.reward_eval import evaluate_file
from psychocounsel.pairs_io import load_pairs
from psychocounsel.reward_model import (
    accuracy,
    brier_score,
    encode,
    expected_calibration_error,
    load_reward_model,
    reward_differences,
    reward_metrics,
    roc_auc,
    sigmoid,
)
from psychocounsel.train import save_merged
from psychocounsel.train.reward import build_reward_trainer, train_reward_model

from conftest import SRC, kill_after_checkpoint

LN3 = math.log(3)  # sigmoid(ln 3) = 0.75 exactly: easy to compute by hand

# Separable synthetic pairs: chosen responses use words from GOOD, rejected from BAD (all in the
# tiny tokenizer's vocabulary), after a speech drawn from SPEECH.
GOOD = "that sounds hard tell me more can we talk".split()
BAD = "stop work school today every night cannot".split()
SPEECH = "i feel sad anxious tired alone scared angry lost hopeless my job mother father partner".split()


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(
            {
                "ID": f"s{seed}-{i}",
                "question": " ".join(rng.choice(SPEECH) for _ in range(8)),
                "chosen": " ".join(rng.choice(GOOD) for _ in range(5)),
                "rejected": " ".join(rng.choice(BAD) for _ in range(5)),
                "chosen_score": 4.0,
                "rejected_score": 2.5,
                "margin": 1.5,
            }
        )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """A run's pairs/ folder: train.parquet (64 pairs) and test.parquet + test.jsonl (16)."""
    d = tmp_path_factory.mktemp("run") / "pairs"
    d.mkdir()
    write_parquet(d / "train.parquet", synthetic_pairs(64, seed=1))
    write_parquet(d / "test.parquet", synthetic_pairs(16, seed=2))
    write_jsonl(d / "test.jsonl", synthetic_pairs(16, seed=2))
    return d


@pytest.fixture(scope="module")
def tiny_no_pad(tiny_lm, tmp_path_factory):
    """conftest's tiny Llama with its pad token removed (tokenizer and config), as many bases ship."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-no-pad")
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    config = AutoConfig.from_pretrained(tiny_lm)
    config.pad_token_id = None
    AutoModelForCausalLM.from_pretrained(tiny_lm, config=config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(tiny_no_pad, pairs_dir, tmp_path_factory):
    """One full training run (~2 s), shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("rm")
    metrics = train_reward_model(
        pairs_dir, RewardModelConfig(base=str(tiny_no_pad), epochs=2, batch_size=8, lr=5e-3), out
    )
    return out, metrics


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_hand_computed_calibrated_example():
    # 3 pairs at d = ln 3 (p 0.75), 1 at -ln 3: 75% right at p = 0.75 in each bin: perfectly calibrated.
    d = [LN3, LN3, LN3, -LN3]
    assert accuracy(d) == 0.75
    # d_i + d_j over 16 ordered pairs: 9 positive, 6 zero (ties, half), 1 negative.
    assert roc_auc(d) == pytest.approx((9 + 3) / 16)
    assert expected_calibration_error(d) == pytest.approx(0.0, abs=1e-12)
    assert brier_score(d) == pytest.approx((3 * 0.25**2 + 0.75**2) / 4)


def test_metrics_perfect_separation_and_ties():
    m = reward_metrics([0.5, 1.0, 3.0, 8.0])
    assert (m["n"], m["accuracy"], m["auc"]) == (4, 1.0, 1.0)
    assert reward_metrics([0.0, 0.0]) == {"n": 2, "accuracy": 0.5, "auc": 0.5, "ece": 0.0, "brier": 0.25}


def test_metrics_random_rewards_are_near_chance():
    d = np.random.default_rng(0).normal(size=4000)
    assert accuracy(d) == pytest.approx(0.5, abs=0.03)
    assert roc_auc(d) == pytest.approx(0.5, abs=0.03)


def test_auc_equals_brute_force_over_the_symmetric_set():
    d = np.random.default_rng(1).normal(size=40).round(1)  # rounding makes ties
    pos, neg = sigmoid(d), sigmoid(-d)
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert roc_auc(d) == pytest.approx(wins.mean())
    assert roc_auc([40.0, -38.0]) == 0.75  # sigmoid saturates to 1.0 for both; d does not


def test_metrics_refuse_empty_and_non_finite():
    with pytest.raises(ValueError, match="no reward differences"):
        reward_metrics([])
    with pytest.raises(ValueError, match="finite"):
        accuracy([1.0, float("nan")])


# -- loading pairs ----------------------------------------------------------------------------


def test_load_pairs_reads_parquet_jsonl_csv_alike(tmp_path):
    import csv

    rows = synthetic_pairs(3, seed=5)
    write_parquet(tmp_path / "p.parquet", rows)
    write_jsonl(tmp_path / "p.jsonl", rows)
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    loaded = [load_pairs(tmp_path / name, "train") for name in ("p.parquet", "p.jsonl", "p.csv")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0][0] == {
        "prompt": rows[0]["question"],
        "chosen": rows[0]["chosen"],
        "rejected": rows[0]["rejected"],
        "margin": 1.5,
    }


def test_load_pairs_from_pairs_dir_run_dir_and_jsonl_fallback(pairs_dir, tmp_path):
    assert len(load_pairs(pairs_dir, "train")) == 64
    assert len(load_pairs(pairs_dir.parent, "test")) == 16  # the run directory holding pairs/
    write_jsonl(tmp_path / "test.jsonl", synthetic_pairs(2, seed=3))
    assert len(load_pairs(tmp_path, "test")) == 2
    with pytest.raises(UserError, match="no train.parquet or train.jsonl"):
        load_pairs(tmp_path, "train")


def test_load_pairs_from_saved_datasets_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    data = DatasetDict(
        {"train": Dataset.from_list(synthetic_pairs(5, seed=1)), "test": Dataset.from_list(synthetic_pairs(2, seed=2))}
    )
    data.save_to_disk(str(tmp_path / "ds"))
    assert len(load_pairs(tmp_path / "ds", "train")) == 5
    assert load_pairs(tmp_path / "ds", "test")[0]["chosen"] == synthetic_pairs(2, seed=2)[0]["chosen"]
    with pytest.raises(UserError, match="no split 'dev'; its splits: train, test"):
        load_pairs(tmp_path / "ds", "dev")


def test_load_pairs_conversational_rows_and_derived_margin(tmp_path):
    convo = {
        "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": " I feel lost. "}],
        "chosen": [{"role": "assistant", "content": "Tell me more."}],
        "rejected": [{"role": "assistant", "content": "Cheer up."}],
        "chosen_score": 4.5,
        "rejected_score": 2.0,
    }
    expected = {**convo, "margin": 2.5}
    expected["prompt"] = [convo["prompt"][0], {"role": "user", "content": "I feel lost."}]
    for name in ("c.parquet", "c.jsonl"):
        (write_parquet if name.endswith("parquet") else write_jsonl)(tmp_path / name, [convo])
        row = load_pairs(tmp_path / name, "test")[0]
        assert {k: row[k] for k in ("prompt", "chosen", "rejected", "margin")} == {
            k: expected[k] for k in ("prompt", "chosen", "rejected", "margin")
        }
    # CSV cells hold conversations as JSON text.
    (tmp_path / "c.csv").write_text(
        'prompt,chosen,rejected\n"' + json.dumps(convo["prompt"]).replace('"', '""') + '",Tell me more.,Cheer up.\n',
        encoding="utf-8",
    )
    row = load_pairs(tmp_path / "c.csv", "test")[0]
    assert row["prompt"] == expected["prompt"] and row["chosen"] == "Tell me more." and "margin" not in row


def test_load_pairs_user_errors(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "response": "a", "score": 1}])
    with pytest.raises(UserError, match="lacks column.s. chosen, rejected; columns present: prompt, response, score"):
        load_pairs(tmp_path / "bad.jsonl", "train")
    d = tmp_path / "pairs"
    d.mkdir()
    pq.write_table(
        pa.schema([("question", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]).empty_table(),
        d / "test.parquet",
    )
    with pytest.raises(UserError, match="has no rows in split 'test'"):
        load_pairs(d, "test")
    write_jsonl(tmp_path / "empty.jsonl", [{"question": "q", "chosen": "", "rejected": "r"}])
    with pytest.raises(UserError, match="row 1 'chosen' is empty"):
        load_pairs(tmp_path / "empty.jsonl", "train")
    with pytest.raises(UserError, match="no such file or directory"):
        load_pairs(tmp_path / "missing.parquet", "train")


def test_hub_id_offline_says_it_needs_network(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Psychotherapy-LLM/PsychoCounsel-Preference' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)  # never try the network from a test
    with pytest.raises(UserError, match="needs network access, or pass a local copy"):
        load_pairs("Psychotherapy-LLM/PsychoCounsel-Preference", "test")


# -- encoding ---------------------------------------------------------------------------------


def test_encode_keeps_the_end_of_a_long_speech_and_the_whole_response(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    speech = " ".join(SPEECH * 10)  # 150 words
    ids = encode(tok, speech, "tell me more", max_length=40)
    text = tok.decode(ids)
    assert len(ids) <= 40 and text.endswith("assistant : tell me more </s>")
    assert "father partner" in text and ids[0] == tok.bos_token_id
    convo = [
        {"role": "user", "content": speech},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "i feel lost"},
    ]
    ids = encode(tok, convo, "tell me more", max_length=24)
    assert len(ids) <= 24 and "i feel lost" in tok.decode(ids)  # early turns went first
    assert len(encode(tok, "i feel sad", " ".join(GOOD * 20), max_length=32)) == 32


# -- training ---------------------------------------------------------------------------------


def test_training_learns_separable_pairs(trained, tiny_no_pad):
    from safetensors.torch import load_file

    out, metrics = trained
    assert metrics["accuracy"] > 0.9 and metrics["n"] == 16 and metrics["train_pairs"] == 64
    assert metrics["margin_used"] is True
    log = json.loads((out / "train_log.json").read_text())
    losses = [h["loss"] for h in log if "loss" in h]
    assert len(losses) >= 3 and losses[-1] < losses[0] * 0.7
    before, after = load_file(tiny_no_pad / "model.safetensors"), load_file(out / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not np.allclose(before[name].numpy(), after[name].numpy())
    assert "score.weight" in after and not any("lora" in k for k in after)


def test_training_outputs_metrics_card_and_padded_config(trained):
    out, metrics = trained
    saved = json.loads((out / "metrics.json").read_text())
    assert {"n", "accuracy", "auc", "ece", "brier"} <= set(saved) and saved["n"] == 16
    config = json.loads((out / "config.json").read_text())
    assert len(config["id2label"]) == 1  # one output: the reward
    assert config["pad_token_id"] == 3  # the base had none: EOS (</s>, id 3) pads
    card = (out / "README.md").read_text()
    assert "not a substitute for professional care" in card and "unsupervised" in card
    assert f"| {metrics['accuracy']:.3f} |" in card


def test_saved_model_scores_like_the_in_memory_one(tiny_lm, pairs_dir, tmp_path):
    import torch

    rows = load_pairs(pairs_dir, "train")
    cfg = RewardModelConfig(
        base=str(tiny_lm),
        epochs=1,
        batch_size=8,
        grad_accum=1,
        lr=5e-3,
        max_length=64,
        use_margin=False,
        lora=False,
        lora_r=4,
        seed=0,
        cpu=True,
    )
    trainer = build_reward_trainer(rows, cfg, tmp_path)
    trainer.train()
    model = save_merged(trainer, tmp_path)
    test = load_pairs(pairs_dir, "test")
    in_memory = reward_differences(model, trainer.processing_class, test, batch_size=5, max_length=64)
    saved, tokenizer = load_reward_model(tmp_path)
    reloaded = reward_differences(saved, tokenizer, test, batch_size=16, max_length=64)  # other batches, padding
    assert torch.allclose(torch.tensor(in_memory), torch.tensor(reloaded), atol=1e-5)
    for name in ("test.parquet", "test.jsonl"):
        m = evaluate_file(tmp_path, pairs_dir / name, RewardEvalConfig(max_length=64))
        assert set(m) == {"n", "accuracy", "auc", "ece", "brier"}
        assert m == pytest.approx(reward_metrics(reloaded))


# peft 0.21 reads model.is_gradient_checkpointing, which transformers 5 deprecates: not ours to fix.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_training_saves_a_merged_model(tiny_lm, pairs_dir, tmp_path):
    from safetensors.torch import load_file

    metrics = train_reward_model(
        pairs_dir, RewardModelConfig(base=str(tiny_lm), epochs=1, lr=5e-3, lora=True, lora_r=4), tmp_path
    )
    weights = load_file(tmp_path / "model.safetensors")
    assert not any("lora" in k for k in weights) and "score.weight" in weights
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert evaluate_file(tmp_path, pairs_dir)["n"] == 16


def test_train_user_errors(pairs_dir, tmp_path):
    with pytest.raises(UserError, match="model path does not exist"):
        train_reward_model(pairs_dir, RewardModelConfig(base=str(tmp_path / "no-such-model")), tmp_path / "out")
    # Option bounds are config bounds now: a one-line UserError naming the option.
    with pytest.raises(UserError, match="^command line: max_length: Input should be greater than or equal to 16$"):
        override(RewardModelConfig(base="default"), {"max_length": 4})
    with pytest.raises(UserError, match="not a model folder"):
        load_reward_model(tmp_path)


# -- checkpoints and resume -------------------------------------------------------------------


@pytest.mark.slow  # 10 s on an idle 2-core machine: two fresh processes import torch and TRL
def test_sigkill_mid_training_resumes_to_the_unbroken_result(tiny_lm, pairs_dir, tmp_path):
    from safetensors.torch import load_file

    # 64 steps, logged every 3. A checkpoint on a logged step: the first loss logged after a
    # resume averages the steps since the checkpoint, not since the last log.
    options = {"base": str(tiny_lm), "epochs": 2, "batch_size": 2, "lr": 5e-3, "max_length": 64, "save_steps": 6}
    reference = train_reward_model(pairs_dir, RewardModelConfig(**options), tmp_path / "unbroken")
    out = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    cmd = [sys.executable, "-m", "psychocounsel", "train-rm", "--pairs", str(pairs_dir), "--out", str(out), *flags]
    kill_after_checkpoint(cmd, out)
    assert not (out / "metrics.json").exists()

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=SRC))
    assert done.returncode == 0, done.stderr[-2000:]

    log = json.loads((out / "train_log.json").read_text())
    expected = json.loads((tmp_path / "unbroken" / "train_log.json").read_text())
    assert [h["step"] for h in log if "loss" in h] == [h["step"] for h in expected if "loss" in h]
    assert [h["loss"] for h in log if "loss" in h] == pytest.approx([h["loss"] for h in expected if "loss" in h])
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["train_loss_last"] == pytest.approx(reference["train_loss_last"], rel=1e-5)
    assert resumed["accuracy"] == reference["accuracy"]
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "unbroken" / "model.safetensors")
    for name in b:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    # The published folder: safetensors and JSON, no checkpoints and no pickles.
    assert not (out / "checkpoints").exists() and not (out / "training_args.bin").exists()
    assert json.loads((out / "training_args.json").read_text())["save_steps"] == 6


def test_resume_refuses_a_forgotten_flag_other_settings_and_a_finished_model(trained, pairs_dir, tmp_path):
    from psychocounsel.train import checkpoints

    out = tmp_path / "rm"
    cfg = RewardModelConfig(base="minilm", lr=5e-3)
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / "checkpoint-8").mkdir()  # torn by a kill: no trainer_state.json, written last
    with pytest.raises(UserError, match="holds checkpoint-4 of an unfinished training run: pass --resume"):
        train_reward_model(pairs_dir, cfg, out)
    other = cfg.model_copy(update={"lr": 1e-3, "report_to": "tensorboard"}).model_dump(mode="json")
    rows = load_pairs(pairs_dir, "train")
    (out / "checkpoints" / "training.json").write_text(json.dumps(checkpoints.identity("minilm", rows, other)))
    with pytest.raises(UserError, match="checkpoints was made with a different lr; resume with the same"):
        train_reward_model(pairs_dir, cfg, out, resume=True)
    rows[0] = {**rows[0], "chosen": "other"}
    other = cfg.model_dump(mode="json")
    (out / "checkpoints" / "training.json").write_text(json.dumps(checkpoints.identity("minilm", rows, other)))
    with pytest.raises(UserError, match="was made with a different data;"):
        train_reward_model(pairs_dir, cfg, out, resume=True)
    with pytest.raises(UserError, match="already holds a trained model: nothing to resume"):
        train_reward_model(pairs_dir, cfg, trained[0], resume=True)


def test_run_stage_resumes_by_itself(pairs_dir, tmp_path):
    """``psychocounsel run`` passes no flag: the stage resumes, so checkpoints of other settings are
    refused for what they are, not for a missing --resume."""
    import shutil

    from psychocounsel.store import RunDir
    from psychocounsel.training_stages import reward_model

    shutil.copytree(pairs_dir, tmp_path / "pairs")
    ckpt = tmp_path / "reward_model" / "checkpoints" / "checkpoint-6"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt.parent / "training.json").write_text(json.dumps({"base": "minilm", "lr": 1.0}))
    with pytest.raises(UserError, match="reward_model/checkpoints was made with a different .*lr"):
        reward_model(RewardModelConfig(), RunDir(tmp_path))
