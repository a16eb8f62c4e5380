"""Training stages on TRL: reward.py (Bradley-Terry reward model), dpo.py (offline DPO).

What the stages share lives here: LoRA settings, step logging, and saving the trained model.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def lora_config(r: int, task_type: str):
    """LoRA on every linear layer with alpha = 2r (the common scaling). "all-linear" skips
    lm_head, which TRL 1.16 refuses to adapt; with SEQ_CLS, PEFT trains the new score head in full."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type=task_type)


def log_callback(margin_key: str, accuracy_key: str):
    """One log line per logged step, in place of Trainer's print() of every metric dict."""
    from transformers import TrainerCallback

    class LogMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log.info(
                    "step %d/%d loss %.4f margin %.4f accuracy %.2f",
                    state.global_step,
                    state.max_steps,
                    logs["loss"],
                    logs.get(margin_key, 0.0),
                    logs.get(accuracy_key, 0.0),
                )

    return LogMetrics()


def use_step_log(trainer, margin_key: str, accuracy_key: str) -> None:
    """Replace Trainer's print() of every metric dict with one log line per step."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(log_callback(margin_key, accuracy_key))


def save_merged(trainer, out):
    """Save the trained model (LoRA merged into the base) as safetensors, the tokenizer and the
    training arguments (``training_args.json``).

    Safe under ``accelerate launch``: ``Trainer.save_model`` gathers ZeRO-3 shards and writes on
    the main process only; every process waits for the files. Returns the in-memory model on a
    single process, else None (callers that need it reload from ``out`` on the main process,
    since a sharded model cannot score on its own).
    """
    from peft import PeftModel

    # Without the mixed-precision wrapper: under bf16 autocast, accelerate patches forward() for
    # good, and the returned model would score in bf16 where the saved one reloads in fp32.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    model.config.use_cache = True  # training turns the KV cache off; generation wants it back
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
        if trainer.accelerator.is_main_process:
            model.save_pretrained(out)
    else:
        trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(out)
        _arguments_as_json(trainer, out)
    trainer.accelerator.wait_for_everyone()
    return model if trainer.accelerator.num_processes == 1 else None


def _arguments_as_json(trainer, out) -> None:
    """The training arguments as ``training_args.json``, in place of the ``training_args.bin``
    pickle that ``Trainer.save_model`` writes: a published folder holds no pickles."""
    import json
    from pathlib import Path

    from ..store import write_json

    (Path(out) / "training_args.bin").unlink(missing_ok=True)
    write_json(Path(out) / "training_args.json", json.loads(trainer.args.to_json_string()))


def is_main_process(trainer) -> bool:
    """Whether this process writes metrics, logs and cards (rank 0 under ``accelerate launch``)."""
    return trainer.accelerator.is_main_process
