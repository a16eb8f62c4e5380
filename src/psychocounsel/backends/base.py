"""The one contract every model backend implements.

A backend turns a batch of chat requests into completions. It does not cache (store.Cache does)
and it does not parse (judge/parse.py does). Every completion carries its latency and token
counts so that cost is visible in run.json and the cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChatRequest:
    """One chat completion to make.

    ``params`` are sampling parameters in OpenAI names: ``temperature``, ``top_p``,
    ``max_tokens``, ``seed``, and for logprob judging ``logprobs: True`` with ``top_logprobs: int``
    (the backend then fills ``Completion.top_logprobs`` for the first generated token).
    """

    messages: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    """The result of one request. ``error`` is non-empty when the request failed for good (after
    retries); ``text`` is then empty and the caller records the failure, never a default."""

    text: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    top_logprobs: dict[str, float] | None = None
    finish_reason: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Completion:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Backend:
    """Base class. Subclasses set ``name`` (registry key) and ``model`` (what is served) and
    implement :meth:`complete`.

    ``identity()`` is what the call cache keys on besides the request: two backends with the same
    identity must give the same completion for the same request.
    """

    name: str = "base"
    model: str = ""

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model}

    def complete(self, requests: list[ChatRequest], progress: Any = None) -> list[Completion]:
        """Complete every request, in order. Never raises for a single failed request: that
        completion carries ``error``. Raises ``UserError`` for problems that no retry fixes
        (missing API key, model path that does not exist). ``progress``, if given, is a callable
        taking the number of requests just finished (for progress bars)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (HTTP clients, model weights)."""
