"""Training overhead: the step time of psychocounsel's train-rm and train-dpo stages against a plain
TRL script that builds the same trainer directly, on the same model, pairs and settings.

    OMP_NUM_THREADS=2 python benchmarks/train_overhead.py --out benchmarks/results/train_overhead.json

Pairs: quickstart speeches (configs/quickstart_speeches.jsonl, single-turn ones, so that no prompt
is clipped and both arms see the same text) with counselor replies written here. Stages, with the
quickstart's settings (configs/quickstart.yaml):

- reward model: ``train_reward_model`` (base minilm, batch 8, lr 5e-5, max_length 384, no margin,
  1 epoch over 8 x steps pairs) against ``RewardTrainer(RewardConfig(...))`` on the same rows as
  text (TRL tokenizes them);
- DPO: ``train_dpo`` (SmolLM2-135M-Instruct, batch 2, lr 2e-5, beta 0.1, max_length 256) against
  ``DPOTrainer(DPOConfig(...))`` with conversational rows, a reference model loaded the same way.

Both arms run on the CPU in the stages' default precision (``use_cpu=True``, ``bf16`` autocast
where the CPU has native bf16, else float32: psychocounsel/precision.py) with the stage's activation
checkpointing (off for the reward model on a CPU, on for DPO: the stages' defaults), logging every
step, no checkpoint saves (the stages save none under 100 steps). What is compared: a callback
records the time between consecutive ``on_step_end`` calls, so each interval holds one step and
everything the Trainer does between steps (fetching and collating the batch, logging, callbacks);
the first step (warm-up) is left out. The reward model (12 steps, ~1 s each) runs twice per arm,
in the order ours, plain, plain, ours after a 3-step warm-up (a process's first arm runs slower),
its intervals pooled; DPO (5 steps, ~10 s each) once per arm. ``value`` is the larger of the two medians' ratios (ours /
plain). Also recorded: ``trainer.train()`` wall time, and each arm end to end (loading, data
preparation, training, saving; the stage also evaluates the reward model on its test split and
writes its metrics and card).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_result import machine, write_result

ROOT = Path(__file__).resolve().parent.parent
SPEECHES = ROOT / "configs" / "quickstart_speeches.jsonl"
GOAL = 1.05
GOOD = [
    "That sounds really hard, and I can hear how tired you are.",
    "It makes sense that you would feel this way after everything that has happened.",
    "What has been the hardest part of it for you this week?",
    "You have kept going even when it felt like too much, and that matters.",
    "I wonder what you would say to a friend who told you the same thing.",
]
BAD = [
    "You should just try to think more positively.",
    "Everyone feels like that sometimes, so do not worry about it.",
    "Go for a run and get some sleep.",
    "Make a list of what you need to do and do it.",
]


def pair_rows(n: int) -> list[dict]:
    """``n`` pairs on the single-turn quickstart speeches, replies of 1 to 4 sentences."""
    speeches = [json.loads(line) for line in SPEECHES.read_text(encoding="utf-8").splitlines() if line.strip()]
    speeches = [s for s in speeches if not s.get("context")]
    rows = []
    for i in range(n):
        good = " ".join(GOOD[(i + j) % len(GOOD)] for j in range(1 + i % 4))
        bad = " ".join(BAD[(i + j) % len(BAD)] for j in range(1 + (i + 2) % 3))
        rows.append({"question": speeches[i % len(speeches)]["text"], "chosen": good, "rejected": bad})
    return rows


def step_timer():
    """A TrainerCallback recording the wall time at each step's end (``intervals``: between them)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def intervals(self) -> list[float]:
            return [b - a for a, b in zip(self.ends, self.ends[1:])]

    return StepTimer()


def tokens(dataset) -> dict:
    """Token ids per row in the trainer's tokenized dataset (its *_ids columns), mean and max."""
    cols = [c for c in dataset.column_names if c.endswith("input_ids") or c.endswith("_ids")]
    per_row = [sum(len(dataset[i][c]) for c in cols) for i in range(len(dataset))]
    return {"columns": cols, "mean_per_row": round(statistics.mean(per_row), 1), "max_per_row": max(per_row)}


def summary(timer, train_s: float, total_s: float, trainer) -> dict:
    steps = timer.intervals()
    return {
        "median_step_s": round(statistics.median(steps), 3),
        "min_step_s": round(min(steps), 3),
        "step_s": [round(s, 3) for s in steps],
        "train_s": round(train_s, 2),
        "end_to_end_s": round(total_s, 2),
        "steps": trainer.state.global_step,
        "tokens": tokens(trainer.train_dataset),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "callbacks": [type(c).__name__ for c in trainer.callback_handler.callbacks],
    }


def ratio_ci(ours: list[float], plain: list[float], draws: int = 4000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of median(ours) / median(plain), steps resampled within each arm:
    how far step-to-step noise alone moves the ratio."""
    import random

    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(ours, k=len(ours))) / statistics.median(rng.choices(plain, k=len(plain)))
        for _ in range(draws)
    )
    return [round(ratios[int(0.025 * draws)], 3), round(ratios[int(0.975 * draws) - 1], 3)]


def pooled(arms: list[dict]) -> dict:
    """Repeats of one arm as one: every step interval together, times summed over repeats."""
    if len(arms) == 1:
        return arms[0]
    steps = [s for a in arms for s in a["step_s"]]
    return {
        **arms[0],
        "median_step_s": round(statistics.median(steps), 3),
        "min_step_s": round(min(steps), 3),
        "step_s": steps,
        "train_s": round(sum(a["train_s"] for a in arms), 2),
        "end_to_end_s": round(sum(a["end_to_end_s"] for a in arms), 2),
        "repeats": len(arms),
    }


def instrument(module, name: str, timer, marks: dict):
    """Wrap ``module.name`` (a trainer builder) so the trainer it builds carries ``timer`` and its
    ``train()`` is timed into ``marks``."""
    original = getattr(module, name)

    def build(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(timer)
        train = trainer.train

        def timed_train(*a, **k):
            start = time.perf_counter()
            try:
                return train(*a, **k)
            finally:
                marks["train_s"] = time.perf_counter() - start

        trainer.train = timed_train
        marks["trainer"] = trainer
        return trainer

    setattr(module, name, build)
    return lambda: setattr(module, name, original)


def ours(module, builder: str, train) -> dict:
    """Our stage, ``train()``, timed through its trainer (``module.builder`` instrumented)."""
    timer, marks = step_timer(), {}
    restore = instrument(module, builder, timer, marks)
    try:
        start = time.perf_counter()
        train()
        total = time.perf_counter() - start
    finally:
        restore()
    return summary(timer, marks["train_s"], total, marks["trainer"])


def ours_reward(pairs_dir: Path, out: Path) -> dict:
    from psychocounsel.config import RewardModelConfig
    from psychocounsel.train import reward

    cfg = RewardModelConfig(base="minilm", epochs=1, batch_size=8, lr=5e-5, max_length=384, use_margin=False)
    return ours(reward, "build_reward_trainer", lambda: reward.train_reward_model(pairs_dir, cfg, out))


def plain_reward(rows: list[dict], out: Path) -> dict:
    """What a TRL user writes: the model as a one-output classifier, text rows, RewardTrainer."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from psychocounsel.precision import cpu_has_bf16
    from psychocounsel.specs import local_model

    start = time.perf_counter()
    path = local_model("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    tok.eos_token = tok.eos_token or tok.sep_token  # TRL appends EOS to each text; BERT's has none
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    data = Dataset.from_list(
        [{"prompt": r["question"] + "\n\n", "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    )
    args = RewardConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=cpu_has_bf16(),  # the stages' default (precision.train_bf16)
        gradient_checkpointing=False,
        learning_rate=5e-5,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        max_length=384,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    timer = step_timer()
    trainer.add_callback(timer)
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    trainer.save_model(str(out))
    return summary(timer, train_s, time.perf_counter() - start, trainer)


def ours_dpo(rows: list[dict], out: Path, steps: int) -> dict:
    from psychocounsel.config import DPOStageConfig
    from psychocounsel.train import dpo

    cfg = DPOStageConfig(
        base="default", beta=0.1, lr=2e-5, batch_size=2, max_length=256, max_prompt_length=128, max_steps=steps
    )
    return ours(dpo, "build_trainer", lambda: dpo.train_dpo(rows, cfg, out))


def plain_dpo(rows: list[dict], out: Path, steps: int) -> dict:
    """What a TRL user writes: policy and reference from the same folder, conversational rows."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from psychocounsel.precision import cpu_has_bf16
    from psychocounsel.specs import local_model

    start = time.perf_counter()
    path = local_model("default")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    args = DPOConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=cpu_has_bf16(),  # the stages' default (precision.train_bf16)
        beta=0.1,
        learning_rate=2e-5,
        per_device_train_batch_size=2,
        max_length=256,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    timer = step_timer()
    trainer.add_callback(timer)
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    trainer.save_model(str(out))
    return summary(timer, train_s, time.perf_counter() - start, trainer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_overhead.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rm-steps", type=int, default=12)
    ap.add_argument("--rm-repeats", type=int, default=2)
    ap.add_argument("--dpo-steps", type=int, default=5)
    ap.add_argument("--only", choices=["rm", "dpo"], help="one stage (for profiling)")
    args = ap.parse_args()

    import torch

    from psychocounsel.models import quiet_transformers

    host = machine(("torch", "transformers", "trl"))  # before the work: the load average then is other jobs'
    started = time.perf_counter()
    os.environ.setdefault("PSYCHOCOUNSEL_PROGRESS", "0")
    torch.set_num_threads(args.threads)
    quiet_transformers()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.only in (None, "rm"):
            rows = pair_rows(8 * args.rm_steps)
            pairs = tmp / "pairs"
            pairs.mkdir()
            for split, part in (("train", rows), ("test", rows[:16])):
                (pairs / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
            plain_reward(rows[:24], tmp / "warm-up")  # 3 steps: the process's first-arm cost, timed by neither
            load = round(os.getloadavg()[0], 2)
            runs = []
            for rep in range(args.rm_repeats):
                # Alternated, the order swapped each repeat: the first arm of a process runs ~10%
                # slower (measured: plain first 0.859 s a step, then ours 0.778, plain 0.761, ours 0.770).
                arms = {
                    "ours": lambda rep=rep: ours_reward(pairs, tmp / f"rm-ours{rep}"),
                    "plain_trl": lambda rep=rep: plain_reward(rows, tmp / f"rm-plain{rep}"),
                }
                order = list(arms) if rep % 2 == 0 else list(arms)[::-1]
                runs.append({arm: arms[arm]() for arm in order})
            results["train_rm"] = {"load_avg_1m": load, **{arm: pooled([r[arm] for r in runs]) for arm in runs[0]}}
        if args.only in (None, "dpo"):
            rows = pair_rows(2 * args.dpo_steps)
            results["train_dpo"] = {
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "ours": ours_dpo(rows, tmp / "dpo-ours", args.dpo_steps),
                "plain_trl": plain_dpo(rows, tmp / "dpo-plain", args.dpo_steps),
            }
    for name, r in results.items():
        r["step_ratio"] = round(r["ours"]["median_step_s"] / r["plain_trl"]["median_step_s"], 3)
        r["step_ratio_ci95"] = ratio_ci(r["ours"]["step_s"], r["plain_trl"]["step_s"])
        r["train_ratio"] = round(r["ours"]["train_s"] / r["plain_trl"]["train_s"], 3)
        r["end_to_end_ratio"] = round(r["ours"]["end_to_end_s"] / r["plain_trl"]["end_to_end_s"], 3)
        print(
            f"{name}: median step {r['ours']['median_step_s']} s ours vs {r['plain_trl']['median_step_s']} s plain "
            f"(x{r['step_ratio']}, 95% CI {r['step_ratio_ci95']}); train() x{r['train_ratio']}; "
            f"end to end x{r['end_to_end_ratio']}",
            flush=True,
        )
    value = max(r["step_ratio"] for r in results.values())
    write_result(
        args.out,
        "train_overhead",
        value,
        "median step time, psychocounsel stage / plain TRL script (the larger of train-rm's and train-dpo's)",
        f"<= {GOAL}x",
        value <= GOAL,
        {
            "machine": {**host, "torch_threads": torch.get_num_threads(), "device": "cpu"},
            "settings": {
                "train_rm": {
                    "base": "minilm (all-MiniLM-L6-v2)",
                    "pairs": 8 * args.rm_steps,
                    "batch_size": 8,
                    "lr": 5e-5,
                    "max_length": 384,
                    "epochs": 1,
                },
                "train_dpo": {
                    "base": "default (SmolLM2-135M-Instruct)",
                    "pairs": 2 * args.dpo_steps,
                    "batch_size": 2,
                    "lr": 2e-5,
                    "beta": 0.1,
                    "max_length": 256,
                    "max_steps": args.dpo_steps,
                },
                "timed": "intervals between consecutive on_step_end callbacks; the first step left out",
            },
            **results,
            "script_s": round(time.perf_counter() - started, 1),
        },
    )
    print(f"value {value} (goal <= {GOAL}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
