"""psychocounsel serve under load, on this machine: dynamic batching's throughput and a bounded load test.

Starts ``psychocounsel serve`` as a real process on 127.0.0.1 (loopback only), then:

1. **Batching**: the same kind of request (a quickstart evaluation speech, ``--max-tokens``
   tokens, temperature 0.7, distinct seeds) from 1 client and from 16 clients at once; throughput
   is completion tokens per second of wall time. The issue's goal: 16 clients >= 3x 1 client.
2. **Load**: ``--requests`` requests from ``--clients`` concurrent clients, a mix of whole and
   streamed chats, crisis messages, malformed bodies and (with a reward model) /get_reward; it
   stops by itself when every request is answered. More clients than the server queues
   (``--clients`` 96 against ``max_queue`` 64) so that it saturates: a refused client waits the
   429's Retry-After (plus up to 1 s of jitter) and tries again, up to 20 times, as a polite
   client does. Reports the 429s,
   the final status counts, p50/p95 latency of the successful chats (waits included), and fails
   (exit 1) on any 5xx.

Writes ``--out`` (JSON). The speeches are the project's own (configs/quickstart_eval_speeches.jsonl).

    python benchmarks/serve_bench.py --policy runs/quickstart/policy --reward-model runs/quickstart/reward_model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEECHES = ROOT / "configs" / "quickstart_eval_speeches.jsonl"
RETRIES = 20  # a refused client tries again this often, after each 429's Retry-After
CRISIS = "I wrote my goodbye letters and I have the pills saved up. I am going to take them all tonight."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "psychocounsel", "serve", "--policy", args.policy, "--port", str(port), "-q"]
    if args.reward_model:
        cmd += ["--reward-model", args.reward_model]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT / "src"))
    env.pop("PSYCHOCOUNSEL_API_KEY", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}: {proc.stderr.read()[-500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("serve did not become ready in 300 s")


def chat_body(text: str, max_tokens: int, seed: int, **extra) -> dict:
    return {
        "model": "psychocounsel",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": seed,
        **extra,
    }


async def throughput(url: str, texts: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    """``requests`` chats from ``clients`` concurrent clients; tokens per second of wall time."""
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    tokens, latencies = [], []

    async def client(c: httpx.AsyncClient):
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            r = await c.post(f"{url}/v1/chat/completions", json=chat_body(texts[i % len(texts)], max_tokens, i))
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            tokens.append(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=600) as c:
        start = time.perf_counter()
        await asyncio.gather(*[client(c) for _ in range(clients)])
        wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": requests,
        "completion_tokens": int(sum(tokens)),
        "seconds": round(wall, 2),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "requests_per_s": round(requests / wall, 3),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
    }


def load_plan(n: int, texts: list[str], rm: bool, seed: int) -> list[tuple[str, str, object]]:
    """(kind, path, body) per request: mostly chats, some streamed, crisis, malformed, scoring."""
    rng = random.Random(seed)
    kinds = ["chat"] * 60 + ["stream"] * 15 + ["crisis"] * 10 + ["malformed"] * 5 + (["reward"] * 10 if rm else [])
    plan = []
    for i in range(n):
        kind = rng.choice(kinds)
        text = texts[i % len(texts)]
        if kind == "chat":
            plan.append((kind, "/v1/chat/completions", chat_body(text, 32, i)))
        elif kind == "stream":
            plan.append((kind, "/v1/chat/completions", chat_body(text, 32, i, stream=True)))
        elif kind == "crisis":
            plan.append((kind, "/v1/chat/completions", chat_body(CRISIS, 32, i)))
        elif kind == "malformed":
            plan.append((kind, "/v1/chat/completions", rng.choice(['{"model": ', "[]", '{"messages": 5}'])))
        else:
            talk = [{"role": "user", "content": text}, {"role": "assistant", "content": "That sounds very hard."}]
            plan.append((kind, "/get_reward", {"query": [talk, talk]}))
    return plan


async def load_test(url: str, plan: list, clients: int) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    results: list[tuple[str, int, float]] = []
    refused: list[int] = []  # Retry-After of each 429

    async def once(c: httpx.AsyncClient, kind: str, path: str, body) -> httpx.Response:
        if kind == "stream":
            async with c.stream("POST", f"{url}{path}", json=body) as r:
                async for _ in r.aiter_lines():
                    pass
                return r
        if isinstance(body, str):
            return await c.post(f"{url}{path}", content=body, headers={"content-type": "application/json"})
        return await c.post(f"{url}{path}", json=body)

    async def one(c: httpx.AsyncClient, kind: str, path: str, body) -> int:
        jitter = random.Random(len(results))
        for _ in range(RETRIES):
            r = await once(c, kind, path, body)
            if r.status_code != 429:
                return r.status_code
            refused.append(int(r.headers["Retry-After"]))
            await asyncio.sleep(int(r.headers["Retry-After"]) + jitter.random())  # jitter, as polite clients do
        return r.status_code

    async def client(c: httpx.AsyncClient):
        while not queue.empty():
            kind, path, body = queue.get_nowait()
            start = time.perf_counter()
            try:
                status = await one(c, kind, path, body)
            except httpx.HTTPError as e:
                status = f"client error: {type(e).__name__}"
            results.append((kind, status, time.perf_counter() - start))

    async with httpx.AsyncClient(timeout=600) as c:
        start = time.perf_counter()
        await asyncio.gather(*[client(c) for _ in range(clients)])
        wall = time.perf_counter() - start
    statuses: dict[str, int] = {}
    for _, status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [t for kind, status, t in results if status == 200 and kind in ("chat", "stream")]
    by_kind = {}
    for kind in sorted({k for k, _, _ in results}):
        codes = [str(s) for k, s, _ in results if k == kind]
        by_kind[kind] = {code: codes.count(code) for code in sorted(set(codes))}
    return {
        "requests": len(results),
        "clients": clients,
        "seconds": round(wall, 1),
        "statuses": statuses,
        "responses_429": len(refused),
        "retry_after_s": {"min": min(refused), "max": max(refused)} if refused else None,
        "by_kind": by_kind,
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "chat_latency_p50_s": round(float(np.percentile(ok, 50)), 3) if ok else None,
        "chat_latency_p95_s": round(float(np.percentile(ok, 95)), 3) if ok else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default=str(ROOT / "runs/quickstart/policy"), help="model folder to serve")
    ap.add_argument("--reward-model", help="reward model folder (adds /get_reward to the load test)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve.json")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per answer in the batching part")
    ap.add_argument("--requests", type=int, default=300, help="requests in the load test")
    ap.add_argument("--clients", type=int, default=96, help="concurrent clients in the load test")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--skip-batching", action="store_true")
    args = ap.parse_args()
    texts = [json.loads(line)["text"] for line in SPEECHES.read_text(encoding="utf-8").splitlines() if line.strip()]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    try:
        report: dict = {
            "policy": args.policy,
            "reward_model": args.reward_model,
            "machine": {"cpus": os.cpu_count(), "server_threads": args.threads, "python": platform.python_version()},
        }
        asyncio.run(throughput(url, texts, 1, 2, 8))  # warm-up: first-call costs out of the timings
        if not args.skip_batching:
            one = asyncio.run(throughput(url, texts, 1, 8, args.max_tokens))
            sixteen = asyncio.run(throughput(url, texts, 16, 64, args.max_tokens))
            report["batching"] = {
                "one_client": one,
                "sixteen_clients": sixteen,
                "speedup": round(sixteen["tokens_per_s"] / one["tokens_per_s"], 2),
                "goal": ">= 3x",
            }
            print(json.dumps(report["batching"]), flush=True)
        plan = load_plan(args.requests, texts, bool(args.reward_model), seed=0)
        report["load"] = asyncio.run(load_test(url, plan, args.clients))
        print(json.dumps(report["load"]), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if report["load"]["server_errors_5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
