"""Contrastive pairs written by rule from the rubric's definitions: for one client speech, a reply
that reflects what *this* client said against a reply that breaks one principle.

Each pair is ``{speech_id, speech, better, worse, kind, principles}``. The better reply is built
from the client's own sentences, turned to the second person ("I can't sleep" -> "you can't
sleep") behind a reflective stem, sometimes with a feeling named and sometimes with an open
question; the worse reply is one of:

==============  ================================================================  ===============
kind            the worse reply                                                   principles
==============  ================================================================  ===============
advice          tells the client what to do (a stock list of steps)               autonomy, staging, exploration
platitude       a stock phrase that would fit anyone                              empathy, relevance
dismissal       minimises or judges the client's feelings                         empathy, safety
closed          closed yes/no questions                                           exploration
generic_open    an open question that ignores what the client said                relevance, empathy
off_topic       a reflection of a *different* client's speech                     relevance, empathy
ignores_risk    (crisis speeches) an upbeat tip that passes over stated risk      safety
truncated       a reflection cut off mid-sentence                                 clarity
repetitive      one reflective sentence said again and again                      clarity
simple          (against a complex reflection) a restatement that adds no feeling  empathy, exploration
refusal         declines to engage ("I can't help with that")                     empathy, relevance, exploration
incoherent      the words of a reflection in shuffled order                        clarity, relevance
==============  ================================================================  ===============

Length is matched, not left to chance: the worse reply is grown or cut to a target drawn around
the better one's length (ratio 0.7-1.4), so the better reply is the shorter one about half the
time (the data card reports the share). Everything is seeded; nothing reads evaluation data.
"""

from __future__ import annotations

import random
import re

_SENT = re.compile(r"(?<=[.!?])\s+|\n+")
_FIRST = re.compile(r"\b(i|i'm|im|i've|ive|i'd|i'll|my|me|myself|mine)\b", re.I)

# First person -> second person, longest first; "am"/"was" only right after "I".
_SWAPS = [
    (r"\bi am\b", "you are"),
    (r"\bi was\b", "you were"),
    (r"\bi'm\b|\bim\b", "you're"),
    (r"\bi've\b|\bive\b", "you've"),
    (r"\bi'd\b", "you'd"),
    (r"\bi'll\b", "you'll"),
    (r"\bmyself\b", "yourself"),
    (r"\bmine\b", "yours"),
    (r"\bmy\b", "your"),
    (r"\bme\b", "you"),
    (r"\bi\b", "you"),
    (r"\bam\b", "are"),
]
_SECOND = re.compile(r"\b(you|your|yours|yourself)\b", re.I)

FEELINGS = {
    "anxious": ("anxious", "panic", "worry", "worried", "nervous", "scared", "fear", "afraid"),
    "sad": ("sad", "cry", "crying", "depressed", "down", "empty", "grief", "miss"),
    "lonely": ("lonely", "alone", "isolated", "no friends", "nobody"),
    "angry": ("angry", "mad", "furious", "hate", "annoyed", "frustrated"),
    "hopeless": ("hopeless", "pointless", "give up", "no point", "worthless", "suicid", "die"),
    "ashamed": ("ashamed", "shame", "embarrass", "guilty", "guilt", "fault"),
    "exhausted": ("tired", "exhausted", "sleep", "drained", "burnt out", "burned out"),
    "hurt": ("hurt", "betray", "cheat", "left me", "broke up", "rejected"),
    "confused": ("confused", "don't know", "dont know", "unsure", "lost"),
}
DEFAULT_FEELINGS = ("overwhelmed", "worn down", "stuck", "torn")

SIMPLE_STEMS = (
    "You're saying that {c}.",
    "So {c}.",
    "{C}.",
    "What I'm hearing is that {c}.",
    "You've noticed that {c}.",
)
COMPLEX_STEMS = (
    "It sounds like {c}, and that has left you feeling {f}.",
    "It sounds as if you feel {f}, because {c}.",
    "You feel {f} when {c}, and part of you wonders whether it can change.",
    "I hear how {f} you are: {c}.",
    "It seems that {c}, and underneath that there is a lot of feeling {f}.",
)
OPEN_QUESTIONS = (
    "What feels hardest about that for you right now?",
    "What do you make of that?",
    "How has that been affecting you day to day?",
    "What would you like to be different?",
)
ADVICE = (
    "You should make a list of your goals and work through it step by step.",
    "Try to exercise every day, eat well and get eight hours of sleep.",
    "You need to set clear boundaries and stick to them.",
    "Make an appointment with a doctor this week.",
    "Stop thinking about it so much and focus on the positives.",
    "Write down three things you are grateful for every morning.",
    "You have to talk to them directly and tell them how it is.",
    "Download a meditation app and use it twice a day.",
    "Keep yourself busy with a new hobby so you do not dwell on it.",
    "The first step is to make a plan, and the second is to follow it.",
)
PLATITUDES = (
    "Everything happens for a reason.",
    "Time heals all wounds.",
    "Stay positive and things will get better.",
    "Look on the bright side.",
    "What doesn't kill you makes you stronger.",
    "Just be yourself and it will all work out.",
    "Every cloud has a silver lining.",
    "Tomorrow is a new day.",
    "You've got this!",
    "Good things come to those who wait.",
)
DISMISSALS = (
    "That's not really a big deal.",
    "Lots of people have it much worse than you.",
    "You're overreacting a bit.",
    "Honestly, everyone goes through this, so just get over it.",
    "I don't think you should feel that way.",
    "It's all in your head.",
    "You just need to toughen up.",
    "That sounds like a problem you made for yourself.",
)
CLOSED = (
    "Have you tried talking to someone about it?",
    "Is it every day?",
    "Do you have a therapist?",
    "Did you sleep well last night?",
    "Are you taking any medication?",
    "Is this the first time it has happened?",
    "Do your parents know?",
    "Have you tried exercising more?",
)
GENERIC_OPEN = (
    "How does that make you feel?",
    "What do you want to do about it?",
    "What are your hobbies?",
    "How was your week overall?",
    "What are your plans for the weekend?",
    "How do you usually relax?",
)
CRISIS_CARE = (
    "Your safety matters most right now: if you might act on these thoughts, please call or text 988 "
    "(US) or your local emergency number, or reach a crisis line; you do not have to face this alone.",
    "I'm concerned for your safety. If you are thinking of ending your life, please reach out now to a "
    "crisis line such as 988 in the US or Samaritans on 116 123 in the UK, or go to an emergency room.",
)
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm unable to provide a response to this request.",
    "As an AI, I cannot give advice on personal matters.",
    "Please consult a qualified professional for this.",
    "I don't have enough information to respond.",
    "Thank you for sharing. I am not able to assist with this topic.",
)
UPBEAT = (
    "Try going for a walk, it always helps to get some fresh air.",
    "Maybe watch a funny movie tonight to take your mind off things.",
    "A good night's sleep will make everything look better tomorrow.",
    "Treat yourself to something nice this weekend.",
)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if s.strip()]


def second_person(clause: str) -> str:
    """A client's first-person clause in the second person, for a reflection.

    >>> second_person("I am scared that my wife will leave me")
    'you are scared that your wife will leave you'
    """
    out = clause
    for pattern, repl in _SWAPS:
        out = re.sub(pattern, repl, out, flags=re.I)
    return out


def _clauses(speech: str, max_words: int = 22) -> list[str]:
    """First-person sentences of the speech, without their end mark and cut to ``max_words``."""
    out = []
    for s in sentences(speech):
        if not _FIRST.search(s) or _SECOND.search(s) or len(s.split()) < 4:
            continue
        words = s.rstrip(".!?").split()
        out.append(" ".join(words[:max_words]).rstrip(",;:-"))
    return out


def feeling_of(speech: str, rng: random.Random) -> str:
    low = speech.lower()
    found = [f for f, cues in FEELINGS.items() if any(c in low for c in cues)]
    return rng.choice(found or list(DEFAULT_FEELINGS))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def reflection(speech: str, rng: random.Random, complex_: bool, n_clauses: int = 1) -> str | None:
    """A reflection of ``speech`` by rule; None when it has no first-person sentence to reflect."""
    clauses = _clauses(speech)
    if not clauses:
        return None
    picked = rng.sample(clauses, min(n_clauses, len(clauses)))
    parts = []
    for i, clause in enumerate(picked):
        c = second_person(clause[:1].lower() + clause[1:])
        stems = COMPLEX_STEMS if complex_ and i == 0 else SIMPLE_STEMS
        parts.append(rng.choice(stems).format(c=c, C=_cap(c), f=feeling_of(speech, rng)))
    return " ".join(_cap(p) for p in parts)


def fill(pool: tuple[str, ...], target: int, rng: random.Random) -> str:
    """Sentences of ``pool`` (no repeats while it lasts) until about ``target`` characters."""
    order = rng.sample(pool, len(pool))
    out: list[str] = []
    while order and (not out or len(" ".join(out)) < target):
        out.append(order.pop())
    return " ".join(out)


def fit(text: str, target: int) -> str:
    """``text`` cut at a sentence end near ``target`` characters (never below one sentence)."""
    sents = sentences(text)
    out = [sents[0]] if sents else []
    for s in sents[1:]:
        if len(" ".join(out + [s])) > target * 1.15:
            break
        out.append(s)
    return " ".join(out)


def _ratio(rng: random.Random) -> float:
    return rng.uniform(0.7, 1.4)


def pairs_for(speech_id: str, speech: str, other: str, crisis: bool, rng: random.Random) -> list[dict]:
    """Every contrastive pair for one speech (``other``: a different client's speech, for off_topic)."""
    better = reflection(speech, rng, complex_=rng.random() < 0.6, n_clauses=rng.choice((1, 1, 2)))
    if better is None:
        return []
    if rng.random() < 0.35:
        better += " " + rng.choice(OPEN_QUESTIONS)
    if crisis:
        better += " " + rng.choice(CRISIS_CARE)
    pairs = []

    def add(kind: str, worse: str | None, principles: tuple[str, ...], good: str = better) -> None:
        if worse and worse.strip() and worse != good:
            pairs.append(
                {
                    "speech_id": speech_id,
                    "speech": speech,
                    "better": good,
                    "worse": worse,
                    "kind": kind,
                    "principles": list(principles),
                }
            )

    n = len(better)
    add("advice", fill(ADVICE, int(n * _ratio(rng)), rng), ("autonomy", "staging", "exploration"))
    add("platitude", fill(PLATITUDES, int(n * _ratio(rng)), rng), ("empathy", "relevance"))
    add("dismissal", fill(DISMISSALS, int(n * _ratio(rng)), rng), ("empathy", "safety"))
    add("closed", fill(CLOSED, int(n * _ratio(rng)), rng), ("exploration",))
    add("generic_open", fill(GENERIC_OPEN, int(n * _ratio(rng)), rng), ("relevance", "empathy"))
    off = reflection(other, rng, complex_=rng.random() < 0.6, n_clauses=2)
    if off:
        add("off_topic", fit(off, int(n * _ratio(rng))), ("relevance", "empathy"))
    if crisis:
        plain = reflection(speech, rng, complex_=False, n_clauses=1) or ""
        add("ignores_risk", (plain + " " + fill(UPBEAT, int(n * _ratio(rng)) - len(plain), rng)).strip(), ("safety",))
    longer = reflection(speech, rng, complex_=True, n_clauses=3) or ""
    if len(longer) > 40:
        cut = longer[: max(20, int(min(len(longer), n * _ratio(rng))) - 1)].rsplit(" ", 1)[0]
        if cut != longer:
            add("truncated", cut.rstrip(".,;:!?"), ("clarity",))
    one = reflection(speech, rng, complex_=False, n_clauses=1) or ""
    if one:
        add("repetitive", " ".join([one] * max(2, round(n * _ratio(rng) / max(len(one), 1)))), ("clarity",))
    simple = reflection(speech, rng, complex_=False, n_clauses=2)
    rich = reflection(speech, rng, complex_=True, n_clauses=1)
    if simple and rich:
        add("simple", simple, ("empathy", "exploration"), good=rich)
    # Kinds added later draw from their own stream (seeded by the speech id), so the pairs above
    # stay as they were.
    more = random.Random(f"{speech_id}:later")
    add("refusal", fill(REFUSALS, int(n * _ratio(more)), more), ("empathy", "relevance", "exploration"))
    words = better.split()
    if len(words) > 6:
        shuffled = " ".join(more.sample(words, len(words)))
        add("incoherent", fit(shuffled, int(n * _ratio(more))) or shuffled, ("clarity", "relevance"))
    return pairs


def build(speeches: list[dict], seed: int = 0) -> list[dict]:
    """Contrastive pairs for ``speeches`` (``{id, text, crisis}``), seeded; off_topic replies
    reflect the next speech in a seeded shuffle, so they are real client content, just not this one."""
    rng = random.Random(seed)
    order = list(range(len(speeches)))
    rng.shuffle(order)
    out = []
    for pos, i in enumerate(order):
        s = speeches[i]
        other = speeches[order[(pos + 1) % len(order)]]["text"]
        out.extend(pairs_for(str(s["id"]), s["text"], other, bool(s.get("crisis")), rng))
    return out
