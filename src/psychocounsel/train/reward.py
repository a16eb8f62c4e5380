"""reward: a Bradley-Terry reward model on preference pairs, as a thin configuration of TRL's
RewardTrainer (loss -log sigmoid(r_chosen - r_rejected [- margin])).

- Pairs come from a run's ``pairs/`` folder, one .parquet/.jsonl/.csv file, a ``datasets``
  folder saved with ``save_to_disk``, or a Hub id (needs network). Rows carry ``question`` (or
  ``prompt``), ``chosen``, ``rejected`` as text or as lists of {role, content} messages; they
  become TRL's ``prompt``/``chosen``/``rejected`` columns, plus ``margin`` where known.
- The base is a local folder (``default`` = SmolLM2-135M-Instruct, ``minilm`` = all-MiniLM-L6-v2,
  else a path; GGUF files are converted), loaded as a sequence classifier with one output.
- Output: the model (LoRA merged) as safetensors + tokenizer, ``metrics.json`` (accuracy, AUC,
  ECE, Brier on the test split; see ``evaluate.reward_eval``), ``train_log.json``, a model card.

TRL 1.16 *drops* pairs whose chosen or rejected sequence is over ``max_length`` (it never
truncates). We tokenize here instead (TRL accepts ``chosen_ids``/``rejected_ids``) with
``reward_eval.encode``, which cuts the start of long speeches, so no pair is lost and evaluation
reads exactly the token sequences training saw.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from ..card import intended_use
from ..errors import UserError
from ..evaluate.reward_eval import encode, ensure_pad_token
from ..progress import enabled as progress_enabled
from . import is_main_process, lora_config, save_merged, use_step_log

log = logging.getLogger(__name__)

INTENDED_USE = intended_use("""
This reward model scores counselor responses for research and for tools that **assist**
counselors and therapists (ranking drafts that a professional reviews, training policies). It is
not a substitute for professional care, and neither it nor a model trained with it is for
unsupervised use with clients. Its preferences come from an automatic judge's ratings on a
rubric, not from clinical judgement.""")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- pairs ------------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def read_table_file(path: Path) -> list[dict]:
    """Rows of a .parquet, .jsonl or .csv file (pairs, labelled pairs); a damaged file is a UserError."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
            raise UserError(f"{path}: cannot read as parquet ({str(e).splitlines()[0][:200]})") from None
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    raise UserError(f"{path}: unsupported file type '{suffix}'; use .parquet, .jsonl or .csv")


def _read_saved_dataset(path: Path, split: str) -> list[dict]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if not isinstance(data, DatasetDict):
        raise UserError(f"{path} holds one dataset without splits; save a DatasetDict with 'train' and 'test'")
    if split not in data:
        raise UserError(f"{path} has no split '{split}'; its splits: {', '.join(data) or 'none'}")
    return data[split].to_list()


def _read_hub(name: str, split: str) -> list[dict]:
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()
    except Exception as e:  # offline, unknown id or split: datasets raises many exception types
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"'{name}' is not a local path and loading it from the Hugging Face Hub failed ({reason}); "
                        "that needs network access, or pass a local copy (datasets save_to_disk folder or "
                        "parquet/jsonl files)") from None


def _read_source(source: str | Path, split: str) -> tuple[list[dict], str]:
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _read_saved_dataset(path, split), f"{path} (split '{split}')"
        if (path / "pairs").is_dir():
            path = path / "pairs"  # a run directory
        for name in (f"{split}.parquet", f"{split}.jsonl"):
            if (path / name).is_file():
                return read_table_file(path / name), str(path / name)
        raise UserError(f"{path} has no {split}.parquet or {split}.jsonl and is not a saved datasets folder")
    if path.is_file():
        return read_table_file(path), str(path)
    if HUB_ID.match(str(source)):
        return _read_hub(str(source), split), f"{source} (split '{split}')"
    raise UserError(f"no such file or directory: {path}")


def _message_list(value: Any) -> list[dict] | None:
    """``value`` as a conversation, when it is one (CSV cells hold them as JSON text)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"].strip()} for m in value]
    return None


def text_field(row: dict, key: str, where: str, i: int) -> str | list[dict]:
    """``row[key]`` as stripped text or a list of {role, content} messages; else a UserError naming the row."""
    value = row.get(key)
    messages = _message_list(value)
    if messages is not None:
        return messages
    if isinstance(value, str) and value.strip():
        return value.strip()
    kind = "empty" if value in (None, "", []) else f"a {type(value).__name__}"
    raise UserError(f"{where}: row {i + 1} '{key}' is {kind}; need text or a list of {{role, content}} messages")


def _margin(row: dict, where: str, i: int) -> float | None:
    value = row.get("margin")
    if value in (None, "") and row.get("chosen_score") not in (None, "") and row.get("rejected_score") not in (None, ""):
        value = float(row["chosen_score"]) - float(row["rejected_score"])
    if value in (None, ""):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: row {i + 1} has a non-numeric margin {value!r}") from None
    return value if math.isfinite(value) else None


def normalize_rows(rows: list[dict], where: str) -> list[dict]:
    """TRL's columns: prompt (from ``question`` or ``prompt``), chosen, rejected, and margin
    (the ``margin`` column, else chosen_score - rejected_score) when a row has one.

    >>> normalize_rows([{"question": " I feel lost. ", "chosen": "Tell me more.", "rejected": "Cheer up.",
    ...                  "margin": 1.5}], "x")
    [{'prompt': 'I feel lost.', 'chosen': 'Tell me more.', 'rejected': 'Cheer up.', 'margin': 1.5}]
    >>> normalize_rows([{"prompt": "hi", "answer": "a"}], "x.csv")
    Traceback (most recent call last):
    ...
    psychocounsel.errors.UserError: x.csv lacks column(s) chosen, rejected; columns present: prompt, answer
    """
    if not rows:
        return []
    present = list(rows[0])
    prompt_key = next((k for k in ("question", "prompt") if k in present), None)
    missing = [c for c in ("chosen", "rejected") if c not in present] + ([] if prompt_key else ["question (or prompt)"])
    if missing:
        raise UserError(f"{where} lacks column(s) {', '.join(missing)}; columns present: {', '.join(present) or 'none'}")
    out = []
    for i, row in enumerate(rows):
        item = {"prompt": text_field(row, prompt_key, where, i), "chosen": text_field(row, "chosen", where, i),
                "rejected": text_field(row, "rejected", where, i)}
        margin = _margin(row, where, i)
        if margin is not None:
            item["margin"] = margin
        out.append(item)
    return out


def load_pairs(source: str | Path, split: str) -> list[dict]:
    """Preference pairs of ``split`` in TRL's columns (see ``normalize_rows``).

    ``source``: a run directory or its ``pairs/`` folder ({split}.parquet, else {split}.jsonl);
    a single .parquet/.jsonl/.csv file (the whole file, whatever ``split``); a folder saved with
    ``DatasetDict.save_to_disk``; or a Hugging Face Hub dataset id (needs network access).
    """
    rows, where = _read_source(source, split)
    if not rows:
        raise UserError(f"{where} has no rows in split '{split}'")
    return normalize_rows(rows, where)


# -- training ---------------------------------------------------------------------------------

def _reward_config(out: Path, opts: dict[str, Any], n_rows: int):
    import torch
    from trl import RewardConfig


    cuda = torch.cuda.is_available()
    cpu = not cuda if opts["cpu"] is None else opts["cpu"]
    if not cpu and not cuda:
        raise UserError("cpu=False asks for a GPU, but torch sees no CUDA device")
    steps = math.ceil(n_rows / (opts["batch_size"] * opts["grad_accum"])) * opts["epochs"]
    return RewardConfig(
        output_dir=str(out), report_to="none", save_strategy="no", disable_tqdm=not progress_enabled(),
        use_cpu=cpu, bf16=not cpu,  # TRL defaults bf16=True; CPU autocast in bf16 is slow and lossy
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing; the new name wins over
        # TRL's default gradient_checkpointing=True. Off on CPU: memory is not the limit, time is (~20% more).
        activation_checkpointing=not cpu,
        learning_rate=opts["lr"], num_train_epochs=opts["epochs"], per_device_train_batch_size=opts["batch_size"],
        gradient_accumulation_steps=opts["grad_accum"],
        max_length=opts["max_length"],  # TRL's length filter; a no-op, encode() already fitted every sequence
        logging_steps=max(1, min(10, int(steps) // 20)), seed=opts["seed"],
    )


def tokenized_pairs(rows: list[dict], tokenizer, max_length: int, use_margin: bool):
    """A ``datasets.Dataset`` of chosen_ids, rejected_ids (and margin), as TRL takes them."""
    from datasets import Dataset

    data: dict[str, list] = {
        "chosen_ids": [encode(tokenizer, r["prompt"], r["chosen"], max_length) for r in rows],
        "rejected_ids": [encode(tokenizer, r["prompt"], r["rejected"], max_length) for r in rows],
    }
    if use_margin:
        data["margin"] = [float(r["margin"]) for r in rows]
    return Dataset.from_dict(data)


def load_base_classifier(path: Path, pad_token_id: int, seed: int):
    """The base as a sequence classifier with one output (a new, seeded ``score`` head)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

    config = AutoConfig.from_pretrained(path, num_labels=1)
    if config.get_text_config().pad_token_id is None:
        config.get_text_config().pad_token_id = pad_token_id  # the classifier finds the last real token by it
    set_seed(seed)
    # fp32 master weights on every device; bf16 is autocast on CUDA.
    return AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=torch.float32)


def build_reward_trainer(rows: list[dict], base: str, out: Path, opts: dict[str, Any]):
    """A TRL RewardTrainer for ``rows`` on the local model ``base`` (``opts``: train_reward_model's keywords)."""
    from transformers import AutoTokenizer
    from trl import RewardTrainer

    from ..models import resolve_local_model

    path = resolve_local_model(base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    # The training arguments come first: under DeepSpeed ZeRO-3 they make from_pretrained load
    # the model already sharded across the GPUs.
    args = _reward_config(out, opts, len(rows))
    model = load_base_classifier(path, tokenizer.pad_token_id, opts["seed"])
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if positions and opts["max_length"] > positions:
        raise UserError(f"max_length {opts['max_length']} is over the {positions} positions of {base}; lower it")
    data = tokenized_pairs(rows, tokenizer, opts["max_length"], opts["use_margin"])
    if args.disable_tqdm:
        import datasets

        datasets.disable_progress_bars()
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                            peft_config=lora_config(opts["lora_r"], "SEQ_CLS") if opts["lora"] else None)
    use_step_log(trainer, "margin", "accuracy")
    return trainer


def save_reward_model(trainer, out: Path):
    """Save the trained model (LoRA merged into the base) and tokenizer to ``out``; returns the model."""
    return save_merged(trainer, out)


def _train_summary(history: list[dict], seconds: float) -> dict[str, Any]:
    logged = [h for h in history if "loss" in h]
    return {"steps": max((h.get("step", 0) for h in history), default=0),
            "train_loss_first": logged[0]["loss"] if logged else None,
            "train_loss_last": logged[-1]["loss"] if logged else None,
            "train_accuracy_last": logged[-1].get("accuracy") if logged else None,
            "train_seconds": round(seconds, 2)}


def write_model_card(out: Path, base: str, opts: dict[str, Any], metrics: dict[str, Any]) -> None:
    from .. import __version__

    method = f"LoRA r={opts['lora_r']}, merged" if opts["lora"] else "full fine-tuning"
    loss = "-log sigmoid(r_c - r_r - margin)" if metrics["margin_used"] else "-log sigmoid(r_c - r_r)"
    text = f"""# Counseling reward model (psychocounsel {__version__})

A Bradley-Terry reward model (TRL `RewardTrainer`) trained on principle-rated preference pairs
(PsychoCounsel-Preference format). Made by `psychocounsel train-reward`. It outputs one number
per (speech, response); a higher number means a better counseling response.

| setting | value |
|---|---|
| base model | `{base}` |
| method | {method} |
| loss | `{loss}` |
| training pairs / evaluation pairs | {metrics['train_pairs']} / {metrics['n']} ({metrics['eval_split']}) |
| epochs, batch size x accumulation, learning rate | {opts['epochs']}, {opts['batch_size']} x {opts['grad_accum']}, {opts['lr']} |
| max length (tokens) | {opts['max_length']} |
| steps, seed | {metrics['steps']}, {opts['seed']} |

## Evaluation ({metrics['eval_split']} split, {metrics['n']} pairs)

| accuracy | AUC | ECE | Brier |
|---|---|---|---|
| {metrics['accuracy']:.3f} | {metrics['auc']:.3f} | {metrics['ece']:.3f} | {metrics['brier']:.3f} |

AUC and ECE treat sigmoid(r_chosen - r_rejected) as P(chosen preferred), each pair counted in
both orders. For scale, the paper's 3B reward model: 0.981 / 0.997 / 0.050 / 0.014 on 2,324 pairs.
A margin-trained model pushes differences past the margin, so its sigmoid is over-confident (ECE).

{INTENDED_USE}
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def _check_options(epochs: float, batch_size: int, lr: float, max_length: int, lora_r: int) -> None:
    if epochs <= 0 or batch_size < 1 or lr <= 0 or lora_r < 1:
        raise UserError(f"need epochs > 0, batch_size >= 1, lr > 0, lora_r >= 1; got {epochs}, {batch_size}, {lr}, "
                        f"{lora_r}")
    if max_length < 16:  # room for the chat template's own tokens and some text
        raise UserError(f"max_length must be at least 16 tokens, got {max_length}")


def train_reward_model(pairs_source: str | Path, base: str, out: Path, *, epochs: float = 2, batch_size: int = 8,
                       grad_accum: int = 1, lr: float = 9e-6, max_length: int = 512, use_margin: bool = True, lora: bool = False,
                       lora_r: int = 16, seed: int = 0, cpu: bool | None = None) -> dict[str, Any]:
    """Train a reward model on the train split of ``pairs_source``; evaluate on its test split.

    ``lr`` defaults to the paper's 9e-6 (made for batch 128 = ``batch_size`` x ``grad_accum`` x
    processes under ``accelerate launch``). ``use_margin`` subtracts each pair's
    score margin inside the loss where every training pair has one. ``cpu`` None: CPU only when
    there is no CUDA device. Writes the model, metrics.json, train_log.json and README.md to
    ``out``; returns the metrics (n, accuracy, auc, ece, brier and training numbers).
    """
    from ..evaluate.reward_eval import load_reward_model, reward_metrics, score_pair_rewards
    from ..store import write_json, write_jsonl

    _check_options(epochs, batch_size, lr, max_length, lora_r)
    train = load_pairs(pairs_source, "train")
    single_file = Path(pairs_source).expanduser().is_file()
    if single_file:
        log.warning("%s is one file with no test split: the metrics are on the training pairs", pairs_source)
    test = train if single_file else load_pairs(pairs_source, "test")
    margin_used = use_margin and all("margin" in r for r in train)
    if use_margin and not margin_used:
        log.info("not every training pair has a margin; training without one")
    opts = dict(epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, max_length=max_length, use_margin=margin_used,
                lora=lora, lora_r=lora_r, seed=seed, cpu=cpu)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_reward_trainer(train, base, out, opts)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model = save_reward_model(trainer, out)
    if not is_main_process(trainer):
        return {}  # under accelerate launch the main process evaluates and writes the files
    if model is None:  # several processes: the trained model was sharded, read it back whole
        model, _ = load_reward_model(out)
    r_chosen, r_rejected = score_pair_rewards(model, trainer.processing_class, test, batch_size=max(batch_size, 16),
                                              max_length=max_length)
    d = r_chosen - r_rejected
    metrics = {**reward_metrics(d), "eval_split": "train" if single_file else "test", "train_pairs": len(train),
               "margin_used": margin_used, "base": base, **_train_summary(trainer.state.log_history, seconds)}
    write_json(out / "metrics.json", metrics)
    write_json(out / "train_log.json", trainer.state.log_history)
    # Per evaluation pair, for the report's reliability diagram.
    write_jsonl(out / "predictions.jsonl", [{"r_chosen": float(c), "r_rejected": float(r)}
                                             for c, r in zip(r_chosen, r_rejected)])
    write_model_card(out, base, opts, metrics)
    return metrics
