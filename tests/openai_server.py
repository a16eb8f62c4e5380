"""A scripted OpenAI-compatible server on 127.0.0.1 for tests (stdlib only, no network).

Usage::

    from openai_server import FakeOpenAI, Reply, openai_server  # noqa: F401  (fixture)

    def test_x(openai_server):
        openai_server.push(Reply.error(500), Reply.ok("hi"))   # first two requests, in order
        ... point a backend at openai_server.url ...
        assert len(openai_server.requests) == 2

Requests beyond the scripted ones go to ``openai_server.handler`` (a function of the request
body returning a ``Reply``); the default echoes ``"echo: <last user message>"`` with usage and,
when asked for, logprobs. Every request is recorded with its headers and JSON body, and the
server tracks the most requests it had in flight at once.

Streamed replies (``Reply.endless``, ``Reply.sized``) send their body piece by piece, generated
as they go, and stop when the client hangs up: ``hangups`` counts replies cut short that way and
``streamed`` holds the bytes each streamed reply got out.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    """What the server sends: ``body`` (dict -> JSON, str/bytes sent as is) after ``delay`` s.

    With ``chunks`` set the body is instead streamed from ``chunks()`` as it is produced: with a
    ``Content-Length`` of ``length`` when given, else with chunked transfer encoding.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunks: Callable[[], Iterable[bytes]] | None = None
    length: int | None = None

    @classmethod
    def ok(cls, text: str, model: str = "fake-model", logprobs: list | None = None, **kw) -> Reply:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        if logprobs is not None:
            choice["logprobs"] = {
                "content": [
                    {
                        "token": logprobs[0][0],
                        "logprob": logprobs[0][1],
                        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in logprobs],
                    }
                ]
            }
        body = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(text.split())},
        }
        return cls(200, body, **kw)

    @classmethod
    def error(cls, status: int, message: str = "", retry_after: str | None = None) -> Reply:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = {"error": {"message": message or f"status {status}", "type": "test"}}
        return cls(status, body, headers)

    @classmethod
    def endless(cls, piece: int = 16 * 1024, give_up_s: float = 60.0) -> Reply:
        """A 200 whose JSON body never ends (chunked); the server gives up after ``give_up_s`` so
        that a client that never hangs up cannot keep a thread busy forever."""

        def chunks() -> Iterator[bytes]:
            yield b'{"choices": [{"message": {"role": "assistant", "content": "'
            deadline = time.monotonic() + give_up_s
            while time.monotonic() < deadline:
                yield b"a" * piece

        return cls(200, chunks=chunks)

    @classmethod
    def sized(cls, size: int, declare_length: bool = True, piece: int = 64 * 1024) -> Reply:
        """A 200 with a ``size``-byte body, generated piece by piece (never held whole), announced
        by ``Content-Length`` when ``declare_length``, else sent chunked."""

        def chunks() -> Iterator[bytes]:
            for start in range(0, size, piece):
                yield b" " * min(piece, size - start)

        return cls(200, chunks=chunks, length=size if declare_length else None)

    @classmethod
    def fastapi_422(cls, request: Any, request_id: str | None = None) -> Reply:
        """A FastAPI/pydantic validation error, which echoes the whole request back as ``input``."""
        headers = {"x-request-id": request_id} if request_id is not None else {}
        detail = [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": request}]
        return cls(422, {"detail": detail}, headers)

    @classmethod
    def schema_rejected(cls, vllm: bool = False) -> Reply:
        """A 400 refusing structured outputs: OpenAI's form (``param``) or vLLM's (top-level message)."""
        if vllm:
            return cls(400, {"object": "error", "message": "json_schema is not supported", "code": 400})
        error = {"message": "Invalid parameter.", "type": "invalid_request_error", "param": "response_format"}
        return cls(400, {"error": error})

    @classmethod
    def malformed(cls) -> Reply:
        return cls(200, "{this is not json", {"Content-Type": "application/json"})

    @classmethod
    def missing_choices(cls) -> Reply:
        return cls(200, {"id": "chatcmpl-test", "object": "chat.completion", "choices": []})


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


def prompt_of(body: dict[str, Any]) -> str:
    """The last message's text: the prompt a judge was sent."""
    return body["messages"][-1]["content"]


def echo(body: dict[str, Any]) -> Reply:
    """Default handler: answer ``echo: <last user message>``; logprobs ranking "4" over "3"."""
    last = next((m["content"] for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")
    logprobs = [(" 4", -0.25), ("4", -1.5), ("3", -1.75)] if body.get("logprobs") else None
    return Reply.ok(f"echo: {last}", model=body.get("model", "fake-model"), logprobs=logprobs)


def without_structured_outputs(handler: Callable[[dict[str, Any]], Reply]) -> Callable[[dict[str, Any]], Reply]:
    """``handler`` behind a server that refuses ``response_format`` (HTTP 400) and answers the rest."""

    def serve(body: dict[str, Any]) -> Reply:
        return Reply.schema_rejected() if "response_format" in body else handler(body)

    return serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # slow-reply threads may still be sleeping at shutdown; don't wait


class FakeOpenAI:
    """The server. ``url`` is the base URL to give a backend (ends in ``/v1``)."""

    def __init__(self) -> None:
        self.script: collections.deque[Reply] = collections.deque()
        self.handler: Callable[[dict[str, Any]], Reply] = echo
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hangups = 0  # replies cut short because the client hung up
        self.streamed: list[int] = []  # bytes each streamed reply got out, in order of finishing
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        # serve_forever polls for shutdown every 0.5 s by default: that would add 0.5 s per test.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Poll ``condition`` (e.g. ``lambda: server.hangups``) until true or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _reply_for(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(Received(path, headers, body))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.script.popleft() if self.script else None
        if path != "/v1/chat/completions":
            return Reply.error(404, f"no route {path}")
        return scripted or self.handler(body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"fake": self})


class _Handler(BaseHTTPRequestHandler):
    """Serves one ``FakeOpenAI`` (set as ``fake`` on a subclass per server)."""

    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that stops reading but keeps the socket open: give up, not hang

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        fake = self.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = fake._reply_for(self.path, dict(self.headers.items()), raw)
        try:
            time.sleep(reply.delay)
            if reply.chunks is not None:
                self._stream(reply)
            else:
                self._send(reply)
        except OSError:  # broken pipe, reset, socket timeout
            # The client timed out or hit its size cap and hung up, as those tests intend.
            with fake._lock:
                fake.hangups += 1
            self.close_connection = True
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _start(self, reply: Reply, length: int | None) -> None:
        """Status line and headers; ``length`` None means a chunked body."""
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.headers.get("Content-Type", "application/json"))
        for key, value in reply.headers.items():
            if key.lower() != "content-type":
                self.send_header(key, value)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _stream(self, reply: Reply) -> None:
        assert reply.chunks is not None
        chunked = reply.length is None
        self._start(reply, reply.length)
        sent = 0
        try:
            for piece in reply.chunks():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            with self.fake._lock:
                self.fake.streamed.append(sent)

    def _send(self, reply: Reply) -> None:
        body = reply.body
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else (body or b"")
        self._start(reply, len(data))
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep test output clean


@pytest.fixture
def openai_server():
    """A started ``FakeOpenAI``, stopped after the test."""
    with FakeOpenAI() as server:
        yield server
