"""generate: for each speech, k generators drawn from the pool (seeded) each write one response.

Work is cut into fixed chunks per generator (one backend batch each) over the *whole* task
list, so a resumed run sends exactly the batches an uninterrupted run would have sent, and
seeded sampling gives the same rows. A generator's tasks are ordered by the length of their
speech first (stable, so equal lengths keep the speeches' order): a batch then holds speeches of
about one length, and a long speech does not pad a batch of short ones. A chunk is appended to responses.jsonl only when complete.
A failed call is logged (ids only) and left out; when every call of a batch fails before anything
in this invocation worked, the stage stops with the reason: a generator that cannot answer at all
is a setup problem, and the next stage would have nothing new to rate.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from .backends import ChatRequest, load_backend
from .cleaning import trim_incomplete
from .config import NOT_IN_IDENTITY, GenerateConfig, GeneratorConfig
from .errors import UserError
from .progress import bar
from .records import Response, Speech
from .specs import parse_spec
from .store import Cache, RunDir, append_jsonl, stable_hash

log = logging.getLogger(__name__)


def assign(
    speeches: list[Speech], pool: list[GeneratorConfig], k: int, seed: int
) -> list[tuple[Speech, GeneratorConfig]]:
    """Draw min(k, pool size) distinct generators per speech; the draw depends only on the seed
    and the speech id, so adding speeches does not reshuffle the others."""
    tasks = []
    for s in speeches:
        rng = random.Random(f"{seed}:{s.id}")
        for g in rng.sample(pool, min(k, len(pool))):
            tasks.append((s, g))
    return tasks


def response_id(speech: Speech, gen: GeneratorConfig) -> str:
    return "r-" + stable_hash([speech.id, gen.model_dump(mode="json", exclude=NOT_IN_IDENTITY)], 16)


def request_for(speech: Speech, gen: GeneratorConfig) -> ChatRequest:
    system = [{"role": "system", "content": gen.system_prompt}] if gen.system_prompt else []
    params = {"temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": gen.max_tokens}
    return ChatRequest(system + speech.messages(), params)


def _prompt_chars(speech: Speech) -> int:
    """What a speech adds to a prompt's length, in characters (context turns included)."""
    return sum(len(m["content"]) for m in speech.messages())


def _chunk_size(gen: GeneratorConfig) -> int:
    if parse_spec(gen.backend.spec).kind == "openai":
        return 4 * gen.backend.concurrency  # enough in flight to keep the server busy
    return gen.backend.batch_size


def run(cfg: GenerateConfig, rundir: RunDir, meter=None) -> dict[str, Any]:
    """``meter`` (backends.cached.Meter): counts tokens and cost, and stops before max_cost."""
    speeches = rundir.read_speeches()
    tasks = assign(speeches, cfg.pool, cfg.k, cfg.seed)
    done = {r.id for r in rundir.read_responses()}
    cache = Cache(rundir.cache_path, meter=meter)
    backends: dict[str, Any] = {}
    failed = written = 0
    progress = bar(len(tasks), "generate", initial=sum(1 for s, g in tasks if response_id(s, g) in done))
    try:
        for gen in cfg.pool:
            mine = sorted(((s, g) for s, g in tasks if g.name == gen.name), key=lambda t: _prompt_chars(t[0]))
            size = _chunk_size(gen)
            for start in range(0, len(mine), size):
                chunk = mine[start : start + size]
                if all(response_id(s, g) in done for s, g in chunk):
                    continue
                key = gen.backend.model_dump_json()
                if key not in backends:
                    backends[key] = load_backend(gen.backend, cache)
                rows, failures = _answer(backends[key], chunk, done)
                # every call of the chunk failed and nothing has worked yet: a setup problem, stop before
                # paying more (a rerun re-asks only a chunk's failed rows: those failing again is no sign)
                if not rows and not written and len(failures) == len(chunk):
                    reasons = "; ".join(sorted(set(failures.values())))[:300]
                    raise UserError(
                        f"generator {gen.name}: all {len(chunk)} calls of its first batch failed "
                        f"({reasons}); nothing written. Check its backend"
                    )
                for rid, reason in failures.items():
                    log.warning("response %s (%s) failed: %s", rid, gen.name, reason)
                failed += len(failures)
                append_jsonl(rundir.responses, rows)
                done.update(r["id"] for r in rows)
                written += len(rows)
                progress.update(len(chunk))
    finally:
        progress.close()
        for b in backends.values():
            b.close()
        cache.close()
    return {
        "items_in": len(speeches),
        "items_out": len(done),
        "failed": failed,
        "written": written,
        "calls_made": sum(b.calls_made for b in backends.values()),
        "calls_cached": sum(b.calls_cached for b in backends.values()),
    }


def _answer(backend, chunk: list[tuple[Speech, GeneratorConfig]], done: set[str]):
    """One backend batch: the new response rows, and the reason of each failed one by response id."""
    comps = backend.complete([request_for(s, g) for s, g in chunk])
    rows, failures = [], {}
    for (s, g), c in zip(chunk, comps):
        rid = response_id(s, g)
        if rid in done:
            continue
        if c.error or not c.text.strip():
            failures[rid] = c.error or "empty text"
            continue
        text = trim_incomplete(c.text) if g.trim_incomplete and c.finish_reason == "length" else c.text
        rows.append(
            Response(
                rid, s.id, g.name, text, c.model, c.params, c.latency_s, c.prompt_tokens, c.completion_tokens
            ).to_dict()
        )
    return rows, failures
