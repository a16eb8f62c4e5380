"""The LLM judges' prompt templates: the packaged ``<task>_<mode>.txt`` files here, or a user's
own file (``template: FILE`` on a judge config), like alpaca_eval's judge folders.

A template is ``str.format`` text (``{{`` and ``}}`` are literal braces). Each (task, mode) has
placeholders it must use, without which the judge could not see what it judges, and ones it may
use; any other placeholder is an error, so a typo never reaches a judge as literal text. This
module imports nothing heavy: config.py checks a template when it is loaded.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

HERE = Path(__file__).parent

# (task, mode) -> (required, optional). ``context`` (earlier turns) is optional: single-turn data
# has none. The *_fields placeholders spell the JSON answer form; a template may write it out.
PLACEHOLDERS: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {
    ("rate", "json"): (frozenset({"principles", "speech", "response"}), frozenset({"context", "score_fields"})),
    ("rate", "logprob"): (
        frozenset({"name", "definition", "speech", "response"}),
        frozenset({"anchor_1", "anchor_3", "anchor_5", "context"}),
    ),
    ("compare", "json"): (
        frozenset({"principles", "speech", "response_a", "response_b"}),
        frozenset({"context", "verdict_fields"}),
    ),
    ("compare", "logprob"): (frozenset({"principles", "speech", "response_a", "response_b"}), frozenset({"context"})),
}


def packaged(task: str, mode: str) -> Path:
    """The template shipped for ``task`` (rate | compare) in ``mode`` (json | logprob)."""
    return HERE / f"{task}_{mode}.txt"


def placeholders(text: str) -> list[str]:
    """The placeholders of ``text`` in order of first use; ValueError for text ``str.format``
    cannot read (a lone brace).

    >>> placeholders("{speech} and {{literal}} then {response} {speech}")
    ['speech', 'response']
    >>> placeholders("{} {x.y}")
    ['{}', 'x.y']
    """
    names: dict[str, None] = {}
    for _, field, _, _ in string.Formatter().parse(text):
        if field is not None:
            names[field or "{}"] = None
    return list(names)


def check_template(text: str, task: str, mode: str) -> None:
    """ValueError, one line naming every missing and every unknown placeholder, unless ``text``
    is a valid ``task``/``mode`` template.

    >>> check_template("{principles} {speech} {response} {context}", "rate", "json")
    >>> check_template("{principles} {speech} {reply}", "rate", "json")
    Traceback (most recent call last):
    ...
    ValueError: missing placeholder {response}; unknown placeholder {reply} (rate/json templates use {context}, {principles}, {response}, {score_fields}, {speech})
    """
    required, optional = PLACEHOLDERS[(task, mode)]
    try:
        used = placeholders(text)
    except ValueError as e:
        raise ValueError(f"not a valid template ({e}; write {{{{ and }}}} for literal braces)") from None
    missing = sorted(required - set(used))
    unknown = [p for p in used if p not in required | optional]
    if not missing and not unknown:
        return
    problems = []
    if missing:
        problems.append(f"missing placeholder{'s' * (len(missing) > 1)} " + ", ".join(f"{{{p}}}" for p in missing))
    if unknown:
        problems.append(f"unknown placeholder{'s' * (len(unknown) > 1)} " + ", ".join(f"{{{p}}}" for p in unknown))
    allowed = ", ".join(f"{{{p}}}" for p in sorted(required | optional))
    raise ValueError("; ".join(problems) + f" ({task}/{mode} templates use {allowed})")


def read_template(path: str | Path, task: str, mode: str) -> str:
    """The checked text of the template file ``path``; ValueError naming the file otherwise."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"template file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"template {path}: cannot read it as UTF-8 text ({type(e).__name__})") from None
    try:
        check_template(text, task, mode)
    except ValueError as e:
        raise ValueError(f"template {path}: {e}") from None
    return text


def template_id(text: str) -> str:
    """A short hash of a template's text: part of a judge's name and rate's judge key, so that a
    changed template is a different judge.

    >>> template_id("{speech}")
    '0ffff7c6'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
