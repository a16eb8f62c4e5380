"""Tests of DPO-Iter (train/online.py) on a tiny Llama policy and a tiny random reward model, both
built here. Random rewards are enough for the mechanics: rounds, pairs, resume, best checkpoint."""

from __future__ import annotations

import json
import shutil
import sys

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


def test_a_finished_rerun_loads_no_model_and_keeps_best_in_place(run, models, tmp_path, monkeypatch):
    import psychocounsel.reward_model

    def no_load(*args, **kwargs):
        raise AssertionError("the reward model was loaded for rounds that are all done")

    monkeypatch.setattr(psychocounsel.reward_model, "load_reward_model", no_load)
    monkeypatch.setattr(dpo, "train_dpo", no_load)
    out = tmp_path / "online"
    shutil.copytree(run[0], out)

    def rerun():
        return online.train_online(str(models[0]), models[1], speeches(), out, config(rounds=2))

    expected = {**run[1], "best_policy": str(out / "best")}  # the folder moved: best is copied once more
    assert rerun() == expected
    stamp = (out / "best" / "config.json").stat()
    assert rerun() == expected
    again = (out / "best" / "config.json").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)  # not copied again
    # A copy cut short leaves no summary.json behind it (written after the copy): it is redone.
    (out / "summary.json").unlink()
    (out / "best" / "model.safetensors").unlink()
    assert rerun() == expected
    assert (out / "best" / "model.safetensors").is_file()


def test_a_different_run_in_the_same_folder_is_refused(run, models):
    with pytest.raises(UserError, match="different run.*seed"):
        online.train_online(str(models[0]), models[1], speeches(), run[0], config(rounds=2, seed=1))


def test_the_generator_is_not_part_of_the_run(run, models):
    """How the responses are written (engine, vLLM's memory share) is not what a run is made of:
    a run resumes under another generator (and folders from before the generator option match)."""
    from psychocounsel.train.rollout import GENERATOR_FIELDS

    out, summary, _, _ = run
    cfg = config(rounds=2, generator="transformers", vllm_gpu_memory_utilization=0.9, batch_size=4)
    assert online.train_online(str(models[0]), models[1], speeches(), out, cfg) == summary
    assert not set(GENERATOR_FIELDS) & set(json.loads((out / "config.json").read_text()))


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


# --- generation: one load per round, and the vLLM engine (a fake vllm module: vLLM needs a GPU) ---


class Events:
    """What happened, in order: policy loads, releases and DPO updates."""

    def __init__(self, out):
        self.out, self.log = out, []

    def name(self, path):
        path = str(path)
        return path.replace(str(self.out) + "/", "") if path.startswith(str(self.out)) else "start"

    def counting_dpo(self):
        real = dpo.train_dpo

        def train(rows, cfg, out, base=None, resume=False):
            self.log.append(("dpo", self.name(base)))
            return real(rows, cfg, out, base=base, resume=resume)

        return train


def test_each_round_loads_its_policy_once_and_releases_it_before_dpo(models, tmp_path, monkeypatch):
    """Round r's dev responses and round r+1's samples come from one load of round r's policy (it
    was two), and the policy is released before each DPO update."""
    from psychocounsel.backends.transformers_local import TransformersBackend

    lm, rm = models
    out = tmp_path / "online"
    events = Events(out)
    load, close = TransformersBackend.load, TransformersBackend.close

    def counting_load(self):
        if self._lm is None:
            events.log.append(("load", events.name(self.path)))
        return load(self)

    def counting_close(self):
        if self._lm is not None:
            events.log.append(("release", events.name(self.path)))
        close(self)

    monkeypatch.setattr(TransformersBackend, "load", counting_load)
    monkeypatch.setattr(TransformersBackend, "close", counting_close)
    monkeypatch.setattr(dpo, "train_dpo", events.counting_dpo())
    summary = online.train_online(str(lm), rm, speeches(), out, config(rounds=2, generator="auto"))
    assert events.log == [
        ("load", "start"),  # round 0's dev responses, then round 1's samples
        ("release", "start"),
        ("dpo", "start"),
        ("load", "round_1/policy"),  # round 1's dev responses, then round 2's samples
        ("release", "round_1/policy"),
        ("dpo", "round_1/policy"),
        ("load", "round_2/policy"),  # round 2's dev responses
        ("release", "round_2/policy"),  # at the end
    ]
    r1, r2 = summary["rounds"][1], summary["rounds"][2]
    assert r1["generator"] == r2["generator"] == "transformers"  # auto without CUDA
    assert "sample_load" not in r2["seconds"] and r2["seconds"]["dev_load"] > 0  # loaded once, in dev
    assert r2["completion_tokens"]["sample"] > 0 and set(r2["seconds"]) >= {"sample", "dpo", "dev"}


class FakeVLLM:
    """The parts of vllm that rollout.VLLMBackend uses (LLM, SamplingParams,
    distributed.cleanup_dist_env_and_memory), recording every call in ``events.log``. Its texts
    depend on the request's seed, so that a speech's samples differ and make pairs."""

    def __init__(self, events):
        import types

        self.events, self.inits, self.chats, self.generated = events, [], [], []
        self.chat_template, self.fail = "{{ messages }}", None
        fake = self
        self.module = types.ModuleType("vllm")
        self.distributed = types.ModuleType("vllm.distributed")
        self.distributed.cleanup_dist_env_and_memory = lambda: events.log.append(("cleanup",))
        self.module.distributed = self.distributed

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, model, **kwargs):
                fake.inits.append({"model": model, **kwargs})
                events.log.append(("load", events.name(model)))
                self.llm_engine = types.SimpleNamespace(
                    engine_core=types.SimpleNamespace(
                        shutdown=lambda: events.log.append(("release", events.name(model)))
                    )
                )

            def get_tokenizer(self):
                return types.SimpleNamespace(chat_template=fake.chat_template)

            def chat(self, messages, sampling_params=None, use_tqdm=True):
                if fake.fail:
                    raise ValueError(fake.fail)
                fake.chats.append((messages, [p.kwargs for p in sampling_params]))
                return [fake.output(p.kwargs) for p in sampling_params]

            def generate(self, prompts, sampling_params=None, use_tqdm=True):
                fake.generated.append(prompts)
                return [fake.output(p.kwargs) for p in sampling_params]

        self.module.LLM, self.module.SamplingParams = LLM, SamplingParams

    @staticmethod
    def output(params):
        import types

        seed = params["seed"] or 0
        words = [WORDS[(seed >> (4 * i)) % len(WORDS)] for i in range(params["max_tokens"])]
        best = types.SimpleNamespace(text=" ".join(words), token_ids=list(range(len(words))), finish_reason="length")
        return types.SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[best])


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    events = Events(tmp_path / "online")
    fake = FakeVLLM(events)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setitem(sys.modules, "vllm.distributed", fake.distributed)
    monkeypatch.setattr(dpo, "train_dpo", events.counting_dpo())
    return fake


def test_vllm_generates_each_round_and_is_shut_down_before_dpo(models, fake_vllm, tmp_path):
    from psychocounsel.backends.base import ChatRequest
    from psychocounsel.backends.cached import Meter
    from psychocounsel.train.rollout import request_seed

    lm, rm = models
    out, meter = tmp_path / "online", Meter()
    cfg = config(rounds=1, generator="vllm", vllm_max_model_len=256)
    summary = online.train_online(str(lm), rm, speeches(), out, cfg, meter=meter)
    assert fake_vllm.events.log == [
        ("load", "start"),
        ("release", "start"),  # the engine is shut down and the GPU cleaned before the update
        ("cleanup",),
        ("dpo", "start"),
        ("load", "round_1/policy"),
        ("release", "round_1/policy"),
        ("cleanup",),
    ]
    assert fake_vllm.inits == [
        {"model": str(lm), "dtype": "bfloat16", "gpu_memory_utilization": 0.5, "max_model_len": 256},
        {
            "model": str(out / "round_1" / "policy"),
            "dtype": "bfloat16",
            "gpu_memory_utilization": 0.5,
            "max_model_len": 256,
        },
    ]
    dev, train = online.split_dev(speeches(), cfg.dev_fraction, cfg.seed)
    (dev0, greedy), (sampled, params), (dev1, _) = fake_vllm.chats
    assert dev0 == dev1 == [[{"role": "user", "content": s["text"]}] for s in dev]
    assert greedy == [{"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": cfg.max_tokens, "seed": None}] * len(dev)
    # Sample-major: sample j of each of the round's speeches, seeded from j and the speech.
    n = len(sampled) // cfg.k
    assert n == cfg.speeches_per_round and sampled == sampled[:n] * cfg.k
    expected = [request_seed(ChatRequest(m, {"seed": i // n})) for i, m in enumerate(sampled)]
    assert [p["seed"] for p in params] == expected and len(set(expected)) == len(expected)
    assert {(p["n"], p["temperature"], p["top_p"], p["max_tokens"]) for p in params} == {(1, 1.0, 1.0, cfg.max_tokens)}
    assert summary["rounds"][1]["generator"] == "vllm" and summary["rounds"][1]["n_pairs"] > 0
    calls = sum(row["calls"] for row in meter.by_model.values())
    assert calls == 2 * len(dev) + cfg.k * n  # every response counted, as on the transformers path


def test_generator_choice(monkeypatch, fake_vllm, models, tmp_path):
    import torch

    from psychocounsel.train.rollout import resolve_generator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_generator("auto") == "vllm" and resolve_generator("transformers") == "transformers"
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed: import raises ImportError
    assert resolve_generator("auto") == "transformers"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="^generator: vllm, but vllm is not installed: pip install vllm"):
        online.train_online(str(models[0]), models[1], speeches(), tmp_path / "o", config(generator="vllm"))
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="generator: Input should be 'auto', 'transformers' or 'vllm'"):
        override(OnlineConfig(), {"generator": "vlm"})


def test_vllm_backend_without_a_chat_template_and_on_a_refused_call(models, fake_vllm):
    """A model without a chat template gets the transformers backend's transcript; a call vLLM
    refuses (e.g. a prompt over max_model_len) is a one-line UserError."""
    from psychocounsel.backends.base import ChatRequest
    from psychocounsel.train.rollout import VLLMBackend

    backend = VLLMBackend(str(models[0]), OnlineConfig())
    request = ChatRequest([{"role": "user", "content": "i feel sad"}], {"temperature": 0.0, "max_tokens": 3})
    fake_vllm.chat_template = None
    [done] = backend.complete([request])
    assert fake_vllm.generated == [["user: i feel sad\n\nassistant:"]] and not fake_vllm.chats
    assert (done.completion_tokens, done.prompt_tokens, done.finish_reason) == (3, 3, "length")
    fake_vllm.chat_template, fake_vllm.fail = "{{ messages }}", "The decoder prompt (length 9000) is longer\nmore"
    with pytest.raises(
        UserError, match=r"^vllm could not generate with .*: The decoder prompt \(length 9000\) is longer$"
    ):
        backend.complete([request])
    backend.close()
    assert fake_vllm.events.log[-2:] == [("release", "start"), ("cleanup",)]
