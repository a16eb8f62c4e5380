"""psychocounsel push against a fake Hugging Face Hub on 127.0.0.1 (stdlib only, no network).

The fake implements just what ``HfApi.create_repo`` and ``HfApi.create_commit`` call: repo
creation, the README YAML check, ``preupload`` (which says, as the Hub does, that binary files go
through LFS and text files inline), the LFS batch API with a basic PUT, and the ndjson commit.
Xet is turned off for the test so that the client takes the LFS path the fake speaks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from psychocounsel.cli import main

TOKEN = "hf_fake_token_for_tests_0123456789"
LFS_SUFFIXES = (".safetensors", ".parquet", ".bin")  # the Hub's rule: binary files go through LFS


class FakeHub:
    """Records every request as (method, path); ``repos[(type, id)]`` = {"private", "files"}."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[tuple[str, str], dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.lfs_puts: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            return out
                        out += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                self._route("POST")

            def do_PUT(self) -> None:
                self._route("PUT")

            def _route(self, method: str) -> None:
                body = self._body()
                hub.requests.append((method, self.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}" and method == "POST":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                status, reply = hub.handle(method, self.path.split("?")[0], body)
                self._send(status, reply)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def handle(self, method: str, path: str, raw: bytes) -> tuple[int, dict]:
        if method == "PUT" and (m := re.fullmatch(r"/lfs/([0-9a-f]{64})", path)):
            if hashlib.sha256(raw).hexdigest() != m[1]:
                return 400, {"error": "sha256 mismatch"}
            self.lfs[m[1]] = raw
            self.lfs_puts.append(m[1])
            return 200, {}
        if path == "/api/repos/create":
            body = json.loads(raw)
            repo_id = "/".join(p for p in (body.get("organization"), body["name"]) if p)
            key = (body.get("type") or "model", repo_id)
            url = f"{self.url}/{'datasets/' if key[0] == 'dataset' else ''}{repo_id}"
            if key in self.repos:
                return 409, {"error": "You already created this repo", "url": url}
            self.repos[key] = {"private": body.get("visibility") == "private", "files": {}}
            return 200, {"url": url}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if m := re.fullmatch(r"/api/(model|dataset)s/(.+)/preupload/[^/]+", path):
            files = json.loads(raw)["files"]
            mode = [("lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular") for f in files]
            return 200, {
                "files": [{"path": f["path"], "uploadMode": u, "shouldIgnore": False} for f, u in zip(files, mode)]
            }
        if re.fullmatch(r"/(datasets/)?.+\.git/info/lfs/objects/batch", path):
            objects = json.loads(raw)["objects"]
            actions = [{**o, "actions": {"upload": {"href": f"{self.url}/lfs/{o['oid']}"}}} for o in objects]
            return 200, {"transfer": "basic", "objects": actions}
        if m := re.fullmatch(r"/api/(model|dataset)s/(.+)/commit/[^/]+", path):
            return self._commit((m[1], m[2]), raw)
        return 404, {"error": f"the fake hub has no {method} {path}"}

    def _commit(self, key: tuple[str, str], raw: bytes) -> tuple[int, dict]:
        if key not in self.repos:
            return 404, {"error": "Repository not found"}
        for line in raw.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                self.repos[key]["files"][value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return 400, {"error": f"LFS object of {value['path']} was never uploaded"}
                self.repos[key]["files"][value["path"]] = self.lfs[value["oid"]]
        return 200, {"commitUrl": f"{self.url}/{key[1]}/commit/{'0' * 40}", "commitOid": "0" * 40}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    fake = FakeHub()
    fake._thread.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # not the developer's login
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1 for the rest
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake speaks LFS, not Xet
    yield fake
    fake._httpd.shutdown()
    fake._httpd.server_close()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A small run: pairs (parquet, JSONL, card), a policy with a tiny safetensors and a pickle
    that must stay home, a reward model, run.json with a local path and a credential in a URL."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    run = tmp_path / "run"
    (run / "pairs").mkdir(parents=True)
    for split in ("train", "test"):
        table = pa.table({"question": [f"{split} speech"], "chosen": ["a"], "rejected": ["b"], "margin": [1.0]})
        pq.write_table(table, run / "pairs" / f"{split}.parquet")
        (run / "pairs" / f"{split}.jsonl").write_text('{"question": "x"}\n')
    (run / "pairs" / "README.md").write_text("# Preference pairs\n\nFor tools that assist counselors.\n")
    for name in ("policy", "reward_model"):
        (run / name).mkdir()
        save_file({"w": np.arange(8, dtype=np.float32)}, str(run / name / "model.safetensors"))
        (run / name / "config.json").write_text('{"model_type": "llama"}\n')
        (run / name / "README.md").write_text(f"# {name}\n\nAssists counselors; not a substitute for care.\n")
        (run / name / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (run / "speeches.jsonl").write_text(json.dumps({"id": "s-1", "text": "I cannot sleep. " * 10}) + "\n")
    config = {"ingest": {"input": "/home/someone/private/speeches.jsonl", "min_chars": 100}}
    config["eval"] = {"policy": {"spec": "openai:m", "base_url": "http://user:pw@10.0.0.5:8000/v1"}}
    run_json = {"config": config, "stages": {"pairs": {"train_pairs": 1, "test_pairs": 1}}}
    (run / "run.json").write_text(json.dumps(run_json))
    (run / "report.html").write_text("<html>report</html>")
    return run


def test_push_uploads_the_allowed_files(hub, run_dir, capsys, caplog):
    argv = ["push", str(run_dir), "--dataset-repo", "me/pc-pairs", "--model-repo", "me/pc-policy", "--private"]
    assert main(argv) == 0
    assert set(hub.repos) == {("dataset", "me/pc-pairs"), ("model", "me/pc-policy")}
    assert all(repo["private"] for repo in hub.repos.values())

    data = hub.repos[("dataset", "me/pc-pairs")]["files"]
    assert set(data) == {"README.md", "train.parquet", "test.parquet", "run.json", "config.yaml", "report.html"}
    for name in ("README.md", "train.parquet", "test.parquet"):
        assert data[name] == (run_dir / "pairs" / name).read_bytes()
    assert data["report.html"] == (run_dir / "report.html").read_bytes()
    published = json.loads(data["run.json"])
    assert published["stages"] == {"pairs": {"train_pairs": 1, "test_pairs": 1}}
    assert published["config"]["ingest"]["input"] == "speeches.jsonl"  # no local path
    assert published["config"]["eval"]["policy"]["base_url"] == "http://10.0.0.5:8000/v1"  # no credential
    assert b"/home/someone" not in data["config.yaml"] and b"min_chars: 100" in data["config.yaml"]

    model = hub.repos[("model", "me/pc-policy")]["files"]
    assert set(model) == {"model.safetensors", "config.json", "README.md"}  # never training_args.bin
    for name in model:
        assert model[name] == (run_dir / "policy" / name).read_bytes()
    # the safetensors and parquet files went through LFS, the text files inline
    assert len(hub.lfs_puts) == 3
    assert not any(path.endswith(".bin") for _, path in hub.requests)

    out, err = capsys.readouterr()
    assert "pushed dataset me/pc-pairs" in out and "pushed model me/pc-policy" in out
    assert TOKEN not in out + err + caplog.text


def test_push_keeps_an_existing_repo_and_the_reward_model(hub, run_dir):
    argv = ["push", str(run_dir), "--dataset-repo", "org/pc-pairs", "--reward-model-repo", "me/pc-rm"]
    assert main(argv) == 0
    assert main(argv) == 0  # the repos exist now: exist_ok
    assert not any(repo["private"] for repo in hub.repos.values())
    assert set(hub.repos) == {("dataset", "org/pc-pairs"), ("model", "me/pc-rm")}
    assert set(hub.repos[("model", "me/pc-rm")]["files"]) == {"model.safetensors", "config.json", "README.md"}


def test_dry_run_lists_files_and_sends_nothing(hub, run_dir, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    argv = ["push", str(run_dir), "--dataset-repo", "me/pc-pairs", "--model-repo", "me/pc-policy", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    print(out)  # shown with pytest -s
    assert hub.requests == []
    assert "dataset me/pc-pairs (public): 6 files" in out and "model me/pc-policy (public): 3 files" in out
    for name in ("train.parquet", "test.parquet", "README.md", "run.json", "config.yaml", "model.safetensors"):
        assert name in out
    assert re.search(r"not uploaded: .*training_args\.bin \(a pickle", out)
    assert re.search(r"not uploaded: .*train\.jsonl", out)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no-run", "no such run directory"),
        ("bad-repo", "--dataset-repo 'bad//repo' is not a repo id"),
        ("bad-model-repo", "--model-repo 'a/b/c' is not a repo id"),
        ("no-owner", "--dataset-repo 'pc-pairs' needs its owner"),
        ("same-model-repos", "must differ"),
        ("no-token", "no Hugging Face token"),
        ("wrong-token", "HTTP 401"),
        ("no-pairs", "no pairs in"),
        ("no-run-json", "run.json"),
        ("no-policy", "--model-repo needs the model folder"),
        ("no-safetensors", "no *.safetensors in"),
        ("offline", "HF_HUB_OFFLINE is set"),
        ("unreachable", "cannot reach the Hub"),
        ("speech-in-run-json", "holds a speech's text"),
    ],
)
def test_bad_input_is_one_line_exit_2(hub, run_dir, monkeypatch, capsys, case, expected):
    from huggingface_hub import constants

    run, dataset, extra = run_dir, "me/pc-pairs", []
    if case == "no-run":
        run = run_dir / "missing"
    elif case == "bad-repo":
        dataset = "bad//repo"
    elif case == "no-owner":
        dataset = "pc-pairs"
    elif case == "same-model-repos":
        extra = ["--model-repo", "me/m", "--reward-model-repo", "me/m"]
    elif case == "bad-model-repo":
        extra = ["--model-repo", "a/b/c"]
    elif case == "no-token":
        monkeypatch.delenv("HF_TOKEN")
    elif case == "wrong-token":
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    elif case == "no-pairs":
        for p in (run_dir / "pairs").glob("*.parquet"):
            p.unlink()
    elif case == "no-run-json":
        (run_dir / "run.json").unlink()
    elif case == "no-policy":
        extra = ["--model-repo", "me/pc-policy"]
        (run_dir / "policy" / "model.safetensors").unlink()
        for p in (run_dir / "policy").iterdir():
            p.unlink()
        (run_dir / "policy").rmdir()
    elif case == "no-safetensors":
        extra = ["--model-repo", "me/pc-policy"]
        (run_dir / "policy" / "model.safetensors").unlink()
    elif case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    elif case == "unreachable":
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    elif case == "speech-in-run-json":
        data = json.loads((run_dir / "run.json").read_text())
        data["stages"]["note"] = "client said: " + "I cannot sleep. " * 10
        (run_dir / "run.json").write_text(json.dumps(data))
    assert main(["push", str(run), "--dataset-repo", dataset, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("psychocounsel: error: ") and expected in err, err
    assert TOKEN not in err and "I cannot sleep" not in err
    if case not in ("wrong-token", "unreachable"):
        assert hub.repos == {}
