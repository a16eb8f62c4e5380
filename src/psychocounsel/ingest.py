"""The ingest stage: a file of client speeches -> speeches.jsonl.

Reads CSV, JSONL, JSON, Parquet or plain text, normalises each speech, optionally scrubs PII,
drops empty / too short / too long / duplicate speeches (first occurrence wins) and writes one
Speech per line. Logs carry counts and ids only, never speech text.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

from .config import IngestConfig
from .errors import UserError
from .records import Speech
from .store import stable_hash, write_jsonl

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".txt": "txt"}
DROP_REASONS = ("empty", "too_short", "too_long", "exact_duplicate", "near_duplicate")
# Stored roles are the Speech ones; user/assistant (chat-style exports) map onto them.
ROLES = {"client": "client", "counselor": "counselor", "user": "client", "assistant": "counselor"}

# ---------------------------------------------------------------- normalising and scrubbing

# Line breaks other than "\n" (CR, VT, FF, NEL, U+2028/9): str.splitlines() honours them all.
_LINE_BREAKS = re.compile(r"\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_RUNS = re.compile(r"\n{3,}")


def _strip_invisible(text: str) -> str:
    # Cc = control characters, Cf = zero-width and bidi marks (ZWSP, ZWJ, BOM, LRM...): invisible
    # chars that would otherwise make two identical-looking speeches differ.
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf"))


def normalise_text(text: str) -> str:
    """NFKC, no invisible characters, single spaces, at most one blank line, stripped lines.

    >>> normalise_text("  Hello\\u200b   world\\t!  \\r\\n\\r\\n\\r\\n\\n  Bye\\x07 ")
    'Hello world !\\n\\nBye'
    >>> normalise_text("\\uff21\\u00a0\\ufb01")  # full-width A, no-break space, "fi" ligature
    'A fi'
    >>> normalise_text(" \\n \\t ")
    ''
    """
    # Invisible characters go before NFKC too: "e" + ZWJ + U+0301 only composes to "é" once the
    # ZWJ is gone, and the result must already be NFKC for normalise_text to be idempotent.
    text = _strip_invisible(_LINE_BREAKS.sub("\n", text))
    text = _strip_invisible(unicodedata.normalize("NFKC", text))
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip()


_EMAIL = re.compile(r"[\w.+'%-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
# A URL or handle ends before trailing punctuation: "see www.x.org." keeps its full stop.
_URL = re.compile(r"(?:https?://|\bwww\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]", re.IGNORECASE)
_HANDLE = re.compile(r"(?<![\w@.])@[A-Za-z_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])?(?![\w@])")
_PHONE = re.compile(
    r"""(?<![\w+])(?:
        \+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}  # +44 20 7946 0958
      | (?:1[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[ .-]?)\d{3}[ .-]?\d{4}          # (555) 123-4567
      | [2-9]\d{2}[.-]\d{4}                                               # 555-1234 (NANP: 2-9)
      | (?P<trunk>0\d{1,4}(?:[ -]?\d{2,6}){1,4})                           # 07700 900123
    )(?!\w)""",
    re.VERBOSE,
)


def _phone(match: re.Match) -> str:
    # 7 digits is a US local number; fewer are ages, years and counts. A national number with a
    # trunk 0 needs 10 (UK, France, Germany have 10-11), so "01 02 2019" stays a date.
    need = 10 if match.group("trunk") else 7
    return "[PHONE]" if sum(c.isdigit() for c in match.group()) >= need else match.group()


def scrub_pii(text: str) -> str:
    """Replace emails, URLs, @handles and phone numbers with placeholders.

    >>> scrub_pii("Mail me at jo.doe+x@mail.example.com or see https://example.com/a?b=1.")
    'Mail me at [EMAIL] or see [URL].'
    >>> scrub_pii("Call 555-123-4567, (555) 123-4567, +44 20 7946 0958, 07700 900123 or 555-1234!")
    'Call [PHONE], [PHONE], [PHONE], [PHONE] or [PHONE]!'
    >>> scrub_pii("I follow @jane_doe and visit www.example.org daily")
    'I follow [HANDLE] and visit [URL] daily'
    >>> scrub_pii("I am 34, married in 2019, from 1990-1995, on 2019-03-25, earn $1,500,000.")
    'I am 34, married in 2019, from 1990-1995, on 2019-03-25, earn $1,500,000.'
    >>> scrub_pii("We meet @ 5pm, 3 times a week")
    'We meet @ 5pm, 3 times a week'
    """
    text = _EMAIL.sub("[EMAIL]", text)  # before URLs, so the host of an email is not a URL
    text = _URL.sub("[URL]", text)
    text = _HANDLE.sub("[HANDLE]", text)
    return _PHONE.sub(_phone, text)


# ---------------------------------------------------------------- near-duplicate detection

_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 3) -> set[str]:
    """Casefolded word n-grams; a text shorter than n words is one shingle.

    >>> sorted(shingles("I feel  so TIRED, always"))
    ['feel so tired', 'i feel so', 'so tired always']
    >>> shingles("Help me")
    {'help me'}
    """
    words = _WORD.findall(text.casefold())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(gram) for gram in zip(*(words[k:] for k in range(n)))}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|.

    >>> jaccard({1, 2, 3}, {2, 3, 4})
    0.5
    """
    return len(a & b) / len(a | b) if a or b else 1.0


def _prefix_len(size: int, threshold: float) -> int:
    # Prefix filter (Chaudhuri et al. 2006): with every set sorted by one global order, two sets
    # with Jaccard >= t share an element within the first size - ceil(t * size) + 1 of each.
    # The 1e-9 keeps 0.7 * 10 = 7.000000000000001 from rounding up to 8.
    return size - math.ceil(threshold * size - 1e-9) + 1


def dedupe(docs: list[str], threshold: float) -> list[str | None]:
    """For each doc, in order: None (keep), "exact_duplicate" or "near_duplicate" of a kept doc.

    Exact = same casefolded text. Near = word 3-shingle Jaccard >= threshold with a kept doc;
    threshold 1.0 means exact only. Candidates come from an inverted index of the rarest
    shingles of each kept doc (prefix filtering), so common shingles ("i don t") never make
    the comparison quadratic; each candidate is then checked exactly.

    >>> base = "one two three four five six seven eight nine ten eleven twelve"
    >>> dedupe([base, base.upper(), base + " thirteen", "something else entirely"], 0.9)
    [None, 'exact_duplicate', 'near_duplicate', None]
    >>> dedupe([base, base + " thirteen"], 1.0)
    [None, None]
    """
    sets = [shingles(d) for d in docs] if threshold < 1.0 else []
    df: Counter[str] = Counter()
    for shs in sets:
        df.update(shs)
    # Global order: rarest first. Shingles in one doc only (most of them) can match nothing, so
    # they are not ranked at all, just counted as the head of each doc's prefix.
    shared = sorted((s for s, n in df.items() if n > 1), key=lambda s: (df[s], s))
    rank = {s: r for r, s in enumerate(shared)}
    index: dict[int, list[int]] = defaultdict(list)
    seen: set[str] = set()
    verdicts: list[str | None] = []
    for i, doc in enumerate(docs):
        key = doc.casefold()
        if key in seen:
            verdicts.append("exact_duplicate")
            continue
        seen.add(key)
        if threshold < 1.0 and sets[i]:
            ranked = sorted(rank[s] for s in sets[i] & rank.keys())
            unique = len(sets[i]) - len(ranked)
            prefix = ranked[: max(0, _prefix_len(len(sets[i]), threshold) - unique)]
            if _has_near(sets, i, prefix, index, threshold):
                verdicts.append("near_duplicate")
                continue
            for r in prefix:
                index[r].append(i)
        verdicts.append(None)
    return verdicts


def _has_near(sets: list[set], i: int, prefix: list[int], index: dict, threshold: float) -> bool:
    size, checked = len(sets[i]), set()
    for r in prefix:
        for j in index.get(r, ()):
            if j in checked:
                continue
            checked.add(j)
            # Jaccard >= t needs t * |A| <= |B| <= |A| / t: skip candidates of the wrong size
            # (1e-9: 0.7 * 10 is 7.000000000000001 in floating point).
            other = len(sets[j])
            if (threshold * size - 1e-9 <= other <= size / threshold + 1e-9
                    and jaccard(sets[i], sets[j]) >= threshold):
                return True
    return False


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
        raise UserError(f"unknown format '{path.suffix}' for {path}; "
                        "use --format csv|jsonl|json|parquet|txt")
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
        raise UserError(f"{path} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}); re-encode it as UTF-8") from None
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
        rows = [{name: cells[i] if i < len(cells) else None for i, name in named}
                for cells in reader if any(c.strip() for c in cells)]
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
    blocks = re.split(r"\n[^\S\n]*\n", _LINE_BREAKS.sub("\n", text))  # blank line = new speech
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
            raise UserError(f"{where}: context turn {n} needs a role in {', '.join(ROLES)} "
                            "and a string content")
        role = turn["role"]
        content = normalise_text(turn["content"])
        if content:
            turns.append({"role": ROLES[role], "content": scrub_pii(content) if scrub else content})
    return turns


def _require_columns(path: Path, columns: list[str], cfg: IngestConfig, text_col: str) -> None:
    wanted = [(text_col, "--text-column"), (cfg.id_column, "--id-column"),
              (cfg.topic_column, "--topic-column"), (cfg.context_column, "--context-column")]
    for name, option in wanted:
        if name is not None and name not in columns:
            raise UserError(f"{path.name} has no column '{name}'; its columns are: "
                            f"{', '.join(columns) or '(none)'} (use {option})")


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
    return Speech(id=sid or "s-" + stable_hash([text, context])[:12], text=text,
                  topic=topic or None, context=context, source=source)


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


def run(cfg: IngestConfig, out_path: Path, log: Callable[[str], Any] = print) -> dict:
    """Read ``cfg.input``, filter and deduplicate it, write ``out_path``; return the counts.

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
    write_jsonl(out_path, [s.to_dict() for s in kept])

    log(f"ingest: read {len(rows)} records from {path.name} ({fmt})")
    notes = {"too_short": f" (< {cfg.min_chars} chars)", "too_long": f" (> {cfg.max_chars} chars)",
             "near_duplicate": f" (3-shingle Jaccard >= {cfg.near_duplicate_threshold})"}
    for reason, n in dropped.items():
        log(f"ingest: {reason}{notes.get(reason, '')}: dropped {n}")
    if cfg.limit:
        log(f"ingest: limit {cfg.limit}: dropped {over_limit}")
    if renamed:
        log(f"ingest: {renamed} ids were reused by different speeches; suffixed -2, -3... to keep them unique")
    log(f"ingest: wrote {len(kept)} speeches to {out_path}")
    return {"items_in": len(rows), "items_out": len(kept), "failed": 0, "dropped": dropped,
            "over_limit": over_limit, "ids_made_unique": renamed}
