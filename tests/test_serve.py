"""psychocounsel serve: the real server on 127.0.0.1 (uvicorn, FastAPI) with tiny local models,
exercised over real HTTP by httpx, the official openai client and the project's own openai backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from psychocounsel.config import BackendConfig, RewardEvalConfig, ServeConfig
from psychocounsel.errors import UserError
from psychocounsel.serve import api_key, build, check

from conftest import run_cli

KEY = "test-key-3f9a"
AUTH = {"Authorization": f"Bearer {KEY}"}
CRISIS = "I have the pills saved up and I am going to take them all tonight. I can't do this anymore."
IDIOM = "This deadline is killing me, my boss wants the whole report by Friday and I am behind."
OTHER = "My friend told me she wants to kill herself. I don't know what to do or who to tell."
SAD = "I feel sad and tired every night and I cannot stop thinking about my job."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cfg: ServeConfig, key: str | None = None):
    """The app of ``cfg`` under uvicorn in a thread; yields (base url, service) once /health is ok."""
    import uvicorn

    saved = os.environ.pop(cfg.api_key_env, None)
    if key:
        os.environ[cfg.api_key_env] = key  # as a user gives it: in the environment
    try:
        app, service = build(cfg)
    finally:
        os.environ.pop(cfg.api_key_env, None)
        if saved is not None:
            os.environ[cfg.api_key_env] = saved
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{cfg.host}:{cfg.port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"server not ready: {service.load_error}")
    try:
        yield url, service
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def tiny_rm(tiny_lm, tmp_path_factory) -> Path:
    """An (untrained) reward model: conftest's tiny Llama with a one-output score head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_lm, num_labels=1)
    model.config.pad_token_id = 0
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_lm, tiny_rm):
    """Tiny policy + tiny reward model, a key, a small body limit and queue."""
    cfg = ServeConfig(
        policy=str(tiny_lm),
        reward_model=tiny_rm,
        port=free_port(),
        locale="en_US",
        max_body_bytes=64 * 1024,
        max_queue=8,
        max_tokens=16,
    )
    with running(cfg, KEY) as (url, service):
        yield url, service


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    """SmolLM2-135M-Instruct (the packaged default), no reward model, no key: a model that can judge."""
    cfg = ServeConfig(policy="default", port=free_port(), max_tokens=24)
    with running(cfg) as (url, service):
        yield url, service


def chat(url: str, content: str = SAD, headers=AUTH, **body):
    body = {"model": "psychocounsel", "messages": [{"role": "user", "content": content}], **body}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# -- endpoints ---------------------------------------------------------------------------------


def test_health_and_models_carry_names_and_intended_use(server):
    url, _ = server
    health = httpx.get(f"{url}/health").json()  # open without a key, for load balancers
    assert health["status"] == "ok" and health["reward_model"] == "psychocounsel-reward"
    models = httpx.get(f"{url}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["psychocounsel", "psychocounsel-reward"]
    assert all("not a substitute for professional care" in m["intended_use"].lower() for m in models["data"])


def test_chat_completion_shape_usage_and_seed(server, tiny_lm):
    url, service = server
    r = chat(url, n=2, max_tokens=8, temperature=1.0, seed=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
    prompt = service.engine.prompt_ids([{"role": "user", "content": SAD}])
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(prompt) and 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["safety"] == {"level": "none", "categories": [], "resources_shown": []}
    again = chat(url, n=2, max_tokens=8, temperature=1.0, seed=5).json()
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in body["choices"]]


def test_logprobs_are_returned_in_openais_shape(server):
    url, _ = server
    choice = chat(url, max_tokens=3, temperature=0, logprobs=True, top_logprobs=4).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert 1 <= len(content) <= 3 and all(len(t["top_logprobs"]) == 4 for t in content)
    assert all(t["logprob"] <= 0 and t["top_logprobs"][0]["logprob"] >= t["logprob"] for t in content)


def test_streaming_sends_the_same_text_as_a_whole_answer(server):
    url, _ = server
    whole = chat(url, max_tokens=12, temperature=1.0, seed=3).json()["choices"][0]["message"]["content"]
    body = {
        "model": "psychocounsel",
        "messages": [{"role": "user", "content": SAD}],
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[0]["safety"]["level"] == "none"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == whole
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] in ("stop", "length")
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and chunks[-1]["choices"] == []


def test_the_official_openai_client_works_whole_and_streamed(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    out = client.chat.completions.create(
        model="psychocounsel", messages=[{"role": "user", "content": SAD}], max_tokens=6, seed=1
    )
    assert out.choices[0].message.role == "assistant" and out.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="psychocounsel", messages=[{"role": "user", "content": SAD}], max_tokens=6, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip()
    assert [m.id for m in client.models.list()] == ["psychocounsel", "psychocounsel-reward"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_dynamic_batching_decodes_concurrent_requests_together(server):
    url, service = server

    async def burst():
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
            body = {"model": "psychocounsel", "messages": [{"role": "user", "content": SAD}], "max_tokens": 64}
            return await asyncio.gather(*[client.post(f"{url}/v1/chat/completions", json=body) for _ in range(6)])

    service.batcher.peak_batch = 0
    before = service.batcher.rows_done
    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 6
    assert service.batcher.rows_done - before == 6
    assert service.batcher.peak_batch >= 2  # requests from different clients shared forward passes


# -- the reward model --------------------------------------------------------------------------


def test_get_reward_and_score_agree_with_eval_rm(server, tiny_rm, tmp_path):
    from transformers import AutoTokenizer

    from psychocounsel.evaluate.reward_eval import evaluate_file

    url, _ = server
    pairs = [
        {"question": SAD, "chosen": "that sounds hard . tell me more", "rejected": "stop thinking about it"},
        {"question": "i feel alone at school", "chosen": "you are not alone", "rejected": "what ?"},
        {"question": OTHER, "chosen": "can we talk about how you are feeling", "rejected": "help"},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    predictions = tmp_path / "predictions.jsonl"
    evaluate_file(tiny_rm, data, RewardEvalConfig(), predictions)  # what eval-rm --predictions writes
    expected = [json.loads(line) for line in predictions.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(tiny_rm)

    def formatted(question, answer):
        talk = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return tok.apply_chat_template(talk, tokenize=False)

    queries = [formatted(p["question"], p[side]) for p in pairs for side in ("chosen", "rejected")]
    rewards = httpx.post(f"{url}/get_reward", json={"query": queries}, headers=AUTH).json()["rewards"]
    want = [e[side] for e in expected for side in ("r_chosen", "r_rejected")]
    assert rewards == pytest.approx(want, abs=1e-4)
    transcripts = [
        [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["chosen"]}] for p in pairs
    ]
    got = httpx.post(f"{url}/get_reward", json={"query": transcripts}, headers=AUTH).json()["rewards"]
    assert got == pytest.approx([e["r_chosen"] for e in expected], abs=1e-4)
    scored = httpx.post(
        f"{url}/v1/score",
        json={"pairs": [{"prompt": p["question"], "response": p["rejected"]} for p in pairs]},
        headers=AUTH,
    ).json()
    assert scored["model"] == "psychocounsel-reward"
    assert scored["rewards"] == pytest.approx([e["r_rejected"] for e in expected], abs=1e-4)


def test_best_of_returns_the_highest_reward_candidate(server):
    url, _ = server
    body = chat(url, best_of=4, temperature=1.0, max_tokens=6, seed=2).json()
    rewards = body["best_of"]["rewards"]
    assert body["best_of"]["n"] == 4 and len(rewards) == 4
    assert body["choices"][0]["reward"] == pytest.approx(max(rewards))
    assert body["usage"]["completion_tokens"] >= 4  # every candidate is counted: what was spent


def test_best_of_without_a_reward_model_is_a_clear_400(smollm):
    url, _ = smollm
    r = chat(url, headers={}, best_of=2, max_tokens=2)
    assert r.status_code == 400 and "reward model" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/get_reward", json={"query": ["x"]}).status_code == 404


# -- crisis routing ----------------------------------------------------------------------------


def test_a_crisis_gets_the_crisis_message_with_the_locales_resources(server):
    from psychocounsel.safety import handles_crisis

    url, service = server
    done = service.batcher.rows_done
    body = chat(url, CRISIS).json()
    safety = body["safety"]
    assert safety["level"] == "crisis" and "plan_or_intent" in safety["categories"]
    assert [r["name"] for r in safety["resources_shown"]][0] == "988 Suicide & Crisis Lifeline"
    text = body["choices"][0]["message"]["content"]
    assert "988" in text and handles_crisis(text)
    assert service.batcher.rows_done == done  # the policy was not asked
    gb = chat(url, CRISIS, locale="en-GB").json()
    assert "116 123" in gb["choices"][0]["message"]["content"]


def test_a_crisis_in_a_stream_is_the_crisis_message(server):
    url, _ = server
    body = {"model": "psychocounsel", "messages": [{"role": "user", "content": CRISIS}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        events = sse_events(r)
    assert events[0]["safety"]["level"] == "crisis" and events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert "988" in text


def test_an_idiom_is_not_a_crisis_and_someone_else_at_risk_is_a_concern(server):
    url, _ = server
    idiom = chat(url, IDIOM).json()
    assert idiom["safety"]["level"] == "none" and "988" not in idiom["choices"][0]["message"]["content"]
    other = chat(url, OTHER).json()
    assert other["safety"]["level"] == "concern"
    assert (
        other["choices"][0]["message"]["content"].rstrip().endswith(other["safety"]["resources_shown"][-1]["contact"])
    )


def test_a_crisis_earlier_in_the_conversation_keeps_the_resources(server):
    url, _ = server
    messages = [
        {"role": "user", "content": CRISIS},
        {"role": "assistant", "content": "i am here . can we talk"},
        {"role": "user", "content": "ok"},
    ]
    body = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "psychocounsel", "messages": messages}, headers=AUTH
    ).json()
    assert body["safety"]["level"] == "concern" and "988" in body["choices"][0]["message"]["content"]


def test_logs_carry_ids_and_decisions_never_text(server, caplog):
    url, _ = server
    marker = "zebracrossing"
    with caplog.at_level(logging.INFO, logger="psychocounsel"):
        chat(url, f"{SAD} {marker}")
        chat(url, f"{CRISIS} {marker}")
        chat(url, marker, headers={"Authorization": "Bearer nope"})
    assert "safety=crisis" in caplog.text and "chatcmpl-" in caplog.text
    assert marker not in caplog.text and KEY not in caplog.text


# -- security and limits -----------------------------------------------------------------------


def test_a_missing_or_wrong_key_is_401(server):
    url, _ = server
    assert chat(url, headers={}).status_code == 401
    r = chat(url, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert KEY not in r.text
    assert httpx.post(f"{url}/get_reward", json={"query": ["x"]}).status_code == 401


def test_non_loopback_bind_needs_a_key(monkeypatch, tiny_lm):
    monkeypatch.delenv("PSYCHOCOUNSEL_API_KEY", raising=False)
    with pytest.raises(UserError, match="set an API key in \\$PSYCHOCOUNSEL_API_KEY"):
        api_key(ServeConfig(policy=str(tiny_lm), host="0.0.0.0"))
    assert api_key(ServeConfig(policy=str(tiny_lm))) is None  # loopback: optional
    monkeypatch.setenv("PSYCHOCOUNSEL_API_KEY", "k")
    assert api_key(ServeConfig(policy=str(tiny_lm), host="0.0.0.0")) == "k"
    monkeypatch.delenv("PSYCHOCOUNSEL_API_KEY")
    r = run_cli("serve", "--policy", str(tiny_lm), "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "API key" in r.stderr and "k\n" not in r.stderr


def test_startup_errors_are_one_line(tmp_path, tiny_lm):
    for args, message in [
        (["--policy", str(tmp_path / "missing")], "missing"),
        (["--policy", str(tiny_lm), "--reward-model", str(tmp_path)], "not a model folder"),
        (["--policy", str(tiny_lm), "--best-of", "4"], "needs --reward-model"),
        (["--policy", "openai:gpt-4o"], "give --upstream-url"),
        (["--policy", str(tiny_lm), "--upstream-url", "http://127.0.0.1:1/v1"], "a local --policy is decoded here"),
    ]:
        r = run_cli("serve", *args, "--port", str(free_port()))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen"):
            check(ServeConfig(policy=str(tiny_lm), port=busy.getsockname()[1]))


def test_oversize_bodies_are_413_declared_or_streamed(server):
    url, _ = server
    big = "word " * 20_000  # 100 kB, over the fixture's 64 KiB
    assert chat(url, big).status_code == 413

    def chunks():
        payload = json.dumps({"model": "psychocounsel", "messages": [{"role": "user", "content": big}]}).encode()
        for i in range(0, len(payload), 8192):
            yield payload[i : i + 8192]

    r = httpx.post(f"{url}/v1/chat/completions", content=chunks(), headers=AUTH)  # chunked: no Content-Length
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"{}",
        b'{"model": "psychocounsel"}',
        b'{"model": "psychocounsel", "messages": []}',
        b'{"model": "psychocounsel", "messages": [{"role": "user"}]}',
        b'{"model": "psychocounsel", "messages": [{"role": "wizard", "content": "hi"}]}',
        b'{"model": "psychocounsel", "messages": [{"role": "system", "content": "hi"}]}',
        b'{"model": "psychocounsel", "messages": [{"role": "user", "content": "hi"}], "n": 0}',
        b'{"model": "psychocounsel", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
        b'{"model": "psychocounsel", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
        b'{"model": "psychocounsel", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}',
        b'{"model": "psychocounsel", "messages": [{"role": "user", "content": "hi"}], "best_of": 1, "n": 2}',
        b'{"model": "psychocounsel", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}',
        b"[" * 10_000 + b"]" * 10_000,
        b'{"model": "psychocounsel", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b"\xff\xfe",
    ],
)
def test_malformed_requests_are_4xx_with_a_message_never_5xx(server, body):
    url, _ = server
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={**AUTH, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"]["message"]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/get_reward", {"query": []}),
        ("/get_reward", {"query": [""]}),
        ("/get_reward", {"query": [[{"role": "user", "content": "only one turn"}]]}),
        ("/get_reward", {"prompts": ["x"]}),
        ("/v1/score", {}),
        ("/v1/score", {"pairs": [{"prompt": "x"}]}),
        ("/v1/score", {"pairs": [{"prompt": "x", "response": "y"}], "conversations": []}),
        ("/v1/score", {"model": "gpt-4o", "pairs": [{"prompt": "x", "response": "y"}]}),
    ],
)
def test_malformed_scoring_requests_are_4xx(server, path, body):
    url, _ = server
    r = httpx.post(f"{url}{path}", json=body, headers=AUTH)
    assert 400 <= r.status_code < 500 and r.json()["error"]["message"]


def test_a_bad_request_never_echoes_what_was_sent(server):
    url, _ = server
    secret = "my-private-words"
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "psychocounsel", "messages": [{"role": secret, "content": secret}]},
        headers=AUTH,
    )
    assert r.status_code == 400 and secret not in r.text


def test_saturation_is_429_with_retry_after_and_never_5xx(server):
    url, service = server

    async def flood():
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as client:
            body = {"model": "psychocounsel", "messages": [{"role": "user", "content": SAD}], "max_tokens": 64, "n": 4}
            return await asyncio.gather(*[client.post(f"{url}/v1/chat/completions", json=body) for _ in range(16)])

    statuses = [r.status_code for r in asyncio.run(flood())]  # 64 sequences against a queue of 8
    assert 429 in statuses and 200 in statuses and max(statuses) < 500, statuses
    deadline = time.monotonic() + 30
    while service.batcher.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    with service.batcher._lock:
        service.batcher.pending += service.cfg.max_queue  # a full queue, whatever the timing of this machine
    try:
        refused = chat(url)
    finally:
        with service.batcher._lock:
            service.batcher.pending -= service.cfg.max_queue
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1
    assert chat(url, max_tokens=2).status_code == 200  # it recovers


def test_a_person_in_crisis_is_never_told_the_server_is_busy(server):
    url, service = server
    with service.batcher._lock:
        service.batcher.pending += 1000  # as full as a queue gets
    try:
        assert chat(url).status_code == 429
        crisis = chat(url, CRISIS)
    finally:
        with service.batcher._lock:
            service.batcher.pending -= 1000
    assert crisis.status_code == 200 and crisis.json()["safety"]["level"] == "crisis"


def test_a_request_over_the_time_limit_is_a_timeout_error(smollm):
    url, service = smollm
    limit = service.cfg.request_timeout
    service.cfg.request_timeout = 0.05
    try:
        r = chat(url, headers={}, max_tokens=24)
    finally:
        service.cfg.request_timeout = limit
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"


def test_cors_is_off_by_default(server):
    url, _ = server
    r = httpx.options(
        f"{url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers


# -- in front of an upstream server (vLLM's, on a GPU) -------------------------------------------


def test_in_front_of_an_upstream_server_routing_and_streaming_stay_here(server, monkeypatch):
    url, upstream = server  # the tiny server stands in for vLLM
    monkeypatch.setenv("TEST_UPSTREAM_KEY", KEY)
    cfg = ServeConfig(
        policy="openai:psychocounsel",
        upstream_url=f"{url}/v1",
        upstream_key_env="TEST_UPSTREAM_KEY",
        port=free_port(),
        locale="en_US",
    )
    with running(cfg) as (front, service):
        whole = chat(front, headers={}, max_tokens=8, temperature=1.0, seed=9).json()
        assert whole["safety"]["level"] == "none" and whole["choices"][0]["message"]["content"]
        assert whole["usage"]["prompt_tokens"] > 0 and whole["usage"]["completion_tokens"] > 0  # the upstream's
        body = {"model": "psychocounsel", "messages": [{"role": "user", "content": SAD}], "max_tokens": 8}
        body |= {"temperature": 1.0, "seed": 9, "stream": True}
        with httpx.stream("POST", f"{front}/v1/chat/completions", json=body, timeout=60) as r:
            events = sse_events(r)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
        assert text.strip() == whole["choices"][0]["message"]["content"] and events[-1] == "[DONE]"
        asked = upstream.batcher.rows_done
        crisis = chat(front, CRISIS, headers={}).json()
        assert crisis["safety"]["level"] == "crisis" and "988" in crisis["choices"][0]["message"]["content"]
        assert upstream.batcher.rows_done == asked  # the upstream was never asked


def test_an_unreachable_upstream_is_a_failed_health_check(tmp_path):
    cfg = ServeConfig(policy="openai:m", upstream_url=f"http://127.0.0.1:{free_port()}/v1", port=free_port())
    app, service = build(cfg)
    service.load()
    assert service.load_error and "not reachable" in service.load_error


# -- the project's own openai backend and judges through the server ----------------------------


@pytest.mark.slow
def test_the_projects_openai_backend_generates_and_judges_through_the_server(smollm, tmp_path):
    from psychocounsel.backends import ChatRequest, load_backend
    from psychocounsel.cli import main

    url, _ = smollm
    backend = load_backend(BackendConfig(spec="openai:psychocounsel", base_url=f"{url}/v1"))
    [done] = backend.complete([ChatRequest([{"role": "user", "content": SAD}], {"max_tokens": 8, "temperature": 0})])
    assert not done.error and done.text and done.completion_tokens > 0
    speeches = tmp_path / "speeches.jsonl"
    speeches.write_text(
        "".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate([SAD, IDIOM])), encoding="utf-8"
    )
    spec = ["openai:psychocounsel"]
    args = ["eval-winrate", "--speeches", str(speeches), "--out", str(tmp_path / "eval"), "--max-tokens", "16"]
    args += ["--policy", *spec, "--policy-base-url", f"{url}/v1", "--reference", *spec]
    args += ["--reference-base-url", f"{url}/v1", "--judge", *spec, "--judge-base-url", f"{url}/v1"]
    args += ["--judge-mode", "logprob", "--judge-min-mass", "0.01", "--no-judge-per-principle", "-q"]
    assert main(args) == 0
    result = json.loads((tmp_path / "eval" / "winrate.json").read_text())
    assert result["n"] == 2 and result["failed"] == 0
