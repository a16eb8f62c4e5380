"""A backend that remembers: the call cache wrapped around any backend (lm-eval's ``CachingLM``).

``CachedBackend(backend, cache)`` is itself a backend: ``complete`` serves what it can from the
cache, sends the rest to the wrapped backend as one batch, and stores the successful completions
(failures are not stored, so a rerun retries them). The key is a hash of the backend's
``identity()`` (which names the model, and for local models its weights, dtype and device), the
messages and the sampling parameters. ``calls_made`` / ``calls_cached`` count for run.json.
"""

from __future__ import annotations

from typing import Any

from ..store import Cache, stable_hash
from .base import Backend, ChatRequest, Completion


class CachedBackend(Backend):
    def __init__(self, backend: Backend, cache: Cache):
        self.inner, self.cache = backend, cache
        self.name, self.model = backend.name, backend.model
        self.calls_made = 0
        self.calls_cached = 0

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def key(self, request: ChatRequest) -> str:
        return stable_hash({"backend": self.identity(), "messages": request.messages, "params": request.params}, 32)

    def complete(self, requests: list[ChatRequest], progress: Any = None) -> list[Completion]:
        keys = [self.key(r) for r in requests]
        out: list[Completion | None] = []
        for k in keys:
            hit = self.cache.get(k)
            out.append(Completion.from_dict(hit) if hit is not None else None)
        todo = [i for i, c in enumerate(out) if c is None]
        self.calls_cached += len(requests) - len(todo)
        if progress and len(requests) > len(todo):
            progress(len(requests) - len(todo))
        if todo:
            fresh = self.inner.complete([requests[i] for i in todo], progress=progress)
            self.calls_made += len(todo)
            for i, c in zip(todo, fresh):
                out[i] = c
            self.cache.put_many([(keys[i], c.to_dict()) for i, c in zip(todo, fresh) if not c.error])
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.inner.close()
