"""reward: a Bradley-Terry reward model on preference pairs, as a thin configuration of TRL's
RewardTrainer (loss -log sigmoid(r_chosen - r_rejected [- margin])).

- Pairs are read by ``pairs_io.load_pairs`` (a run's ``pairs/``, a file, a saved ``datasets``
  folder or a Hub id): TRL's ``prompt``/``chosen``/``rejected`` columns, plus ``margin`` where known.
- The base is a local folder (``default`` = SmolLM2-135M-Instruct, ``minilm`` = all-MiniLM-L6-v2,
  else a path; GGUF files are converted), loaded as a sequence classifier with one output.
- Output: the model (LoRA merged) as safetensors + tokenizer, ``metrics.json`` (accuracy, AUC,
  ECE, Brier on the test split; see ``reward_model``), ``train_log.json``, a model card.

TRL 1.16 *drops* pairs whose chosen or rejected sequence is over ``max_length`` (it never
truncates). We tokenize here instead (TRL accepts ``chosen_ids``/``rejected_ids``) with
``reward_model.encode``, which cuts the start of long speeches, so no pair is lost and evaluation
reads exactly the token sequences training saw.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from ..card import intended_use
from ..config import RewardModelConfig
from ..errors import UserError
from ..pairs_io import load_pairs
from ..precision import train_bf16
from ..progress import enabled as progress_enabled
from ..reward_model import encode, ensure_pad_token
from . import checkpoints, is_main_process, lora_config, save_merged, use_step_log

log = logging.getLogger(__name__)

INTENDED_USE = intended_use("""
This reward model scores counselor responses for research and for tools that **assist**
counselors and therapists (ranking drafts that a professional reviews, training policies). It is
not a substitute for professional care, and neither it nor a model trained with it is for
unsupervised use with clients. Its preferences come from an automatic judge's ratings on a
rubric, not from clinical judgement.""")

# -- training ---------------------------------------------------------------------------------


def _reward_config(out: Path, cfg: RewardModelConfig, n_rows: int):
    import torch
    from trl import RewardConfig

    cuda = torch.cuda.is_available()
    cpu = not cuda if cfg.cpu is None else cfg.cpu
    if not cpu and not cuda:
        raise UserError("cpu=False asks for a GPU, but torch sees no CUDA device")
    steps = math.ceil(n_rows / (cfg.batch_size * cfg.grad_accum)) * cfg.epochs
    return RewardConfig(
        output_dir=str(checkpoints.checkpoint_folder(out)),
        report_to=checkpoints.report_to(cfg.report_to),
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 1,  # save_strategy "no" ignores it; 0 is not a valid value
        save_total_limit=cfg.save_total_limit,
        disable_tqdm=not progress_enabled(),
        use_cpu=cpu,
        bf16=train_bf16(cfg.bf16, cpu),  # on a CPU only with native bf16: emulated it is slower than fp32
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing; the new name wins over
        # TRL's default gradient_checkpointing=True. Off on CPU: memory is not the limit, time is (~20% more).
        activation_checkpointing=not cpu,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,  # TRL's length filter; a no-op, encode() already fitted every sequence
        logging_steps=max(1, min(10, int(steps) // 20)),
        seed=cfg.seed,
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
    # fp32 master weights on every device; bf16 is autocast where train_bf16 says.
    return AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=torch.float32)


def build_reward_trainer(rows: list[dict], cfg: RewardModelConfig, out: Path):
    """A TRL RewardTrainer for ``rows`` on the local model ``cfg.base`` (``cfg.use_margin``: the
    rows carry margins to use)."""
    from transformers import AutoTokenizer
    from trl import RewardTrainer

    from ..specs import local_model

    path = local_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    # The training arguments come first: under DeepSpeed ZeRO-3 they make from_pretrained load
    # the model already sharded across the GPUs.
    args = _reward_config(out, cfg, len(rows))
    model = load_base_classifier(path, tokenizer.pad_token_id, cfg.seed)
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if positions and cfg.max_length > positions:
        raise UserError(f"max_length {cfg.max_length} is over the {positions} positions of {cfg.base}; lower it")
    data = tokenized_pairs(rows, tokenizer, cfg.max_length, cfg.use_margin)
    if args.disable_tqdm:
        import datasets

        datasets.disable_progress_bars()
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora_r, "SEQ_CLS") if cfg.lora else None,
    )
    use_step_log(trainer, "margin", "accuracy")
    trainer.add_callback(checkpoints.skip_final_checkpoint())
    return trainer


def _train_summary(history: list[dict], seconds: float) -> dict[str, Any]:
    logged = [h for h in history if "loss" in h]
    return {
        "steps": max((h.get("step", 0) for h in history), default=0),
        "train_loss_first": logged[0]["loss"] if logged else None,
        "train_loss_last": logged[-1]["loss"] if logged else None,
        "train_accuracy_last": logged[-1].get("accuracy") if logged else None,
        "train_seconds": round(seconds, 2),
    }


def write_model_card(out: Path, cfg: RewardModelConfig, metrics: dict[str, Any]) -> None:
    from .. import __version__
    from ..card import MODEL_LICENCE_NOTE, model_front_matter

    method = f"LoRA r={cfg.lora_r}, merged" if cfg.lora else "full fine-tuning"
    loss = "-log sigmoid(r_c - r_r - margin)" if metrics["margin_used"] else "-log sigmoid(r_c - r_r)"
    text = f"""{model_front_matter("reward-model", cfg.base)}# Counseling reward model (psychocounsel {__version__})

A Bradley-Terry reward model (TRL `RewardTrainer`) trained on principle-rated preference pairs
(PsychoCounsel-Preference format). Made by `psychocounsel train-rm`. It outputs one number
per (speech, response); a higher number means a better counseling response.

| setting | value |
|---|---|
| base model | `{cfg.base}` |
| method | {method} |
| loss | `{loss}` |
| training pairs / evaluation pairs | {metrics["train_pairs"]} / {metrics["n"]} ({metrics["eval_split"]}) |
| epochs, batch size x accumulation, learning rate | {cfg.epochs}, {cfg.batch_size} x {cfg.grad_accum}, {cfg.lr} |
| max length (tokens) | {cfg.max_length} |
| steps, seed | {metrics["steps"]}, {cfg.seed} |

## Evaluation ({metrics["eval_split"]} split, {metrics["n"]} pairs)

| accuracy | AUC | ECE | Brier |
|---|---|---|---|
| {metrics["accuracy"]:.3f} | {metrics["auc"]:.3f} | {metrics["ece"]:.3f} | {metrics["brier"]:.3f} |

AUC and ECE treat sigmoid(r_chosen - r_rejected) as P(chosen preferred), each pair counted in
both orders. For scale, the paper's 3B reward model: 0.981 / 0.997 / 0.050 / 0.014 on 2,324 pairs.
A margin-trained model pushes differences past the margin, so its sigmoid is over-confident (ECE).

## Serving

`psychocounsel serve --policy POLICY --reward-model THIS_FOLDER` adds `POST /get_reward`
(OpenRLHF's remote reward shape: `{{"query": [...]}}` to `{{"rewards": [...]}}`), `POST /v1/score`
and best-of-n answers. The rewards are those of `psychocounsel eval-rm` for the same pairs.

{MODEL_LICENCE_NOTE}

{INTENDED_USE}
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def train_reward_model(
    pairs_source: str | Path, cfg: RewardModelConfig, out: Path, resume: bool = False
) -> dict[str, Any]:
    """Train a reward model on the train split of ``pairs_source``; evaluate on its test split.
    ``resume``: continue from the last checkpoint in ``out/checkpoints`` (see ``checkpoints``).

    ``cfg.lr`` defaults to the paper's 9e-6 (made for batch 128 = ``batch_size`` x ``grad_accum``
    x processes under ``accelerate launch``). ``cfg.use_margin`` subtracts each pair's score margin
    inside the loss where every training pair has one. Writes the model, metrics.json,
    train_log.json, predictions.jsonl and README.md to ``out``; returns the metrics (n, accuracy,
    auc, ece, brier and training numbers).
    """
    from ..reward_model import load_reward_model, pair_rewards, reward_metrics
    from ..store import write_json, write_jsonl

    train = load_pairs(pairs_source, "train")
    single_file = Path(pairs_source).expanduser().is_file()
    if single_file:
        log.warning("%s is one file with no test split: the metrics are on the training pairs", pairs_source)
    test = train if single_file else load_pairs(pairs_source, "test")
    margin_used = cfg.use_margin and all("margin" in r for r in train)
    if cfg.use_margin and not margin_used:
        log.info("not every training pair has a margin; training without one")
    cfg = cfg.model_copy(update={"use_margin": margin_used})
    out = Path(out)
    ident = checkpoints.identity(cfg.base, train, cfg.model_dump(mode="json"))
    point = checkpoints.resume_point(out, ident, resume, finished=(out / "metrics.json").is_file())
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_reward_trainer(train, cfg, out)
    if point is None:
        checkpoints.start(out, ident, is_main_process(trainer))
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(point) if point else None)
    seconds = time.perf_counter() - start
    model = save_merged(trainer, out)
    if not is_main_process(trainer):
        return {}  # under accelerate launch the main process evaluates and writes the files
    if model is None:  # several processes: the trained model was sharded, read it back whole
        model, _ = load_reward_model(out)
    r_chosen, r_rejected = pair_rewards(
        model, trainer.processing_class, test, batch_size=max(cfg.batch_size, 16), max_length=cfg.max_length
    )
    metrics = {
        **reward_metrics(r_chosen - r_rejected),
        "eval_split": "train" if single_file else "test",
        "train_pairs": len(train),
        "margin_used": margin_used,
        "base": cfg.base,
        **_train_summary(trainer.state.log_history, seconds),
    }
    write_json(out / "metrics.json", metrics)
    write_json(out / "train_log.json", trainer.state.log_history)
    # Per evaluation pair, for the report's reliability diagram.
    write_jsonl(
        out / "predictions.jsonl",
        [{"r_chosen": float(c), "r_rejected": float(r)} for c, r in zip(r_chosen, r_rejected)],
    )
    write_model_card(out, cfg, metrics)
    checkpoints.finish(out, is_main=True)
    return metrics
