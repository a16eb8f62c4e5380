"""The ingest stage: a file of client speeches -> speeches.jsonl.

Reads CSV, JSONL, JSON, Parquet or plain text, normalises each speech, optionally scrubs PII,
drops empty / too short / too long / duplicate speeches (first occurrence wins) and writes one
Speech per line. Logs carry counts and ids only, never speech text.

CSV, JSONL and Parquet are streamed: pass 1 filters rows onto a spool file in the run folder,
counts shingles and spools each speech's shingle hashes beside it (8 bytes a word, so pass 2
does not compute them again), pass 2 judges duplicates and writes; memory holds hashes, not
text (1M rows: benchmarks/scale.py, docs/benchmarks.md).
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import logging
import math
import os
import re
import tempfile
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .cleaning import LINE_BREAKS, normalise_text, scrub_pii
from .config import IngestConfig
from .dedupe import NearDuplicates, ShingleCounts, shingle_hashes
from .errors import UserError
from .records import Speech
from .store import JsonlWriter, RunDir, stable_hash

Table = tuple[list[str], list[dict[str, Any]]]  # column names, rows
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt"}
DROP_REASONS = ("empty", "too_short", "too_long", "exact_duplicate", "near_duplicate")
# Stored roles are the Speech ones; user/assistant (chat-style exports) map onto them.
ROLES = {"client": "client", "counselor": "counselor", "user": "client", "assistant": "counselor"}

# ---------------------------------------------------------------- reading files

# A lone CR ends a line too (old Mac files): csv reads lines as io.StringIO(newline="") splits them.
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")
BATCH = 4096  # rows judged for duplicates at a time: ~4 MB of text and shingle hashes


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


def _not_utf8(path: Path, raw: bytes, at: int) -> UserError:
    return UserError(f"{path} is not valid UTF-8 (byte 0x{raw[0]:02x} at offset {at}); re-encode it as UTF-8")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # -sig: Excel writes a byte-order mark first
    except UnicodeDecodeError as e:
        bom = 3 if data.startswith(codecs.BOM_UTF8) else 0  # -sig counts offsets after the mark
        raise _not_utf8(path, data[bom + e.start :], bom + e.start) from None
    if not text.strip():
        raise UserError(f"{path} is empty")
    return text


def _split_cr(line: str) -> list[str] | tuple[str]:
    """A line split after each lone CR, as io.StringIO(newline="") reads it.

    >>> _split_cr("a\\rb\\r\\n"), _split_cr("ab\\r\\n")
    (['a\\r', 'b\\r\\n'], ('ab\\r\\n',))
    """
    return _LONE_CR.split(line) if line.count("\r") != line.count("\r\n") else (line,)


class Source:
    """The rows of an input file, read as they are used: CSV, JSONL and Parquet a line or a
    batch at a time, JSON and text whole. ``columns`` is known before the rows (CSV header,
    Parquet schema, JSON, text) or, for JSONL, after the last row (the union of the keys).

    Problems come out in the order reading the whole file first gave them, whatever their
    place in the file: bad UTF-8, then an empty file, then bad syntax (CSV, JSON), then a record
    that is not an object. So iteration carries on past a problem, yielding no more rows, and
    raises at the end; only bad UTF-8, which outranks everything, is raised where it is met.
    """

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self.columns: list[str] | None = None
        self.blank = True  # no character but whitespace so far

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.fmt == "csv":
            return self._csv()
        if self.fmt == "jsonl":
            return self._jsonl()
        if self.fmt == "parquet":
            return self._parquet()
        text = _read_text(self.path)
        columns, rows = _read_txt(text) if self.fmt == "txt" else _read_json(self.path, text)
        self.columns = columns
        return iter(rows)

    def _lines(self) -> Iterator[str]:
        """The file's lines split at "\n" only (kept), the byte-order mark dropped; bad UTF-8 is
        raised here, naming the byte and its offset in the file."""
        offset = 0
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f):
                if n == 0 and raw.startswith(codecs.BOM_UTF8):
                    raw, offset = raw[3:], 3
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _not_utf8(self.path, raw[e.start :], offset + e.start) from None
                offset += len(raw)
                if self.blank and line.strip():
                    self.blank = False
                yield line

    def _empty(self) -> None:
        if self.blank:
            raise UserError(f"{self.path} is empty")

    def _csv(self) -> Iterator[dict[str, Any]]:
        csv.field_size_limit(2**31 - 1)  # the default 131,072 chars is less than some long posts
        lines = self._lines()
        # A CR before the line's own end is a lone one (a CSV written with "\r\n" has none).
        split = (piece for line in lines for piece in _split_cr(line) if piece)
        reader = csv.reader(split)
        problem = None
        try:
            # An unnamed first column is the index pandas' to_csv() writes: nothing to read there.
            named = [(i, name.strip()) for i, name in enumerate(next(reader, [])) if name.strip()]
            self.columns = [name for _, name in named]
            for cells in reader:
                if any(c.strip() for c in cells):
                    yield {name: cells[i] if i < len(cells) else None for i, name in named}
        except csv.Error as e:
            problem = UserError(f"{self.path} line {reader.line_num}: not valid CSV ({e})")
            for _ in lines:  # bad UTF-8 further on is still the first problem to name
                pass
        self._empty()
        if problem:
            raise problem from None

    def _jsonl(self) -> Iterator[dict[str, Any]]:
        keys: dict[str, None] = {}  # ordered union of the keys
        bad_json = not_object = None
        # Lines split at "\n" only, not splitlines(): U+2028 may stand raw inside a JSON string.
        for n, line in enumerate(self._lines(), start=1):
            if not line.strip() or bad_json:
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                bad_json = UserError(f"{self.path} line {n}: not valid JSON")
                continue
            if not isinstance(item, dict):
                not_object = not_object or UserError(
                    f"{self.path} line {n}: expected a JSON object, got {type(item).__name__}"
                )
            if not_object:
                continue
            keys.update(dict.fromkeys(item))
            yield item
        self._empty()
        if bad_json or not_object:
            raise (bad_json or not_object) from None
        self.columns = list(keys)

    def _parquet(self) -> Iterator[dict[str, Any]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(self.path)
            self.columns = file.schema_arrow.names
            for batch in file.iter_batches(batch_size=BATCH):
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise UserError(f"{self.path} is not a readable Parquet file ({type(e).__name__})") from None


def _columns(path: Path, items: list[Any], where: Callable[[int], str]) -> list[str]:
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{path} {where(n)}: expected a JSON object, got {type(item).__name__}")
    return list(dict.fromkeys(key for item in items for key in item))  # ordered union of keys


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


def _read_txt(text: str) -> Table:
    blocks = re.split(r"\n[^\S\n]*\n", LINE_BREAKS.sub("\n", text))  # blank line = new speech
    return ["text"], [{"text": b} for b in blocks if b.strip()]


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


def _wanted(cfg: IngestConfig, text_col: str) -> list[tuple[str | None, str]]:
    return [
        (text_col, "--text-column"),
        (cfg.id_column, "--id-column"),
        (cfg.topic_column, "--topic-column"),
        (cfg.context_column, "--context-column"),
    ]


def _missing(columns: list[str], cfg: IngestConfig, text_col: str) -> bool:
    return any(name is not None and name not in columns for name, _ in _wanted(cfg, text_col))


def _require_columns(path: Path, columns: list[str], cfg: IngestConfig, text_col: str) -> None:
    for name, option in _wanted(cfg, text_col):
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


def _unique_id(sid: str, used: set[str]) -> str:
    """``sid``, or with -2, -3... suffixed when an earlier, different speech has it already.

    Downstream stages join on speech ids, so two speeches must never share one; some exports
    reuse an id for different questions (CounselChat's questionID does, see test_ingest.py).

    >>> _unique_id("5", {"5", "5-2"})
    '5-3'
    """
    if sid in used:
        k = 2
        while f"{sid}-{k}" in used:
            k += 1
        sid = f"{sid}-{k}"
    return sid


def _check_replace(rundir: RunDir, ids: set[str], dropped: dict[str, int], force: bool) -> None:
    """Refuse (unless ``force``) to write no speech at all, or to orphan responses already made."""
    if force:
        return
    if not ids:
        why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in dropped.items() if n) or "no records"
        raise UserError(
            f"no speech is left after filtering ({why}); nothing written. Check --min-chars/"
            "--max-chars and the text column (--force writes an empty speeches.jsonl)"
        )
    orphaned = {r.speech_id for r in rundir.read_responses()} - ids
    if orphaned:
        raise UserError(
            f"{rundir.responses} holds responses to {len(orphaned)} speeches that this input does not "
            "have: ingesting it here would mix two data sets. Use a new --run-dir (or --force, and "
            "the stale responses are left out of later stages)"
        )


def _doc(speech: dict) -> str:
    """What duplicates are judged on: the earlier turns and the text."""
    return "\n".join([t["content"] for t in speech["context"]] + [speech["text"]])


def _filter(source: Source, cfg: IngestConfig, spool, counts: ShingleCounts | None, shingled=None) -> dict[str, Any]:
    """Pass 1: every row of ``source`` to a Speech on ``spool`` (one JSON line each) or a drop
    reason, and the duplicate pass's shingle counts; with ``counts``, each spooled speech's
    shingle hashes to the binary file ``shingled`` (int64s) and their number to "sizes". Raises
    the file's first problem (see ``Source``), then a missing column, then the first bad row, as
    reading it whole did."""
    path, text_col = source.path, "text" if source.fmt == "txt" else cfg.text_column  # .txt: one column
    dropped = dict.fromkeys(DROP_REASONS, 0)
    sizes = array("I")
    n, bad_row = 0, None
    for n, row in enumerate(source, start=1):
        if bad_row or (source.columns is not None and _missing(source.columns, cfg, text_col)):
            continue  # a problem to report is known: the rest is only read for an earlier kind
        try:
            result = _to_speech(row, f"{path} record {n}", cfg, text_col, path.name)
        except UserError as e:
            bad_row = e
            continue
        if isinstance(result, str):
            dropped[result] += 1
            continue
        speech = result.to_dict()
        spool.write(json.dumps(speech, ensure_ascii=False) + "\n")
        if counts is not None:
            hashes = array("q", shingle_hashes(_doc(speech)))
            counts.add(hashes)
            sizes.append(len(hashes))
            hashes.tofile(shingled)
    if not n:
        raise UserError(f"{path} has no records")
    _require_columns(path, source.columns or [], cfg, text_col)
    if bad_row:
        raise bad_row from None
    return {"items_in": n, "dropped": dropped, "sizes": sizes if counts is not None else None}


def _write(spool: Path, out: JsonlWriter, cfg: IngestConfig, judge: NearDuplicates, read: dict) -> dict[str, Any]:
    """Pass 2: the spooled speeches in order, less duplicates and those over ``cfg.limit``, with
    unique ids, to ``out``; their shingle hashes, if pass 1 spooled them (``read["sizes"]``),
    from the file beside ``spool`` (``_shingled``)."""
    import numpy as np

    used: set[str] = set()
    over_limit = renamed = done = 0
    dropped, sizes = read["dropped"], read["sizes"]
    with open(spool, encoding="utf-8") as f, open(_shingled(spool), "rb") as hashes:
        while lines := list(itertools.islice(f, BATCH)):
            batch, shingled = [json.loads(line) for line in lines], None
            if sizes is not None:
                ends = list(itertools.accumulate(sizes[done : done + len(lines)]))
                done += len(lines)
                shingled = np.frombuffer(hashes.read(8 * ends[-1]), dtype=np.int64), ends
            for line, speech, verdict in zip(lines, batch, judge.judge([_doc(s) for s in batch], shingled)):
                if verdict:
                    dropped[verdict] += 1
                elif cfg.limit and len(used) >= cfg.limit:
                    over_limit += 1
                else:
                    sid = _unique_id(speech["id"], used)
                    used.add(sid)
                    if sid == speech["id"]:
                        out.write_line(line)  # the spooled JSON as it is: the same dumps of the same dict
                    else:
                        renamed += 1
                        out.write(speech | {"id": sid})
    return {"ids": used, "over_limit": over_limit, "renamed": renamed}


def _shingled(spool: Path) -> Path:
    """Where pass 1 spools the shingle hashes of the speeches it spools to ``spool``."""
    return spool.with_suffix(".shingles")


def run(cfg: IngestConfig, rundir: RunDir, force: bool = False) -> dict:
    """Read ``cfg.input``, filter and deduplicate it, write RUN/speeches.jsonl; return the counts.

    items_in = items_out + sum(dropped) + over_limit. Duplicates are judged on the earlier turns
    and the text together, so one short reply after two different contexts is two speeches.
    Streamed in two passes through a spool file in the run folder, so memory does not grow with
    the text read (benchmarks/scale.py); speeches.jsonl is replaced only once all is well.
    """
    path = _check_input(cfg.input)
    fmt = detect_format(path, cfg.format)
    source = Source(path, fmt)
    near = cfg.near_duplicate_threshold < 1.0
    counts = ShingleCounts(path.stat().st_size // 6) if near else None  # ~6 bytes a word
    fd, spool = tempfile.mkstemp(prefix=".ingest-", suffix=".spool", dir=rundir.root)
    spool = Path(spool)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f, open(_shingled(spool), "wb") as shingled:
            read = _filter(source, cfg, f, counts, shingled)
        dropped = read["dropped"]
        with JsonlWriter(rundir.speeches) as out:
            kept = _write(spool, out, cfg, NearDuplicates(cfg.near_duplicate_threshold, counts), read)
            _check_replace(rundir, kept["ids"], dropped, force)
    finally:
        spool.unlink()
        _shingled(spool).unlink(missing_ok=True)
    log = logging.getLogger(__name__).info

    log(f"ingest: read {read['items_in']} records from {path.name} ({fmt})")
    notes = {
        "too_short": f" (< {cfg.min_chars} chars)",
        "too_long": f" (> {cfg.max_chars} chars)",
        "near_duplicate": f" (3-shingle Jaccard >= {cfg.near_duplicate_threshold})",
    }
    for reason, n in dropped.items():
        log(f"ingest: {reason}{notes.get(reason, '')}: dropped {n}")
    if cfg.limit:
        log(f"ingest: limit {cfg.limit}: dropped {kept['over_limit']}")
    if kept["renamed"]:
        log(f"ingest: {kept['renamed']} ids were reused by different speeches; suffixed -2, -3... to keep them unique")
    log(f"ingest: wrote {out.rows} speeches to {rundir.speeches}")
    return {
        "items_in": read["items_in"],
        "items_out": out.rows,
        "failed": 0,
        "dropped": dropped,
        "over_limit": kept["over_limit"],
        "ids_made_unique": kept["renamed"],
    }
