"""Preference pairs in and out of files: the published PsychoCounsel-Preference columns
(``question``, ``chosen``, ``rejected``, ...) or TRL's (``prompt``, ``chosen``, ``rejected``), from a
run's ``pairs/`` folder, one .parquet/.jsonl/.csv file, a ``datasets`` folder saved with
``save_to_disk``, or a Hub id (needs network). Training (train/) and evaluation (evaluate/) both
read pairs through here, so neither depends on the other.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from .errors import UserError
from .records import Speech
from .store import JsonlWriter, json_row

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- pairs ------------------------------------------------------------------------------------


def read_jsonl_file(path: Path) -> list[dict]:
    """Every row of a JSONL file a user gives (the last line may lack its newline); a line that
    is not a JSON object is a UserError naming it."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rows.append(json_row(line, f"{path}:{n}"))
    return rows


def read_table_file(path: Path) -> list[dict]:
    """Rows of a .parquet, .jsonl or .csv file (pairs, labelled pairs); a damaged file is a UserError."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
            raise UserError(f"{path}: cannot read as parquet ({str(e).splitlines()[0][:200]})") from None
    try:
        if suffix == ".jsonl":
            return read_jsonl_file(path)
        if suffix == ".csv":
            csv.field_size_limit(2**31 - 1)  # the default 131,072 characters is less than some long posts
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte offset {e.start}); re-encode it as UTF-8") from None
    raise UserError(f"{path}: unsupported file type '{suffix}'; use .parquet, .jsonl or .csv")


def _read_saved_dataset(path: Path, split: str) -> list[dict]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if not isinstance(data, DatasetDict):
        raise UserError(f"{path} holds one dataset without splits; save a DatasetDict with 'train' and 'test'")
    if split not in data:
        raise UserError(f"{path} has no split '{split}'; its splits: {', '.join(data) or 'none'}")
    return data[split].to_list()


def _read_hub(name: str, split: str) -> list[dict]:
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()
    except Exception as e:  # offline, unknown id or split: datasets raises many exception types
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(
            f"'{name}' is not a local path and loading it from the Hugging Face Hub failed ({reason}); "
            "that needs network access, or pass a local copy (datasets save_to_disk folder or "
            "parquet/jsonl files)"
        ) from None


def _read_source(source: str | Path, split: str) -> tuple[list[dict], str]:
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _read_saved_dataset(path, split), f"{path} (split '{split}')"
        if (path / "pairs").is_dir():
            path = path / "pairs"  # a run directory
        for name in (f"{split}.parquet", f"{split}.jsonl"):
            if (path / name).is_file():
                return read_table_file(path / name), str(path / name)
        raise UserError(f"{path} has no {split}.parquet or {split}.jsonl and is not a saved datasets folder")
    if path.is_file():
        return read_table_file(path), str(path)
    if HUB_ID.match(str(source)):
        return _read_hub(str(source), split), f"{source} (split '{split}')"
    raise UserError(f"no such file or directory: {path}")


def _message_list(value: Any) -> list[dict] | None:
    """``value`` as a conversation, when it is one (CSV cells hold them as JSON text)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if (
        isinstance(value, (list, tuple))
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"].strip()} for m in value]
    return None


def text_field(row: dict, key: str, where: str, i: int) -> str | list[dict]:
    """``row[key]`` as stripped text or a list of {role, content} messages; else a UserError naming the row."""
    value = row.get(key)
    messages = _message_list(value)
    if messages is not None:
        return messages
    if isinstance(value, str) and value.strip():
        return value.strip()
    kind = "empty" if value in (None, "", []) else f"a {type(value).__name__}"
    raise UserError(f"{where}: row {i + 1} '{key}' is {kind}; need text or a list of {{role, content}} messages")


def _margin(row: dict, where: str, i: int) -> float | None:
    value = row.get("margin")
    if (
        value in (None, "")
        and row.get("chosen_score") not in (None, "")
        and row.get("rejected_score") not in (None, "")
    ):
        value = float(row["chosen_score"]) - float(row["rejected_score"])
    if value in (None, ""):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: row {i + 1} has a non-numeric margin {value!r}") from None
    return value if math.isfinite(value) else None


def normalize_rows(rows: list[dict], where: str) -> list[dict]:
    """TRL's columns: prompt (from ``question`` or ``prompt``), chosen, rejected, and margin
    (the ``margin`` column, else chosen_score - rejected_score) when a row has one.

    >>> normalize_rows([{"question": " I feel lost. ", "chosen": "Tell me more.", "rejected": "Cheer up.",
    ...                  "margin": 1.5}], "x")
    [{'prompt': 'I feel lost.', 'chosen': 'Tell me more.', 'rejected': 'Cheer up.', 'margin': 1.5}]
    >>> normalize_rows([{"prompt": "hi", "answer": "a"}], "x.csv")
    Traceback (most recent call last):
    ...
    psychocounsel.errors.UserError: x.csv lacks column(s) chosen, rejected; columns present: prompt, answer
    """
    if not rows:
        return []
    present = list(rows[0])
    prompt_key = next((k for k in ("question", "prompt") if k in present), None)
    missing = [c for c in ("chosen", "rejected") if c not in present] + ([] if prompt_key else ["question (or prompt)"])
    if missing:
        raise UserError(
            f"{where} lacks column(s) {', '.join(missing)}; columns present: {', '.join(present) or 'none'}"
        )
    out = []
    for i, row in enumerate(rows):
        item = {
            "prompt": text_field(row, prompt_key, where, i),
            "chosen": text_field(row, "chosen", where, i),
            "rejected": text_field(row, "rejected", where, i),
        }
        margin = _margin(row, where, i)
        if margin is not None:
            item["margin"] = margin
        out.append(item)
    return out


def load_pairs(source: str | Path, split: str) -> list[dict]:
    """Preference pairs of ``split`` in TRL's columns (see ``normalize_rows``).

    ``source``: a run directory or its ``pairs/`` folder ({split}.parquet, else {split}.jsonl);
    a single .parquet/.jsonl/.csv file (the whole file, whatever ``split``); a folder saved with
    ``DatasetDict.save_to_disk``; or a Hugging Face Hub dataset id (needs network access).
    """
    rows, where = _read_source(source, split)
    if not rows:
        raise UserError(f"{where} has no rows in split '{split}'")
    return normalize_rows(rows, where)


def as_question(speech: Speech) -> str:
    """A speech as the ``question`` column: its text, or a multi-turn session as a transcript
    ("Client: ... / Counselor: ... / Client: ...")."""
    if not speech.context:
        return speech.text
    return "\n\n".join(speech.context_lines() + [f"Client: {speech.text}"])


# TRL joins prompt + completion as they are (DPOTrainer and RewardTrainer in TRL 1.16), so a
# text prompt carries the separator: without it "...struggling." + "That sounds..." tokenizes
# across the join, and psychocounsel's own encoding (reward_model.encode) uses the same blank line.
PROMPT_SEPARATOR = "\n\n"


def as_prompt(speech: Speech) -> str:
    """A speech as the text ``prompt`` column: ``as_question`` and a blank line.

    >>> as_prompt(Speech("s1", "I feel lost."))
    'I feel lost.\\n\\n'
    """
    return as_question(speech) + PROMPT_SEPARATOR


def as_conversation(row: dict, speech: Speech) -> dict:
    """A published pair row in TRL's conversational form: ``prompt`` the speech as messages
    (earlier turns as user/assistant), ``chosen``/``rejected`` one assistant message each,
    ``question`` dropped (the prompt holds it); the other columns as they are.

    >>> as_conversation({"ID": "s1", "question": "Hi.", "prompt": "Hi.\\n\\n", "chosen": "Go on.",
    ...                  "rejected": "No.", "margin": 1.0}, Speech("s1", "Hi."))  # doctest: +NORMALIZE_WHITESPACE
    {'ID': 's1', 'prompt': [{'role': 'user', 'content': 'Hi.'}],
     'chosen': [{'role': 'assistant', 'content': 'Go on.'}],
     'rejected': [{'role': 'assistant', 'content': 'No.'}], 'margin': 1.0}
    """
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "prompt":
            out[key] = speech.messages()
        elif key in ("chosen", "rejected"):
            out[key] = [{"role": "assistant", "content": value}]
        elif key != "question":
            out[key] = value
    return out


# -- writing a split ----------------------------------------------------------------------------

ROW_GROUP = 16_384  # rows held before a Parquet row group is written: ~40 MB of pair text


def pairs_schema(keys: list[str], form: str = "published"):
    """The Arrow schema of a pairs split; ``form`` "trl": prompt/chosen/rejected are lists of
    {role, content} messages (``as_conversation``) and there is no ``question``."""
    import pyarrow as pa

    if form == "trl":
        messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        fields = [("ID", pa.string()), ("prefID", pa.string())]
        fields += [(c, messages) for c in ("prompt", "chosen", "rejected")]
    else:
        fields = [(c, pa.string()) for c in ("ID", "prefID", "question", "prompt", "chosen", "rejected")]
    fields += [(c, pa.string()) for c in ("chosen_model", "rejected_model")]
    fields += [(f"{side}_{k}_rating", pa.int64()) for side in ("chosen", "rejected") for k in keys]
    fields += [(c, pa.float64()) for c in ("chosen_score", "rejected_score", "margin")]
    return pa.schema(fields)


class SplitWriter:
    """One split written as it is made: ``NAME.parquet`` (a row group per ``ROW_GROUP`` rows) and
    ``NAME.jsonl``, both into temp files that ``commit`` renames into place; ``discard`` removes
    them. A split of fewer rows than ``ROW_GROUP`` is byte for byte what writing it whole gives."""

    def __init__(self, folder: Path, name: str, keys: list[str], form: str = "published"):
        import pyarrow.parquet as pq

        self.path = folder / f"{name}.parquet"
        self.tmp = self.path.with_suffix(".parquet.tmp")
        self.schema = pairs_schema(keys, form)
        self.parquet = pq.ParquetWriter(self.tmp, self.schema)
        self.jsonl = JsonlWriter(folder / f"{name}.jsonl").__enter__()
        self.buffer: list[dict] = []
        self.rows = 0

    def add(self, row: dict) -> None:
        self.jsonl.write(row)
        self.buffer.append(row)
        self.rows += 1
        if len(self.buffer) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        self.parquet.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
        self.buffer = []

    def commit(self) -> None:
        if self.buffer or not self.rows:
            self._flush()  # an empty split keeps its columns
        self.parquet.close()
        self.tmp.replace(self.path)
        self.jsonl.__exit__(None, None, None)

    def discard(self) -> None:
        self.parquet.close()
        self.tmp.unlink(missing_ok=True)
        self.jsonl.__exit__(UserError, None, None)
