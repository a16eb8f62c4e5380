"""Pure parsers for judge output: text in, scores out, ``ParseError`` for text that does not parse.

Never a silent default score: a caller that gets ParseError retries, then records the failure.
"""

from __future__ import annotations

import json
import math
import re


class ParseError(ValueError):
    """Judge output that cannot be turned into scores; the message says why."""


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def _json_object(text: str) -> dict:
    """The first JSON object in ``text`` (bare, fenced in ```json, or surrounded by prose)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for cand in candidates:
        start = cand.find("{")
        while start != -1:
            depth, in_str, esc = 0, False, False
            for i in range(start, len(cand)):
                ch = cand[i]
                if in_str:
                    esc = (ch == "\\") and not esc
                    if ch == '"' and not esc:
                        in_str = False
                    continue
                if ch == '"':
                    in_str, esc = True, False
                elif ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        try:
                            obj = json.loads(cand[start : i + 1])
                        # ValueError covers JSONDecodeError and over-long integers; deep nesting
                        # raises RecursionError. Judge output never escapes as anything but ParseError.
                        except (ValueError, RecursionError):
                            break
                        if isinstance(obj, dict):
                            return obj
                        break
            start = cand.find("{", start + 1)
    raise ParseError("no JSON object found")


def parse_json_scores(text: str, keys: list[str]) -> tuple[dict[str, float], str]:
    """Scores for every principle key, and the rationale, from a JSON judge reply.

    Accepts ``{"scores": {key: n}, "rationale": s}`` or a flat ``{key: n, ..., "rationale": s}``;
    scores must be numbers (or numeric strings) from 1 to 5.

    >>> parse_json_scores('{"scores": {"empathy": 4, "safety": "5"}, "rationale": "Warm."}', ["empathy", "safety"])
    ({'empathy': 4.0, 'safety': 5.0}, 'Warm.')
    >>> parse_json_scores('Sure! ```json\\n{"empathy": 2}\\n```', ["empathy"])
    ({'empathy': 2.0}, '')
    >>> parse_json_scores('{"empathy": 7}', ["empathy"])
    Traceback (most recent call last):
    ...
    psychocounsel.judge.parse.ParseError: score for 'empathy' is 7.0, outside 1-5
    """
    obj = _json_object(text)
    scores_obj = obj.get("scores", obj)
    if not isinstance(scores_obj, dict):
        raise ParseError("'scores' is not an object")
    scores: dict[str, float] = {}
    for key in keys:
        if key not in scores_obj:
            raise ParseError(f"missing score for '{key}'")
        value = scores_obj[key]
        if isinstance(value, bool):
            raise ParseError(f"score for '{key}' is not a number")
        try:
            num = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ParseError(f"score for '{key}' is not a number") from None
        if not math.isfinite(num) or not 1 <= num <= 5:
            raise ParseError(f"score for '{key}' is {num}, outside 1-5")
        scores[key] = num
    rationale = obj.get("rationale", "")
    return scores, rationale if isinstance(rationale, str) else json.dumps(rationale)


def rating_schema(keys: list[str]) -> dict:
    """The JSON schema of a json-mode rating, sent as ``response_format`` (structured outputs):
    ``{"scores": {key: 1-5 integer}, "rationale": str}``, the form parse_json_scores reads.
    An enum rather than minimum/maximum: strict structured outputs accept enums everywhere.

    >>> rating_schema(["empathy"])["properties"]["scores"]["properties"]
    {'empathy': {'type': 'integer', 'enum': [1, 2, 3, 4, 5]}}
    """
    scores = {k: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for k in keys}
    return {
        "type": "object",
        "properties": {
            "scores": {"type": "object", "properties": scores, "required": list(keys), "additionalProperties": False},
            "rationale": {"type": "string"},
        },
        "required": ["scores", "rationale"],
        "additionalProperties": False,
    }


MIN_DIGIT_MASS = 0.5  # below this the judge was not answering with a score at all


def expected_score(top_logprobs: dict[str, float] | None, min_mass: float = MIN_DIGIT_MASS) -> float:
    """Expected 1-5 score under the judge's next-token probabilities for "1".."5".

    The five probabilities are renormalised; if together they hold less than MIN_DIGIT_MASS of
    ``min_mass`` of the probability, the judge was saying something else and this is a
    ParseError (as it is when no digit is among the top tokens at all).

    >>> round(expected_score({"4": math.log(0.6), "5": math.log(0.3), "The": math.log(0.1)}), 4)
    4.3333
    >>> expected_score({"Sure": math.log(0.9), "3": math.log(0.05)})
    Traceback (most recent call last):
    ...
    psychocounsel.judge.parse.ParseError: digits 1-5 hold 5% of the probability (need 50%)
    """
    if not top_logprobs:
        raise ParseError("no logprobs returned (does the server support logprobs?)")
    probs = {d: math.exp(top_logprobs[str(d)]) for d in range(1, 6) if str(d) in top_logprobs}
    mass = sum(probs.values())
    if mass <= 0 or mass < min_mass:
        raise ParseError(f"digits 1-5 hold {mass:.0%} of the probability (need {min_mass:.0%})")
    return sum(d * p for d, p in probs.items()) / mass


# -- pairwise comparisons ---------------------------------------------------------------------

_VERDICT_WORDS = {
    "a": "A",
    "response a": "A",
    "b": "B",
    "response b": "B",
    "tie": "tie",
    "equal": "tie",
    "equally good": "tie",
    "draw": "tie",
    "same": "tie",
}


def parse_choice(value: object) -> str:
    """ "A", "B" or "tie" from one verdict value; case, whitespace, quotes and a trailing full
    stop do not matter. ``ParseError`` for anything else (never a guess).

    >>> [parse_choice(v) for v in ("A", " b ", "Response A", "response_b", "TIE", "Equal.")]
    ['A', 'B', 'A', 'B', 'tie', 'tie']
    >>> parse_choice("both are good")
    Traceback (most recent call last):
    ...
    psychocounsel.judge.parse.ParseError: 'both are good' is not A, B or tie
    """
    if not isinstance(value, str):
        raise ParseError(f"{json.dumps(value)} is not A, B or tie")
    word = " ".join(value.strip().strip("\"'*.").replace("_", " ").split()).lower()
    if word not in _VERDICT_WORDS:
        raise ParseError(f"{value.strip()!r} is not A, B or tie")
    return _VERDICT_WORDS[word]


def parse_json_comparison(text: str, keys: list[str]) -> tuple[dict[str, str], str]:
    """A verdict ("A", "B" or "tie") for every principle key and for "overall", and the
    rationale, from a JSON judge reply.

    Accepts a flat ``{key: v, ..., "overall": v, "rationale": s}`` or the verdicts nested under
    ``"verdicts"``; values are read by :func:`parse_choice`. The first key that is missing or not
    a verdict is named in the ``ParseError``.

    >>> parse_json_comparison('{"empathy": "a", "safety": "Tie", "overall": "A", "rationale": "Warmer."}',
    ...                       ["empathy", "safety"])
    ({'empathy': 'A', 'safety': 'tie', 'overall': 'A'}, 'Warmer.')
    >>> parse_json_comparison('```json\\n{"verdicts": {"empathy": "Response B", "overall": "b"}}\\n```', ["empathy"])
    ({'empathy': 'B', 'overall': 'B'}, '')
    >>> parse_json_comparison('{"empathy": "A"}', ["empathy"])
    Traceback (most recent call last):
    ...
    psychocounsel.judge.parse.ParseError: missing verdict for 'overall'
    >>> parse_json_comparison('{"empathy": 4, "overall": "A"}', ["empathy"])
    Traceback (most recent call last):
    ...
    psychocounsel.judge.parse.ParseError: verdict for 'empathy': 4 is not A, B or tie
    """
    obj = _json_object(text)
    verdicts = obj.get("verdicts", obj)
    if not isinstance(verdicts, dict):
        raise ParseError("'verdicts' is not an object")
    out: dict[str, str] = {}
    for key in [k for k in keys if k != "overall"] + ["overall"]:
        value = verdicts.get(key, obj.get(key))
        if value is None:
            raise ParseError(f"missing verdict for '{key}'")
        try:
            out[key] = parse_choice(value)
        except ParseError as e:
            raise ParseError(f"verdict for '{key}': {e}") from None
    rationale = obj.get("rationale", "")
    return out, rationale if isinstance(rationale, str) else json.dumps(rationale)


def comparison_schema(keys: list[str]) -> dict:
    """The JSON schema of a json-mode comparison (``response_format``): a verdict "A", "B" or
    "tie" for every principle key and "overall", and a rationale, flat, as parse_json_comparison
    reads it.

    >>> schema = comparison_schema(["empathy"])
    >>> schema["required"], schema["properties"]["overall"]
    (['empathy', 'overall', 'rationale'], {'type': 'string', 'enum': ['A', 'B', 'tie']})
    """
    names = [k for k in keys if k != "overall"] + ["overall"]
    props: dict = {k: {"type": "string", "enum": ["A", "B", "tie"]} for k in names}
    props["rationale"] = {"type": "string"}
    return {"type": "object", "properties": props, "required": [*names, "rationale"], "additionalProperties": False}


MIN_LETTER_MASS = 0.5  # below this the judge was not answering A or B at all
TIE_BAND = 0.1  # |P(A) - P(B)| under this (after renormalising over A and B) is a tie: 45-55%


def _letter(token: str) -> str | None:
    """ "A" or "B" when a first token is that letter ("A", " A", "(A", "**B"), else None. Only
    capitals count: a lowercase "a" is usually the article that starts a sentence."""
    word = token.strip().strip("()[]*.:\"'")
    return word if word in ("A", "B") else None


def letter_preference(
    top_logprobs: dict[str, float] | None, min_mass: float = MIN_LETTER_MASS, tie_band: float = TIE_BAND
) -> str:
    """ "A", "B" or "tie" from the judge's probabilities for its first token.

    Probabilities are summed over the spellings of each letter ("A", " A", "(A"), then
    renormalised over A and B; a difference under ``tie_band`` is a tie. When A and B together
    hold less than ``min_mass`` the judge was saying something else: ``ParseError``.

    >>> letter_preference({"A": math.log(0.5), " A": math.log(0.2), "B": math.log(0.3)})
    'A'
    >>> letter_preference({"B": math.log(0.47), "A": math.log(0.43), "The": math.log(0.1)})
    'tie'
    >>> letter_preference({"Sure": math.log(0.8), "B": math.log(0.1)})
    Traceback (most recent call last):
    ...
    psychocounsel.judge.parse.ParseError: A and B hold 10% of the probability (need 50%)
    """
    if not top_logprobs:
        raise ParseError("no logprobs returned (does the server support logprobs?)")
    probs = {"A": 0.0, "B": 0.0}
    for token, logprob in top_logprobs.items():
        letter = _letter(token)
        if letter:
            probs[letter] += math.exp(logprob)
    mass = probs["A"] + probs["B"]
    if mass <= 0 or mass < min_mass:
        raise ParseError(f"A and B hold {mass:.0%} of the probability (need {min_mass:.0%})")
    diff = (probs["A"] - probs["B"]) / mass
    if diff == 0 or abs(diff) < tie_band:
        return "tie"
    return "A" if diff > 0 else "B"
