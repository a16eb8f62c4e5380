"""Every bad input found by trying the tool as a hostile user would: each is one line on stderr,
exit 2, and the run directory is left byte for byte as it was (nothing lost, nothing half-written).

A finished run (ingest -> generate -> rate -> pairs against a scripted OpenAI-compatible server on
127.0.0.1) is built once; each case works on a fresh copy of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import SRC, run_cli, write_speeches
from openai_server import FakeOpenAI, Reply

KEYS = ("empathy", "relevance", "clarity", "safety", "exploration", "autonomy", "staging")


def _reply(body: dict) -> Reply:
    prompt = body["messages"][-1]["content"]
    if "Answer with one JSON object" in prompt:
        if "UNRATEABLE" in prompt:
            return Reply.ok("I'd rather not score this.")
        scores = dict.fromkeys(KEYS, 3) | {"empathy": 5 if "Warm-reply" in prompt else 2}
        return Reply.ok(json.dumps({"scores": scores, "rationale": "ok"}))
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    if "fail" in system:
        return Reply.error(500)
    speech = body["messages"][-1]["content"][:10]
    return Reply.ok(f"Warm-reply to {speech}. What feels hardest?" if "warm" in system else f"ok {speech}.")


@pytest.fixture(scope="module")
def server():
    with FakeOpenAI() as s:
        s.handler = _reply
        yield s


def _config(tmp: Path, server: FakeOpenAI, **changes) -> Path:
    backend = {"spec": "openai:fake-model", "base_url": server.url, "max_retries": 0}
    cfg = {
        "ingest": {"input": str(write_speeches(tmp / "speeches-in.jsonl", 6))},
        "generate": {
            "k": 2,
            "pool": [
                {"name": "warm", "backend": backend, "system_prompt": "be warm"},
                {"name": "terse", "backend": backend, "system_prompt": "be terse"},
            ],
        },
        "rate": {"judge": {"type": "llm", "backend": backend, "mode": "json", "retries": 0}},
        "pairs": {"test_fraction": 0.0, "min_gap": 0.4},
    }
    for section, value in changes.items():
        cfg[section] = value
    path = tmp / f"cfg-{len(list(tmp.glob('cfg-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, server) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    res = run_cli("run", str(_config(tmp, server)), "--run-dir", str(tmp / "run"), "-q", "--until", "pairs")
    assert res.returncode == 0, res.stderr
    assert (tmp / "run" / "pairs" / "train.jsonl").read_text().strip()
    return tmp / "run"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


LABELLED = b'{"question": "I feel low", "response_a": "That sounds hard.", "response_b": "Cheer up.", "label": "A"}\n'
NOT_UTF8 = b'{"question": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
NOT_OBJECT = b'["I feel low", "That sounds hard.", "Cheer up."]\n'

# Each case: (run, tmp, server) -> (argv, words its one error line must contain). The run is a
# fresh copy of a finished run; tmp holds the inputs the run was made from.
CASES = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


def _inf_rubric(tmp: Path) -> str:
    rubric = yaml.safe_load((Path(SRC) / "psychocounsel" / "rubrics" / "psychocounsel.yaml").read_text())
    rubric["principles"][0]["weight"] = float("inf")
    (tmp / "inf.yaml").write_text(yaml.safe_dump(rubric))
    return str(tmp / "inf.yaml")


def _with(tmp: Path, name: str, content: bytes) -> str:
    (tmp / name).write_bytes(content)
    return str(tmp / name)


@case("ingest min-chars above max-chars")
def _(run, tmp, server):
    flags = ["--min-chars", "900", "--max-chars", "100"]
    return ["ingest", str(tmp / "speeches-in.jsonl"), "--run-dir", str(run), *flags], ["min_chars"]


@case("ingest that would write no speech")
def _(run, tmp, server):
    flags = ["--min-chars", "5000", "--max-chars", "6000"]
    return ["ingest", str(tmp / "speeches-in.jsonl"), "--run-dir", str(run), *flags], ["no speech is left"]


@case("re-ingest a different file into a run with responses")
def _(run, tmp, server):
    other = write_speeches(tmp / "other.jsonl", 9)
    other.write_text(other.read_text().replace("Speech", "Other speech"))
    return ["ingest", str(other), "--run-dir", str(run)], ["would mix two data sets", "new --run-dir"]


@case("rubric weight .inf")
def _(run, tmp, server):
    return ["pairs", "--run-dir", str(run), "--rubric", _inf_rubric(tmp)], ["finite"]


@case("run with a rubric weight .inf")
def _(run, tmp, server):
    cfg = yaml.safe_load(_config(tmp, server).read_text())
    cfg["rate"]["rubric"] = _inf_rubric(tmp)
    (tmp / "inf-run.yaml").write_text(yaml.safe_dump(cfg))
    return ["run", str(tmp / "inf-run.yaml"), "--run-dir", str(run)], ["finite"]


@case("pairs with no pair over min-gap")
def _(run, tmp, server):
    return ["pairs", "--run-dir", str(run), "--min-gap", "4.5"], ["no train pair"]


@case("pairs --length-balance 0.3")
def _(run, tmp, server):
    return ["pairs", "--run-dir", str(run), "--length-balance", "0.3"], [
        "length_balance",
        "greater than or equal to 0.5",
    ]


@case("run with pairs.length_balance 1.5")
def _(run, tmp, server):
    cfg = _config(tmp, server, pairs={"test_fraction": 0.0, "min_gap": 0.4, "length_balance": 1.5})
    return ["run", str(cfg), "--run-dir", str(run)], ["pairs.length_balance", "less than or equal to 1"]


@case("pairs --length-balance that would drop every train pair")
def _(run, tmp, server):
    # The warm replies are longer and score higher: every train pair's chosen reply is the longer one.
    flags = ["--min-gap", "0.4", "--length-balance", "0.9"]  # 0.4: the finished run's gap (empathy 5 vs 2)
    return ["pairs", "--run-dir", str(run), *flags], ["would drop every train pair"]


@case("train-dpo --epochs 0")
def _(run, tmp, server):
    return ["train-dpo", "--pairs", str(run), "--epochs", "0", "--out", str(run / "policy")], ["epochs"]


@case("train-dpo --lr -1")
def _(run, tmp, server):
    return ["train-dpo", "--pairs", str(run), "--lr", "-1", "--out", str(run / "policy")], ["lr"]


@case("train-rm --grad-accum 0")
def _(run, tmp, server):
    return ["train-rm", "--pairs", str(run), "--grad-accum", "0", "--out", str(run / "rm")], ["grad_accum"]


@case("eval-judge --limit -1")
def _(run, tmp, server):
    data = _with(tmp, "labelled.jsonl", LABELLED)
    return ["eval-judge", "--judge", "minilm", "--data", data, "--limit", "-1", "--out", str(run / "j.json")], ["limit"]


def _winrate(flag: str, value: str):
    def make(run, tmp, server):
        common = ["--policy", "default", "--speeches", str(tmp / "speeches-in.jsonl"), "--out", str(run / "eval")]
        return ["eval-winrate", *common, flag, value], [flag.strip("-").replace("-", "_")]

    return make


for _flag, _value in (("--limit", "-1"), ("--max-tokens", "0"), ("--batch-size", "0")):
    case(f"eval-winrate {_flag} {_value}")(_winrate(_flag, _value))


@case("typo inside online.dpo")
def _(run, tmp, server):
    cfg = _config(tmp, server, online={"rounds": 1, "dpo": {"max_stpes": 2}})
    return ["run", str(cfg), "--run-dir", str(run)], ["online.dpo.max_stpes", "unknown key"]


def _bad_file(command: str, content: bytes, needle: str):
    def make(run, tmp, server):
        if command == "train-dpo":
            return ["train-dpo", "--pairs", _with(tmp, "p.jsonl", content), "--out", str(run / "policy")], [needle]
        return ["eval-judge", "--judge", "minilm", "--data", _with(tmp, "l.jsonl", content)], [needle]

    return make


for _what, _command in (("pairs file", "train-dpo"), ("labelled pairs", "eval-judge")):
    case(f"{_what} not UTF-8")(_bad_file(_command, NOT_UTF8, "UTF-8"))
    case(f"{_what} with a non-object row")(_bad_file(_command, NOT_OBJECT, "JSON object"))


def _bad_run_file(line: bytes, needle: str):
    def make(run, tmp, server):
        (run / "responses.jsonl").write_bytes((run / "responses.jsonl").read_bytes() + line)
        return ["rate", "--run-dir", str(run), "--config", str(_config(tmp, server))], ["responses.jsonl:13", needle]

    return make


case("run-dir jsonl not UTF-8")(_bad_run_file(b'{"id": "caf\xe9"}\n', "UTF-8"))
case("run-dir jsonl with a non-object row")(_bad_run_file(NOT_OBJECT, "JSON object"))


@case("--run-dir names an existing file")
def _(run, tmp, server):
    return ["generate", "--run-dir", str(run / "run.json")], ["existing file"]


@case("--out names an existing file")
def _(run, tmp, server):
    return ["train-rm", "--pairs", str(run), "--out", str(run / "run.json")], ["existing file"]


@case("train-online speeches without id")
def _(run, tmp, server):
    (tmp / "noid.jsonl").write_text('{"text": "I feel low"}\n{"text": "I feel lost"}\n')
    args = ["--reward-model", str(run), "--speeches", str(tmp / "noid.jsonl"), "--out", str(run / "online")]
    return ["train-online", *args], ["'id'"]


@case("missing embedding_model path")
def _(run, tmp, server):
    cfg = _config(tmp, server, rate={"judge": {"type": "minilm", "embedding_model": str(tmp / "no-model")}})
    return ["rate", "--run-dir", str(run), "--config", str(cfg)], ["no-model"]


@case("corrupted cache.sqlite")
def _(run, tmp, server):
    (run / "cache.sqlite").write_bytes(b"this is not a database" * 100)
    for extra in ("cache.sqlite-wal", "cache.sqlite-shm"):
        (run / extra).unlink(missing_ok=True)
    pool = [{"name": n, "backend": {"spec": "openai:fake-model", "base_url": server.url}} for n in ("a", "b", "c")]
    cfg = _config(tmp, server, generate={"k": 3, "pool": pool})
    return ["generate", "--run-dir", str(run), "--config", str(cfg)], ["cache.sqlite", "delete it"]


@case("generate whose every call fails")
def _(run, tmp, server):
    backend = {"spec": "openai:fake-model", "base_url": server.url, "max_retries": 0}
    cfg = _config(
        tmp, server, generate={"k": 1, "pool": [{"name": "down", "backend": backend, "system_prompt": "fail"}]}
    )
    return ["generate", "--run-dir", str(run), "--config", str(cfg)], ["all", "failed", "HTTP 500"]


@case("rate whose every rating fails")
def _(run, tmp, server):
    backend = {"spec": "openai:other-judge", "base_url": server.url, "max_retries": 0}
    cfg = _config(tmp, server, rate={"judge": {"type": "llm", "backend": backend, "retries": 0}})
    # This judge can read nothing: every reply it gets is unparseable.
    server.handler = lambda body: Reply.ok("UNRATEABLE") if body["model"] == "other-judge" else _reply(body)
    return ["rate", "--run-dir", str(run), "--config", str(cfg)], ["failed on all", "nothing written"]


# The unparseable replies of a judge that read nothing are kept in the call cache (so they can be
# re-parsed without paying for them again); no row of the run changes.
CACHE_MAY_GROW = {"rate whose every rating fails"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, finished_run, tmp_path, server):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.copy(finished_run.parent / "speeches-in.jsonl", tmp_path / "speeches-in.jsonl")
    try:
        argv, needles = CASES[name](run, tmp_path, server)
        before = snapshot(run)
        res = run_cli(*argv)
    finally:
        server.handler = _reply
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("psychocounsel: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    after = snapshot(run)
    if name in CACHE_MAY_GROW:
        before = {k: v for k, v in before.items() if not k.startswith("cache.sqlite")}
        after = {k: v for k, v in after.items() if not k.startswith("cache.sqlite")}
    assert after == before


def test_force_lets_pairs_write_none(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    res = run_cli("pairs", "--run-dir", str(run), "--min-gap", "4.5", "--force", "-q")
    assert res.returncode == 0, res.stderr
    assert (run / "pairs" / "train.jsonl").read_text() == ""


def test_dpo_section_takes_every_option_its_flags_take(tmp_path):
    from psychocounsel.config import DPOConfig, load_config

    path = tmp_path / "c.yaml"
    path.write_text("dpo: {lora: true, lora_r: 8, log_every: 2}\nonline: {seed: 3, dpo: {lora_r: 4, max_steps: 3}}\n")
    cfg = load_config(path)
    assert cfg.dpo.lora_r == 8 and cfg.dpo.log_every == 2
    assert isinstance(cfg.online.dpo, DPOConfig) and cfg.online.dpo.lora_r == 4
    assert cfg.online.round_dpo().seed == 3  # the online seed, unless dpo sets its own
