"""The ingest stage: a file of client speeches -> speeches.jsonl.

Reads CSV, JSONL, JSON, Parquet or plain text, normalises each speech, optionally scrubs PII,
drops empty / too short / too long / duplicate speeches (first occurrence wins) and writes one
Speech per line. Logs carry counts and ids only, never speech text.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cleaning import LINE_BREAKS, normalise_text, scrub_pii
from .config import IngestConfig
from .dedupe import dedupe
from .errors import UserError
from .records import Speech
from .store import RunDir, stable_hash, write_jsonl

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt"}
DROP_REASONS = ("empty", "too_short", "too_long", "exact_duplicate", "near_duplicate")
# Stored roles are the Speech ones; user/assistant (chat-style exports) map onto them.
ROLES = {"client": "client", "counselor": "counselor", "user": "client", "assistant": "counselor"}

# ---------------------------------------------------------------- reading files

Table = tuple[list[str], list[dict[str, Any]]]  # column names, rows


def detect_format(path: Path, fmt: str) -> str:
    """The format named in the config, or the one the extension implies.

    >>> detect_format(Path("a/b.NDJSON"), "auto"), detect_format(Path("x.dat"), "csv")
    ('jsonl', 'csv')
    """
    if fmt != "auto":
        return fmt
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"unknown format '{path.suffix}' for {path}; use --format csv|jsonl|json|parquet|txt")
    return FORMATS[path.suffix.lower()]


def _check_input(path: Path | None) -> Path:
    if path is None:
        raise UserError("no input file configured; set ingest.input in the config or pass --input FILE")
    if not path.exists():
        raise UserError(f"input file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a file; give the path of one input file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    return path


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # -sig: Excel writes a byte-order mark first
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); re-encode it as UTF-8"
        ) from None
    if not text.strip():
        raise UserError(f"{path} is empty")
    return text


def _read_csv(path: Path, text: str) -> Table:
    csv.field_size_limit(2**31 - 1)  # the default 131,072 chars is less than some long posts
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="": quoted fields keep newlines
    try:
        header = next(reader)
        # An unnamed first column is the index pandas' to_csv() writes: nothing to read there.
        named = [(i, name.strip()) for i, name in enumerate(header) if name.strip()]
        rows = [
            {name: cells[i] if i < len(cells) else None for i, name in named}
            for cells in reader
            if any(c.strip() for c in cells)
        ]
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None
    return [name for _, name in named], rows


def _columns(path: Path, items: list[Any], where: Callable[[int], str]) -> list[str]:
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{path} {where(n)}: expected a JSON object, got {type(item).__name__}")
    return list(dict.fromkeys(key for item in items for key in item))  # ordered union of keys


def _read_jsonl(path: Path, text: str) -> Table:
    # split("\n"), not splitlines(): U+2028 may stand raw inside a JSON string.
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    items = []
    for n, line in numbered:
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path} line {n}: not valid JSON") from None
    return _columns(path, items, lambda i: f"line {numbered[i][0]}"), items


def _read_json(path: Path, text: str) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f'{path}: expected a list of objects or {{"data": [...]}}')
    return _columns(path, data, lambda i: f"item {i + 1}"), data


def _read_parquet(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable Parquet file ({type(e).__name__})") from None
    return table.column_names, table.to_pylist()


def _read_txt(text: str) -> Table:
    blocks = re.split(r"\n[^\S\n]*\n", LINE_BREAKS.sub("\n", text))  # blank line = new speech
    return ["text"], [{"text": b} for b in blocks if b.strip()]


def read_table(path: Path, fmt: str) -> Table:
    """Columns and rows of an input file, every problem a one-line UserError."""
    if fmt == "parquet":
        columns, rows = _read_parquet(path)
    elif fmt == "txt":
        columns, rows = _read_txt(_read_text(path))
    else:
        readers = {"csv": _read_csv, "jsonl": _read_jsonl, "json": _read_json}
        columns, rows = readers[fmt](path, _read_text(path))
    if not rows:
        raise UserError(f"{path} has no records")
    return columns, rows


# ---------------------------------------------------------------- rows -> speeches


def _cell(value: Any) -> str:
    """A cell as text: None and NaN (pandas' missing value) are empty; 3.0 is "3"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def parse_context(value: Any, where: str, scrub: bool = False) -> list[dict[str, str]]:
    """Earlier turns as ``[{"role": "client"|"counselor", "content": str}]``, oldest first.

    >>> parse_context('[{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hello"}]', "row 1")
    [{'role': 'client', 'content': 'Hi'}, {'role': 'counselor', 'content': 'Hello'}]
    >>> parse_context(None, "row 1")
    []
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"{where}: context is not valid JSON") from None
    if not isinstance(value, list):
        raise UserError(f"{where}: context must be a list of {{role, content}} objects")
    turns = []
    for n, turn in enumerate(value, start=1):
        # The message names the turn by number, never by its content (no speech text in output).
        if not (isinstance(turn, dict) and turn.get("role") in ROLES and isinstance(turn.get("content"), str)):
            raise UserError(f"{where}: context turn {n} needs a role in {', '.join(ROLES)} and a string content")
        role = turn["role"]
        content = normalise_text(turn["content"])
        if content:
            turns.append({"role": ROLES[role], "content": scrub_pii(content) if scrub else content})
    return turns


def _require_columns(path: Path, columns: list[str], cfg: IngestConfig, text_col: str) -> None:
    wanted = [
        (text_col, "--text-column"),
        (cfg.id_column, "--id-column"),
        (cfg.topic_column, "--topic-column"),
        (cfg.context_column, "--context-column"),
    ]
    for name, option in wanted:
        if name is not None and name not in columns:
            raise UserError(
                f"{path.name} has no column '{name}'; its columns are: {', '.join(columns) or '(none)'} (use {option})"
            )


def _to_speech(row: dict, where: str, cfg: IngestConfig, text_col: str, source: str) -> Speech | str:
    """A Speech, or the name of the filter that drops the row."""
    text = normalise_text(_cell(row.get(text_col)))
    if cfg.scrub_pii:
        text = scrub_pii(text)
    if not text:
        return "empty"
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    context = parse_context(row.get(cfg.context_column), where, cfg.scrub_pii) if cfg.context_column else []
    sid = _cell(row.get(cfg.id_column)).strip() if cfg.id_column else ""
    topic = _cell(row.get(cfg.topic_column)).strip() if cfg.topic_column else ""
    return Speech(
        id=sid or "s-" + stable_hash([text, context])[:12],
        text=text,
        topic=topic or None,
        context=context,
        source=source,
    )


def _unique_ids(speeches: list[Speech]) -> int:
    """Suffix -2, -3... to an id already used by an earlier, different speech; returns how many.

    Downstream stages join on speech ids, so two speeches must never share one; some exports
    reuse an id for different questions (CounselChat's questionID does, see test_ingest.py).
    """
    used, renamed = set(), 0
    for s in speeches:
        if s.id in used:
            k = 2
            while f"{s.id}-{k}" in used:
                k += 1
            s.id, renamed = f"{s.id}-{k}", renamed + 1
        used.add(s.id)
    return renamed


def _check_replace(rundir: RunDir, kept: list[Speech], dropped: dict[str, int], force: bool) -> None:
    """Refuse (unless ``force``) to write no speech at all, or to orphan responses already made."""
    if force:
        return
    if not kept:
        why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in dropped.items() if n) or "no records"
        raise UserError(
            f"no speech is left after filtering ({why}); nothing written. Check --min-chars/"
            "--max-chars and the text column (--force writes an empty speeches.jsonl)"
        )
    ids = {s.id for s in kept}
    orphaned = {r.speech_id for r in rundir.read_responses()} - ids
    if orphaned:
        raise UserError(
            f"{rundir.responses} holds responses to {len(orphaned)} speeches that this input does not "
            "have: ingesting it here would mix two data sets. Use a new --run-dir (or --force, and "
            "the stale responses are left out of later stages)"
        )


def run(cfg: IngestConfig, rundir: RunDir, force: bool = False) -> dict:
    """Read ``cfg.input``, filter and deduplicate it, write RUN/speeches.jsonl; return the counts.

    items_in = items_out + sum(dropped) + over_limit. Duplicates are judged on the earlier turns
    and the text together, so one short reply after two different contexts is two speeches.
    """
    path = _check_input(cfg.input)
    fmt = detect_format(path, cfg.format)
    columns, rows = read_table(path, fmt)
    text_col = "text" if fmt == "txt" else cfg.text_column  # a .txt file has just the one column
    _require_columns(path, columns, cfg, text_col)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    speeches = []
    for n, row in enumerate(rows, start=1):
        result = _to_speech(row, f"{path} record {n}", cfg, text_col, path.name)
        if isinstance(result, str):
            dropped[result] += 1
        else:
            speeches.append(result)
    docs = ["\n".join([t["content"] for t in s.context] + [s.text]) for s in speeches]
    kept = []
    for speech, verdict in zip(speeches, dedupe(docs, cfg.near_duplicate_threshold)):
        if verdict:
            dropped[verdict] += 1
        else:
            kept.append(speech)
    over_limit = max(0, len(kept) - cfg.limit) if cfg.limit else 0
    kept = kept[: len(kept) - over_limit]
    renamed = _unique_ids(kept)
    _check_replace(rundir, kept, dropped, force)
    out_path = rundir.speeches
    write_jsonl(out_path, [s.to_dict() for s in kept])
    log = logging.getLogger(__name__).info

    log(f"ingest: read {len(rows)} records from {path.name} ({fmt})")
    notes = {
        "too_short": f" (< {cfg.min_chars} chars)",
        "too_long": f" (> {cfg.max_chars} chars)",
        "near_duplicate": f" (3-shingle Jaccard >= {cfg.near_duplicate_threshold})",
    }
    for reason, n in dropped.items():
        log(f"ingest: {reason}{notes.get(reason, '')}: dropped {n}")
    if cfg.limit:
        log(f"ingest: limit {cfg.limit}: dropped {over_limit}")
    if renamed:
        log(f"ingest: {renamed} ids were reused by different speeches; suffixed -2, -3... to keep them unique")
    log(f"ingest: wrote {len(kept)} speeches to {out_path}")
    return {
        "items_in": len(rows),
        "items_out": len(kept),
        "failed": 0,
        "dropped": dropped,
        "over_limit": over_limit,
        "ids_made_unique": renamed,
    }
