"""Token and cost accounting (backends/cached.py's Meter) and --max-cost, against a real HTTP server."""

from __future__ import annotations

import json

import pytest
import yaml

from psychocounsel.backends.base import Backend, ChatRequest, Completion
from psychocounsel.backends.cached import CachedBackend, CostLimitReached, Meter
from psychocounsel.cli import main
from psychocounsel.config import RunConfig
from psychocounsel.errors import UserError
from psychocounsel.store import Cache

from conftest import write_speeches

GPT4O = {"prompt": 2.5, "completion": 10.0}  # USD per 1M tokens


class _Counting(Backend):
    """Answers every request with three completion tokens; counts what it was sent."""

    name, model = "stub", "gpt-4o"

    def __init__(self):
        self.sent = 0

    def complete(self, requests, progress=None):
        self.sent += len(requests)
        return [Completion("a b c", self.model, prompt_tokens=100, completion_tokens=3) for _ in requests]


def _requests(n: int, max_tokens: int = 10) -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": f"hi {i}"}], {"max_tokens": max_tokens}) for i in range(n)]


def test_meter_counts_calls_made_and_prices_them_cached_calls_cost_nothing():
    meter = Meter({"gpt-4o": RunConfig(prices={"gpt-4o": GPT4O}).prices["gpt-4o"]})
    inner = _Counting()
    backend = CachedBackend(inner, Cache(":memory:", meter=meter))
    backend.complete(_requests(4))
    backend.complete(_requests(6))  # 4 of them cached
    assert inner.sent == 6 and (backend.calls_made, backend.calls_cached) == (6, 4)
    figures = meter.figures()
    assert figures["tokens"] == {"prompt": 600, "completion": 18}
    assert figures["cost"] == pytest.approx((600 * 2.5 + 18 * 10.0) / 1e6)
    assert figures["by_model"]["gpt-4o"] == {
        "calls": 6,
        "cached": 4,
        "prompt_tokens": 600,
        "completion_tokens": 18,
        "cost": pytest.approx(figures["cost"]),
    }


def test_unpriced_models_cost_nothing_and_are_never_stopped():
    backend = CachedBackend(_Counting(), Cache(":memory:", meter=Meter({}, max_cost=0.0)))
    backend.complete(_requests(3))
    assert backend.meter.figures()["cost"] == 0 and backend.meter.figures()["tokens"]["prompt"] == 300


def test_max_cost_stops_before_a_batch_that_could_pass_it():
    # A batch of 2 could bill 2 x (ceil(4/3) + 8 prompt + 10 completion) = 40 tokens at $1 each.
    meter = Meter({"gpt-4o": {"prompt": 1e6, "completion": 1e6}}, max_cost=49.0, spent_before=10.0)
    inner = _Counting()
    backend = CachedBackend(inner, Cache(":memory:", meter=meter))
    with pytest.raises(CostLimitReached) as err:
        backend.complete(_requests(2))
    assert inner.sent == 0 and isinstance(err.value, UserError)
    message = str(err.value)
    assert "\n" not in message and "spent $10.0000 of $49.0000" in message and "$40.0000" in message
    meter.max_cost = 50.0  # spending up to the limit exactly is allowed
    assert len(backend.complete(_requests(2))) == 2 and inner.sent == 2


def _config(tmp_path, server, prices: dict, name: str = "cfg.yaml"):
    backend = {"spec": "openai:fake-model", "base_url": server.url, "concurrency": 1}  # batches of 4
    cfg = {
        "ingest": {"input": str(write_speeches(tmp_path / "s.jsonl", 6))},
        "generate": {
            "k": 2,
            "pool": [
                {"name": "warm", "backend": backend, "system_prompt": "be warm", "max_tokens": 20},
                {"name": "terse", "backend": backend, "system_prompt": "be terse", "max_tokens": 20},
            ],
        },
        "rate": {"judge": {"type": "llm", "backend": backend, "mode": "json"}},
        "pairs": {"test_fraction": 0.0, "min_gap": 0.1},
        "prices": {"fake-model": prices},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_run_json_tokens_and_cost_and_max_cost_resumes_without_repeating_a_call(tmp_path, capsys):
    from openai_server import FakeOpenAI, Reply

    usage = {"generate": [0, 0], "rate": [0, 0]}  # prompt, completion tokens the fake billed

    def handler(body):
        prompt = body["messages"][-1]["content"]
        if "Answer with one JSON object" in prompt:
            empathy = 5 if "Warmly:" in prompt else 2
            scores = {k: 3 for k in ("relevance", "clarity", "safety", "exploration", "autonomy", "staging")}
            stage, text = "rate", json.dumps({"scores": dict(scores, empathy=empathy), "rationale": "ok"})
        else:
            style = "Warmly:" if "warm" in body["messages"][0]["content"] else "Tersely:"
            stage, text = "generate", f"{style} four words here ok"
        usage[stage][0] += 7  # the fake's usage: 7 prompt tokens, one completion token per word
        usage[stage][1] += len(text.split())
        return Reply.ok(text)

    with FakeOpenAI() as server:
        server.handler = handler
        full = tmp_path / "full"
        assert main(["run", str(_config(tmp_path, server, GPT4O)), "--run-dir", str(full), "-q"]) == 0
        unbroken = len(server.requests)
        info = json.loads((full / "run.json").read_text())
        for stage in ("generate", "rate"):
            figures = info["stages"][stage]
            prompt, completion = usage[stage]
            cost = (prompt * 2.5 + completion * 10.0) / 1e6
            assert figures["tokens"] == {"prompt": prompt, "completion": completion}
            assert figures["cost"] == pytest.approx(cost, abs=1e-6)
            assert figures["by_model"]["fake-model"]["calls"] == figures["calls_made"] == prompt // 7
        assert info["stages"]["pairs"]["cost"] == 0 and info["stages"]["pairs"]["tokens"]["prompt"] == 0
        assert info["cost"] == pytest.approx(info["stages"]["generate"]["cost"] + info["stages"]["rate"]["cost"])

        # Completion tokens alone priced at $1 each: a batch's worst case is exactly its max_tokens
        # (20 per response), so $80 lets the first batch of 4 (and the next, of 2) run, not the third.
        part = tmp_path / "part"
        cheap = _config(tmp_path, server, {"prompt": 0, "completion": 1e6}, "cheap.yaml")
        capsys.readouterr()
        assert main(["run", str(cheap), "--run-dir", str(part), "--max-cost", "80", "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "max_cost reached: spent $" in err and "of $80.0000" in err
        assert len((part / "responses.jsonl").read_text().splitlines()) == 6
        stopped = json.loads((part / "run.json").read_text())["stages"]["generate"]
        assert stopped["stopped"] == "max_cost" and stopped["by_model"]["fake-model"]["calls"] == 6

        assert main(["run", str(cheap), "--run-dir", str(part), "--max-cost", "10000", "-q"]) == 0
        assert len(server.requests) - unbroken == unbroken, "the stopped run and its rerun repeat no call"
        resumed = json.loads((part / "run.json").read_text())["stages"]["generate"]
        assert "stopped" not in resumed and resumed["calls_made"] == 6 and resumed["items_out"] == 12
        assert len((part / "responses.jsonl").read_text().splitlines()) == 12, "no response written twice"

        # A finished run rerun spends nothing: no call made, no token counted.
        assert main(["run", str(_config(tmp_path, server, GPT4O)), "--run-dir", str(full), "-q"]) == 0
        again = json.loads((full / "run.json").read_text())
        assert len(server.requests) == 2 * unbroken and again["cost"] == 0
        assert again["stages"]["rate"]["tokens"] == {"prompt": 0, "completion": 0}


def test_max_cost_must_be_a_non_negative_number(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"ingest": {"input": str(write_speeches(tmp_path / "s.jsonl", 2))}}))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--max-cost", "-1", "-q"]) == 2
    assert "--max-cost" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"prices": {"gpt-4o": {"prompt": 2.5, "completion": -1}}}))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "-q"]) == 2
    assert "prices.gpt-4o.completion" in capsys.readouterr().err
