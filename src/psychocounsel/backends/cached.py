"""A backend that remembers: the call cache wrapped around any backend (lm-eval's ``CachingLM``).

``CachedBackend(backend, cache)`` is itself a backend: ``complete`` serves what it can from the
cache, sends the rest to the wrapped backend as one batch, and stores the successful completions
(failures are not stored, so a rerun retries them). The key is a hash of the backend's
``identity()`` (which names the model, and for local models its weights, dtype and device), the
messages and the sampling parameters. ``calls_made`` / ``calls_cached`` count for run.json.

Every call also goes through the cache's :class:`Meter` (one per stage, shared by all the
backends on that cache): tokens and cost of the calls made, per model, and the ``max_cost`` check
that stops a stage before a batch that could take the spending past the limit.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..errors import UserError
from ..store import Cache, stable_hash
from .base import Backend, ChatRequest, Completion

log = logging.getLogger(__name__)
# Worst-case token estimate of a batch not yet sent: GPT-style tokenizers average ~4 characters
# of English per token, so 1 token per 3 characters (+ 8 per message for the chat template)
# overestimates the prompt; a request without max_tokens is assumed to write up to 1024.
CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
DEFAULT_MAX_TOKENS = 1024


class CostLimitReached(UserError):
    """The next batch could take the spending past ``max_cost``; everything before it is kept."""


def estimate_tokens(request: ChatRequest) -> tuple[int, int]:
    """(prompt, completion) tokens that ``request`` could at most bill, roughly from above.

    >>> estimate_tokens(ChatRequest([{"role": "user", "content": "x" * 30}], {"max_tokens": 5}))
    (18, 5)
    """
    chars = sum(len(str(m.get("content", ""))) for m in request.messages)
    prompt = math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(request.messages)
    return prompt, int(request.params.get("max_tokens") or DEFAULT_MAX_TOKENS)


class Meter:
    """Counts the calls, tokens and cost of one stage's model calls.

    ``prices``: model name (as the backend names it: ``openai:gpt-4o`` -> ``gpt-4o``) -> an object
    or dict with ``prompt`` and ``completion`` in USD per 1M tokens; an unpriced model costs 0.
    ``max_cost``: USD that this command may spend on calls made, ``spent_before`` of it already
    spent by earlier stages of the command. Cached calls are counted but cost nothing.
    """

    def __init__(self, prices: dict[str, Any] | None = None, max_cost: float | None = None, spent_before: float = 0.0):
        self.prices, self.max_cost, self.spent_before = dict(prices or {}), max_cost, spent_before
        self.by_model: dict[str, dict[str, Any]] = {}
        self._warned: set[str] = set()

    def price(self, model: str) -> tuple[float, float]:
        p = self.prices.get(model)
        if p is None:
            return 0.0, 0.0
        return (p["prompt"], p["completion"]) if isinstance(p, dict) else (p.prompt, p.completion)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        prompt, completion = self.price(model)
        return (prompt_tokens * prompt + completion_tokens * completion) / 1e6

    @property
    def spent(self) -> float:
        """USD spent by this stage's calls made."""
        return sum(m["cost"] for m in self.by_model.values())

    def _row(self, model: str) -> dict[str, Any]:
        return self.by_model.setdefault(
            model, {"calls": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        )

    def record(self, model: str, completions: list[Completion], cached: bool) -> None:
        if not completions:
            return
        row = self._row(model)
        if cached:
            row["cached"] += len(completions)
            return
        row["calls"] += len(completions)
        prompt = sum(c.prompt_tokens for c in completions)
        completion = sum(c.completion_tokens for c in completions)
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
        row["cost"] += self.cost(model, prompt, completion)

    def check(self, model: str, requests: list[ChatRequest]) -> None:
        """Raise :class:`CostLimitReached` when ``requests`` could take the spending past max_cost."""
        if self.max_cost is None or not requests:
            return
        if model not in self.prices and model not in self._warned:
            self._warned.add(model)
            log.warning("max_cost is set but model %r has no price: its calls count as free", model)
        tokens = [estimate_tokens(r) for r in requests]
        batch = self.cost(model, sum(p for p, _ in tokens), sum(c for _, c in tokens))
        spent = self.spent_before + self.spent
        if batch and spent + batch > self.max_cost:
            raise CostLimitReached(
                f"max_cost reached: spent ${spent:.4f} of ${self.max_cost:.4f} and the next batch "
                f"({len(requests)} calls to {model}) could cost up to ${batch:.4f}; finished work is "
                "kept: rerun with a higher --max-cost to go on"
            )

    def figures(self) -> dict[str, Any]:
        """run.json's token and cost fields: ``tokens`` and ``cost`` of the calls made (a rerun
        served from the cache spends nothing), and ``by_model`` with the cached calls too."""
        rows = {m: dict(r, cost=round(r["cost"], 6)) for m, r in sorted(self.by_model.items())}
        return {
            "tokens": {
                "prompt": sum(r["prompt_tokens"] for r in rows.values()),
                "completion": sum(r["completion_tokens"] for r in rows.values()),
            },
            "cost": round(self.spent, 6),
            "by_model": rows,
        }


class CachedBackend(Backend):
    def __init__(self, backend: Backend, cache: Cache):
        self.inner, self.cache = backend, cache
        self.name, self.model = backend.name, backend.model
        self.meter = cache.meter if cache.meter is not None else Meter()
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
        self.meter.record(self.model, [c for c in out if c is not None], cached=True)
        if progress and len(requests) > len(todo):
            progress(len(requests) - len(todo))
        if todo:
            self.meter.check(self.model, [requests[i] for i in todo])
            fresh = self.inner.complete([requests[i] for i in todo], progress=progress)
            self.calls_made += len(todo)
            self.meter.record(self.model, fresh, cached=False)
            for i, c in zip(todo, fresh):
                out[i] = c
            self.cache.put_many([(keys[i], c.to_dict()) for i, c in zip(todo, fresh) if not c.error])
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.inner.close()
