"""Reward-model scoring: (speech, reply) pairs per second, length-sorted batches of 16 against one
at a time, on the packaged default model (SmolLM2-135M-Instruct) with a one-output score head.

    OMP_NUM_THREADS=2 python benchmarks/rm_scoring.py --out benchmarks/results/rm_scoring.json

Both arms call ``psychocounsel.reward_model.score_responses`` (tokenising included) on the same
64 pairs: the 24 speeches of configs/quickstart_eval_speeches.jsonl, each with replies of 1 to 12
sentences (written here), so lengths vary the way a generator's replies do. The head is untrained
(seeded): speed does not depend on its weights. Each repeat times both arms back to back and
takes their ratio; ``value`` is the median ratio over repeats, on 2 torch threads. When the goal
is missed, one pass of each arm over 16 pairs is profiled (torch.profiler) into ``details.profile``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench_result import machine, write_result

ROOT = Path(__file__).resolve().parent.parent
SPEECHES = ROOT / "configs" / "quickstart_eval_speeches.jsonl"
GOAL = 5.0
BATCH = 16
SENTENCES = [
    "That sounds really hard, and I can hear how tired you are.",
    "It makes sense that you would feel this way after everything that has happened.",
    "What has been the hardest part of it for you this week?",
    "You have kept going even when it felt like too much, and that matters.",
    "Sometimes naming the feeling out loud is a first step toward easing it.",
    "I wonder what you would say to a friend who told you the same thing.",
    "It might help to notice when the worry is strongest, and what happens just before.",
    "There is no single right way to feel about this.",
    "Could we look together at one small thing that might make tomorrow a little lighter?",
    "You do not have to sort all of it out at once.",
    "If the feelings ever become overwhelming, reaching out to someone you trust can help.",
    "What would feel like a good next step to you?",
]


def pairs(n: int) -> tuple[list[str], list[str]]:
    """``n`` (speech, reply) pairs; reply i has 1 + (5 i mod 12) sentences, so 1 to 12."""
    rows = [json.loads(line) for line in SPEECHES.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts, replies = [], []
    for i in range(n):
        prompts.append(rows[i % len(rows)]["text"])
        k = 1 + (5 * i) % len(SENTENCES)
        replies.append(" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(k)))
    return prompts, replies


def load_model():
    """(model, tokenizer): the default model's folder as a sequence classifier with one output."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from psychocounsel.models import quiet_transformers
    from psychocounsel.reward_model import ensure_pad_token
    from psychocounsel.specs import local_model

    quiet_transformers()
    path = local_model("default")
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the untrained head's weights
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer, path


def token_counts(tokenizer, prompts, replies, max_length: int) -> dict:
    """Real tokens, and tokens computed (padding included) in length-sorted batches of BATCH."""
    from psychocounsel.reward_model import encode

    lengths = sorted(len(encode(tokenizer, p, r, max_length)) for p, r in zip(prompts, replies))
    padded = sum(max(lengths[i : i + BATCH]) * len(lengths[i : i + BATCH]) for i in range(0, len(lengths), BATCH))
    return {"real": sum(lengths), "padded_batched": padded, "min": lengths[0], "max": lengths[-1]}


MATMULS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}


def op_profile(model, tokenizer, prompts, replies, batch_size: int, max_length: int) -> dict:
    """Where one scoring pass spends its CPU time (torch.profiler): the share in matrix products
    and the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    from psychocounsel.reward_model import score_responses

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        score_responses(model, tokenizer, prompts, replies, batch_size, max_length)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return {
        "pairs": len(prompts),
        "self_cpu_s": round(total / 1e6, 3),
        "matmul_share": round(sum(e.self_cpu_time_total for e in ops if e.key in MATMULS) / total, 3),
        "top_ops": {e.key: round(e.self_cpu_time_total / total, 3) for e in ops[:8]},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rm_scoring.json")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()

    import numpy as np
    import torch

    from psychocounsel.reward_model import score_responses

    host = machine()  # before the work: the load average then is other jobs'
    torch.set_num_threads(args.threads)
    model, tokenizer, path = load_model()
    prompts, replies = pairs(args.pairs)
    score_responses(model, tokenizer, prompts[:4], replies[:4], BATCH, args.max_length)  # warm-up

    def timed(batch_size: int) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        rewards = score_responses(model, tokenizer, prompts, replies, batch_size, args.max_length)
        return time.perf_counter() - start, rewards

    runs = []
    for r in range(args.repeats):
        batched, r16 = timed(BATCH)
        single, r1 = timed(1)
        runs.append(
            {
                "batched_s": round(batched, 3),
                "single_s": round(single, 3),
                "batched_pairs_per_s": round(args.pairs / batched, 2),
                "single_pairs_per_s": round(args.pairs / single, 2),
                "speedup": round(single / batched, 3),
                "max_abs_reward_diff": float(np.max(np.abs(r16 - r1))),  # padding must not change a reward
            }
        )
        print(f"repeat {r}: batched {batched:.2f} s, single {single:.2f} s, x{single / batched:.2f}", flush=True)
    value = round(statistics.median(r["speedup"] for r in runs), 3)
    profile = {}
    if value < GOAL:  # where each arm's time goes, on the first BATCH pairs
        for name, size in (("batched", BATCH), ("single", 1)):
            profile[name] = op_profile(model, tokenizer, prompts[:BATCH], replies[:BATCH], size, args.max_length)
    write_result(
        args.out,
        "rm_scoring",
        value,
        f"speed-up in pairs/s, batch {BATCH} length-sorted vs batch 1",
        f">= {GOAL}x",
        value >= GOAL,
        {
            "machine": {
                **host,
                "torch_threads": torch.get_num_threads(),
                "device": str(next(model.parameters()).device),
            },
            "settings": {
                "model": f"{Path(path).name} (SmolLM2-135M-Instruct), untrained one-output head, float32",
                "pairs": args.pairs,
                "batch_size": BATCH,
                "max_length": args.max_length,
                "tokens": token_counts(tokenizer, prompts, replies, args.max_length),
            },
            "repeats": args.repeats,
            "median_batched_pairs_per_s": statistics.median(r["batched_pairs_per_s"] for r in runs),
            "median_single_pairs_per_s": statistics.median(r["single_pairs_per_s"] for r in runs),
            "runs": runs,
            "profile": profile,
        },
    )
    print(f"value {value} (goal >= {GOAL}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
