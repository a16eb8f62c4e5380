"""The HTTP shapes of ``serve``: OpenAI's chat completion request and response, OpenRLHF's reward
query, and our scoring request. Requests are validated here; a field the server does not know is
ignored (as OpenAI-compatible servers do), a known field of the wrong type or range is a 400."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_CHOICES = 16


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text holds an unpaired surrogate (not valid Unicode)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class TextPart(_Lenient):
    type: Literal["text"]
    text: Text


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)  # candidates per answer, scored by the reward model
    locale: str | None = Field(None, max_length=35)  # crisis resources of this locale (BCP 47 / POSIX)

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, messages: list[Message]) -> list[Message]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("needs at least one user message")
        return messages

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("best_of must be at least n")
        return self

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(s for s in stops if s)

    def dialogue(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]


Transcript = Annotated[list[Message], Field(min_length=2)]


class RewardQuery(_Lenient):
    """OpenRLHF's remote reward model: ``{"query": [...]}``. Each query is a sequence already in
    the reward model's format (prompt and response, chat template applied), or a transcript whose
    last message is the response scored. OpenRLHF's ``prompts`` and ``labels`` are accepted and unused."""

    query: list[Annotated[Text, Field(min_length=1)] | Transcript] = Field(min_length=1)


class ScorePair(_Lenient):
    prompt: Annotated[Text, Field(min_length=1)] | Annotated[list[Message], Field(min_length=1)]
    response: Text = Field(min_length=1)


class ScoreRequest(_Lenient):
    """``/v1/score``: (prompt, response) pairs, or transcripts whose last message is the response."""

    model: str | None = None
    pairs: list[ScorePair] | None = Field(None, min_length=1)
    conversations: list[Transcript] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_input(self) -> ScoreRequest:
        if (self.pairs is None) == (self.conversations is None):
            raise ValueError("give exactly one of 'pairs' or 'conversations'")
        return self

    def prompts_responses(self) -> tuple[list, list[str]]:
        if self.pairs is not None:
            prompts = [p.prompt if isinstance(p.prompt, str) else [m.as_dict() for m in p.prompt] for p in self.pairs]
            return prompts, [p.response for p in self.pairs]
        return split_transcripts(self.conversations or [])


def split_transcripts(transcripts: list[list[Message]]) -> tuple[list, list[str]]:
    """(prompts, responses): each transcript's last message is the response to all before it."""
    prompts, responses = [], []
    for t in transcripts:
        turns = [m.as_dict() for m in t]
        prompts.append(turns[:-1])
        responses.append(turns[-1]["content"])
    return prompts, responses


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header value; "" for anything else.

    >>> bearer_token("Bearer abc "), bearer_token("bearer abc"), bearer_token("Basic abc"), bearer_token("")
    ('abc', 'abc', '', '')
    """
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""


def describe(err: ValidationError) -> str:
    """One line naming each bad field and why, never the values sent (they may be a person's words).

    >>> try:
    ...     ChatCompletionRequest.model_validate({"model": "m", "messages": [], "n": 0})
    ... except ValidationError as e:
    ...     print(describe(e))
    messages: List should have at least 1 item after validation, not 0; n: Input should be greater than or equal to 1
    """
    parts = []
    for e in err.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "constrained-")))
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(dict.fromkeys(parts))[:1000]


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion_body(
    rid: str, model: str, choices: list[dict], usage: dict[str, int], extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
        **extra,
    }


def chunk_body(rid: str, model: str, created: int, choices: list[dict], **extra: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        **extra,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
