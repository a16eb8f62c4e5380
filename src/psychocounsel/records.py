"""The data that flows between stages: Speech -> Response -> Rating (pairs are table rows, see pairs.py).

Each record is a plain dataclass with ``to_dict``/``from_dict`` so that store.py can write it
as one JSON line. Speech text never goes into logs: log ``id`` instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Speech:
    """A client speech. ``context`` holds earlier turns of a session, oldest first, as
    ``{"role": "client" | "counselor", "content": str}``; ``text`` is the client's latest turn."""

    id: str
    text: str
    topic: str | None = None
    context: list[dict[str, str]] = field(default_factory=list)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # What dataclasses.asdict gives (the turns copied), without its recursive deep copy:
        # ingest writes a million of these.
        return {
            "id": self.id,
            "text": self.text,
            "topic": self.topic,
            "context": [dict(turn) for turn in self.context],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Speech:
        return _from_dict(cls, data)

    def context_lines(self) -> list[str]:
        """Earlier turns as ``Client: ...`` / ``Counselor: ...`` lines, for prompts and exports."""
        names = {"client": "Client", "user": "Client", "counselor": "Counselor", "assistant": "Counselor"}
        return [f"{names.get(t['role'], t['role'])}: {t['content']}" for t in self.context]

    def messages(self) -> list[dict[str, str]]:
        """The speech as chat messages (client = user, counselor = assistant)."""
        role = {"client": "user", "counselor": "assistant", "user": "user", "assistant": "assistant"}
        turns = [{"role": role[t["role"]], "content": t["content"]} for t in self.context]
        return turns + [{"role": "user", "content": self.text}]


@dataclass
class Response:
    """One counselor response to a speech, written by one generator of the pool."""

    id: str
    speech_id: str
    generator: str
    text: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Response:
        return _from_dict(cls, data)


@dataclass
class Rating:
    """A judge's scores (1-5, float) for one response on each principle of the rubric.

    A failed rating has ``scores == {}``, ``failed == True`` and keeps the judge's raw text in
    ``raw`` and the reason in ``error``: it is never given a default score.
    """

    response_id: str
    speech_id: str
    judge: str
    scores: dict[str, float] = field(default_factory=dict)
    rationale: str = ""
    failed: bool = False
    error: str = ""
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rating:
        return _from_dict(cls, data)
