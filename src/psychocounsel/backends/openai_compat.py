"""Backend for any OpenAI-compatible ``/chat/completions`` server (OpenAI, vLLM, Ollama, llama.cpp).

Requests run concurrently on one ``httpx.AsyncClient`` per :meth:`OpenAIBackend.complete` call,
bounded by ``BackendConfig.concurrency``. Transient failures (429, 5xx, timeouts, dropped
connections, replies that are not a chat completion) are retried with exponential backoff;
client errors (400, 401, 404, ...) are not, because resending the same request cannot fix them.
A request that fails for good becomes a ``Completion`` with ``error`` set; it never raises.

The API key is read from the environment variable *named* by ``api_key_env`` and is kept out of
``identity()``, completions and error messages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import time
from typing import Any, Callable
from urllib.parse import urlparse

import httpx

from ..config import BackendConfig
from ..errors import UserError
from .base import Backend, ChatRequest, Completion

DEFAULT_BASE_URL = "https://api.openai.com/v1"
REASON_MAX_CHARS = 200  # enough for a server's error message, short enough for one log line


class _Retryable(Exception):
    """A failed attempt worth repeating. ``kind`` names the failure ("HTTP 500", "timeout");
    ``retry_after`` is the server's requested wait in seconds, if it sent one."""

    def __init__(self, kind: str, detail: str = "", retry_after: float | None = None):
        super().__init__(kind)
        self.kind, self.detail, self.retry_after = kind, detail, retry_after


class _Fatal(Exception):
    """A failed attempt that retrying cannot fix (HTTP 4xx other than 429)."""


def resolve_base_url(configured: str | None) -> str:
    """``configured`` if set, else ``$OPENAI_BASE_URL``, else OpenAI's; without trailing slash.

    >>> resolve_base_url("http://localhost:8000/v1/")
    'http://localhost:8000/v1'
    """
    url = configured or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    return url.rstrip("/")


def first_token_logprobs(choice: dict[str, Any]) -> dict[str, float] | None:
    """Map each candidate for the first generated token to its logprob.

    Tokens are stripped of surrounding whitespace (" 4" and "4" both mean the score 4); when two
    candidates strip to the same string the larger logprob is kept.

    >>> first_token_logprobs({"logprobs": {"content": [{"top_logprobs": [
    ...     {"token": " 4", "logprob": -0.1}, {"token": "4", "logprob": -2.0},
    ...     {"token": "3", "logprob": -3.0}]}]}})
    {'4': -0.1, '3': -3.0}
    """
    try:
        candidates = choice["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(candidates, list):
        return None
    out: dict[str, float] = {}
    for cand in candidates:
        try:
            token, logprob = str(cand["token"]).strip(), float(cand["logprob"])
        except (KeyError, TypeError, ValueError):
            continue
        if token not in out or logprob > out[token]:
            out[token] = logprob
    return out


def _short_reason(response: httpx.Response) -> str:
    """The server's error message (``error.message`` in OpenAI's format, else the raw body)."""
    text = response.text
    try:
        err = json.loads(text).get("error")
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif isinstance(err, str):
            text = err
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:REASON_MAX_CHARS] or (response.reason_phrase or "")


def _parse_retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header; None if absent or an HTTP date (not worth parsing:
    OpenAI, vLLM and the common proxies send seconds)."""
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds is not None else None


_CONFIG_ERRORS = ("HTTP 401", "HTTP 403", "HTTP 404")  # bad key, no access, unknown model or URL


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible HTTP server.

    ``retry_base_s`` (default 1 s) is the first backoff delay; attempt ``n`` waits
    ``min(retry_base_s * 2**n, retry_cap_s)`` scaled by a random factor in [0.5, 1] so that many
    clients rate-limited together do not retry in lockstep. A ``Retry-After`` header on 429/503
    replaces that delay, capped at ``retry_after_cap_s``. Tests set ``retry_base_s`` to ~0.01.
    """

    name = "openai"
    retry_base_s: float = 1.0
    retry_cap_s: float = 30.0
    retry_after_cap_s: float = 60.0  # a server asking for minutes is better reported than obeyed

    def __init__(self, model: str, cfg: BackendConfig):
        self.model = model
        self.cfg = cfg
        self.base_url = resolve_base_url(cfg.base_url)
        self._api_key = os.environ.get(cfg.api_key_env) or None
        if self._api_key is None and urlparse(self.base_url).hostname == "api.openai.com":
            raise UserError(
                f"set the environment variable {cfg.api_key_env} (named by api_key_env) to your "
                f"OpenAI API key, or set base_url to a local OpenAI-compatible server"
            )

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url}

    def complete(
        self, requests: list[ChatRequest], progress: Callable[[int], Any] | None = None
    ) -> list[Completion]:
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            results = asyncio.run(self.acomplete(requests, progress))
        else:
            # Called from inside a running event loop (a notebook, an async server): asyncio.run
            # cannot nest, so run our own loop in a worker thread and block on it.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                results = pool.submit(asyncio.run, self.acomplete(requests, progress)).result()
        # A wrong key, model name or URL fails every request alike: stop with one clear error
        # instead of recording a failed row per request.
        errors = {c.error for c in results}
        if len(errors) == 1 and next(iter(errors)).startswith(_CONFIG_ERRORS):
            raise UserError(f"{self.base_url} model {self.model!r}: {next(iter(errors))}")
        return results

    async def acomplete(
        self, requests: list[ChatRequest], progress: Callable[[int], Any] | None = None
    ) -> list[Completion]:
        """The async form of :meth:`complete`, for callers that already run an event loop."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        n = self.cfg.concurrency
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        semaphore = asyncio.Semaphore(n)

        async with httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(self.cfg.timeout), limits=limits
        ) as client:

            async def one(request: ChatRequest) -> Completion:
                # The slot is held through backoff sleeps too: a rate-limited server is not
                # helped by other requests taking the freed slot.
                async with semaphore:
                    completion = await self._with_retries(client, request)
                if progress is not None:
                    progress(1)
                return completion

            return list(await asyncio.gather(*(one(r) for r in requests)))

    def close(self) -> None:
        """Nothing to release: each ``complete`` call opens and closes its own client."""

    # -- one request --------------------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body: model, messages and the request's params (already in OpenAI names).

        ``logprobs``/``top_logprobs`` are sent only when ``logprobs`` is true, since OpenAI
        rejects ``top_logprobs`` on its own; params set to None are left out.
        """
        body: dict[str, Any] = {"model": self.model, "messages": request.messages}
        params = {k: v for k, v in request.params.items() if v is not None}
        if not params.get("logprobs"):
            params.pop("logprobs", None)
            params.pop("top_logprobs", None)
        body.update(params)
        return body

    def retry_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap_s)
        backoff = min(self.retry_base_s * 2**attempt, self.retry_cap_s)
        return backoff * random.uniform(0.5, 1.0)

    async def _with_retries(self, client: httpx.AsyncClient, request: ChatRequest) -> Completion:
        attempts = self.cfg.max_retries + 1
        last: _Retryable | None = None
        for attempt in range(attempts):
            if last is not None:
                await asyncio.sleep(self.retry_delay(attempt - 1, last.retry_after))
            try:
                return await self._attempt(client, request)
            except _Fatal as e:
                return self._failed(request, str(e))
            except _Retryable as e:
                last = e
        assert last is not None
        detail = f": {last.detail}" if last.detail else ""
        return self._failed(request, f"{last.kind} after {attempts} attempts{detail}")

    async def _attempt(self, client: httpx.AsyncClient, request: ChatRequest) -> Completion:
        """One POST. Returns the completion or raises ``_Retryable`` / ``_Fatal``."""
        url = f"{self.base_url}/chat/completions"
        start = time.perf_counter()
        try:
            # httpx's timeout bounds each phase (connect, each read); wait_for bounds the total,
            # so a server trickling bytes cannot hold a request past cfg.timeout.
            response = await asyncio.wait_for(
                client.post(url, json=self.request_body(request)), self.cfg.timeout
            )
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _Retryable("timeout", f"no reply within {self.cfg.timeout:g} s") from None
        except httpx.RequestError as e:
            raise _Retryable("connection error", type(e).__name__) from None
        latency = time.perf_counter() - start

        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = _parse_retry_after(response) if status in (429, 503) else None
            raise _Retryable(f"HTTP {status}", self._redact(_short_reason(response)), retry_after)
        if status >= 400:
            raise _Fatal(f"HTTP {status}: {self._redact(_short_reason(response))}")
        return self._parse(request, response, latency)

    def _parse(self, request: ChatRequest, response: httpx.Response, latency: float) -> Completion:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable("malformed reply", "no choices[0].message.content") from None
        if not isinstance(text, str):
            raise _Retryable("malformed reply", "choices[0].message.content is not a string")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return Completion(
            text=text,
            model=str(data.get("model") or self.model),
            params=dict(request.params),
            latency_s=latency,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            top_logprobs=first_token_logprobs(choice) if request.params.get("logprobs") else None,
            finish_reason=str(choice.get("finish_reason") or ""),
        )

    def _failed(self, request: ChatRequest, error: str) -> Completion:
        return Completion(text="", model=self.model, params=dict(request.params), error=error)

    def _redact(self, text: str) -> str:
        """Servers sometimes echo the key they rejected; keep it out of errors and logs."""
        return text.replace(self._api_key, "***") if self._api_key else text
