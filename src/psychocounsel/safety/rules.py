"""Whose risk is it: the rules that read a speech before the learned score does.

``read`` finds the speaker's own risk statements ("I have the pills saved up") and tells them
from words that sound like risk and are not the speaker's: someone else at risk ("my friend
wants to kill herself"), speech to someone at risk ("please don't kill yourself"), idioms
("this deadline is killing me"), quotations and lyrics, jokes. Those regions are blanked out
(replaced by spaces, so every character offset stays the same) before the learned score reads
the text. Patterns are data, in ``rules.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

RULES = Path(__file__).parent / "rules.yaml"
LEVELS = ("signal", "concern", "crisis")
_MACRO = re.compile(r"%(\w+)%")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)|[.!?]+", re.M)
_SINGLE = (
    "quote_own",
    "lyrics",
    "joke",
    "joke_exceptions",
    "negation",
    "negation_exceptions",
    "past",
    "past_verb",
    "present",
    "first_person",
    "third_person",
    "cues",
    "keyword_baseline",
    "spaced_contractions",
)
_STRAIGHT = str.maketrans({"’": "'", "`": "'", "´": "'"})


@dataclass(frozen=True)
class Match:
    """One rule match: ``rule`` id, ``category``, ``level`` and ``role`` ("self" or "other")."""

    rule: str
    category: str
    level: str
    start: int
    end: int
    role: str


@dataclass(frozen=True)
class Reading:
    """What the rules saw: risk matches, and the text with other people's words blanked out."""

    masked: str
    matches: tuple[Match, ...]
    masked_spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Rules:
    self_rules: tuple[tuple[str, str, str, re.Pattern], ...]
    other_rules: tuple[tuple[str, str, str, re.Pattern], ...]
    support: tuple[re.Pattern, ...]
    idiom: tuple[re.Pattern, ...]
    quote: tuple[re.Pattern, ...]
    quote_own: re.Pattern
    lyrics: re.Pattern
    joke: re.Pattern
    joke_exceptions: re.Pattern
    joke_max_chars: int
    negation: re.Pattern
    negation_exceptions: re.Pattern
    past: re.Pattern
    past_verb: re.Pattern
    present: re.Pattern
    first_person: re.Pattern
    third_person: re.Pattern
    cues: re.Pattern
    keyword_baseline: re.Pattern
    spaced_contractions: re.Pattern
    reply: dict[str, re.Pattern]


def expand(pattern: str, macros: dict[str, str]) -> str:
    """Replace ``%name%`` by its macro.

    >>> expand("%i% (want|need) to", {"i": "(?:i|i'm)"})
    "(?:i|i'm) (want|need) to"
    >>> expand("%nope%", {})
    Traceback (most recent call last):
    ...
    ValueError: unknown macro %nope% in rules
    """

    def sub(m: re.Match) -> str:
        if m.group(1) not in macros:
            raise ValueError(f"unknown macro %{m.group(1)}% in rules")
        return macros[m.group(1)]

    return _MACRO.sub(sub, pattern)


@cache
def load_rules(path: Path = RULES) -> Rules:
    """Compile ``rules.yaml`` (once per path)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    macros = {k: expand(v, data["macros"]) for k, v in data["macros"].items()}

    def rx(pattern: str) -> re.Pattern:
        return re.compile(expand(pattern, macros), re.I)

    def ruled(section: str) -> tuple:
        for r in data[section]:
            if r["level"] not in LEVELS:
                raise ValueError(f"rule {r['id']}: level {r['level']!r} is not one of {LEVELS}")
        return tuple((r["id"], r["category"], r["level"], rx(r["pattern"])) for r in data[section])

    return Rules(
        self_rules=ruled("self"),
        other_rules=ruled("other"),
        **{k: tuple(rx(r["pattern"]) for r in data[k]) for k in ("support", "idiom", "quote")},
        **{k: rx(data[k]) for k in _SINGLE},
        reply={k: rx(v) for k, v in data["reply"].items()},
        joke_max_chars=int(data["joke_max_chars"]),
    )


def normalise(text: str, rules: Rules | None = None) -> str:
    """Straighten apostrophes and restore spaced contractions ("i m" -> "i'm"); offsets are unchanged.

    >>> normalise("I’m here, i m sure, they don t")
    "I'm here, i'm sure, they don't"
    """
    rules = rules or load_rules()

    def join(m: re.Match) -> str:
        word, tail = [g for g in m.groups() if g is not None]
        return f"{word}'{tail}"

    return rules.spaced_contractions.sub(join, text.translate(_STRAIGHT))


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of sentences (split at . ! ? and line ends), without surrounding blanks.

    >>> t = "I am ok. Are you?\\nYes"
    >>> [t[a:b] for a, b in sentences(t)]
    ['I am ok.', 'Are you?', 'Yes']
    """
    out = []
    for m in _SENTENCE.finditer(text):
        a, b = m.span()
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def overlaps(span: tuple[int, int], spans) -> bool:
    """
    >>> overlaps((2, 5), [(0, 3)]), overlaps((3, 5), [(0, 3)])
    (True, False)
    """
    return any(span[0] < b and a < span[1] for a, b in spans)


def _find(rules, text: str, role: str) -> list[Match]:
    return [
        Match(rule_id, category, level, m.start(), m.end(), role)
        for rule_id, category, level, pattern in rules
        for m in pattern.finditer(text)
        if m.end() > m.start()
    ]


def _sentence_of(span: tuple[int, int], sents: list[tuple[int, int]]) -> tuple[int, int]:
    return next(((a, b) for a, b in sents if a <= span[0] < b), span)


def _discounted(match: Match, text: str, sentence: tuple[int, int], rules: Rules) -> bool:
    """A self match that is negated ("I'm not suicidal"), told in the past, or someone else's."""
    prefix = text[sentence[0] : match.start]
    said = text[sentence[0] : sentence[1]]
    negated = rules.negation.search(prefix) and not rules.negation_exceptions.search(prefix[-40:])
    past = (rules.past.search(said) or rules.past_verb.search(prefix)) and not rules.present.search(said)
    return bool(negated or past or _someone_else(match, text, prefix, rules))


def _as_signal(m: Match) -> Match:
    return Match(m.rule, m.category, "signal", m.start, m.end, m.role)


def _someone_else(match: Match, text: str, prefix: str, rules: Rules) -> bool:
    """True when a match without a first-person word follows a mention of someone else in its sentence."""
    if rules.first_person.search(text[match.start : match.end]):
        return False
    last_self = max((m.end() for m in rules.first_person.finditer(prefix)), default=-1)
    last_other = max((m.end() for m in rules.third_person.finditer(prefix)), default=-1)
    return last_other > last_self


def _not_own_words(text: str, sents: list[tuple[int, int]], rules: Rules) -> list[tuple[int, int]]:
    """Spans that are never the speaker's own risk: quotes, idioms, and sentences with lyrics or jokes."""
    spans = [m.span() for p in rules.idiom for m in p.finditer(text)]
    # A quote is someone else's words, unless the speaker quotes their own thoughts ("I keep thinking "...").
    spans += [
        m.span() for p in rules.quote for m in p.finditer(text) if not rules.quote_own.search(text[: m.start()][-60:])
    ]
    spans += [(a, b) for a, b in sents if rules.lyrics.search(text, a, b)]
    if not rules.joke_exceptions.search(text):  # "I'm not joking" anywhere: no sentence is a joke
        spans += [(a, b) for a, b in sents if b - a <= rules.joke_max_chars and rules.joke.search(text, a, b)]
    return spans


def read(text: str, rules: Rules | None = None) -> Reading:
    """The rules' reading of one speech.

    >>> r = read("This deadline is killing me. I have the pills saved up.")
    >>> [(m.rule, m.level, m.role) for m in r.matches]
    [('pi_have_means', 'crisis', 'self')]
    >>> r.masked.split()[:3]
    ['This', 'deadline', '.']
    >>> [(m.rule, m.role) for m in read("My friend wants to kill herself. What do I do?").matches]
    [('ot_suicidal', 'other'), ('ot_other_suicide_words', 'other')]
    >>> read("Please don't kill yourself, it gets better.").matches
    ()
    >>> [m.level for m in read("I'm not suicidal, just tired.").matches]
    ['signal']
    """
    rules = rules or load_rules()
    norm = normalise(text, rules)
    sents = sentences(norm)
    masked = _not_own_words(norm, sents, rules)
    own = [m for m in _find(rules.self_rules, norm, "self") if not overlaps((m.start, m.end), masked)]
    # A discounted match stays as evidence (a signal), and its words are blanked out for the learned score.
    discounted = [_discounted(m, norm, _sentence_of((m.start, m.end), sents), rules) for m in own]
    masked += [(m.start, m.end) for m, d in zip(own, discounted) if d]
    own = [_as_signal(m) if d else m for m, d in zip(own, discounted)]
    risky = [(m.start, m.end) for m in own if m.level != "signal"]
    # Support for someone else ("please don't kill yourself") is blanked out, unless the speaker's
    # own risk sits in the same sentence; so is someone else's risk.
    support = [s for s in sents if any(p.search(norm, *s) for p in rules.support) and not overlaps(s, risky)]
    own = [m for m in own if not overlaps((m.start, m.end), support)]
    masked += support
    others = [m for m in _find(rules.other_rules, norm, "other") if not overlaps((m.start, m.end), masked)]
    at_risk = [_sentence_of((m.start, m.end), sents) for m in others if m.level != "signal"]
    masked += [s for s in at_risk if not overlaps(s, risky)]
    masked = merge(masked)
    chars = list(text)
    for a, b in masked:
        chars[a:b] = " " * (b - a)
    return Reading("".join(chars), tuple(sorted(own + others, key=lambda m: (m.start, m.end))), tuple(masked))


def merge(spans) -> list[tuple[int, int]]:
    """Sorted, non-overlapping union of spans.

    >>> merge([(5, 8), (0, 3), (2, 4), (8, 9)])
    [(0, 4), (5, 9)]
    """
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def keyword_flag(text: str, rules: Rules | None = None) -> bool:
    """The keyword baseline: any risk keyword, whoever says it.

    >>> keyword_flag("Please don't kill yourself, suicide is never the answer"), keyword_flag("Nice day")
    (True, False)
    """
    rules = rules or load_rules()
    return bool(rules.keyword_baseline.search(normalise(text, rules)))
