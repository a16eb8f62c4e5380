"""OpenAIBackend against a real HTTP server on 127.0.0.1 (tests/openai_server.py); no network."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import time

import pytest

from psychocounsel.backends.base import ChatRequest
from psychocounsel.backends.openai_compat import OpenAIBackend, request_id_of
from psychocounsel.config import BackendConfig
from psychocounsel.errors import UserError

from openai_server import FakeOpenAI, Reply, echo, openai_server  # noqa: F401 (fixture)

KEY_ENV = "PSYCHOCOUNSEL_TEST_KEY"
SECRET = "sk-test-0123456789secret"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv(KEY_ENV, SECRET)


def make_backend(base_url: str, **overrides) -> OpenAIBackend:
    settings = dict(
        spec="openai:test-model", base_url=base_url, api_key_env=KEY_ENV, concurrency=4, timeout=5.0, max_retries=3
    )
    settings.update(overrides)
    backend = OpenAIBackend("test-model", BackendConfig(**settings))
    backend.retry_base_s = 0.01  # 1 s in production; backoff here totals < 0.2 s
    return backend


def ask(text: str, **params) -> ChatRequest:
    return ChatRequest([{"role": "system", "content": "be kind"}, {"role": "user", "content": text}], params)


def test_success_keeps_order_and_bounds_concurrency(openai_server):
    # 50 ms per reply so that requests overlap and the concurrency bound is actually exercised.
    openai_server.handler = lambda body: dataclasses.replace(echo(body), delay=0.05)
    backend = make_backend(openai_server.url, concurrency=4)
    params = dict(temperature=0.7, top_p=0.9, max_tokens=32, seed=3, stop=["\n\n"])
    out = backend.complete([ask(f"q{i}", **params) for i in range(20)])

    assert [c.text for c in out] == [f"echo: q{i}" for i in range(20)]
    assert 2 <= openai_server.max_in_flight <= 4
    first = out[0]
    assert first.error == "" and first.model == "test-model" and first.params == params
    assert (first.prompt_tokens, first.completion_tokens, first.finish_reason) == (7, 2, "stop")
    assert first.latency_s >= 0.05 and first.top_logprobs is None
    sent = openai_server.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "test-model" and sent.body["messages"][0]["role"] == "system"
    assert {k: sent.body[k] for k in params} == params
    assert "logprobs" not in sent.body and "top_logprobs" not in sent.body


def test_progress_counts_every_request(openai_server):
    openai_server.push(Reply.error(400, "bad"))  # failed requests count too
    seen = []
    make_backend(openai_server.url).complete([ask(f"q{i}") for i in range(7)], progress=seen.append)
    assert seen == [1] * 7


def test_429_retry_honours_retry_after(openai_server):
    openai_server.push(Reply.error(429, "slow down", retry_after="1"))
    start = time.perf_counter()
    [c] = make_backend(openai_server.url).complete([ask("hi")])
    elapsed = time.perf_counter() - start
    assert c.text == "echo: hi" and c.error == ""
    assert len(openai_server.requests) == 2
    assert elapsed >= 0.95  # it waited as asked: backoff alone would wait ~0.01 s


def test_503_retry_after_zero_retries_at_once(openai_server):
    openai_server.push(Reply.error(503, retry_after="0"), Reply.error(503, retry_after="0"))
    [c] = make_backend(openai_server.url).complete([ask("hi")])
    assert c.text == "echo: hi" and len(openai_server.requests) == 3


def test_retry_delay_backoff_and_caps():
    backend = make_backend("http://127.0.0.1:9/v1")
    backend.retry_base_s = 1.0
    assert backend.retry_delay(0, retry_after=3600) == 60.0
    assert backend.retry_delay(0, retry_after=2.5) == 2.5
    for attempt, low, high in [(0, 0.5, 1.0), (2, 2.0, 4.0), (10, 15.0, 30.0)]:
        delays = [backend.retry_delay(attempt) for _ in range(50)]
        assert all(low <= d <= high for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_500_then_success(openai_server):
    openai_server.push(Reply.error(500, "boom"))
    [c] = make_backend(openai_server.url).complete([ask("hi")])
    assert (c.text, c.error) == ("echo: hi", "")
    assert len(openai_server.requests) == 2


def test_timeout_then_success(openai_server):
    openai_server.push(Reply.ok("too late", delay=1.0))
    [c] = make_backend(openai_server.url, timeout=0.3).complete([ask("hi")])
    # It gave up on the slow reply (else the text would be "too late") and asked again.
    assert (c.text, c.error) == ("echo: hi", "")
    assert len(openai_server.requests) == 2
    assert c.latency_s < 1.0  # latency of the successful attempt only, not the abandoned one


@pytest.mark.parametrize(
    "bad",
    [
        Reply.malformed(),
        Reply.missing_choices(),
        Reply(200, {"choices": [{"message": {"role": "assistant", "content": None}}]}),
        Reply(200, ["not", "an", "object"]),
    ],
    ids=["not-json", "no-choices", "null-content", "json-list"],
)
def test_malformed_reply_then_success(openai_server, bad):
    openai_server.push(bad)
    [c] = make_backend(openai_server.url).complete([ask("hi")])
    assert (c.text, c.error) == ("echo: hi", "")
    assert len(openai_server.requests) == 2


def test_exhausted_retries_set_error_and_empty_text(openai_server):
    openai_server.handler = lambda body: Reply.error(500, "still broken")
    [c] = make_backend(openai_server.url, max_retries=2).complete([ask("hi", temperature=0.0)])
    assert c.text == ""
    assert c.error == "HTTP 500 after 3 attempts"  # the status only: error bodies are never kept
    assert c.params == {"temperature": 0.0} and c.model == "test-model"
    assert len(openai_server.requests) == 3


def test_malformed_every_time_is_reported(openai_server):
    openai_server.handler = lambda body: Reply.missing_choices()
    [c] = make_backend(openai_server.url, max_retries=1).complete([ask("hi")])
    assert c.text == "" and c.error.startswith("malformed reply after 2 attempts")


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    [c] = make_backend(f"http://127.0.0.1:{port}/v1", max_retries=1).complete([ask("hi")])
    assert c.text == "" and c.error.startswith("connection error after 2 attempts")


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retried(openai_server, status):
    # Two requests, the second fine: a per-request 4xx is that row's error, not a stop.
    openai_server.push(Reply.error(status, f"Incorrect API key provided: {SECRET}. " + "x" * 300))
    c, ok = make_backend(openai_server.url, concurrency=1).complete([ask("hi"), ask("there")])
    assert len(openai_server.requests) == 2 and ok.text
    assert c.text == "" and c.error == f"HTTP {status}"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_batch_that_fails_alike_on_auth_or_model_is_one_clear_error(openai_server, status):
    ids = iter(["req_1", "req_2", "req_3"])  # a request id per request: still "failing alike"
    openai_server.handler = lambda body: dataclasses.replace(
        Reply.error(status, f"bad key {SECRET} or no such model"), headers={"x-request-id": next(ids)}
    )
    with pytest.raises(UserError) as e:
        make_backend(openai_server.url).complete([ask("a"), ask("b"), ask("c")])
    message = str(e.value)
    assert f"HTTP {status} (request id req_" in message
    assert SECRET not in message and "no such model" not in message and "bad key" not in message
    assert len(openai_server.requests) == 3  # each sent once, none retried


def test_logprobs_requested_and_parsed(openai_server):
    [c] = make_backend(openai_server.url).complete([ask("score", logprobs=True, top_logprobs=5, max_tokens=1)])
    # " 4" and "4" strip to the same token: the larger logprob wins.
    assert c.top_logprobs == {"4": -0.25, "3": -1.75}
    body = openai_server.requests[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 5


def test_top_logprobs_not_sent_without_logprobs(openai_server):
    [c] = make_backend(openai_server.url).complete([ask("hi", logprobs=False, top_logprobs=5)])
    body = openai_server.requests[0].body
    assert "logprobs" not in body and "top_logprobs" not in body
    assert c.top_logprobs is None


def test_api_key_sent_as_bearer_and_kept_out_of_results(openai_server):
    backend = make_backend(openai_server.url)
    [c] = backend.complete([ask("hi")])
    headers = {k.lower(): v for k, v in openai_server.requests[0].headers.items()}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert backend.identity() == {"backend": "openai", "model": "test-model", "base_url": openai_server.url}
    for text in (json.dumps(c.to_dict()), json.dumps(backend.identity()), repr(backend)):
        assert SECRET not in text


def test_local_server_without_key_sends_no_auth(openai_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    [c] = make_backend(openai_server.url).complete([ask("hi")])
    assert c.text == "echo: hi"
    assert "authorization" not in {k.lower() for k in openai_server.requests[0].headers}


@pytest.mark.parametrize("base_url", [None, "https://api.openai.com/v1/"])
def test_missing_key_for_openai_is_a_user_error(base_url):
    cfg = BackendConfig(spec="openai:gpt-4o-mini", base_url=base_url)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o-mini", cfg)


def test_base_url_from_environment_without_trailing_slash(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url + "/")
    backend = make_backend(None)
    assert backend.base_url == openai_server.url
    assert backend.complete([ask("hi")])[0].text == "echo: hi"


def test_complete_works_inside_a_running_event_loop(openai_server):
    backend = make_backend(openai_server.url)

    async def caller():  # e.g. a notebook cell or an async web handler calling sync code
        return backend.complete([ask("a"), ask("b")])

    assert [c.text for c in asyncio.run(caller())] == ["echo: a", "echo: b"]


def test_no_requests_no_calls(openai_server):
    assert make_backend(openai_server.url).complete([]) == []
    assert openai_server.requests == []


def test_fake_server_usable_as_context_manager():
    with FakeOpenAI() as server:
        [c] = make_backend(server.url).complete([ask("ctx")])
    assert c.text == "echo: ctx"


# -- bounded replies ------------------------------------------------------------------------------


def test_endless_body_fails_that_call_at_the_cap(openai_server):
    openai_server.push(Reply.endless())
    # A generous timeout: had the cap not stopped the read, the error would say "timeout".
    backend = make_backend(openai_server.url, max_response_bytes=64 * 1024, timeout=30.0, concurrency=1)
    c, ok = backend.complete([ask("hi"), ask("there")])
    assert c.text == "" and c.error == "reply over the 64 KiB cap (max_response_bytes)"
    assert ok.text == "echo: there"
    assert len(openai_server.requests) == 2  # not retried: the server would do it again
    # The client hung up, so the server stopped sending (instead of streaming for 60 s).
    assert openai_server.wait_until(lambda: openai_server.hangups >= 1 and openai_server.streamed)


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_60_mb_body_fails_with_the_default_cap_unread(openai_server, declare_length):
    size = 60 * 1024 * 1024
    openai_server.push(Reply.sized(size, declare_length=declare_length))
    backend = make_backend(openai_server.url, timeout=60.0)
    assert backend.cfg.max_response_bytes == 4 * 1024 * 1024
    [c] = backend.complete([ask("hi")])
    assert c.text == "" and c.error == "reply over the 4 MiB cap (max_response_bytes)"
    assert len(openai_server.requests) == 1
    assert openai_server.wait_until(lambda: openai_server.hangups and openai_server.streamed)
    assert openai_server.hangups == 1 and openai_server.streamed[0] < size  # dropped mid-body


def test_reply_just_under_the_cap_is_read_whole(openai_server):
    text = "calm " * 10_000  # ~50 KB of content in a ~50 KB body
    openai_server.push(Reply.ok(text))
    [c] = make_backend(openai_server.url, max_response_bytes=64 * 1024).complete([ask("hi")])
    assert (c.text, c.error) == (text, "")


def test_compression_is_refused(openai_server):
    openai_server.push(Reply(200, b"\x1f\x8b not really gzip", {"Content-Encoding": "gzip"}))
    [c, ok] = make_backend(openai_server.url, concurrency=1).complete([ask("hi"), ask("there")])
    assert c.error == "compressed reply, though Accept-Encoding was identity" and ok.text
    headers = {k.lower(): v for k, v in openai_server.requests[0].headers.items()}
    assert headers["accept-encoding"] == "identity"


# -- error bodies are never kept ------------------------------------------------------------------

SPEECH = "Since Marigold left I sleep on the kitchen floor zq7"


def test_422_echoing_the_request_leaves_no_speech_in_error_or_logs(openai_server, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # httpx and httpcore debug logging too
    openai_server.handler = lambda body: Reply.fastapi_422(body, request_id="req_abc-123")
    [c] = make_backend(openai_server.url).complete([ask(SPEECH)])
    assert SPEECH in json.dumps(openai_server.requests[0].body)  # it was sent...
    assert c.error == "HTTP 422 (request id req_abc-123)"  # ...and comes back nowhere
    logging.getLogger("psychocounsel").warning("call failed: %s", c.error)  # as callers do
    out, err = capfd.readouterr()
    for text in (caplog.text, c.error, out, err, json.dumps(c.to_dict())):
        assert "Marigold" not in text and "kitchen floor" not in text
    assert "HTTP 422" in caplog.text  # the capture did work


def test_retried_failure_names_status_attempts_and_last_request_id(openai_server):
    ids = iter(["req_1", "req_2", "req_3"])
    openai_server.handler = lambda body: dataclasses.replace(
        Reply.error(500, f"upstream choked on {SPEECH}"), headers={"openai-request-id": next(ids)}
    )
    [c] = make_backend(openai_server.url, max_retries=2).complete([ask(SPEECH)])
    assert c.error == "HTTP 500 after 3 attempts (request id req_3)"


def test_malformed_reply_error_does_not_quote_the_body(openai_server):
    openai_server.handler = lambda body: Reply(200, {"detail": f"echo {SPEECH}"}, {"x-request-id": "r1"})
    [c] = make_backend(openai_server.url, max_retries=0).complete([ask(SPEECH)])
    assert c.error == "malformed reply after 1 attempts: no choices[0].message.content (request id r1)"


def test_request_id_holding_the_key_is_dropped(openai_server):
    openai_server.push(Reply(400, {}, {"x-request-id": f"id-{SECRET}"}))
    [c] = make_backend(openai_server.url).complete([ask("hi")])
    assert c.error == "HTTP 400"


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"X-Request-Id": "req_abc"}, "req_abc"),
        ({"request-id": "a.b:c-d_9"}, "a.b:c-d_9"),
        ({"x-amzn-RequestId": "0f6c1b2e-aaaa-bbbb-cccc-1234567890ab"}, "0f6c1b2e-aaaa-bbbb-cccc-1234567890ab"),
        ({"x-request-id": "I feel low", "openai-request-id": "r-2"}, "r-2"),  # unsafe one skipped
        ({"x-request-id": "x" * 64}, "x" * 64),
        ({"x-request-id": "x" * 65}, ""),
        ({"x-request-id": "id\xc3\xa9".encode("latin-1")}, ""),  # non-ASCII bytes
        ({"x-request-id": "<script>"}, ""),
        ({"id": "chatcmpl-1"}, ""),
        ({}, ""),
    ],
)
def test_request_id_is_sanitised(headers, expected):
    import httpx

    assert request_id_of(httpx.Headers(headers)) == expected


# -- structured outputs -----------------------------------------------------------------------

SCHEMA = {"type": "json_schema", "json_schema": {"name": "rating", "strict": True, "schema": {"type": "object"}}}


def test_response_format_is_sent_as_given(openai_server):
    backend = make_backend(openai_server.url)
    [done] = backend.complete([ask("q", temperature=0.0, response_format=SCHEMA)])
    assert done.error == "" and openai_server.requests[0].body["response_format"] == SCHEMA
    assert backend.request_body(ask("q", response_format=None)).keys() == {"model", "messages"}


@pytest.mark.parametrize("vllm", [False, True])
def test_a_400_naming_response_format_says_so_unretried(openai_server, vllm):
    openai_server.push(Reply.schema_rejected(vllm=vllm))
    [done] = make_backend(openai_server.url).complete([ask("q", response_format=SCHEMA)])
    assert done.error == "HTTP 400: response_format rejected" and done.text == ""
    assert len(openai_server.requests) == 1


def test_other_400s_stay_plain_and_the_body_is_never_quoted(openai_server):
    # The same refusal to a request without response_format is not read at all; a 400 for
    # another reason is plain too, and its text (which may echo the speech) is nowhere.
    openai_server.push(Reply.schema_rejected(), Reply.error(400, "context too long for I feel low"))
    out = make_backend(openai_server.url).complete([ask("a")])
    out += make_backend(openai_server.url).complete([ask("b", response_format=SCHEMA)])
    assert [c.error for c in out] == ["HTTP 400", "HTTP 400"]


def test_an_echo_of_the_request_is_not_a_refusal(openai_server):
    # FastAPI's 422-style body quotes the request, response_format included: not the server's words.
    openai_server.push(Reply(400, {"detail": [{"msg": "bad", "input": {"response_format": SCHEMA}}]}))
    [done] = make_backend(openai_server.url).complete([ask("q", response_format=SCHEMA)])
    assert done.error == "HTTP 400"
