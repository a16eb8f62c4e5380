"""Crisis routing for ``serve``: every user turn goes through the crisis screen before the policy.

- **crisis** in the latest user turn: the policy is not sampled; the answer is the warm message of
  ``messages.yaml`` naming the crisis resources of the locale.
- **concern** (risk mentioned but not an immediate crisis, someone else at risk, or a crisis in an
  earlier turn): the policy answers and the resources follow its answer.
- **none**: the policy's answer as it is.

Each response carries ``safety: {level, categories, resources_shown}``. With routing turned off
(``--no-crisis-routing``) the level is ``"unscreened"``, and the server warns at start: never
silently off. The screen reads text; what is logged is the decision and its latency, never text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import UserError

MESSAGES = Path(__file__).parent / "messages.yaml"


@dataclass
class Decision:
    level: str  # none | concern | crisis | unscreened
    categories: list[str] = field(default_factory=list)
    resources: list[dict] = field(default_factory=list)  # shown to the user with this answer
    latency_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "categories": self.categories, "resources_shown": self.resources}


@cache
def _messages(path: Path = MESSAGES) -> dict[str, str]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("crisis", "concern"):
        if "{resources}" not in data.get(key, ""):
            raise ValueError(f"{path}: '{key}' must hold the {{resources}} placeholder")
    return data


def resource_lines(resources: list[dict]) -> str:
    """
    >>> resource_lines([{"name": "Samaritans", "contact": "Call 116 123"}])
    '- Samaritans: Call 116 123'
    """
    return "\n".join(f"- {r['name']}: {r['contact']}" for r in resources)


def user_turns(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]


class CrisisRouter:
    """Decides, per request, what the screen's reading of the user's turns means for the answer."""

    def __init__(self, enabled: bool = True, locale: str | None = None, resources_path: Path | None = None):
        from ..safety import resources

        self.enabled, self.locale, self.resources_path = enabled, locale, resources_path
        try:
            resources(locale, resources_path)  # a bad resources file stops the server before it starts
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"--resources {resources_path}: not a usable resources file ({type(e).__name__})") from None
        except Exception as e:  # yaml.YAMLError, without importing yaml at module level
            raise UserError(f"--resources {resources_path}: not valid YAML ({type(e).__name__})") from None

    def warm(self) -> None:
        """Load the screen's model now, not on the first request."""
        if self.enabled:
            self.assess([{"role": "user", "content": "Hello."}])

    def resources(self, locale: str | None = None) -> list[dict]:
        from ..safety import resources

        return resources(locale or self.locale, self.resources_path)

    def assess(self, messages: list[dict[str, Any]], locale: str | None = None) -> Decision:
        """The screen's call on the latest user turn, and on all user turns together."""
        start = time.perf_counter()
        if not self.enabled:
            return Decision("unscreened")
        turns = user_turns(messages)
        if not turns:
            return Decision("none", latency_ms=(time.perf_counter() - start) * 1000)
        from ..safety import screen

        texts = [turns[-1]] + (["\n\n".join(turns)] if len(turns) > 1 else [])
        latest, *whole = screen(texts)
        flagged = [a for a in (latest, *whole) if a.level != "none"]
        if latest.level == "crisis":
            level = "crisis"
        elif flagged:
            level = "concern"
        else:
            level = "none"
        categories = sorted({c for a in flagged for c in a.categories})
        shown = self.resources(locale) if level != "none" else []
        return Decision(level, categories, shown, (time.perf_counter() - start) * 1000)

    def crisis_reply(self, decision: Decision) -> str:
        return _messages()["crisis"].format(resources=resource_lines(decision.resources))

    def concern_suffix(self, decision: Decision) -> str:
        return "\n\n" + _messages()["concern"].format(resources=resource_lines(decision.resources))
