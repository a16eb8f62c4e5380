"""screen: one Assessment per speech, from the rules' reading and the learned score.

1. ``rules.read`` finds the speaker's own risk statements and blanks out words that are not the
   speaker's (someone else at risk, support for someone, idioms, quotes and lyrics, jokes).
2. The learned score (``head.ScreenModel``) reads the blanked text, in windows, and keeps the
   riskiest window.
3. ``assess`` combines them (``policy.Policy.score``): the speaker's own crisis rule makes a
   crisis (a noisy-or with the learned probability), an own concern rule multiplies the learned
   odds by 4 and makes at least a concern, someone else at risk makes at least a concern. The
   level then follows from the score alone, so score and level never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cache

from .policy import Policy
from .rules import Reading, load_rules, merge, read, sentences

LEVELS = ("none", "concern", "crisis")
CATEGORIES = (
    "suicidal_ideation",
    "plan_or_intent",
    "self_harm",
    "harm_to_others",
    "abuse_or_violence",
    "medical_emergency",
)
MAX_CUE_SENTENCES = 3  # evidence for a call made by the learned score alone


@dataclass
class Assessment:
    """The screen's call on one speech. ``evidence`` holds ``[start, end]`` character offsets, never text.

    ``subject`` says whose risk it is: "self" (the speaker's own), "other" (someone the speaker
    talks about), or None when the level is "none".
    """

    level: str
    score: float
    categories: list[str] = field(default_factory=list)
    evidence: list[list[int]] = field(default_factory=list)
    subject: str | None = None

    def to_dict(self) -> dict:
        """JSON-safe and text-free.

        >>> Assessment("crisis", 0.91234567, ["plan_or_intent"], [[2, 9]], "self").to_dict()
        {'level': 'crisis', 'score': 0.912346, 'categories': ['plan_or_intent'], 'evidence': [[2, 9]], 'subject': 'self'}
        """
        d = asdict(self)
        d["score"] = round(float(self.score), 6)
        return d


def _cue_spans(reading: Reading, window: tuple[int, int]) -> list[list[int]]:
    """Sentences of the riskiest window that hold a risk cue word: evidence for a learned-score call."""
    cues = load_rules().cues
    masked = reading.masked
    spans = [
        [a, b]
        for a, b in sentences(masked)
        if a < window[1] and b > window[0] and cues.search(masked, a, b) and masked[a:b].strip()
    ]
    return spans[:MAX_CUE_SENTENCES] or [list(window)]


def _strongest(matches, role: str) -> str | None:
    levels = {m.level for m in matches if m.role == role}
    return "crisis" if "crisis" in levels else "concern" if levels else None


def assess(text: str, reading: Reading, p: float, window: tuple[int, int], policy: Policy) -> Assessment:
    """Combine the rules' reading with the learned probability ``p`` of the riskiest ``window``.

    >>> t = "This deadline is killing me. I have the pills saved up."
    >>> a = assess(t, read(t), 0.2, (0, len(t)), Policy(0.5, 0.8))
    >>> a.level, a.categories, [t[s:e] for s, e in a.evidence], a.subject
    ('crisis', ['plan_or_intent'], ['I have the pills saved up'], 'self')
    >>> t = "My friend wants to kill herself. What do I do?"
    >>> a = assess(t, read(t), 0.05, (0, len(t)), Policy(0.5, 0.8))
    >>> a.level, a.categories, a.subject
    ('concern', ['suicidal_ideation'], 'other')
    >>> assess("Lovely weather.", read("Lovely weather."), 0.01, (0, 15), Policy(0.5, 0.8)).level
    'none'
    """
    risky = [m for m in reading.matches if m.level != "signal"]
    score = policy.score(p, _strongest(risky, "self"), _strongest(risky, "other"))
    level = policy.level(score)
    if level == "none":
        return Assessment("none", score)
    own = [m for m in risky if m.role == "self"]
    subject = "self" if own or p >= policy.concern else "other"
    shown = own if subject == "self" else [m for m in risky if m.role == "other"]
    categories = sorted({m.category for m in shown}, key=CATEGORIES.index)
    evidence = [[m.start, m.end] for m in shown]
    if not shown:  # the learned score alone made the call; it was trained on a suicide-crisis forum
        categories, evidence = ["suicidal_ideation"], _cue_spans(reading, window)
    return Assessment(level, score, categories, [list(s) for s in merge(evidence)], subject)


@cache
def _model():
    from .head import ScreenModel

    return ScreenModel.load()


def screen(texts: list[str], batch_size: int = 64) -> list[Assessment]:
    """Assess each text (offline, CPU). Long texts are read whole, in overlapping windows."""
    texts = list(texts)
    model = _model()
    readings = [read(t) for t in texts]
    probs, windows = model.score([r.masked for r in readings], batch_size=batch_size)
    return [assess(t, r, p, w, model.policy) for t, r, p, w in zip(texts, readings, probs, windows)]
