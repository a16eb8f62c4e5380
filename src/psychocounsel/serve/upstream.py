"""An OpenAI-compatible server (vLLM's, typically, on a GPU) behind ``serve``: the same rows as the
local engine, each sent upstream as its own chat completion, so crisis routing, best-of-n, the
limits and the logs of ``serve`` stay in front of a faster decoder.

``serve --policy openai:MODEL --upstream-url http://127.0.0.1:8001/v1``: every row is one request
(``n`` 1, its own ``seed``), streamed upstream when the client streams. The upstream batches
requests across clients itself (vLLM's continuous batching), so this side only bounds how many are
in flight (``max_batch``). What the upstream says in an error is never logged or returned: only
its status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from concurrent.futures import Future

from ..errors import UserError
from .engine import Row, Sampled

log = logging.getLogger("psychocounsel.serve")


class UpstreamEngine:
    """What Completions asks of an engine: no tokenizer here, so prompt length and context are
    the upstream's to check (it answers 400), and token counts come from its ``usage``."""

    tok = None
    context = 10**9

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return []


class UpstreamBatcher:
    """Sends rows to the upstream from a worker thread's event loop, ``max_batch`` at a time."""

    def __init__(self, base_url: str, model: str, key_env: str, max_batch: int, timeout: float):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.models_url = base_url.rstrip("/") + "/models"
        self.model, self.timeout, self.max_batch = model, timeout, max_batch
        key = os.environ.get(key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._lock = threading.Lock()
        self.pending = self.batches = self.rows_done = self.peak_batch = self._active = 0
        self.row_seconds = 2.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="psychocounsel-upstream", daemon=True)
        self._thread.start()
        self._gate = asyncio.run_coroutine_threadsafe(self._make_gate(), self._loop).result()

    async def _make_gate(self):
        import httpx

        self._client = httpx.AsyncClient(timeout=self.timeout, headers=self._headers)
        return asyncio.Semaphore(self.max_batch)

    def check(self) -> None:
        """The upstream answers /models; a UserError naming its status otherwise."""
        import httpx

        try:
            r = httpx.get(self.models_url, headers=self._headers, timeout=10)
        except httpx.HTTPError as e:
            raise UserError(f"upstream {self.models_url} not reachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise UserError(f"upstream {self.models_url} answered HTTP {r.status_code}")

    def submit(self, rows: list[Row]) -> list[Future]:
        with self._lock:
            self.pending += len(rows)
            self.batches += 1
        for r in rows:
            asyncio.run_coroutine_threadsafe(self._run(r), self._loop)
        return [r.future for r in rows]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _body(self, row: Row) -> dict:
        body = {
            "model": self.model,
            "messages": row.messages,
            "max_tokens": row.max_tokens,
            "temperature": row.temperature,
            "top_p": row.top_p,
        }
        if row.seed is not None:
            body["seed"] = row.seed
        if row.stop:
            body["stop"] = list(row.stop)
        if row.top_logprobs is not None and row.on_text is None:
            body.update(logprobs=True, top_logprobs=row.top_logprobs)
        if row.on_text is not None:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    async def _run(self, row: Row) -> None:
        async with self._gate:
            start = time.perf_counter()
            with self._lock:
                self._active += 1
                self.peak_batch = max(self.peak_batch, self._active)
            try:
                result = await (self._stream(row) if row.on_text is not None else self._whole(row))
            except Exception as e:  # noqa: BLE001 - the row fails; the status only, never the body
                result = None
                log.error("upstream request failed: %s", str(e)[:120] if isinstance(e, UserError) else type(e).__name__)
                if not row.future.done():
                    row.future.set_exception(e)
            with self._lock:
                self._active -= 1
                self.pending -= 1
                self.rows_done += 1
                if result is not None:
                    self.row_seconds = 0.9 * self.row_seconds + 0.1 * (time.perf_counter() - start)
            if result is not None and not row.future.done():
                row.future.set_result(result)

    async def _whole(self, row: Row) -> Sampled:
        r = await self._client.post(self.url, json=self._body(row))
        if r.status_code != 200:
            raise UserError(f"upstream answered HTTP {r.status_code}")
        data = r.json()
        choice, usage = data["choices"][0], data.get("usage") or {}
        content = (choice.get("logprobs") or {}).get("content")
        return Sampled(
            (choice["message"].get("content") or "").strip(),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            choice.get("finish_reason") or "stop",
            content if row.top_logprobs is not None else None,
        )

    async def _stream(self, row: Row) -> Sampled:
        text, finish, usage = [], "stop", {}
        async with self._client.stream("POST", self.url, json=self._body(row)) as r:
            if r.status_code != 200:
                raise UserError(f"upstream answered HTTP {r.status_code}")
            async for line in r.aiter_lines():
                if row.cancelled.is_set():
                    finish = "cancelled"
                    break
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        text.append(piece)
                        row.on_text(piece)
                    finish = choice.get("finish_reason") or finish
        return Sampled(
            "".join(text).strip(),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            finish,
            None,
        )
