"""The annotation store: one SQLite file holding the pairs to annotate, the annotators (a hash
of each one's token, never the token) and every answer, written the moment it is given.

Each annotator sees the pairs in an order of their own and each pair's replies in a blinded
order of their own (reply 1 is the data set's chosen reply for about half of the pairs), both
drawn from a hash of (seed, annotator, pair), so they are the same on every visit. Answers are
stored in the pair's own terms: ``chosen``, ``rejected`` or ``tie``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..store import stable_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  pair_id TEXT PRIMARY KEY, prompt TEXT NOT NULL, chosen TEXT NOT NULL, rejected TEXT NOT NULL,
  crisis TEXT NOT NULL, length_robust INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS answers (
  annotator TEXT NOT NULL, pair_id TEXT NOT NULL, label TEXT, scores TEXT NOT NULL DEFAULT '{}',
  comment TEXT NOT NULL DEFAULT '', flagged INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
  PRIMARY KEY (annotator, pair_id));
"""
LABELS = ("chosen", "rejected", "tie")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def pair_id(row: dict) -> str:
    return stable_hash([row["prompt"], row["chosen"], row["rejected"]], 12)


@dataclass
class Item:
    pair_id: str
    prompt: str
    chosen: str
    rejected: str
    crisis: str  # the crisis screen's level of the speech: none | concern | crisis
    length_robust: bool  # the chosen reply is not the longer one


class AnnotationStore:
    """Thread-safe access to one annotation database (FastAPI runs handlers in a thread pool)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")  # a crash or a closed tab never loses a written answer
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not an annotation database ({e})") from None

    def close(self) -> None:
        self._db.close()

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- setting up ------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._q("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
            )

    def add_items(self, items: list[Item]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?)",
                [(i.pair_id, i.prompt, i.chosen, i.rejected, i.crisis, int(i.length_robust)) for i in items],
            )

    def items(self) -> list[Item]:
        rows = self._q("SELECT pair_id, prompt, chosen, rejected, crisis, length_robust FROM items ORDER BY pair_id")
        return [Item(*r[:5], bool(r[5])) for r in rows]

    def annotators(self) -> list[str]:
        return [r[0] for r in self._q("SELECT name FROM annotators ORDER BY name")]

    def issue_token(self, name: str) -> str:
        """A new token for ``name`` (replacing any earlier one); only its hash is stored."""
        token = secrets.token_urlsafe(18)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO annotators VALUES (?, ?)", (name, token_hash(token)))
        return token

    def annotator_of(self, token: str) -> str | None:
        rows = self._q("SELECT name, token_sha256 FROM annotators")
        digest = token_hash(token)
        match = None
        for name, stored in rows:  # compare every row, in constant time each: no early exit to time
            if secrets.compare_digest(stored, digest):
                match = name
        return match

    # -- the annotator's view --------------------------------------------------------------------

    def order(self, annotator: str) -> list[Item]:
        seed = self.meta().get("seed", 0)
        return sorted(self.items(), key=lambda i: stable_hash([seed, "order", annotator, i.pair_id], 16))

    def chosen_first(self, annotator: str, pid: str) -> bool:
        seed = self.meta().get("seed", 0)
        return int(stable_hash([seed, "side", annotator, pid], 8), 16) % 2 == 0

    def answers(self, annotator: str) -> dict[str, dict[str, Any]]:
        rows = self._q(
            "SELECT pair_id, label, scores, comment, flagged, updated FROM answers WHERE annotator = ?", (annotator,)
        )
        return {
            r[0]: {"label": r[1], "scores": json.loads(r[2]), "comment": r[3], "flagged": bool(r[4]), "updated": r[5]}
            for r in rows
        }

    def save(self, annotator: str, pid: str, label: str | None, scores: dict, comment: str, flagged: bool) -> None:
        if label is not None and label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (annotator, pid, label, json.dumps(scores, sort_keys=True), comment, int(flagged), time.time()),
            )

    def all_answers(self) -> list[dict[str, Any]]:
        rows = self._q(
            "SELECT annotator, pair_id, label, scores, comment, flagged, updated FROM answers "
            "ORDER BY annotator, pair_id"
        )
        keys = ("annotator", "pair_id", "label", "scores", "comment", "flagged", "updated")
        return [dict(zip(keys, (*r[:3], json.loads(r[3]), r[4], bool(r[5]), r[6]))) for r in rows]
