"""A finished run, run again: how many model calls it makes (goal 0) and how long it takes (goal:
at most 5% of the first run's wall time).

    OMP_NUM_THREADS=2 python benchmarks/cached_rerun.py --out benchmarks/results/cached_rerun.json

The config is configs/quickstart.yaml cut down: ``ingest.limit`` speeches (8), ``generate.k`` 2
of its four generators, the same rater and pairs sections, no training or eval sections. It is
written to a temporary folder and ``psychocounsel run`` is started on it as a user would (a new
process each time) into one run folder: once from empty, then ``--reruns`` times more (3). Calls
are read from run.json's ``stages.<name>.calls_made``, which each run overwrites; wall times are
the whole command's, Python start-up included. The rerun figure is the median over the reruns.
When the time goal is missed, one more rerun runs under cProfile (``python -m cProfile -m
psychocounsel run ...``) and its top functions by cumulative time go into ``details.profile``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench_result import machine, write_result

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CLI = Path(sys.executable).parent / "psychocounsel"
TIME_SHARE_GOAL = 0.05
TRAINING = ("reward_model", "dpo", "online", "eval")


def small_config(speeches: int, k: int) -> dict:
    """The quickstart config with ``speeches`` speeches, ``k`` generators each, no training."""
    cfg = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    cfg["ingest"]["input"] = str((QUICKSTART.parent / cfg["ingest"]["input"]).resolve())
    cfg["ingest"]["limit"] = speeches
    cfg["generate"]["k"] = k
    for name in TRAINING:
        cfg.pop(name, None)
    return cfg


def run_once(config: Path, run_dir: Path) -> dict:
    """One ``psychocounsel run``: its wall time and, per stage, the calls and seconds run.json holds."""
    start = time.perf_counter()
    subprocess.run([str(CLI), "run", str(config), "--run-dir", str(run_dir)], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    stages = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["stages"]
    return {
        "wall_s": round(seconds, 3),
        "calls_made": sum(s.get("calls_made", 0) for s in stages.values()),
        "calls_cached": sum(s.get("calls_cached", 0) for s in stages.values()),
        "stages": {
            name: {k: s.get(k) for k in ("calls_made", "calls_cached", "seconds")} for name, s in stages.items()
        },
    }


def profile_rerun(config: Path, run_dir: Path, top: int = 15) -> str:
    """One more rerun under cProfile: its top functions by cumulative time, as text."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "rerun.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "psychocounsel"]
        subprocess.run([*cmd, "run", str(config), "--run-dir", str(run_dir)], check=True, capture_output=True)
        buf = io.StringIO()
        pstats.Stats(str(stats), stream=buf).sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cached_rerun.json")
    ap.add_argument("--speeches", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--reruns", type=int, default=3)
    args = ap.parse_args()

    host = machine(omp_num_threads=os.environ.get("OMP_NUM_THREADS"))  # before the work: other jobs' load
    cfg = small_config(args.speeches, args.k)
    with tempfile.TemporaryDirectory() as tmp:
        config, run_dir = Path(tmp) / "small.yaml", Path(tmp) / "run"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        first = run_once(config, run_dir)
        print(f"first run: {first['wall_s']} s, {first['calls_made']} calls", flush=True)
        reruns = []
        for i in range(args.reruns):
            reruns.append(run_once(config, run_dir))
            print(f"rerun {i}: {reruns[-1]['wall_s']} s, {reruns[-1]['calls_made']} calls", flush=True)
        calls = max(r["calls_made"] for r in reruns)  # the worst rerun: any call made is a miss
        rerun_s = statistics.median(r["wall_s"] for r in reruns)
        share = round(rerun_s / first["wall_s"], 4)
        profile = profile_rerun(config, run_dir) if share > TIME_SHARE_GOAL else None

    write_result(
        args.out,
        "cached_rerun",
        calls,
        "model calls made by rerunning a finished run (most over the reruns)",
        f"0 calls, and rerun wall time <= {TIME_SHARE_GOAL:.0%} of the first run's",
        calls == 0 and share <= TIME_SHARE_GOAL,
        {
            "machine": host,
            "settings": {
                "config": "configs/quickstart.yaml without reward_model, dpo, online, eval",
                "speeches": args.speeches,
                "k": args.k,
                "command": "psychocounsel run CONFIG --run-dir RUN (a new process each time)",
            },
            "repeats": args.reruns,
            "calls_goal_met": calls == 0,
            "first_wall_s": first["wall_s"],
            "median_rerun_wall_s": rerun_s,
            "rerun_share_of_first": share,
            "time_goal_met": share <= TIME_SHARE_GOAL,
            "first": first,
            "reruns": reruns,
            "profile": profile,
        },
    )
    print(f"value {calls} calls, rerun {share:.1%} of the first run's time -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
