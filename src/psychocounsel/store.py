"""The run directory, its JSONL files and the call cache.

A run directory holds::

    run.json          config, package versions, per-stage counts and timings
    speeches.jsonl    ingest output, one Speech per line
    responses.jsonl   generate output, one Response per line
    ratings.jsonl     rate output, one Rating per line (failed ones included, with reason)
    pairs/            train/test parquet + jsonl, dataset card (pairs.py writes them)
    cache.sqlite      every model call, keyed by backend identity + request (backends/cached.py)

JSONL files are appended a batch at a time and flushed with fsync, so a killed run leaves at
most one torn last line, which ``read_jsonl`` drops (and ``append_jsonl`` truncates away) on
resume. Rows are keyed (a speech by ``id``, a rating by response and judge) and the readers
keep the first row of each key, so even two processes that met despite the run-dir lock
(lock.py) cannot make a stage see a row twice. Every damaged file is a UserError naming the
file, the line and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import UserError
from .records import Rating, Response, Speech


def stable_hash(obj: Any, n: int = 16) -> str:
    """A short content hash of any JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:n]


def _complete_lines(path: Path) -> tuple[list[str], int]:
    """Lines of ``path`` that end in a newline, and the byte length they cover."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not valid UTF-8; the file is damaged: restore it, or delete it "
            "and rerun the stage that writes it"
        ) from None
    # "\n" only, not splitlines(): json.dumps(ensure_ascii=False) writes U+2028, U+0085 and the
    # like raw inside strings, and splitlines() would break a row at them.
    return text.split("\n"), end


DAMAGED = "the file is damaged: restore it, or delete it and rerun the stage that writes it"


def json_row(line: str, where: str, advice: str = "") -> dict[str, Any]:
    """One JSONL line as a JSON object; anything else is a UserError naming ``where`` (file:line)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})" + (f"; {advice}" if advice else "")) from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    return row


def read_jsonl(path: str | Path, key: Callable[[dict], Any] | None = None) -> list[dict[str, Any]]:
    """All complete records of a JSONL file written by this module (a torn last line is ignored).

    With ``key``, only the first row of each key is kept. A line that is not a JSON object is a
    UserError naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a JSONL file")
    lines, _ = _complete_lines(path)
    rows, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = json_row(line, f"{path}:{n}", DAMAGED)
        if key is not None:
            try:
                k = key(row)
            except (KeyError, TypeError):
                raise UserError(f"{path}:{n}: the row lacks its key fields; the file is damaged") from None
            if k in seen:
                continue
            seen.add(k)
        rows.append(row)
    return rows


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
    """Write JSON atomically (temp file + rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    """A JSON file; a damaged one is a UserError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON; the file is damaged: restore or delete it") from None


def check_dir_path(path: Path, what: str = "--run-dir") -> Path:
    """``path`` as a folder to write into: an existing file there is a UserError, not a traceback."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is an existing file, not a folder; give a folder path")
    return path


def check_file_path(path: Path, what: str = "--out") -> Path:
    """``path`` as a file to write: an existing folder there is a UserError, not a traceback."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is an existing folder; give a file path")
    return path


class RunDir:
    """Paths of one run directory, its run.json, and the readers every stage uses."""

    def __init__(self, root: str | Path):
        self.root = check_dir_path(Path(root))
        self.root.mkdir(parents=True, exist_ok=True)

    speeches = property(lambda self: self.root / "speeches.jsonl")
    responses = property(lambda self: self.root / "responses.jsonl")
    ratings = property(lambda self: self.root / "ratings.jsonl")
    pairs = property(lambda self: self.root / "pairs")
    cache_path = property(lambda self: self.root / "cache.sqlite")
    run_json = property(lambda self: self.root / "run.json")

    def read_run_json(self) -> dict[str, Any]:
        if self.run_json.exists():
            data = read_json(self.run_json)
            if not isinstance(data, dict):
                raise UserError(f"{self.run_json}: not a JSON object; the file is damaged: restore or delete it")
            return data
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

    def read_speeches(self) -> list[Speech]:
        """The ingested speeches, one per id; none is a UserError (ingest comes first)."""
        speeches = [Speech.from_dict(d) for d in read_jsonl(self.speeches, key=lambda d: d["id"])]
        if not speeches:
            raise UserError(f"no speeches in {self.speeches}; run 'psychocounsel ingest' first")
        return speeches

    def read_responses(self) -> list[Response]:
        """The generated responses, one per id (may be empty)."""
        return [Response.from_dict(d) for d in read_jsonl(self.responses, key=lambda d: d["id"])]

    def read_ratings(self, judge: str) -> list[Rating]:
        """Ratings by the judge + rubric ``judge`` (rate.judge_key), one per response."""
        rows = read_jsonl(self.ratings, key=lambda d: (d["response_id"], d.get("judge")))
        return [Rating.from_dict(d) for d in rows if d.get("judge") == judge]


class Cache:
    """SQLite store of model calls: key -> completion (as a dict). ``backends.cached.CachedBackend``
    computes the keys and decides what is stored; failures are never stored, so a rerun retries
    them. A damaged file is a UserError that says to delete it (it holds only reusable calls).
    ``meter`` (a ``backends.cached.Meter``) rides along so that every backend on this cache counts
    its tokens and cost in one place; None: each backend keeps its own, unpriced and unlimited."""

    def __init__(self, path: str | Path, meter: Any = None):
        self.path = Path(path)
        self.meter = meter
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, completion TEXT, created REAL)")
            self.db.commit()
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None

    def _damaged(self, e: Exception) -> UserError:
        return UserError(
            f"call cache {self.path} is damaged ({type(e).__name__}: {str(e)[:80]}); delete it and "
            "rerun: it only saves repeated model calls, the run's rows are kept"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            row = self.db.execute("SELECT completion FROM calls WHERE key = ?", (key,)).fetchone()
            return json.loads(row[0]) if row else None
        except (sqlite3.DatabaseError, ValueError) as e:
            raise self._damaged(e) from None

    def put_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        now = time.time()
        try:
            with self.db:
                self.db.executemany(
                    "INSERT OR REPLACE INTO calls VALUES (?, ?, ?)",
                    [(k, json.dumps(c, ensure_ascii=False), now) for k, c in items],
                )
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None

    def close(self) -> None:
        self.db.close()


class JsonlWriter:
    """Write a JSONL file row by row, atomically: rows go to PATH.tmp, which replaces PATH (after
    fsync) only when the ``with`` block ends without an error; on an error it is removed and
    PATH is left as it was. For files too big to build in memory (``write_jsonl`` takes a list).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> with JsonlWriter(path) as out:
    ...     out.write({"id": "a"})
    >>> path.read_text(), out.rows
    ('{"id": "a"}\\n', 1)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        self.rows = 0

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "w", encoding="utf-8")
        return self

    def write(self, row: dict[str, Any]) -> None:
        self.write_line(json.dumps(row, ensure_ascii=False) + "\n")

    def write_line(self, line: str) -> None:
        """One row already serialised as ``write`` would (one line of JSON, ending in a newline)."""
        self._file.write(line)
        self.rows += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._file.close()
            self.tmp.unlink(missing_ok=True)
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)


def iter_jsonl_lines(path: str | Path) -> Iterable[tuple[int, int, str]]:
    """(line number, byte offset, text) of each complete, non-blank line of a JSONL file written
    by this module, read a line at a time (a torn last line is skipped, as ``read_jsonl`` does).
    ``offset`` lets a reader come back to one row later (``read_jsonl_at``)."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a JSONL file")
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                return  # a torn last line
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(
                    f"{path}:{n}: not valid UTF-8; the file is damaged: restore it, or delete it "
                    "and rerun the stage that writes it"
                ) from None
            if text.strip():
                yield n, start, text


def read_jsonl_at(f, offset: int, where: str) -> dict[str, Any]:
    """The JSONL row that starts at byte ``offset`` of the open binary file ``f``."""
    f.seek(offset)
    return json_row(f.readline().decode("utf-8"), where, DAMAGED)
