"""dpo: offline DPO of a policy on preference pairs, as a thin configuration of TRL's DPOTrainer.

- Rows carry ``question`` (or ``prompt``), ``chosen``, ``rejected``; they become TRL's
  ``prompt``/``chosen``/``rejected`` columns, conversational when the tokenizer has a chat template.
- The policy and the reference are both loaded from the same local folder (``default`` =
  SmolLM2-135M-Instruct); with LoRA the reference is the policy with its adapter disabled
  (``ref_model=None``), so no second copy is held.
- Output: the policy (LoRA merged) as safetensors + tokenizer, ``train_log.json`` (TRL's log
  history: loss, rewards/margins, rewards/accuracies per logged step) and a model card.

TRL 1.16 has no ``max_prompt_length``: its only truncation is ``max_length`` keeping the start of
prompt + completion, and it drops pairs whose prompt alone fills ``max_length``. So the speech is
cut here to its last ``max_prompt_length`` tokens (the old TRL default, ``keep_end``: the end of
a speech usually holds the client's question) before TRL sees it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..card import intended_use
from ..config import DPOConfig
from ..errors import UserError
from ..precision import train_bf16
from ..progress import enabled as progress_enabled
from . import checkpoints, is_main_process, lora_config, save_merged, use_step_log

log = logging.getLogger(__name__)

MODEL_INTENDED_USE = intended_use("""
This model is a research artefact for building tools that **assist** counselors and therapists:
drafting responses that a professional reviews. It is not a substitute for professional care and
must not face clients unsupervised. Its preferences come from an automatic judge's ratings on a
rubric, not from clinical judgement.""")


def to_dpo_rows(rows: list[dict], chat: bool) -> list[dict]:
    """TRL preference rows: conversational (``chat``) or standard strings.

    >>> to_dpo_rows([{"question": "I feel lost.", "chosen": "Tell me more.", "rejected": "Cheer up."}], chat=True)
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'prompt': [{'role': 'user', 'content': 'I feel lost.'}],
      'chosen': [{'role': 'assistant', 'content': 'Tell me more.'}],
      'rejected': [{'role': 'assistant', 'content': 'Cheer up.'}]}]
    >>> to_dpo_rows([{"prompt": "I feel lost. ", "chosen": " Tell me more.", "rejected": "Cheer up."}], chat=False)
    [{'prompt': 'I feel lost.\\n\\n', 'chosen': 'Tell me more.', 'rejected': 'Cheer up.'}]
    >>> to_dpo_rows([{"chosen": "a", "rejected": "b"}], chat=True)
    Traceback (most recent call last):
    ...
    psychocounsel.errors.UserError: pair 0 has no 'question' or 'prompt' text
    """
    from ..reward_model import as_messages, as_text

    out = []
    for i, row in enumerate(rows):
        # Text, or (pairs_io's conversational rows, e.g. from `pairs --format trl`) lists of messages.
        prompt = row.get("question", row.get("prompt"))
        if not isinstance(prompt, (str, list)) or not as_text(prompt).strip():
            raise UserError(f"pair {i} has no 'question' or 'prompt' text")
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if not all(isinstance(x, (str, list)) and as_text(x).strip() for x in (chosen, rejected)):
            raise UserError(f"pair {i} needs non-empty 'chosen' and 'rejected' text")
        if not chat:
            prompt, chosen, rejected = as_text(prompt), as_text(chosen), as_text(rejected)
        if chat:
            out.append(
                {
                    "prompt": as_messages(prompt.strip() if isinstance(prompt, str) else prompt, "user"),
                    "chosen": as_messages(chosen.strip() if isinstance(chosen, str) else chosen, "assistant"),
                    "rejected": as_messages(rejected.strip() if isinstance(rejected, str) else rejected, "assistant"),
                }
            )
        else:
            # TRL concatenates prompt + completion as they are, so the prompt carries the separator.
            out.append({"prompt": prompt.strip() + "\n\n", "chosen": chosen.strip(), "rejected": rejected.strip()})
    return out


def keep_last_tokens(tokenizer, text: str, n: int) -> str:
    """The end of ``text`` that tokenizes to at most ``n`` tokens (cut on a token boundary)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= n:
        return text
    return text[offsets[len(offsets) - n][0] :]


def _clip_prompts(rows: list[dict], tokenizer, max_prompt_length: int) -> tuple[list[dict], int]:
    clipped, n = [], 0
    for row in rows:
        text = row.get("question", row.get("prompt"))
        if isinstance(text, str):
            short = keep_last_tokens(tokenizer, text, max_prompt_length)
            if short != text:
                n += 1
                row = {**{k: v for k, v in row.items() if k not in ("question", "prompt")}, "question": short}
        clipped.append(row)
    return clipped, n


def _dpo_config(out: Path, cfg: DPOConfig):
    import torch
    from trl import DPOConfig

    cuda = torch.cuda.is_available()
    return DPOConfig(
        output_dir=str(checkpoints.checkpoint_folder(out)),
        report_to=checkpoints.report_to(cfg.report_to),
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 1,  # save_strategy "no" ignores it; 0 is not a valid value
        save_total_limit=cfg.save_total_limit,
        disable_tqdm=not progress_enabled(),
        use_cpu=not cuda,
        bf16=train_bf16(cfg.bf16, not cuda),  # on a CPU only with native bf16 (precision.py)
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing; the new name wins
        # over TRL's default gradient_checkpointing=True (and silences the deprecation warning).
        activation_checkpointing=cfg.gradient_checkpointing,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        logging_steps=cfg.log_every,
        seed=cfg.seed,
    )


def load_policy(path: Path):
    """The causal LM in ``path``, in float32 (master weights; bf16 is autocast where train_bf16 says)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"cannot load {path} as a causal LM: {str(e).splitlines()[0][:200]}") from None


def score_completions_only_on_cpu() -> None:
    """Make TRL's fused LM head score only the completion tokens on a CPU, as it does on CUDA.

    TRL 1.x computes the log-probabilities of a batch in vocabulary chunks. On a device with
    Triton it scores only the positions that carry a label (the completion); elsewhere it scores
    every position, prompt and padding too, so that compiled tile shapes stay fixed. Nothing is
    compiled on a CPU, and the prompt is most of a counseling pair's tokens: scoring the labelled
    positions only gives the same log-probabilities and made a quickstart DPO step (SmolLM2-135M,
    batch 2, length 256, bf16 on 2 cores) 1.6x faster, median 5.9 s against 9.5 s. A TRL without
    this hook is left as it is.
    """
    from trl.trainer import utils

    use_triton = getattr(utils, "_use_triton", None)
    if use_triton is None or getattr(use_triton, "psychocounsel", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or use_triton(device)

    compact.psychocounsel = True
    utils._use_triton = compact


def build_trainer(rows: list[dict], base: str, out: Path, cfg: DPOConfig):
    """A TRL DPOTrainer for ``rows`` on the local model ``base`` (a spec: default or a folder)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from ..specs import local_model

    path = local_model(base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows, n_clipped = _clip_prompts(rows, tokenizer, cfg.max_prompt_length)
    if n_clipped:
        log.info("kept the last %d tokens of %d long speeches", cfg.max_prompt_length, n_clipped)
    data = Dataset.from_list(to_dpo_rows(rows, chat=bool(tokenizer.chat_template)))
    args = _dpo_config(out, cfg)
    if args.disable_tqdm:
        import datasets

        datasets.disable_progress_bars()
    score_completions_only_on_cpu()
    # The reference is the base: a second copy for full fine-tuning, the adapter switched off with LoRA.
    trainer = DPOTrainer(
        model=load_policy(path),
        ref_model=None if cfg.lora else load_policy(path),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora_r, "CAUSAL_LM") if cfg.lora else None,
    )
    use_step_log(trainer, "rewards/margins", "rewards/accuracies")
    trainer.add_callback(checkpoints.skip_final_checkpoint())
    return trainer


def summarize(history: list[dict], seconds: float) -> dict[str, Any]:
    """The run's headline numbers from TRL's ``log_history``.

    >>> h = [{"loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.0, "step": 1},
    ...      {"loss": 0.5, "rewards/margins": 0.4, "rewards/accuracies": 1.0, "step": 2},
    ...      {"train_loss": 0.6, "step": 2}]
    >>> summarize(h, 3.0)["train_loss_last"], summarize(h, 3.0)["steps"]
    (0.5, 2)
    """
    logged = [h for h in history if "loss" in h]
    last = logged[-1] if logged else {}
    return {
        "steps": max((h.get("step", 0) for h in history), default=0),
        "train_loss_first": logged[0]["loss"] if logged else None,
        "train_loss_last": last.get("loss"),
        "reward_margin_last": last.get("rewards/margins"),
        "reward_accuracy_last": last.get("rewards/accuracies"),
        "seconds": round(seconds, 2),
    }


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def write_model_card(out: Path, base: str, cfg: DPOConfig, summary: dict[str, Any], n_pairs: int) -> None:
    from .. import __version__
    from ..card import MODEL_LICENCE_NOTE, model_front_matter

    method = f"LoRA r={cfg.lora_r}, merged" if cfg.lora else "full fine-tuning"
    text = f"""{model_front_matter("dpo", base)}# Counseling policy (psychocounsel {__version__}, DPO)

Trained with offline DPO (TRL `DPOTrainer`) on {n_pairs} principle-rated preference pairs
(PsychoCounsel-Preference format) by psychocounsel's DPO stage.

| setting | value |
|---|---|
| base model | `{base}` |
| method | {method} |
| loss | {cfg.loss_type} |
| beta | {cfg.beta} |
| learning rate | {cfg.lr} |
| batch size x accumulation | {cfg.batch_size} x {cfg.grad_accum} |
| max length / max prompt length | {cfg.max_length} / {cfg.max_prompt_length} |
| steps | {summary["steps"]} |
| seed | {cfg.seed} |

## Training result

Last logged step: loss {_fmt(summary["train_loss_last"])} (first {_fmt(summary["train_loss_first"])}),
reward margin {_fmt(summary["reward_margin_last"])}, reward accuracy {_fmt(summary["reward_accuracy_last"])}.
These are training-batch numbers; judge the model on held-out pairs and by win rate before use.
The full log is `train_log.json`.

## Serving

`psychocounsel serve --policy THIS_FOLDER [--reward-model RM_FOLDER]` serves it as an
OpenAI-compatible chat endpoint behind psychocounsel's crisis screen: a crisis message is
answered with crisis resources, not by the model. Served any other way (vLLM, transformers), it
has no such screen in front of it.

{MODEL_LICENCE_NOTE}

{MODEL_INTENDED_USE}
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def train_dpo(
    rows: list[dict], cfg: DPOConfig, out: Path, base: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """DPO-train a local model on ``rows``; write the policy, log and card to ``out``. The model
    is ``base`` when given (online DPO's current policy), else ``cfg.base`` (a DPOStageConfig).
    ``cfg.lr`` defaults to the paper's 5e-7 (made for batch 64). ``resume``: continue from the
    last checkpoint in ``out/checkpoints`` (see ``checkpoints``). Returns the headline numbers
    (``summarize``)."""
    from ..store import write_json

    if not rows:
        raise UserError("no preference pairs to train on (0 rows)")
    base = base or getattr(cfg, "base", "default")
    out = Path(out)
    ident = checkpoints.identity(base, rows, cfg.model_dump(mode="json"))
    point = checkpoints.resume_point(out, ident, resume, finished=(out / "train_log.json").is_file())
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(rows, base, out, cfg)
    if len(trainer.train_dataset) == 0:
        raise UserError(f"every pair is longer than max_length={cfg.max_length} in its prompt alone; raise max_length")
    if point is None:
        checkpoints.start(out, ident, is_main_process(trainer))
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(point) if point else None)
    seconds = time.perf_counter() - start
    save_merged(trainer, out)
    if not is_main_process(trainer):
        return {}  # under accelerate launch the main process writes the log and card
    history = trainer.state.log_history
    write_json(out / "train_log.json", history)
    summary = summarize(history, seconds)
    write_model_card(out, base, cfg, summary, len(rows))
    checkpoints.finish(out, is_main=True)
    return summary
