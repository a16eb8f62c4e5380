"""Backend for any OpenAI-compatible ``/chat/completions`` server (OpenAI, vLLM, Ollama, llama.cpp).

Requests run concurrently per :meth:`OpenAIBackend.complete` call, on ``httpx.AsyncClient``s of
at most ``POOL`` connections each, bounded by ``BackendConfig.concurrency``. Transient failures
(429, 5xx, timeouts, dropped connections, replies that are not a chat completion) are retried with exponential backoff;
client errors (400, 401, 404, ...) are not, because resending the same request cannot fix them.
A request that fails for good becomes a ``Completion`` with ``error`` set; it never raises.

Replies are bounded: ``cfg.timeout`` bounds each request as a whole, body included, and the body
is read as a stream of at most ``BackendConfig.max_response_bytes`` (4 MiB by default). A reply
that declares or sends more fails that call at once, unretried (the server would do it again),
and memory never holds more than the cap. Compression is refused (``Accept-Encoding: identity``)
so that the cap counts what is actually held.

Error bodies are never read, logged or stored: they may echo the request (FastAPI's 422 quotes
the client's speech text) or the key. A failed call's ``error`` holds only the HTTP status or a
fixed phrase, plus the server's request id when the reply has one (sanitised, for support
tickets), e.g. ``HTTP 422 (request id req_abc)`` or ``HTTP 500 after 6 attempts``. One exception,
read and dropped: a 400 to a request that carried ``response_format`` (structured outputs) has up
to 64 KiB of its body parsed for whether the server's error names response_format; if it does, the
error is the fixed ``HTTP 400: response_format rejected``, so a judge can fall back to a plain
prompt (judge/llm.py StructuredOutput). Nothing of that body is kept.

The API key is read from the environment variable *named* by ``api_key_env`` and is kept out of
``identity()``, completions and error messages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

import httpx

from ..config import BackendConfig
from ..errors import UserError
from .base import Backend, ChatRequest, Completion

DEFAULT_BASE_URL = "https://api.openai.com/v1"
POOL = 32  # connections per HTTP client; more clients above it (see acomplete)
# Where OpenAI, vLLM/FastAPI middlewares, Azure and AWS gateways put the id of a request.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "openai-request-id", "x-amzn-requestid")
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # the id is server-controlled text
RESPONSE_FORMAT_REJECTED = "response_format rejected"  # in a Completion.error: the server refused the schema
_ERROR_PEEK_BYTES = 64 * 1024  # OpenAI's and vLLM's 400 bodies are a few hundred bytes


class _Retryable(Exception):
    """A failed attempt worth repeating. ``kind`` names the failure ("HTTP 500", "timeout");
    ``retry_after`` is the server's requested wait in seconds, if it sent one."""

    def __init__(self, kind: str, detail: str = "", retry_after: float | None = None, request_id: str = ""):
        super().__init__(kind)
        self.kind, self.detail, self.retry_after = kind, detail, retry_after
        self.request_id = request_id


class _Fatal(Exception):
    """A failed attempt that retrying cannot fix (HTTP 4xx other than 429, an oversized reply)."""


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


def request_id_of(headers: Mapping[str, str]) -> str:
    """The server's id for a request, from the first of ``REQUEST_ID_HEADERS`` it sent; "" if none.

    An id that is not 1-64 characters of ``[A-Za-z0-9._:-]`` is dropped, not cleaned: the header
    is the server's text, and a cleaned echo of the request would still be the request.

    >>> request_id_of(httpx.Headers({"X-Request-ID": "req_abc"}))
    'req_abc'
    >>> request_id_of(httpx.Headers({"x-request-id": "I feel low", "openai-request-id": "r-1"}))
    'r-1'
    >>> request_id_of(httpx.Headers({"request-id": "x" * 65}))
    ''
    """
    for name in REQUEST_ID_HEADERS:
        value = (headers.get(name) or "").strip()
        if _SAFE_REQUEST_ID.fullmatch(value):
            return value
    return ""


def names_response_format(body: bytes) -> bool:
    """Whether an error body says the server refused ``response_format``: OpenAI's
    ``{"error": {"param": "response_format", "message": ...}}`` or vLLM's top-level ``message``.
    Only the error's own fields are read, never an echo of the request (which holds the key too).

    >>> names_response_format(b'{"error": {"message": "Invalid schema", "param": "response_format"}}')
    True
    >>> names_response_format(b'{"object": "error", "message": "json_schema is not supported"}')
    True
    >>> names_response_format(b'{"detail": [{"input": {"response_format": {}}}]}')
    False
    """
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    error = data.get("error") if isinstance(data.get("error"), dict) else data
    fields = [error.get(k) for k in ("param", "message", "code")]
    text = " ".join(f for f in fields if isinstance(f, str)).lower()
    return "response_format" in text or "json_schema" in text


def _with_id(text: str, request_id: str) -> str:
    return f"{text} (request id {request_id})" if request_id else text


def format_bytes(n: int) -> str:
    """``n`` in the largest binary unit that divides it exactly, for error messages.

    >>> format_bytes(4 * 1024 * 1024), format_bytes(65536), format_bytes(1500)
    ('4 MiB', '64 KiB', '1500 bytes')
    """
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _declared_length(headers: Mapping[str, str]) -> int:
    """The ``Content-Length`` the server announced; 0 if none (or not a number)."""
    try:
        return int(headers.get("content-length") or 0)
    except ValueError:
        return 0


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header; None if absent or an HTTP date (not worth parsing:
    OpenAI, vLLM and the common proxies send seconds)."""
    value = headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds is not None else None


# A batch failing alike with one of these is a setup mistake: bad key, no access, unknown model/URL.
_CONFIG_HINTS = {
    "HTTP 401": "the server rejected the API key (from {env})",
    "HTTP 403": "the API key (from {env}) has no access to this model",
    "HTTP 404": "the server does not know this model, or base_url is not an OpenAI-compatible /v1 URL",
}


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

    def complete(self, requests: list[ChatRequest], progress: Callable[[int], Any] | None = None) -> list[Completion]:
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
        failure = self._config_failure(results)
        if failure:
            raise UserError(failure)
        return results

    def _config_failure(self, results: list[Completion]) -> str:
        """A wrong key, model name or URL fails every request alike: one clear error instead of a
        failed row per request. "" unless every request failed with the same 401/403/404 (request
        ids differ per request, so they are not compared)."""
        kinds = {c.error.split(" (request id ")[0] for c in results}
        kind = kinds.pop() if len(kinds) == 1 else ""
        if kind not in _CONFIG_HINTS:
            return ""
        hint = _CONFIG_HINTS[kind].format(env=self.cfg.api_key_env)
        return f"{self.base_url} model {self.model!r}: {results[0].error}: {hint}"

    async def acomplete(
        self, requests: list[ChatRequest], progress: Callable[[int], Any] | None = None
    ) -> list[Completion]:
        """The async form of :meth:`complete`, for callers that already run an event loop."""
        from contextlib import AsyncExitStack

        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        n = self.cfg.concurrency
        semaphore = asyncio.Semaphore(n)
        # identity: a compressed body could expand far past the cap within one decoded chunk.
        headers["Accept-Encoding"] = "identity"
        async with AsyncExitStack() as stack:
            # At most POOL connections per client: httpcore 1.0's pool bookkeeping grows with the
            # square of its connections (encode/httpcore#1035), so one client of 128 connections
            # ran at 0.10 of the ideal rate where four of 32 do not (benchmarks/api_throughput.py).
            sizes = [min(POOL, n - start) for start in range(0, n, POOL)]
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        headers=headers,
                        timeout=httpx.Timeout(self.cfg.timeout),
                        limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                    )
                )
                for size in sizes
            ]

            async def one(i: int, request: ChatRequest) -> Completion:
                # The slot is held through backoff sleeps too: a rate-limited server is not
                # helped by other requests taking the freed slot.
                async with semaphore:
                    completion = await self._with_retries(clients[i % len(clients)], request)
                if progress is not None:
                    progress(1)
                return completion

            return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

    def close(self) -> None:
        """Nothing to release: each ``complete`` call opens and closes its own client."""

    # -- one request --------------------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body: model, messages and the request's params (already in OpenAI names).

        ``logprobs``/``top_logprobs`` are sent only when ``logprobs`` is true, since OpenAI
        rejects ``top_logprobs`` on its own; params set to None are left out.
        ``response_format`` (a judge's JSON schema, structured outputs) goes as it is.
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
        return self._failed(request, _with_id(f"{last.kind} after {attempts} attempts{detail}", last.request_id))

    async def _attempt(self, client: httpx.AsyncClient, request: ChatRequest) -> Completion:
        """One POST. Returns the completion or raises ``_Retryable`` / ``_Fatal``."""
        start = time.perf_counter()
        try:
            # httpx's timeout bounds each phase (connect, each read); wait_for bounds the total,
            # body included, so a server trickling bytes cannot hold a request past cfg.timeout.
            status, headers, body = await asyncio.wait_for(self._post(client, request), self.cfg.timeout)
        except (TimeoutError, httpx.TimeoutException):
            raise _Retryable("timeout", f"no reply within {self.cfg.timeout:g} s") from None
        except httpx.RequestError as e:
            raise _Retryable("connection error", type(e).__name__) from None
        latency = time.perf_counter() - start

        request_id = self._request_id(headers)
        if status == 429 or status >= 500:
            retry_after = _parse_retry_after(headers) if status in (429, 503) else None
            raise _Retryable(f"HTTP {status}", retry_after=retry_after, request_id=request_id)
        if status == 400 and names_response_format(body):  # body is read only for these (see _post)
            raise _Fatal(_with_id(f"HTTP 400: {RESPONSE_FORMAT_REJECTED}", request_id))
        if status >= 400:
            raise _Fatal(_with_id(f"HTTP {status}", request_id))
        return self._parse(request, body, latency, request_id)

    async def _post(self, client: httpx.AsyncClient, request: ChatRequest) -> tuple[int, httpx.Headers, bytes]:
        """Send the request and read the reply: status, headers and at most
        ``cfg.max_response_bytes`` of body. An error reply's body is not read, except the first
        64 KiB of a 400 to a request with ``response_format`` (names_response_format)."""
        cap = self.cfg.max_response_bytes
        url = f"{self.base_url}/chat/completions"
        async with client.stream("POST", url, json=self.request_body(request)) as response:
            status, headers = response.status_code, response.headers
            if status == 400 and "response_format" in request.params:
                peek = bytearray()
                async for chunk in response.aiter_bytes():
                    peek += chunk
                    if len(peek) >= _ERROR_PEEK_BYTES:
                        break
                return status, headers, bytes(peek[:_ERROR_PEEK_BYTES])
            if status >= 400:
                return status, headers, b""
            request_id = self._request_id(headers)
            if headers.get("content-encoding", "identity").strip().lower() != "identity":
                raise _Fatal(_with_id("compressed reply, though Accept-Encoding was identity", request_id))
            over_cap = _with_id(f"reply over the {format_bytes(cap)} cap (max_response_bytes)", request_id)
            if _declared_length(headers) > cap:
                raise _Fatal(over_cap)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                if len(body) + len(chunk) > cap:
                    raise _Fatal(over_cap)  # leaving the block drops the connection mid-body
                body += chunk
            return status, headers, bytes(body)

    def _parse(self, request: ChatRequest, body: bytes, latency: float, request_id: str) -> Completion:
        # The details name what is missing, never quote the body (it may echo the request).
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable("malformed reply", "no choices[0].message.content", request_id=request_id) from None
        if not isinstance(text, str):
            raise _Retryable("malformed reply", "choices[0].message.content is not a string", request_id=request_id)
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

    def _request_id(self, headers: Mapping[str, str]) -> str:
        """:func:`request_id_of`, dropped if it holds the API key (the only server text kept in
        errors, so the only way a server could echo the key into them)."""
        request_id = request_id_of(headers)
        return "" if self._api_key and self._api_key in request_id else request_id
