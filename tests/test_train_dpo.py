"""train/dpo: TRL DPO on a tiny local Llama; the policy learns to prefer word set A over word set B."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from psychocounsel.config import DPOConfig, DPOStageConfig, override
from psychocounsel.errors import UserError
from psychocounsel.train import dpo

from conftest import SRC, kill_after_checkpoint

# Chosen responses use only set A, rejected only set B, for the same prompts.
SET_A = ("that", "sounds", "hard", "tell", "me", "more", "can", "we", "talk")
SET_B = ("you", "are", "not", "sad", "stop", "thinking", "about", "it")
FEELINGS = ("sad", "anxious", "tired", "alone", "scared", "angry", "lost", "hopeless")


def make_pairs(n: int = 16) -> list[dict]:
    return [
        {
            "question": f"i feel {FEELINGS[i % 8]} {'today' if i < 8 else 'every night'}",
            "chosen": " ".join(SET_A[i % 4 : i % 4 + 5]),
            "rejected": " ".join(SET_B[i % 4 : i % 4 + 5]),
        }
        for i in range(n)
    ]


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def changed(a, b) -> list[str]:
    """Names of parameters that differ between two models of the same architecture."""
    import torch

    sb = b.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])]


def run(tiny_lm, out, **kw):
    """train_dpo, also returning the in-memory policy that was saved."""
    saved = {}
    real = dpo.save_merged

    def keep(trainer, path):
        saved["model"] = real(trainer, path)
        return saved["model"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dpo, "save_merged", keep)
        cfg = DPOStageConfig(base=str(tiny_lm), lr=1e-3, batch_size=4, max_steps=8, **kw)
        summary = dpo.train_dpo(make_pairs(), cfg, out)
    return summary, saved["model"]


@pytest.fixture(scope="module")
def full_run(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo-full")
    summary, model = run(tiny_lm, out)
    return out, summary, model


def test_to_dpo_rows_chat_and_plain():
    rows = [{"question": "i feel lost", "chosen": "tell me more", "rejected": "stop it"}]
    chat = dpo.to_dpo_rows(rows, chat=True)[0]
    assert chat["prompt"] == [{"role": "user", "content": "i feel lost"}]
    assert chat["chosen"] == [{"role": "assistant", "content": "tell me more"}]
    assert chat["rejected"] == [{"role": "assistant", "content": "stop it"}]
    plain = dpo.to_dpo_rows([{"prompt": "i feel lost", "chosen": "a", "rejected": "b"}], chat=False)[0]
    assert plain == {"prompt": "i feel lost\n\n", "chosen": "a", "rejected": "b"}
    with pytest.raises(UserError, match="pair 0"):
        dpo.to_dpo_rows([{"question": "q", "chosen": "", "rejected": "b"}], chat=True)


def test_keep_last_tokens(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    assert dpo.keep_last_tokens(tok, "i feel sad  alone today", 3) == "sad  alone today"
    assert dpo.keep_last_tokens(tok, "i feel sad", 5) == "i feel sad"


def test_dpo_learns_the_preference(full_run, tiny_lm):
    out, summary, _ = full_run
    assert summary["steps"] == 8
    assert summary["train_loss_last"] < summary["train_loss_first"] - 0.05
    history = json.loads((out / "train_log.json").read_text())
    margins = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    assert len(margins) == 8 and margins[-1] > margins[0] and margins[-1] > 0
    assert summary["reward_margin_last"] == margins[-1] and summary["reward_accuracy_last"] == 1.0
    trained, base = load(out), load(tiny_lm)
    assert len(changed(trained, base)) >= len(base.state_dict()) // 2


def test_saved_policy_reloads_identically(full_run):
    import torch

    out, _, model = full_run
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    ids = torch.tensor([[2, 10, 11, 12, 5, 3]])
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
        got = load(out)(input_ids=ids).logits
    assert torch.equal(expected, got)
    card = (out / "README.md").read_text()
    assert "beta | 0.1" in card and "sigmoid" in card and "not a substitute for professional care" in card


def test_lora_is_merged(tiny_lm, tmp_path):
    out = tmp_path / "lora"
    summary, _ = run(tiny_lm, out, lora=True, lora_r=4)
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert not (out / "adapter_config.json").exists()
    diff = changed(load(out), load(tiny_lm))
    assert diff and all("proj" in k for k in diff)  # LoRA on the linear layers only, not embeddings/lm_head


def test_user_errors(tiny_lm, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        dpo.train_dpo(make_pairs(2), DPOStageConfig(base=str(tmp_path / "nope")), tmp_path / "out")
    with pytest.raises(UserError, match="0 rows"):
        dpo.train_dpo([], DPOConfig(), tmp_path / "out", base=str(tiny_lm))
    # Loss types are a config bound now (config.DPOLoss): a one-line UserError naming the option.
    with pytest.raises(UserError, match="^command line: loss_type: Input should be 'sigmoid'"):
        override(DPOConfig(), {"loss_type": "nope"})
    with pytest.raises(UserError, match="max_prompt_length .* must be below max_length"):
        override(DPOConfig(), {"max_prompt_length": 384})


# -- checkpoints and resume -------------------------------------------------------------------


@pytest.mark.slow  # 11 s on an idle 2-core machine: two fresh processes import torch and TRL
def test_sigkill_mid_training_resumes_to_the_unbroken_result(tiny_lm, tmp_path):
    from safetensors.torch import load_file

    from psychocounsel.pairs_io import load_pairs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in make_pairs()), encoding="utf-8")
    # 60 steps (7.5 passes over 16 pairs at batch 2), a checkpoint every 5.
    options = {"base": str(tiny_lm), "lr": 1e-3, "batch_size": 2, "max_steps": 60, "save_steps": 5}
    reference = dpo.train_dpo(load_pairs(pairs, "train"), DPOStageConfig(**options), tmp_path / "unbroken")
    out = tmp_path / "killed"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    cmd = [sys.executable, "-m", "psychocounsel", "train-dpo", "--pairs", str(pairs), "--out", str(out), *flags]
    kill_after_checkpoint(cmd, out)
    assert not (out / "train_log.json").exists()

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=SRC))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 60
    assert summary["train_loss_last"] == pytest.approx(reference["train_loss_last"], rel=1e-5)
    log = json.loads((out / "train_log.json").read_text())
    expected = json.loads((tmp_path / "unbroken" / "train_log.json").read_text())
    assert [h["loss"] for h in log if "loss" in h] == pytest.approx([h["loss"] for h in expected if "loss" in h])
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "unbroken" / "model.safetensors")
    for name in b:
        assert a[name].allclose(b[name], rtol=1e-5, atol=1e-6), name
    # The published folder: safetensors and JSON, no checkpoints and no pickles.
    assert not (out / "checkpoints").exists() and not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    assert (out / "training_args.json").is_file()


def test_report_to_is_checked_and_passed_to_trl(tiny_lm, tmp_path):
    cfg = DPOStageConfig(base=str(tiny_lm), report_to="tensorboardx")
    with pytest.raises(UserError, match="report_to: unknown integration 'tensorboardx'; choose from none, all"):
        dpo.train_dpo(make_pairs(2), cfg, tmp_path / "out")
    assert dpo._dpo_config(tmp_path, DPOConfig(report_to="none")).report_to == []
    from transformers.integrations import get_available_reporting_integrations

    if "tensorboard" not in get_available_reporting_integrations():
        with pytest.raises(UserError, match=r"report_to: tensorboard is not installed \(pip install tensorboard\)"):
            dpo._dpo_config(tmp_path, DPOConfig(report_to="none,tensorboard"))


def test_cpu_scoring_of_completions_only_gives_the_same_logprobs(tiny_lm, monkeypatch):
    import torch
    from trl.trainer import utils

    from psychocounsel.train.dpo import load_policy, score_completions_only_on_cpu

    torch.manual_seed(0)
    ids = torch.randint(4, 60, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[1, 9:] = -100  # padding

    def logprobs():
        model = load_policy(tiny_lm)
        utils.add_fused_lm_head(model)
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out.log_probs.detach(), model.lm_head.weight.grad.clone()

    monkeypatch.setattr(utils, "_use_triton", utils._use_triton)  # restored after the test
    every_position, grad_every = logprobs()
    score_completions_only_on_cpu()
    assert utils._use_triton(torch.device("cpu"))
    score_completions_only_on_cpu()  # twice: still one wrapper
    assert not getattr(utils._use_triton.__closure__[0].cell_contents, "psychocounsel", False)
    compact, grad_compact = logprobs()

    with torch.no_grad():
        direct = torch.log_softmax(load_policy(tiny_lm)(input_ids=ids).logits[:, :-1].float(), -1)
        direct = direct.gather(-1, ids[:, 1:, None].clamp(min=0))[..., 0]
    valid = labels[:, 1:] != -100
    assert torch.allclose(compact, every_position, atol=1e-6)
    assert torch.allclose(compact[valid], direct[valid], atol=1e-5)
    assert (compact[~valid] == 0).all()
    assert torch.allclose(grad_compact, grad_every, atol=1e-6)
