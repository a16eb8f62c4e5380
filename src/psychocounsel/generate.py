"""generate: for each speech, k generators drawn from the pool (seeded) each write one response.

Work is cut into fixed chunks per generator (one backend batch each) over the *whole* task
list, so a resumed run sends exactly the batches an uninterrupted run would have sent, and
seeded sampling gives the same rows. A chunk is appended to responses.jsonl only when complete.
"""

from __future__ import annotations

import logging
import random
import re
from typing import Any

from .backends import ChatRequest, load_backend
from .config import GenerateConfig, GeneratorConfig
from .errors import UserError
from .progress import bar
from .records import Response, Speech
from .store import Cache, RunDir, append_jsonl, read_jsonl, stable_hash

log = logging.getLogger(__name__)


def assign(speeches: list[Speech], pool: list[GeneratorConfig], k: int, seed: int) -> list[tuple[Speech, GeneratorConfig]]:
    """Draw min(k, pool size) distinct generators per speech; the draw depends only on the seed
    and the speech id, so adding speeches does not reshuffle the others."""
    tasks = []
    for s in speeches:
        rng = random.Random(f"{seed}:{s.id}")
        for g in rng.sample(pool, min(k, len(pool))):
            tasks.append((s, g))
    return tasks


def response_id(speech: Speech, gen: GeneratorConfig) -> str:
    return "r-" + stable_hash([speech.id, gen.model_dump(mode="json")], 16)


def request_for(speech: Speech, gen: GeneratorConfig) -> ChatRequest:
    system = [{"role": "system", "content": gen.system_prompt}] if gen.system_prompt else []
    params = {"temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": gen.max_tokens}
    return ChatRequest(system + speech.messages(), params)


def trim_incomplete(text: str) -> str:
    """Drop a trailing unfinished sentence; keep the text whole if no sentence ever ends.

    >>> trim_incomplete("I hear you. That sounds hard. What would")
    'I hear you. That sounds hard.'
    >>> trim_incomplete("no full stop at all")
    'no full stop at all'
    """
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s|$)", text)]
    return text[: ends[-1]].rstrip() if ends else text


def _chunk_size(gen: GeneratorConfig) -> int:
    if gen.backend.spec.startswith("openai:"):
        return 4 * gen.backend.concurrency  # enough in flight to keep the server busy
    return gen.backend.batch_size


def load_speeches(rundir: RunDir) -> list[Speech]:
    speeches = [Speech.from_dict(d) for d in read_jsonl(rundir.speeches)]
    if not speeches:
        raise UserError(f"no speeches in {rundir.speeches}; run 'psychocounsel ingest' first")
    return speeches


def run(cfg: GenerateConfig, rundir: RunDir) -> dict[str, Any]:
    names = [g.name for g in cfg.pool]
    if len(set(names)) != len(names):
        raise UserError(f"generator names must be unique; got {names}")
    speeches = load_speeches(rundir)
    tasks = assign(speeches, cfg.pool, cfg.k, cfg.seed)
    done = {r["id"] for r in read_jsonl(rundir.responses)}
    cache = Cache(rundir.cache_path)
    backends: dict[str, Any] = {}
    failed = written = 0
    progress = bar(len(tasks), "generate", initial=sum(1 for s, g in tasks if response_id(s, g) in done))
    try:
        for gen in cfg.pool:
            mine = [(s, g) for s, g in tasks if g.name == gen.name]
            size = _chunk_size(gen)
            for start in range(0, len(mine), size):
                chunk = mine[start : start + size]
                if all(response_id(s, g) in done for s, g in chunk):
                    continue
                key = gen.backend.model_dump_json()
                if key not in backends:
                    backends[key] = load_backend(gen.backend)
                comps = cache.complete(backends[key], [request_for(s, g) for s, g in chunk])
                rows = []
                for (s, g), c in zip(chunk, comps):
                    rid = response_id(s, g)
                    if rid in done:
                        continue
                    if c.error or not c.text.strip():
                        failed += 1
                        log.warning("response %s (speech %s, %s) failed: %s", rid, s.id, g.name, c.error or "empty text")
                        continue
                    text = trim_incomplete(c.text) if g.trim_incomplete and c.finish_reason == "length" else c.text
                    rows.append(Response(rid, s.id, g.name, text, c.model, c.params, c.latency_s,
                                         c.prompt_tokens, c.completion_tokens).to_dict())
                append_jsonl(rundir.responses, rows)
                done.update(r["id"] for r in rows)
                written += len(rows)
                progress.update(len(chunk))
    finally:
        progress.close()
        for b in backends.values():
            b.close()
        cache.close()
    return {"items_in": len(speeches), "items_out": len(done), "failed": failed, "written": written,
            "calls_made": cache.calls_made, "calls_cached": cache.calls_cached}
