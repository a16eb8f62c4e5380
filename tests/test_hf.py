"""The Hugging Face ecosystem takes psychocounsel's files as they are: pairs/ loads with
``datasets.load_dataset``, plain TRL trains on it (the speech reaches the model), and every card's
YAML metadata parses with huggingface_hub. Pairs come from the real pairs stage on a run written
here, in the tiny model's words; no network, no hub."""

from __future__ import annotations

import pytest

from psychocounsel import pairs
from psychocounsel.config import DPOConfig, PairsConfig, RewardModelConfig
from psychocounsel.pairs_io import load_pairs
from psychocounsel.records import Rating, Response, Speech
from psychocounsel.rubric import PAPER_KEYS
from psychocounsel.store import RunDir, append_jsonl, write_json

JUDGE = "judge-1"
# Words of conftest's word-level tokenizer, so every speech token is a known one.
SPEECHES = {
    "s0": "i feel alone every night",
    "s1": "my partner cannot stop thinking about work",
    "s2": "i feel scared about school today",
    "s3": "i feel hopeless about my job",
    "s4": "i feel anxious tired today",
    "s5": "my friend cannot sleep",
}
CONTEXT = [{"role": "client", "content": "i feel lost"}, {"role": "counselor", "content": "tell me more"}]
REPLIES = {"a": ("that sounds hard , tell me more", 5.0), "b": ("can we talk about it ?", 3.0), "c": ("why ?", 1.0)}


def make_pairs(root, fmt: str = "published", license: str = "unknown") -> RunDir:
    """A run as ingest, generate and rate leave it (s3 a multi-turn session), then the pairs stage."""
    rundir = RunDir(root)
    speeches = [Speech(sid, text, context=CONTEXT if sid == "s3" else []) for sid, text in SPEECHES.items()]
    append_jsonl(rundir.speeches, [s.to_dict() for s in speeches])
    append_jsonl(
        rundir.responses,
        [
            Response(f"{s}-{g}", s, f"gen-{g}", text, "m").to_dict()
            for s in SPEECHES
            for g, (text, _) in REPLIES.items()
        ],
    )
    append_jsonl(
        rundir.ratings,
        [
            Rating(f"{s}-{g}", s, JUDGE, scores={k: score for k in PAPER_KEYS}).to_dict()
            for s in SPEECHES
            for g, (_, score) in REPLIES.items()
        ],
    )
    write_json(rundir.run_json, {"stages": {"rate": {"judge": JUDGE}}})
    pairs.run(PairsConfig(test_fraction=0.5, seed=0, format=fmt, license=license), rundir)
    return rundir


@pytest.fixture(scope="module", params=["published", "trl"])
def pairs_dir(request, tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp(request.param), request.param).pairs


def train_split(pairs_dir, cache):
    from datasets import load_dataset

    files = {"train": str(pairs_dir / "train.parquet")}
    return load_dataset("parquet", data_files=files, cache_dir=str(cache))["train"]


def contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i : i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def speech_ids(tokenizer, row: dict) -> list[int]:
    ids = tokenizer(SPEECHES[row["ID"]], add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    return ids


def cpu_args(config_class, out, **kw):
    return config_class(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=1,
        per_device_train_batch_size=2,
        save_strategy="no",
        activation_checkpointing=False,  # TRL's default is on; a 2-layer model on CPU needs no memory saving
        **kw,
    )


# -- datasets ---------------------------------------------------------------------------------


def test_load_dataset_reads_the_pairs_folder_by_its_card(pairs_dir, tmp_path):
    """The card's ``configs`` name the parquet splits, so the folder loads as it is (the .jsonl
    copies beside them are not read twice)."""
    import pyarrow.parquet as pq
    from datasets import load_dataset

    data = load_dataset(str(pairs_dir), cache_dir=str(tmp_path / "cache"))
    assert sorted(data) == ["test", "train"]
    for name in ("train", "test"):
        table = pq.read_table(pairs_dir / f"{name}.parquet")
        assert data[name].num_rows == table.num_rows > 0
        assert data[name].column_names == table.column_names
        assert {"prompt", "chosen", "rejected", "margin", "ID", "prefID"} <= set(table.column_names)
    first = data["train"][0]
    if "question" in first:  # published: text, and the prompt is the question with a blank line
        assert first["prompt"] == first["question"] + "\n\n"
    else:
        assert first["prompt"][-1] == {"role": "user", "content": SPEECHES[first["ID"]]}
        assert first["chosen"][0]["role"] == "assistant" and len(first["chosen"]) == 1


# -- TRL --------------------------------------------------------------------------------------


def test_dpo_trainer_takes_the_file_as_is_and_sees_the_speech(pairs_dir, tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    data = train_split(pairs_dir, tmp_path / "cache")
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm),
        args=cpu_args(TrlDPOConfig, tmp_path / "dpo"),
        train_dataset=data,
        processing_class=tokenizer,
    )
    for row, built in zip(data, trainer.train_dataset):
        assert contains(built["prompt_ids"], speech_ids(tokenizer, row))
        assert not contains(built["chosen_ids"], speech_ids(tokenizer, row))
    multi = next(b for r, b in zip(data, trainer.train_dataset) if r["ID"] == "s3")
    assert contains(multi["prompt_ids"], tokenizer("i feel lost", add_special_tokens=False)["input_ids"])
    trainer.train()  # the extra columns (ids, ratings, margin) are dropped by TRL, not an error
    assert trainer.state.global_step == 1


def test_the_readme_five_lines_train_on_the_pairs(tiny_lm, tmp_path, monkeypatch):
    """The README's snippet as written, with the tiny model, this run's pairs and a CPU config."""
    from pathlib import Path

    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = readme.split("trains with plain TRL")[1].split("```python\n")[1].split("```")[0]
    assert code.count("\n") == 5
    cpu = f"DPOConfig({str(tmp_path / 'policy')!r}, use_cpu=True, bf16=False, max_steps=1, report_to='none')"
    for old, new in (
        ('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(str(tiny_lm))),
        ('"RUN/pairs"', repr(str(make_pairs(tmp_path / "run").pairs))),
        ('DPOConfig("policy")', cpu),
    ):
        assert old in code
        code = code.replace(old, new)
    scope: dict = {}
    exec(code, scope)
    assert scope["trainer"].state.global_step == 1


def test_without_a_prompt_column_dpo_trainer_drops_the_speech(tiny_lm, tmp_path):
    """Why the column exists: given only ``question``, TRL takes the common start of chosen and
    rejected as the prompt, and the speech never reaches the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    data = train_split(make_pairs(tmp_path / "run").pairs, tmp_path / "cache").remove_columns("prompt")
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm),
        args=cpu_args(TrlDPOConfig, tmp_path / "dpo"),
        train_dataset=data,
        processing_class=tokenizer,
    )
    assert not any(contains(b["prompt_ids"], speech_ids(tokenizer, r)) for r, b in zip(data, trainer.train_dataset))


def test_reward_trainer_takes_the_file_as_is_scores_the_speech_and_uses_the_margin(pairs_dir, tiny_lm, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    data = train_split(pairs_dir, tmp_path / "cache")
    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(tiny_lm, num_labels=1),
        args=cpu_args(RewardConfig, tmp_path / "rm"),
        train_dataset=data,
        processing_class=tokenizer,
    )
    for row, built in zip(data, trainer.train_dataset):
        assert contains(built["chosen_ids"], speech_ids(tokenizer, row))
        assert contains(built["rejected_ids"], speech_ids(tokenizer, row))
    batch = next(iter(trainer.get_train_dataloader()))
    # margin reaches the loss: -log sigmoid(r_chosen - r_rejected - margin)
    assert "margin" in batch
    assert set(batch["margin"].tolist()) <= set(data["margin"])
    trainer.train()
    assert trainer.state.global_step == 1


def test_the_project_trains_on_both_forms_alike(tmp_path):
    """pairs_io reads either form; DPO's rows come out the same (chat and plain)."""
    from psychocounsel.train.dpo import to_dpo_rows

    published = load_pairs(make_pairs(tmp_path / "p").pairs, "train")
    trl = load_pairs(make_pairs(tmp_path / "t", "trl").pairs, "train")
    for p, t in zip(to_dpo_rows(published, chat=False), to_dpo_rows(trl, chat=False), strict=True):
        if p["prompt"].startswith("Client: i feel lost"):  # s3's transcript; from messages, role-labelled
            turns = f"user: i feel lost\n\nassistant: tell me more\n\nuser: {SPEECHES['s3']}\n\n"
            assert t == {**p, "prompt": turns}
        else:
            assert t == p
    chat = to_dpo_rows(trl, chat=True)
    assert [r["chosen"] for r in chat] == [r["chosen"] for r in to_dpo_rows(published, chat=True)]
    assert any(len(r["prompt"]) == 3 for r in chat)  # s3's session keeps its turns as messages


# -- cards ------------------------------------------------------------------------------------


def test_dataset_card_metadata_parses_and_names_the_splits(tmp_path):
    from huggingface_hub import DatasetCard, DatasetCardData

    rundir = make_pairs(tmp_path / "run", license="cc-by-nc-4.0")
    card = DatasetCard.load(rundir.pairs / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-nc-4.0" and meta["language"] == ["en"]
    assert {"psychocounsel", "counseling", "preference", "dpo", "reward-model"} <= set(meta["tags"])
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": "train.parquet"}, {"split": "test", "path": "test.parquet"}],
        }
    ]
    assert DatasetCardData(**meta).to_dict() == meta
    assert card.text.lstrip().startswith("# Preference pairs") and "not a substitute for professional care" in card.text
    assert "unknown" in make_pairs(tmp_path / "default").pairs.joinpath("README.md").read_text()


def test_dataset_card_size_category_follows_the_row_count():
    from psychocounsel.card import dataset_front_matter

    cfg = PairsConfig()
    assert "- 1K<n<10K\n" in dataset_front_matter(cfg, {"train": 900, "test": 100})
    assert "- 10K<n<100K\n" in dataset_front_matter(cfg, {"train": 99_999, "test": 0})


def test_an_empty_split_is_left_out_of_the_card_and_the_rest_loads(tmp_path, monkeypatch):
    """``--test-fraction 0`` writes an empty test.parquet, which ``datasets`` cannot read."""
    from datasets import load_dataset

    run = pairs.run
    monkeypatch.setattr(pairs, "run", lambda cfg, rundir: run(cfg.model_copy(update={"test_fraction": 0.0}), rundir))
    pairs_dir = make_pairs(tmp_path / "run").pairs
    assert list(load_dataset(str(pairs_dir), cache_dir=str(tmp_path / "cache"))) == ["train"]


@pytest.mark.parametrize(
    ("base", "hub_id"),
    [("minilm", "sentence-transformers/all-MiniLM-L6-v2"), ("default", "HuggingFaceTB/SmolLM2-135M-Instruct")],
)
def test_model_cards_metadata_parses_with_base_model_only_for_a_hub_id(tmp_path, tiny_lm, base, hub_id):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.utils import validate_repo_id

    from psychocounsel.train import dpo, reward

    metrics = {
        "margin_used": True,
        "train_pairs": 10,
        "n": 2,
        "eval_split": "test",
        "steps": 3,
        "accuracy": 1.0,
        "auc": 1.0,
        "ece": 0.1,
        "brier": 0.05,
    }
    summary = {k: None for k in ("train_loss_first", "train_loss_last", "reward_margin_last", "reward_accuracy_last")}
    cards = {}
    for name, local in (("hub", False), ("local", True)):
        model_base = str(tiny_lm) if local else base
        (tmp_path / name / "rm").mkdir(parents=True)
        (tmp_path / name / "policy").mkdir()
        reward.write_model_card(tmp_path / name / "rm", RewardModelConfig(base=model_base), metrics)
        dpo.write_model_card(tmp_path / name / "policy", model_base, DPOConfig(), {"steps": 3, **summary}, 10)
        for kind in ("rm", "policy"):
            cards[name, kind] = ModelCard.load(tmp_path / name / kind / "README.md")
    for kind, pipeline, tag in (("rm", "text-classification", "reward-model"), ("policy", "text-generation", "dpo")):
        meta = cards["hub", kind].data.to_dict()
        assert meta["base_model"] == hub_id
        validate_repo_id(meta["base_model"])  # what huggingface_hub checks of a repo id, offline
        assert meta["license"] == "unknown" and meta["language"] == ["en"] and meta["pipeline_tag"] == pipeline
        assert {"psychocounsel", "counseling", tag, "trl"} <= set(meta["tags"])
        assert ModelCardData(**meta).to_dict() == meta
        assert "base_model" not in cards["local", kind].data.to_dict()  # a local path is no Hub id
        text = cards["hub", kind].text
        assert text.lstrip().startswith("# Counseling") and "not a substitute for professional care" in text
        assert "## Intended use and limits" in text and "Licence: `unknown`" in text
