"""Local generation: generated tokens/s of the transformers backend in length-sorted batches against
one prompt at a time, on the packaged default model (SmolLM2-135M-Instruct).

    OMP_NUM_THREADS=2 python benchmarks/local_generation.py --out benchmarks/results/local_generation.json

The prompts are the quickstart's: the 64 speeches of configs/quickstart_speeches.jsonl (2 of them
multi-turn) under its first generator's system prompt, read from configs/quickstart.yaml; greedy
decoding, up to 80 new tokens (the quickstart's cap), batches of 32 (its batch size). Arms:

- sorted: ``TransformersBackend.complete`` on all 64, cut into length-sorted batches (the backend's own);
- unsorted: the same 64 in file order, cut into batches of 32 as they come (the backend before
  sorting), run once, for the time the padding costs (``--no-unsorted`` leaves it out: the padding
  itself is counted either way);
- single: batch size 1 on 4 of the 64, spread over the prompt lengths (a rate: 64 would take minutes).

Each repeat times sorted and single back to back and takes the ratio of their tokens/s; ``value`` is
the median ratio over repeats, on 2 torch threads. Greedy texts must agree across arms (a check
that batching and sorting change no reply). When the goal is missed, a short generation of each arm
is profiled (torch.profiler) into ``details.profile``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

from bench_result import machine, write_result

ROOT = Path(__file__).resolve().parent.parent
SPEECHES = ROOT / "configs" / "quickstart_speeches.jsonl"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
GOAL = 4.0


def requests(max_tokens: int):
    """One greedy request per quickstart speech, with the quickstart's first system prompt."""
    from psychocounsel.backends import ChatRequest
    from psychocounsel.records import Speech

    system = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))["generate"]["pool"][0]["system_prompt"]
    rows = [json.loads(line) for line in SPEECHES.read_text(encoding="utf-8").splitlines() if line.strip()]
    params = {"temperature": 0.0, "max_tokens": max_tokens}
    return [
        ChatRequest(
            [{"role": "system", "content": system}]
            + Speech(id=str(i), text=r["text"], context=r.get("context") or []).messages(),
            dict(params),
        )
        for i, r in enumerate(rows)
    ]


def spread(lengths: list[int], n: int) -> list[int]:
    """Indices of ``n`` prompts evenly spaced over the length order, shortest and longest included.

    >>> spread([5, 1, 9, 3], 2)
    [1, 2]
    """
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    return [order[round(j * (len(order) - 1) / (n - 1))] for j in range(n)] if n > 1 else order[:1]


def unsorted_complete(backend, reqs, batch_size: int):
    """The backend before length sorting: consecutive batches in the order given."""
    out = []
    for i in range(0, len(reqs), batch_size):
        out.extend(backend._run_batch(reqs[i : i + batch_size]))
    return out


def padding(batches: list[list[int]], prompt_lens: list[int], new_tokens: list[int]) -> dict:
    """Token positions computed against real ones: prompt padding (the prefill) and the decode
    steps of rows already finished while the batch's longest reply goes on."""
    real_p = sum(prompt_lens)
    padded_p = sum(max(prompt_lens[k] for k in b) * len(b) for b in batches)
    real_d = sum(new_tokens)
    padded_d = sum(max(new_tokens[k] for k in b) * len(b) for b in batches)
    return {
        "prompt_tokens_real": real_p,
        "prompt_tokens_computed": padded_p,
        "prompt_padding_share": round(1 - real_p / padded_p, 3),
        "decode_positions_real": real_d,
        "decode_positions_computed": padded_d,
        "decode_idle_share": round(1 - real_d / padded_d, 3),
        "batch_prompt_widths": [max(prompt_lens[k] for k in b) for b in batches],
    }


MATMULS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}


def op_profile(fn, n_tokens_hint: str) -> dict:
    """Where one short generation spends its CPU time: wall time, the time inside torch operators
    (the rest is Python: generate()'s loop, the model's module calls), the matrix products' share."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - start
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return {
        "what": n_tokens_hint,
        "wall_s": round(wall, 3),
        "op_self_cpu_s": round(total / 1e6, 3),
        "op_calls": sum(e.count for e in ops),
        "matmul_share": round(sum(e.self_cpu_time_total for e in ops if e.key in MATMULS) / total, 3),
        "top_ops": {e.key: round(e.self_cpu_time_total / total, 3) for e in ops[:8]},
    }


def tokens_per_s(comps, seconds: float) -> float:
    return round(sum(c.completion_tokens for c in comps) / seconds, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "local_generation.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--single", type=int, default=4, help="prompts in the one-at-a-time arm")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument(
        "--unsorted",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the unsorted arm once (make bench leaves it out: it adds a third of the run)",
    )
    args = ap.parse_args()

    import torch

    from psychocounsel.backends.transformers_local import TransformersBackend
    from psychocounsel.config import BackendConfig
    from psychocounsel.models import quiet_transformers

    host = machine()  # before the work: the load average then is other jobs'
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    batched = TransformersBackend("default", BackendConfig(batch_size=args.batch_size, device="cpu"))
    single = TransformersBackend("default", BackendConfig(batch_size=1, device="cpu"))
    single._lm, single._tok = batched.load()  # one model in memory, two batch sizes
    reqs = requests(args.max_tokens)[: args.prompts]
    prompt_lens = [len(batched.prompt_ids(r.messages)) for r in reqs]
    few = spread(prompt_lens, args.single)
    batched.complete(requests(8)[:2])  # warm-up: first-call allocations and lazy imports (8 tokens do)

    runs, texts = [], {}
    unsorted_run = None
    for r in range(args.repeats):
        load = os.getloadavg()[0]
        t = time.perf_counter()
        sorted_out = batched.complete(reqs)
        t_sorted = time.perf_counter() - t
        t = time.perf_counter()
        single_out = single.complete([reqs[k] for k in few])
        t_single = time.perf_counter() - t
        run = {
            "load_avg_1m": round(load, 2),
            "sorted_s": round(t_sorted, 2),
            "single_s": round(t_single, 2),
            "sorted_tokens_per_s": tokens_per_s(sorted_out, t_sorted),
            "single_tokens_per_s": tokens_per_s(single_out, t_single),
        }
        run["speedup"] = round(run["sorted_tokens_per_s"] / run["single_tokens_per_s"], 3)
        texts["sorted"], texts["single"] = [c.text for c in sorted_out], [c.text for c in single_out]
        if args.unsorted and unsorted_run is None:  # once: its point is the padding, not a figure with a goal
            t = time.perf_counter()
            unsorted_out = unsorted_complete(batched, reqs, args.batch_size)
            t_unsorted = time.perf_counter() - t
            unsorted_run = {
                "unsorted_s": round(t_unsorted, 2),
                "unsorted_tokens_per_s": tokens_per_s(unsorted_out, t_unsorted),
                "sorted_s_same_repeat": run["sorted_s"],
                "sorted_over_unsorted": round(t_unsorted / t_sorted, 3),
            }
            texts["unsorted"] = [c.text for c in unsorted_out]
        runs.append(run)
        print(
            f"repeat {r} (load {load:.2f}): sorted {t_sorted:.1f} s {run['sorted_tokens_per_s']} tok/s, "
            f"single {t_single:.1f} s {run['single_tokens_per_s']} tok/s, x{run['speedup']}",
            flush=True,
        )
    value = round(statistics.median(r["speedup"] for r in runs), 3)
    new_tokens = [c.completion_tokens for c in sorted_out]
    n = args.batch_size
    sorted_batches = batched.batches(reqs)
    file_batches = [list(range(i, min(i + n, len(reqs)))) for i in range(0, len(reqs), n)]
    profile = {}
    if value < GOAL:  # 16 new tokens: enough steps to see the decode loop, short enough to profile
        short = [type(q)(q.messages, {**q.params, "max_tokens": 16}) for q in reqs]
        profile["batched"] = op_profile(lambda: batched.complete(short[:n]), f"{n} prompts x 16 tokens, batch {n}")
        profile["single"] = op_profile(lambda: single.complete(short[:1]), "1 prompt x 16 tokens, batch 1")
    write_result(
        args.out,
        "local_generation",
        value,
        f"speed-up in generated tokens/s, batch {n} length-sorted vs batch 1",
        f">= {GOAL}x",
        value >= GOAL,
        {
            "machine": {**host, "torch_threads": torch.get_num_threads(), "device": batched.device},
            "settings": {
                "model": "SmolLM2-135M-Instruct (specs.local_model('default')), float32",
                "prompts": len(reqs),
                "single_prompts": few,
                "batch_size": n,
                "max_tokens": args.max_tokens,
                "decoding": "greedy",
                "prompt_tokens": {"min": min(prompt_lens), "max": max(prompt_lens), "sum": sum(prompt_lens)},
            },
            "repeats": args.repeats,
            "median_sorted_tokens_per_s": statistics.median(r["sorted_tokens_per_s"] for r in runs),
            "median_single_tokens_per_s": statistics.median(r["single_tokens_per_s"] for r in runs),
            "runs": runs,
            "unsorted": unsorted_run,
            "padding": {
                "sorted": padding(sorted_batches, prompt_lens, new_tokens),
                "unsorted": padding(file_batches, prompt_lens, new_tokens),
            },
            "same_texts": {
                "unsorted_vs_sorted": sum(a == b for a, b in zip(texts["unsorted"], texts["sorted"]))
                if args.unsorted
                else None,
                "single_vs_sorted": sum(texts["single"][j] == texts["sorted"][k] for j, k in enumerate(few)),
                "of": [len(reqs), len(few)],
            },
            "finish_length_share": round(sum(c.finish_reason == "length" for c in sorted_out) / len(reqs), 3),
            "profile": profile,
            "script_s": round(time.perf_counter() - started, 1),
        },
    )
    print(f"value {value} (goal >= {GOAL}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
