"""Hand-written cases for the screen (``cases.yaml``): idioms, someone else at risk, lyrics, long posts."""

from __future__ import annotations

from functools import cache
from pathlib import Path

CASES = Path(__file__).parent / "cases.yaml"
LONG_CHARS = 5000  # a "long_*" case: filler paragraphs up to this many characters, then its text


@cache
def _load(path: Path = CASES) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def long_text(filler: str, ending: str, chars: int = LONG_CHARS) -> str:
    """Filler paragraphs repeated to about ``chars`` characters, then ``ending`` as the last paragraph.

    >>> t = long_text("Calm day.", "The end.", chars=40)
    >>> t.endswith("\\n\\nThe end."), len(t) >= 40
    (True, True)
    """
    paragraphs = []
    while sum(len(p) + 2 for p in paragraphs) < chars - len(ending):
        paragraphs.append(filler)
    return "\n\n".join([*paragraphs, ending])


def cases(path: Path = CASES) -> list[dict]:
    """Every case, with ``long_*`` texts built out to ~5,000 characters.

    >>> [c["id"] for c in cases() if len(c["text"]) >= LONG_CHARS]
    ['long_risk_at_end', 'long_no_risk']
    """
    data = _load(path)
    out = []
    for case in data["cases"]:
        case = dict(case)
        if case["id"].startswith("long_"):
            case["text"] = long_text(data["filler"], case["text"])
        out.append(case)
    return out


def probe_cases(path: Path = CASES) -> list[dict]:
    """The cases whose scores are stored with the weights."""
    return [c for c in cases(path) if c.get("probe")]
