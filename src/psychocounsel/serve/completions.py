"""``/v1/chat/completions``: the crisis screen first, then the policy through the batcher,
best-of-n with the reward model, and the answer whole or streamed as server-sent events.

- crisis: the crisis message is the answer (the policy is not called);
- concern: the policy's answer, then the resources;
- best-of: ``best_of`` candidates (``n`` or more) are sampled; the ``n`` with the highest rewards
  are returned, each with its ``reward``, and every candidate's reward in ``best_of.rewards``.
  ``usage.completion_tokens`` counts every candidate: what was spent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from . import schemas
from .engine import Row, Sampled
from .service import ApiError, Service

log = logging.getLogger("psychocounsel.serve")


@dataclass
class _Stream:
    """One streamed answer in the making."""

    rid: str
    created: int
    start: float
    decision: Any
    prompt: list[int]
    rows: list[Row]
    queue: asyncio.Queue
    incremental: bool  # deltas as they come; False for best-of, which streams the winner once chosen


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class Completions:
    def __init__(self, service: Service):
        self.service = service
        self.cfg = service.cfg

    # -- shared steps ----------------------------------------------------------------------------

    def _plan(self, req: schemas.ChatCompletionRequest) -> int:
        """How many candidates to sample (best-of-n when the request or the server asks)."""
        k = max(req.best_of or self.cfg.best_of, req.n)
        if k > req.n and self.service.rm is None:
            raise ApiError(400, "best_of needs a reward model (start serve with --reward-model)")
        return k

    def _rows(self, req: schemas.ChatCompletionRequest, prompt: list[int], k: int, sinks=None) -> list[Row]:
        engine = self.service.engine
        if len(prompt) >= engine.context:
            raise ApiError(400, f"the conversation is {len(prompt)} tokens; the model reads at most {engine.context}")
        max_tokens = min(
            req.max_completion_tokens or req.max_tokens or self.cfg.max_tokens, engine.context - len(prompt)
        )
        top = (req.top_logprobs or 0) if req.logprobs else None
        messages = req.dialogue()
        return [
            Row(
                prompt,
                max_tokens,
                req.temperature,
                req.top_p,
                None if req.seed is None else req.seed * 1_000_003 + i,  # each choice its own stream
                req.stops(),
                top,
                on_text=sinks[i] if sinks else None,
                messages=messages,
            )
            for i in range(k)
        ]

    async def _gather(self, rows: list[Row]) -> list[Sampled]:
        futures = [asyncio.wrap_future(f) for f in self.service.batcher.submit(rows)]
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), self.cfg.request_timeout)
        except TimeoutError:
            raise ApiError(504, f"generation took over {self.cfg.request_timeout:g} s", "timeout_error") from None
        finally:
            for r in rows:
                r.cancelled.set()  # no-op for finished rows; frees the batch of abandoned ones

    async def _best(self, messages, sampled: list[Sampled], n: int) -> tuple[list[Sampled], list[float] | None]:
        if len(sampled) == n:
            return sampled, None
        rewards = await self.service.score([messages] * len(sampled), [s.text for s in sampled])
        order = sorted(range(len(sampled)), key=lambda i: -rewards[i])[:n]
        return [sampled[i] for i in order], rewards

    def _log(self, rid: str, decision, rows: int, prompt: int, completion: int, start: float) -> None:
        log.info(
            "%s: safety=%s (%.0f ms), sequences=%d, prompt=%d, completion=%d tokens, %.2f s",
            rid, decision.level, decision.latency_ms, rows, prompt, completion, time.perf_counter() - start,
        )  # fmt: skip

    def _crisis_choices(self, decision, n: int) -> tuple[list[str], int]:
        text = self.service.router.crisis_reply(decision)
        tok = self.service.engine.tok  # None behind an upstream server: nothing was generated to count
        return [text] * n, len(tok(text, add_special_tokens=False)["input_ids"]) * n if tok else 0

    # -- whole answers ---------------------------------------------------------------------------

    async def complete(self, req: schemas.ChatCompletionRequest) -> dict[str, Any]:
        start, rid = time.perf_counter(), schemas.completion_id()
        messages = req.dialogue()
        decision = await self.service.screen(messages, req.locale)
        prompt = self.service.engine.prompt_ids(messages)
        extra: dict[str, Any] = {"safety": decision.to_dict()}
        if decision.level == "crisis":
            texts, spent = self._crisis_choices(decision, req.n)
            choices = [self._choice(i, t, "stop") for i, t in enumerate(texts)]
            self._log(rid, decision, 0, len(prompt), spent, start)
            return schemas.completion_body(rid, self.cfg.model_name, choices, schemas.usage(len(prompt), spent), extra)
        k = self._plan(req)
        rows = self._rows(req, prompt, k)
        self.service.admit(k)
        sampled = await self._gather(rows)
        spent = sum(s.completion_tokens for s in sampled)
        chosen, rewards = await self._best(messages, sampled, req.n)
        suffix = self.service.router.concern_suffix(decision) if decision.level == "concern" else ""
        choices = []
        for i, s in enumerate(chosen):
            choice = self._choice(i, s.text + suffix, s.finish_reason, s.logprobs if req.logprobs else None)
            if rewards is not None:
                choice["reward"] = rewards[sampled.index(s)]
            choices.append(choice)
        if rewards is not None:
            extra["best_of"] = {"n": k, "rewards": rewards}
        read = len(prompt) or max(s.prompt_tokens for s in sampled)  # an upstream counts its own prompt
        self._log(rid, decision, k, read, spent, start)
        return schemas.completion_body(rid, self.cfg.model_name, choices, schemas.usage(read, spent), extra)

    @staticmethod
    def _choice(i: int, text: str, finish: str, logprobs: list | None = None) -> dict[str, Any]:
        return {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": logprobs} if logprobs is not None else None,
            "finish_reason": "stop" if finish == "cancelled" else finish,
        }

    # -- streamed answers ------------------------------------------------------------------------

    async def stream(self, req: schemas.ChatCompletionRequest) -> AsyncIterator[str]:
        """Server-sent events: a first chunk with the role and ``safety``, content deltas, one
        finishing chunk per choice, the usage chunk when ``stream_options.include_usage``, [DONE].
        Validation happens before the first byte, so a bad request is still an HTTP error."""
        start, rid, created = time.perf_counter(), schemas.completion_id(), int(time.time())
        messages = req.dialogue()
        decision = await self.service.screen(messages, req.locale)
        prompt = self.service.engine.prompt_ids(messages)
        k = req.n if decision.level == "crisis" else self._plan(req)
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        incremental = decision.level != "crisis" and k == req.n  # best-of streams the winner once chosen
        sinks = [(lambda text, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, text))) for i in range(k)]
        rows = [] if decision.level == "crisis" else self._rows(req, prompt, k, sinks if incremental else None)
        if rows:
            self.service.admit(k)
        return self._events(req, _Stream(rid, created, start, decision, prompt, rows, queue, incremental))

    async def _events(self, req: schemas.ChatCompletionRequest, st: _Stream):
        model, n = self.cfg.model_name, req.n
        rid, created, start, decision, prompt = st.rid, st.created, st.start, st.decision, st.prompt
        rows, queue, incremental = st.rows, st.queue, st.incremental

        def chunk(choices, **extra):
            return _sse(schemas.chunk_body(rid, model, created, choices, **extra))

        def delta(i, text):
            return chunk([{"index": i, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])

        def finish(i, reason):
            reason = "stop" if reason == "cancelled" else reason
            return chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}])

        opening = {"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        suffix = self.service.router.concern_suffix(decision) if decision.level == "concern" else ""
        spent, read = 0, len(prompt)
        try:
            yield chunk([{"index": i, **opening} for i in range(n)], safety=decision.to_dict())
            if decision.level == "crisis":
                texts, spent = self._crisis_choices(decision, n)
                for i, t in enumerate(texts):
                    yield delta(i, t)
                    yield finish(i, "stop")
            elif incremental:
                async for event in self._deltas(rows, queue, suffix, delta, finish):
                    if isinstance(event, Sampled):
                        spent, read = spent + event.completion_tokens, max(read, event.prompt_tokens)
                    else:
                        yield event
            else:
                sampled = await self._gather(rows)
                spent, read = sum(s.completion_tokens for s in sampled), max(read, *(s.prompt_tokens for s in sampled))
                chosen, rewards = await self._best(req.dialogue(), sampled, n)
                for i, s in enumerate(chosen):
                    yield delta(i, s.text + suffix)
                    yield finish(i, s.finish_reason)
                yield chunk([], best_of={"n": len(rows), "rewards": rewards})
            if req.stream_options and req.stream_options.include_usage:
                yield chunk([], usage=schemas.usage(read, spent))
            yield _sse("[DONE]")
        except ApiError as e:  # after the first byte the status is sent: the error goes in the stream
            yield _sse(schemas.error_body(e.message, e.kind, e.code))
            yield _sse("[DONE]")
        finally:
            for r in rows:
                r.cancelled.set()  # a client that went away stops using the batch
            self._log(rid, decision, len(rows), read, spent, start)

    async def _deltas(self, rows: list[Row], queue: asyncio.Queue, suffix: str, delta, finish):
        """Content deltas as rows produce them, and a row's finishing chunk when it is done. Also
        yields each finished row's Sampled, for the usage chunk."""
        loop = asyncio.get_running_loop()
        futures = self.service.batcher.submit(rows)
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _f, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, None)))
        deadline = loop.time() + self.cfg.request_timeout
        left = len(rows)
        while left:
            try:
                i, text = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise ApiError(504, f"generation took over {self.cfg.request_timeout:g} s", "timeout_error") from None
            if text is not None:
                yield delta(i, text)
                continue
            left -= 1
            if futures[i].cancelled():
                yield finish(i, "cancelled")
                continue
            if futures[i].exception() is not None:
                raise ApiError(500, "generation failed")
            done = futures[i].result()
            yield done  # for the usage chunk
            if suffix:
                yield delta(i, suffix)
            yield finish(i, done.finish_reason)
