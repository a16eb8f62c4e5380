"""The run directory and the call cache: the only module that knows file formats.

A run directory holds::

    run.json          config, package versions, per-stage counts and timings
    speeches.jsonl    ingest output, one Speech per line
    responses.jsonl   generate output, one Response per line
    ratings.jsonl     rate output, one Rating per line (failed ones included, with reason)
    pairs/            train/test parquet + jsonl, dataset card
    cache.sqlite      every model call, keyed by backend identity + request

JSONL files are appended a batch at a time and flushed with fsync, so a killed run leaves at
most one torn last line, which ``read_jsonl`` drops (and ``append_jsonl`` truncates away) on
resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from .backends.base import Backend, ChatRequest, Completion


def stable_hash(obj: Any, n: int = 16) -> str:
    """A short content hash of any JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:n]


def _complete_lines(path: Path) -> tuple[list[str], int]:
    """Lines of ``path`` that end in a newline, and the byte length they cover."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8").splitlines(), end


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file written by this module (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    lines, _ = _complete_lines(path)
    return [json.loads(line) for line in lines if line.strip()]


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows durably. A torn last line from a killed run is cut off first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _, end = _complete_lines(path)
        if end != path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(end)
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write a whole file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    """Paths of one run directory and its run.json."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    speeches = property(lambda self: self.root / "speeches.jsonl")
    responses = property(lambda self: self.root / "responses.jsonl")
    ratings = property(lambda self: self.root / "ratings.jsonl")
    pairs = property(lambda self: self.root / "pairs")
    cache_path = property(lambda self: self.root / "cache.sqlite")
    run_json = property(lambda self: self.root / "run.json")

    def read_run_json(self) -> dict[str, Any]:
        if self.run_json.exists():
            return json.loads(self.run_json.read_text(encoding="utf-8"))
        return {}

    def update_run_json(self, **fields: Any) -> None:
        data = self.read_run_json()
        data.update(fields)
        write_json(self.run_json, data)

    def record_stage(self, stage: str, stats: dict[str, Any]) -> None:
        """Overwrite ``stages.<stage>`` with this run's figures."""
        data = self.read_run_json()
        data.setdefault("stages", {})[stage] = stats
        write_json(self.run_json, data)


class Cache:
    """SQLite cache of model calls. Key = hash(backend identity, messages, params).

    Used through :meth:`complete`, which serves what it can from the cache, sends the rest to the
    backend as one batch, and stores successful completions (failures are not cached, so a rerun
    retries them). Counters ``calls_made`` / ``calls_cached`` feed run.json.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, completion TEXT, created REAL)"
        )
        self.db.commit()
        self.calls_made = 0
        self.calls_cached = 0

    @staticmethod
    def key(backend: Backend, request: ChatRequest) -> str:
        return stable_hash(
            {"backend": backend.identity(), "messages": request.messages, "params": request.params}, 32
        )

    def get(self, key: str) -> Completion | None:
        row = self.db.execute("SELECT completion FROM calls WHERE key = ?", (key,)).fetchone()
        return Completion.from_dict(json.loads(row[0])) if row else None

    def put_many(self, items: list[tuple[str, Completion]]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO calls VALUES (?, ?, ?)",
                [(k, json.dumps(c.to_dict(), ensure_ascii=False), now) for k, c in items],
            )

    def complete(self, backend: Backend, requests: list[ChatRequest], progress: Any = None) -> list[Completion]:
        keys = [self.key(backend, r) for r in requests]
        out: list[Completion | None] = [self.get(k) for k in keys]
        todo = [i for i, c in enumerate(out) if c is None]
        self.calls_cached += len(requests) - len(todo)
        if progress and len(requests) > len(todo):
            progress(len(requests) - len(todo))
        if todo:
            fresh = backend.complete([requests[i] for i in todo], progress=progress)
            self.calls_made += len(todo)
            for i, c in zip(todo, fresh):
                out[i] = c
            self.put_many([(keys[i], c) for i, c in zip(todo, fresh) if not c.error])
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.db.close()
