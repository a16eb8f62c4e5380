"""Memory at scale (issue 14): ``ingest`` of a 1,000,000-row CSV and ``pairs`` over 1,000,000
ratings stay under a fixed memory bound and their time grows linearly with the rows.

Writes seeded synthetic inputs (streamed, so the writer's own memory stays small) into a temp
folder, runs each stage in a fresh subprocess per size, as a user would, and measures its wall
time and peak RSS (``os.wait4``: the ru_maxrss of that one child). Writes
benchmarks/results/scale.json and docs/scale.png.

- ingest: CSV rows of 50-150 words (Zipf-distributed words, stock phrases, sentences), with
  exact duplicates (some recased), near duplicates (one word changed or added) and bad rows
  (empty, too short, too long, multi-line quoted cells). Measured as ``ingest.run`` (read,
  normalise, filter, deduplicate, write speeches.jsonl). ``psychocounsel ingest`` also screens
  every speech for crisis (MiniLM embeddings of every speech): that is measured per row on a
  smaller file through the real CLI, since at ~100 speeches/s it cannot run 1M rows in minutes.
- pairs: a run directory as rate leaves it: 4 responses of 40-120 words per speech, a rating
  of each on the 7 principles (1% failed), run.json naming the judge; ``psychocounsel pairs``.

    python benchmarks/scale.py                       # 10k, 100k, 1M rows, one process at a time (~1.6x --jobs 2)
    python benchmarks/scale.py --jobs 2              # two at a time (make bench): ~6 min on 2 AVX2 cores, 2.5 AVX-512
    python benchmarks/scale.py --sizes 2000,20000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_result import machine, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks/results/scale.json"
FIGURE = ROOT / "docs/scale.png"
BIN = Path(sys.executable).parent
KEYS = ("empathy", "relevance", "clarity", "safety", "exploration", "autonomy", "staging")  # rubric.PAPER_KEYS
JUDGE = "scale-bench-judge"
# The bound: a fixed 1 GiB whatever the size (a laptop's share for one stage), and 1M rows may
# use at most 1.5x the time per row of 100k (linear growth, with room for a contended machine).
PEAK_BOUND_MB = 1024
LINEAR_BOUND = 1.5

STOCK = [
    "i don't know what to do",
    "i feel like",
    "i have been feeling",
    "my partner and i",
    "i can't sleep at night",
    "it is getting worse",
    "i want to feel better",
    "nobody understands me",
    "at work",
    "my mom and dad",
]
COMMON = "i my me and the to a of in it is that was but for with so not have be do feel like just".split()
BATCH = 2000  # texts drawn at a time (numpy), so the writers' memory stays small


class Words:
    """Seeded Zipf-like text: common words, stock phrases and 5,000 made-up words; sentences of
    ~11 words, capitalised, ending in a full stop."""

    def __init__(self, seed: int):
        import numpy as np

        self.rng = rng = np.random.default_rng(seed)
        letters = list("abcdefghijklmnopqrstuvwxyz")
        made_up = ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(5000)]
        vocab = COMMON + STOCK + made_up
        weights = 1 / np.arange(1, len(vocab) + 1) ** 1.05
        self.p = weights / weights.sum()
        # [sentence start][sentence end] -> the word as written there
        self.forms = [
            [np.array(vocab, dtype=object), np.array([w + "." for w in vocab], dtype=object)],
            [np.array([w.capitalize() for w in vocab], dtype=object)]
            + [np.array([w.capitalize() + "." for w in vocab], dtype=object)],
        ]

    def texts(self, lengths: list[int]) -> list[str]:
        """One text per length, of that many words."""
        import numpy as np

        n = sum(lengths)
        words = self.rng.choice(len(self.p), size=n, p=self.p)
        end = self.rng.random(n) < 1 / 11
        bounds = np.cumsum(lengths)
        end[bounds - 1] = True
        start = np.roll(end, 1)
        tokens = np.empty(n, dtype=object)
        for s in (0, 1):
            for e in (0, 1):
                mask = (start == s) & (end == e)
                tokens[mask] = self.forms[s][e][words[mask]]
        tokens[bounds - 1] += "\x1e"  # ends each text: one join and one split make them all (~2x faster)
        texts = " ".join(tokens.tolist()).split("\x1e ")
        texts[-1] = texts[-1][:-1]
        return texts


def _csv_field(text: str) -> str:
    """``text`` as csv.writer's default dialect writes a field (quoted only where it must be), ~2x faster."""
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return f'"{text}"' if "," in text or "\n" in text or "\r" in text else text


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` speeches: ~3% exact and ~2% near duplicates of a recent row, ~1.5% bad rows."""
    words, rng = Words(seed), random.Random(seed + 1)
    recent: list[str] = []  # the last 2,000 texts: duplicates come from here (bounded memory)
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("id,text,topic\r\n")
        for start in range(0, rows, BATCH):
            n = min(BATCH, rows - start)
            fresh = words.texts([rng.randint(50, 150) if rng.random() > 0.01 else 400 for _ in range(n)])
            batch = []
            for i, text in enumerate(fresh, start):
                roll = rng.random()
                if roll < 0.03 and recent:
                    text = rng.choice(recent)
                    text = text.upper() if rng.random() < 0.3 else text
                elif roll < 0.05 and recent:
                    w = rng.choice(recent).split() or ["alone"]
                    if rng.random() < 0.5:
                        w[rng.randrange(len(w))] = "really"  # 3 of ~100 shingles change: Jaccard ~0.94
                    else:
                        w.append("too")
                    text = " ".join(w)
                elif roll < 0.055:
                    text = ""
                elif roll < 0.06:
                    text = "help me"
                elif rng.random() < 0.05:
                    text = text.replace(". ", '.\n\n  "', 1)  # a multi-line quoted cell
                recent.append(text)
                if len(recent) > 2000:
                    recent.pop(0)
                batch.append(f"q{i},{_csv_field(text)},{rng.choice(['anxiety', 'depression', 'family', ''])}\r\n")
            f.write("".join(batch))


def write_run(root: Path, responses: int, seed: int = 0) -> None:
    """A run folder as rate leaves it: responses // 4 speeches, 4 responses each, one rating each."""
    words, rng = Words(seed), random.Random(seed + 1)
    root.mkdir(parents=True)
    n_speeches = max(1, responses // 4)
    with (
        open(root / "speeches.jsonl", "w", encoding="utf-8") as sp,
        open(root / "responses.jsonl", "w", encoding="utf-8") as rs,
        open(root / "ratings.jsonl", "w", encoding="utf-8") as rt,
    ):
        for first in range(0, n_speeches, BATCH // 5):
            n = min(BATCH // 5, n_speeches - first)
            texts = iter(
                words.texts([rng.randint(50, 150) if k % 5 == 0 else rng.randint(40, 120) for k in range(5 * n)])
            )
            for s in range(first, first + n):
                sid = f"s-{s:08d}"
                sp.write(
                    json.dumps({"id": sid, "text": next(texts), "topic": None, "context": [], "source": "x"}) + "\n"
                )
                for g in range(4):
                    rid = f"r-{s:08d}-{g}"
                    response = {"id": rid, "speech_id": sid, "generator": f"gen-{g}", "text": next(texts), "model": "m"}
                    rs.write(json.dumps({**response, "params": {"temperature": 0.7}, "latency_s": 1.0}) + "\n")
                    failed = rng.random() < 0.01
                    base = rng.uniform(1, 5)
                    scores = {} if failed else {k: min(5.0, max(1.0, round(base + rng.gauss(0, 0.6)))) for k in KEYS}
                    rating = {"response_id": rid, "speech_id": sid, "judge": JUDGE, "scores": scores}
                    rating |= {"rationale": "", "failed": failed, "error": "no JSON" if failed else "", "raw": ""}
                    rt.write(json.dumps(rating) + "\n")
    (root / "run.json").write_text(json.dumps({"stages": {"rate": {"judge": JUDGE}}}))


INGEST = """
import sys
from pathlib import Path
from psychocounsel import ingest
from psychocounsel.config import IngestConfig
from psychocounsel.store import RunDir
cfg = IngestConfig(input=Path(sys.argv[1]), topic_column="topic")
print(ingest.run(cfg, RunDir(sys.argv[2]))["items_out"])
"""


def omp_threads(threads: str | None = None) -> str:
    """The torch threads a stage process gets: ``threads``, else this process's OMP_NUM_THREADS, else 1."""
    return threads or os.environ.get("OMP_NUM_THREADS", "1")


def measure(cmd: list[str], threads: str | None = None) -> dict:
    """Wall seconds and peak RSS (MB) of one fresh process running ``cmd`` (``omp_threads(threads)``)."""
    env = {**os.environ, "OMP_NUM_THREADS": omp_threads(threads)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {err.decode()[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1), "stdout": out.decode().strip()}


def write_csv_whole(path: Path, rows: int) -> None:
    """``write_csv`` to PATH.part, renamed to PATH once written (another process waits for PATH)."""
    part = path.with_suffix(".part")
    try:
        write_csv(part, rows)
    except BaseException:
        path.with_suffix(".failed").touch()  # the waiting process gives up
        raise
    part.rename(path)


def bench_ingest(tmp: Path, sizes: list[int], made_elsewhere: tuple[int, ...] = ()) -> list[dict]:
    """The ingest series; the CSVs of ``made_elsewhere`` sizes are written by another process
    (``write_csv_whole``): this one waits for them."""
    rows = []
    for n in sizes:
        data = tmp / f"speeches_{n}.csv"
        t0 = time.perf_counter()
        if n in made_elsewhere:
            while not data.exists():
                if data.with_suffix(".failed").exists():
                    raise SystemExit(f"writing {data.name} failed")
                time.sleep(0.5)
        else:
            write_csv(data, n)
        made = time.perf_counter() - t0
        run = measure([sys.executable, "-c", INGEST, str(data), str(tmp / f"ingest_{n}")])
        rows.append({"rows": n, "mb_in": round(data.stat().st_size / 2**20, 1), "speeches_out": int(run["stdout"])})
        rows[-1] |= {k: run[k] for k in ("seconds", "peak_mb")} | {"us_per_row": round(run["seconds"] / n * 1e6, 1)}
        how = "waited" if n in made_elsewhere else "made"
        print(f"ingest {n:>9,} rows: {run['seconds']:7.1f} s, peak {run['peak_mb']:7.1f} MB (input {how} {made:.0f} s)")
        data.unlink()
        shutil.rmtree(tmp / f"ingest_{n}")
    return rows


def bench_screen(tmp: Path, n: int, threads: str | None = None) -> dict:
    """``psychocounsel ingest`` as users run it (ingest + crisis screen) against ingest alone."""
    data = tmp / "screen.csv"
    write_csv(data, n, seed=1)
    alone = measure([sys.executable, "-c", INGEST, str(data), str(tmp / "alone")], threads)
    cli = measure(
        [str(BIN / "psychocounsel"), "ingest", str(data), "--run-dir", str(tmp / "cli"), "--topic-column", "topic"],
        threads,
    )
    speeches = int(alone["stdout"])
    per = (cli["seconds"] - alone["seconds"]) / speeches
    print(f"ingest CLI with the crisis screen, {n} rows: {cli['seconds']} s ({per * 1000:.1f} ms per speech screened)")
    return {
        "rows": n,
        "speeches": speeches,
        "torch_threads": int(omp_threads(threads)),
        "cli_seconds": cli["seconds"],
        "cli_peak_mb": cli["peak_mb"],
        "ingest_only_seconds": alone["seconds"],
        "screen_ms_per_speech": round(per * 1000, 2),
        "screen_hours_at_1m_rows": round(per * speeches / n * 1_000_000 / 3600, 2),
    }


def bench_pairs(tmp: Path, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        root = tmp / f"run_{n}"
        t0 = time.perf_counter()
        write_run(root, n)
        made = time.perf_counter() - t0
        run = measure([str(BIN / "psychocounsel"), "pairs", "--run-dir", str(root)])
        stats = json.loads((root / "run.json").read_text())["stages"]["pairs"]
        mb_in = sum(p.stat().st_size for p in root.glob("*.jsonl")) / 2**20
        rows.append({"ratings": n, "mb_in": round(mb_in, 1), "pairs_out": stats.get("items_out")})
        rows[-1] |= {k: run[k] for k in ("seconds", "peak_mb")} | {"us_per_row": round(run["seconds"] / n * 1e6, 1)}
        print(
            f"pairs  {n:>9,} ratings: {run['seconds']:7.1f} s, peak {run['peak_mb']:7.1f} MB (input made in {made:.0f} s)"
        )
        shutil.rmtree(root)
    return rows


def growth(rows: list[dict]) -> float | None:
    """Bytes of peak RSS added per row from the size before the largest to the largest."""
    if len(rows) < 2:
        return None
    (a, b), key = rows[-2:], "rows" if "rows" in rows[-1] else "ratings"
    return round((b["peak_mb"] - a["peak_mb"]) * 2**20 / (b[key] - a[key]))


def ratio(rows: list[dict], key: str) -> float | None:
    """Time per row at the largest size over time per row at the one before (1.0 = linear)."""
    if len(rows) < 2:
        return None
    return round(rows[-1]["us_per_row"] / rows[-2]["us_per_row"], 2)


def figure(path: Path, ingest_rows: list[dict], pairs_rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for rows, key, label in ((ingest_rows, "rows", "ingest (CSV rows)"), (pairs_rows, "ratings", "pairs (ratings)")):
        x = [r[key] for r in rows]
        ax_t.plot(x, [r["seconds"] for r in rows], "o-", label=label)
        ax_m.plot(x, [r["peak_mb"] for r in rows], "o-", label=label)
    xs = sorted({r["rows"] for r in ingest_rows} | {r["ratings"] for r in pairs_rows})
    if xs:
        base = ingest_rows[0]["seconds"] if ingest_rows else 1
        ax_t.plot(xs, [base * x / xs[0] for x in xs], ":", color="grey", label="linear")
    ax_m.axhline(PEAK_BOUND_MB, color="red", ls="--", label=f"bound {PEAK_BOUND_MB} MB")
    ax_t.set(xscale="log", yscale="log", xlabel="rows", ylabel="wall time (s)", title="Time")
    ax_m.set(xscale="log", ylim=(0, PEAK_BOUND_MB * 1.15), xlabel="rows", ylabel="peak RSS (MB)", title="Peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("psychocounsel at scale: one fresh process per size, 2 CPU cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="ingest CSV rows and pairs ratings")
    ap.add_argument("--screen-rows", type=int, default=1000, help="rows of the CLI ingest with the screen (0: skip)")
    ap.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: run the ingest and the pairs series at the same time, one single-threaded stage process "
        "each (a 2-core machine's two cores; the time per row stays within a few %%, see docs/benchmarks.md)",
    )
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--figure", type=Path, default=FIGURE)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    info = machine(packages=("pyarrow",))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="psychocounsel-scale-") as name:
        tmp = Path(name)
        if args.jobs == 2:
            # Two workers, one process on each core at a time, tasks taken in this order: one
            # writes the largest CSV while the other starts the ingest series (which waits for
            # it), then runs the pairs series; the screen (one torch thread, as the other core
            # is still busy) goes to whichever finishes first. The two series take about as long.
            big = sizes[-1]
            with ProcessPoolExecutor(2) as pool:
                pool.submit(write_csv_whole, tmp / f"speeches_{big}.csv", big)
                ingest_job = pool.submit(bench_ingest, tmp, sizes, (big,))
                pairs_job = pool.submit(bench_pairs, tmp, sizes)
                screen_job = pool.submit(bench_screen, tmp, args.screen_rows, "1") if args.screen_rows else None
                ingest_rows, pairs_rows = ingest_job.result(), pairs_job.result()
                screen = screen_job.result() if screen_job else None
        else:
            ingest_rows = bench_ingest(tmp, sizes)
            pairs_rows = bench_pairs(tmp, sizes)
            screen = bench_screen(tmp, args.screen_rows) if args.screen_rows else None
    peak = max(r["peak_mb"] for r in ingest_rows + pairs_rows)
    linear = {"ingest": ratio(ingest_rows, "rows"), "pairs": ratio(pairs_rows, "ratings")}
    met = peak <= PEAK_BOUND_MB and all(v is None or v <= LINEAR_BOUND for v in linear.values())
    details = {
        "ingest": ingest_rows,
        "pairs": pairs_rows,
        "time_per_row_ratio_largest_vs_previous": linear,
        "peak_bytes_per_row_added_largest_vs_previous": {"ingest": growth(ingest_rows), "pairs": growth(pairs_rows)},
        "ingest_cli_with_crisis_screen": screen,
        "bound_mb": PEAK_BOUND_MB,
        "linear_bound": LINEAR_BOUND,
        "seconds_total": round(time.perf_counter() - start, 1),
        "jobs": args.jobs,
        "machine": info,
    }
    figure(args.figure, ingest_rows, pairs_rows)
    write_result(
        args.out,
        "scale",
        peak,
        "MB peak RSS at the largest size (ingest or pairs)",
        f"peak RSS <= {PEAK_BOUND_MB} MB at {sizes[-1]:,} rows for ingest and pairs, and time per row at the "
        f"largest size <= {LINEAR_BOUND}x that of the size before",
        met,
        details,
    )
    print(json.dumps({"peak_mb": peak, "linear": linear, "met": met, "seconds": details["seconds_total"]}))


if __name__ == "__main__":
    main()
