"""Ratings per second through the openai: backend, as a share of what the concurrency allows.

    OMP_NUM_THREADS=1 python benchmarks/api_throughput.py --out benchmarks/results/api_throughput.json

The rate stage's own path drives it: ``judge.build_judge`` on an ``llm`` judge in json mode with
``openai:fake`` at ``concurrency`` C, over a fresh call cache (store.Cache, SQLite) per repeat,
exactly as ``psychocounsel rate`` builds it. The server is a stdlib ``ThreadingHTTPServer`` in a
child process (so it does not share our GIL) that answers every chat completion after a fixed
200 ms with a valid rating; a thread per connection, so it answers concurrently. The ideal is
C / 0.2 s ratings per second; the figure is measured / ideal, the median over repeats.

Two ways of calling the judge are timed at each C:

- ``one_batch``: every rating in one ``judge.rate`` call, so one ``backend.complete`` batch; what
  the backend and judge can do. Its share at C = 32 is the headline ``value`` (goal >= 0.9).
- ``rate_stage_chunks``: ``judge.rate`` per chunk of ``rate.chunk_size(concurrency)`` responses, as the rate stage
  calls it (each chunk is appended to ratings.jsonl before the next starts).

Each measurement rates ``waves`` x C responses (at least ``min_items``, at most ``max_items``), so
every C up to 64 runs the same number of 200 ms waves (C = 128, bound by the client's CPU at 2
cores, 4 waves: its 1,024 ratings took 12 s a run); ``client_cpu_ms_per_rating`` is this process's
CPU time per rating.
Every C whose one-batch share is under the goal is profiled once more (cProfile, 4 x C ratings)
and its top functions written into ``details.profile``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench_result import machine, write_result

ROOT = Path(__file__).resolve().parent.parent
SPEECHES = ROOT / "configs" / "quickstart_eval_speeches.jsonl"
LATENCY_S = 0.2
CONCURRENCIES = (1, 8, 32, 128)
GOAL = 0.9
# A counselling reply of judge size (~70 words, ~100 tokens): the prompt is then ~1,900 characters.
REPLY = (
    "It sounds like this has been weighing on you for a while, and it makes sense that you feel "
    "worn down. You have been carrying a lot on your own. What feels hardest about it right now? "
    "We could look together at one small thing that might make tomorrow a little lighter. (reply {i})"
)


# -- the server (child process) -----------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # http.server listens with a backlog of 5: 128 clients connecting at once would overflow it
    # and wait out a 1 s SYN retransmit, which would measure the fake server, not the client.
    request_queue_size = 1024


def serve(keys: list[str]) -> None:
    """Answer POST /v1/chat/completions after LATENCY_S with a rating of every key; GET /stats
    gives (and resets) the most requests in flight at once. Prints the port, then serves."""
    import threading

    lock = threading.Lock()
    state = {"in_flight": 0, "max_in_flight": 0, "requests": 0}
    content = json.dumps({"scores": {k: 4 for k in keys}, "rationale": "Warm and on topic."})
    reply = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 500, "completion_tokens": 40},
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real server
        # Headers and body leave in separate writes: with Nagle on, the body waits for the
        # client's delayed ACK (40 ms on Linux), which would be charged to the client.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                state["in_flight"] += 1
                state["requests"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            time.sleep(LATENCY_S)
            with lock:
                state["in_flight"] -= 1
            self._send(reply)

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                body = json.dumps(state).encode()
                state.update(max_in_flight=0, requests=0)
            self._send(body)

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    httpd = _Server(("127.0.0.1", 0), Handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever(0.05)


def start_server(keys: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", ",".join(keys)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as r:
        return json.loads(r.read())


# -- the client: the rate stage's judge ---------------------------------------------------


def items(n: int) -> list:
    from psychocounsel.records import Response, Speech

    rows = [json.loads(line) for line in SPEECHES.read_text(encoding="utf-8").splitlines() if line.strip()]
    speeches = [Speech(id=r["id"], text=r["text"], topic=r.get("topic")) for r in rows]
    out = []
    for i in range(n):
        s = speeches[i % len(speeches)]
        out.append((s, Response(id=f"r-{i}", speech_id=s.id, generator="bench", text=REPLY.format(i=i), model="x")))
    return out


def time_rating(url: str, concurrency: int, todo: list, chunk: int | None, profile: bool = False):
    """Seconds for the rate stage's judge to rate ``todo`` (in chunks of ``chunk``, or one call),
    with a fresh call cache; (seconds, client CPU seconds, failed ratings, profile text or None)."""
    from psychocounsel.config import BackendConfig, JudgeConfig
    from psychocounsel.judge import build_judge
    from psychocounsel.rubric import load_rubric
    from psychocounsel.store import Cache

    backend = BackendConfig(spec="openai:fake", base_url=f"{url}/v1", concurrency=concurrency, max_retries=0)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp) / "cache.sqlite")
        judge = build_judge(JudgeConfig(type="llm", backend=backend, mode="json"), load_rubric(), cache)
        step = chunk or len(todo)
        prof = cProfile.Profile() if profile else None
        start, cpu = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        ratings = [r for i in range(0, len(todo), step) for r in judge.rate(todo[i : i + step])]
        if prof:
            prof.disable()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        judge.close()
        cache.close()
    text = None
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        text = buf.getvalue()
    return seconds, cpu, sum(r.failed for r in ratings), text


def measure(url: str, args) -> dict:
    from psychocounsel.rate import chunk_size

    out = {}
    for c in CONCURRENCIES:
        modes = {"one_batch": None, "rate_stage_chunks": chunk_size(c)}
        n = min(max(args.waves * c, args.min_items), args.max_items)
        todo = items(n)
        ideal = c / LATENCY_S
        for mode, chunk in modes.items():
            runs = []
            for _ in range(args.repeats):
                server_stats(url)  # reset the in-flight high-water mark
                seconds, cpu, failed, _ = time_rating(url, c, todo, chunk)
                stats = server_stats(url)
                runs.append(
                    {
                        "seconds": round(seconds, 4),
                        "ratings_per_s": round(n / seconds, 2),
                        "client_cpu_ms_per_rating": round(1000 * cpu / n, 3),
                        "failed": failed,
                        "max_in_flight": stats["max_in_flight"],
                    }
                )
            rps = statistics.median(r["ratings_per_s"] for r in runs)
            out[f"{mode}@{c}"] = {
                "mode": mode,
                "concurrency": c,
                "ratings": n,
                "ideal_per_s": ideal,
                "median_ratings_per_s": rps,
                "share_of_ideal": round(rps / ideal, 3),
                "runs": runs,
            }
            print(f"{mode:18s} C={c:3d} n={n:4d} {rps:7.1f}/s  share {rps / ideal:.3f}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "api_throughput.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--waves", type=int, default=8, help="ratings per measurement = waves x concurrency")
    ap.add_argument("--min-items", type=int, default=16)
    ap.add_argument("--max-items", type=int, default=512)
    ap.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run as the fake server
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve.split(","))
        return 0

    from psychocounsel.rate import chunk_size
    from psychocounsel.rubric import load_rubric

    host = machine(("torch", "httpx", "httpcore"), omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    proc, url = start_server(load_rubric().keys)
    try:
        results = measure(url, args)
        value = results["one_batch@32"]["share_of_ideal"]
        profile = {}  # where the time goes wherever one batch falls short of the goal
        for c in CONCURRENCIES:
            if results[f"one_batch@{c}"]["share_of_ideal"] < GOAL:
                profile[f"one_batch@{c}"] = time_rating(url, c, items(4 * c), None, profile=True)[3]
    finally:
        proc.terminate()
        proc.wait(10)
    write_result(
        args.out,
        "api_throughput",
        value,
        "share of ideal ratings/s (concurrency / 0.2 s) at concurrency 32, one batch",
        f">= {GOAL}",
        value >= GOAL,
        {
            "machine": host,
            "settings": {
                "path": "judge.build_judge(llm, json mode, openai:fake) -> CachedBackend -> OpenAIBackend",
                "server": "stdlib ThreadingHTTPServer in a child process, fixed latency per request",
                "latency_s": LATENCY_S,
                "concurrencies": list(CONCURRENCIES),
                "waves": args.waves,
                "min_items": args.min_items,
                "max_items": args.max_items,
                "rate_stage_chunk": {c: chunk_size(c) for c in CONCURRENCIES},
            },
            "repeats": args.repeats,
            "results": results,
            "profile": profile,
        },
    )
    print(f"value {value} (goal >= {GOAL}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
