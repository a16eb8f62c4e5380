"""The GPU path, end to end, with the same commands as the CPU quickstart: train-rm, train-dpo
(full and LoRA), train-online and eval-winrate under ``accelerate launch`` with
configs/accelerate/single_gpu.yaml (bf16), on a small Llama built here (no downloads).

    python benchmarks/gpu_check.py OUT_DIR      # writes OUT_DIR/gpu_check.json

Each step records its exit code, seconds and headline numbers; the script exits 1 if any failed.
It checks that the code runs on CUDA in bf16 and saves loadable models, not model quality. Last,
benchmarks/online_round.py times one online DPO round with each generator (transformers, and
vLLM when installed) and scales it to the paper's round (OUT_DIR/online_round/online_round.json,
also under "online_round" in gpu_check.json). Without a CUDA device nothing runs: it says so and
exits 0.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import WORDS, build_tiny_lm  # noqa: E402  (the tests' local model builder)


def pairs_file(path: Path, n: int) -> Path:
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(20))
        rows.append(
            {
                "question": prompt,
                "chosen": "that sounds hard . tell me more about it ?",
                "rejected": "you are not sad . stop thinking about it .",
                "margin": 1.0,
            }
        )
    path.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", rows[: n - 16]), ("test", rows[n - 16 :])):
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return path


def step(name: str, args: list[str], results: dict, launch: bool = True, script: Path | None = None) -> None:
    """Run ``psychocounsel ARGS`` (under accelerate launch, or not), or ``python SCRIPT ARGS``."""
    if script is not None:
        cmd = [sys.executable, str(script)] + args
    else:
        cmd = (
            [
                "accelerate",
                "launch",
                "--config_file",
                str(ROOT / "configs/accelerate/single_gpu.yaml"),
                "-m",
                "psychocounsel",
            ]
            if launch
            else [sys.executable, "-m", "psychocounsel"]
        ) + args
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PSYCHOCOUNSEL_PROGRESS": "0"})
    out = proc.stdout.strip().splitlines()
    results[name] = {
        "rc": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "stdout_last": out[-1][:800] if out else "",
        "stderr_tail": proc.stderr[-1500:],
    }
    print(name, results[name]["rc"], results[name]["seconds"], results[name]["stdout_last"][:300], flush=True)


def main(out: Path) -> int:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "bf16_supported": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    }
    if not torch.cuda.is_available():
        results["skipped"] = "no CUDA device: gpu_check checks the GPU path; nothing was run"
        print(results["skipped"])
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
        return 0
    tiny = build_tiny_lm(out / "tiny-lm")
    pairs = pairs_file(out / "pairs", 96)
    speeches = ROOT / "configs" / "quickstart_eval_speeches.jsonl"
    step(
        "train-rm",
        [
            "train-rm",
            "--pairs",
            str(pairs),
            "--base",
            str(tiny),
            "--out",
            str(out / "rm"),
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
        ],
        results,
    )
    step(
        "train-dpo",
        [
            "train-dpo",
            "--pairs",
            str(pairs),
            "--base",
            str(tiny),
            "--out",
            str(out / "dpo"),
            "--max-steps",
            "10",
            "--lr",
            "1e-3",
            "--batch-size",
            "4",
        ],
        results,
    )
    step(
        "train-dpo-lora",
        [
            "train-dpo",
            "--pairs",
            str(pairs),
            "--base",
            str(tiny),
            "--out",
            str(out / "dpo-lora"),
            "--max-steps",
            "10",
            "--lr",
            "1e-3",
            "--lora",
        ],
        results,
    )
    step("eval-rm", ["eval-rm", "--model", str(out / "rm"), "--data", str(pairs / "test.jsonl")], results, launch=False)
    step(
        "train-online",
        [
            "train-online",
            "--policy",
            str(out / "dpo"),
            "--reward-model",
            str(out / "rm"),
            "--speeches",
            str(speeches),
            "--out",
            str(out / "online"),
            "--k",
            "4",
            "--speeches-per-round",
            "8",
            "--max-tokens",
            "16",
            "--dpo-steps",
            "2",
        ],
        results,
        launch=False,
    )
    step(
        "eval-winrate",
        [
            "eval-winrate",
            "--policy",
            str(out / "dpo"),
            "--reference",
            str(tiny),
            "--judge",
            f"rm:{out / 'rm'}",
            "--speeches",
            str(speeches),
            "--out",
            str(out / "eval"),
            "--max-tokens",
            "16",
        ],
        results,
        launch=False,
    )
    # One online round at 64 speeches x 8 answers of up to 512 tokens, per generator, scaled to
    # the paper's 6,400 x 8 (SmolLM2-135M-Instruct unless ONLINE_ROUND_POLICY names a model folder).
    policy = os.environ.get("ONLINE_ROUND_POLICY", "default")
    step(
        "online-round",
        [str(out / "online_round"), "--policy", policy],
        results,
        script=ROOT / "benchmarks/online_round.py",
    )
    if (out / "online_round" / "online_round.json").is_file():
        results["online_round"] = json.loads((out / "online_round" / "online_round.json").read_text())
    if (out / "rm" / "metrics.json").is_file():
        results["rm_metrics"] = json.loads((out / "rm" / "metrics.json").read_text())
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("rc") not in (None, 0)]
    print("failed:", failed or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu_check")))
