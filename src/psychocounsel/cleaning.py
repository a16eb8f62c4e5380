"""Cleaning client speech text: Unicode and whitespace normalisation, and PII scrubbing.

Pure functions (doctested): text in, text out.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

# Line breaks other than "\n" (CR, VT, FF, NEL, U+2028/9): str.splitlines() honours them all.
LINE_BREAKS = re.compile(r"\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
# Runs of 2+ spaces, and any other space character, but "\n": a single " " is left alone (the
# same output as replacing every run, without rewriting each single space).
_SPACES = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_BLANK_RUNS = re.compile(r"\n{3,}")
_ASCII_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # ASCII's Cc but "\n" and "\t"; it has no Cf


@functools.cache
def _invisible() -> re.Pattern:
    """One character class of every Cc and Cf code point but "\\n" and "\\t", from this Python's
    Unicode tables (built once, ~0.3 s): a regex pass is several times faster than asking
    unicodedata.category() of each character of a million speeches."""
    ranges, start = [], None
    for code in range(sys.maxunicode + 2):
        hit = code <= sys.maxunicode and chr(code) not in "\n\t" and unicodedata.category(chr(code)) in ("Cc", "Cf")
        if hit and start is None:
            start = code
        elif not hit and start is not None:
            ranges.append(f"\\U{start:08x}-\\U{code - 1:08x}")
            start = None
    return re.compile(f"[{''.join(ranges)}]")


def _strip_invisible(text: str) -> str:
    # Cc = control characters, Cf = zero-width and bidi marks (ZWSP, ZWJ, BOM, LRM...): invisible
    # chars that would otherwise make two identical-looking speeches differ.
    return _invisible().sub("", text)


def _unicode_visible(text: str) -> str:
    """Every line break as a newline, NFKC, no invisible characters."""
    # Invisible characters go before NFKC too: "e" + ZWJ + U+0301 only composes to "é" once the
    # ZWJ is gone, and the result must already be NFKC for normalise_text to be idempotent.
    text = _strip_invisible(LINE_BREAKS.sub("\n", text))
    return _strip_invisible(unicodedata.normalize("NFKC", text))


def _ascii_visible(text: str) -> str:
    """``_unicode_visible`` for ASCII text (tested equal): NFKC leaves ASCII as it is, and ASCII's
    invisible characters are its few controls, so one small pass does, about 4x faster. The
    line-break pass runs only when there is one to replace (its alternation costs ~14 us a speech)."""
    if "\r" in text or "\x0b" in text or "\x0c" in text:
        text = LINE_BREAKS.sub("\n", text)
    return _ASCII_INVISIBLE.sub("", text)


def _visible_single_spaced(text: str) -> str:
    """``_SPACES.sub(" ", _unicode_visible(text))``, faster for ASCII text (tested equal)."""
    if not text.isascii():
        return _SPACES.sub(" ", _unicode_visible(text))
    text = _ascii_visible(text)
    # The only spaces ASCII has left now are " ", "\t" and "\n": without a tab or a double space
    # _SPACES matches nothing, and its scan was most of normalise_text's time (37 of 57 us).
    return _SPACES.sub(" ", text) if "\t" in text or "  " in text else text


def normalise_text(text: str) -> str:
    """NFKC, no invisible characters, single spaces, at most one blank line, stripped lines.

    >>> normalise_text("  Hello\\u200b   world\\t!  \\r\\n\\r\\n\\r\\n\\n  Bye\\x07 ")
    'Hello world !\\n\\nBye'
    >>> normalise_text("\\uff21\\u00a0\\ufb01")  # full-width A, no-break space, "fi" ligature
    'A fi'
    >>> normalise_text(" \\n \\t ")
    ''
    """
    text = _visible_single_spaced(text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


_EMAIL = re.compile(r"[\w.+'%-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
# A URL or handle ends before trailing punctuation: "see www.x.org." keeps its full stop.
_URL = re.compile(r"(?:https?://|\bwww\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]", re.IGNORECASE)
_HANDLE = re.compile(r"(?<![\w@.])@[A-Za-z_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])?(?![\w@])")
_PHONE = re.compile(
    r"""(?<![\w+])(?:
        \+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}  # +44 20 7946 0958
      | (?:1[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[ .-]?)\d{3}[ .-]?\d{4}          # (555) 123-4567
      | [2-9]\d{2}[.-]\d{4}                                               # 555-1234 (NANP: 2-9)
      | (?P<trunk>0\d{1,4}(?:[ -]?\d{2,6}){1,4})                           # 07700 900123
    )(?!\w)""",
    re.VERBOSE,
)


def _phone(match: re.Match) -> str:
    # 7 digits is a US local number; fewer are ages, years and counts. A national number with a
    # trunk 0 needs 10 (UK, France, Germany have 10-11), so "01 02 2019" stays a date.
    need = 10 if match.group("trunk") else 7
    return "[PHONE]" if sum(c.isdigit() for c in match.group()) >= need else match.group()


def scrub_pii(text: str) -> str:
    """Replace emails, URLs, @handles and phone numbers with placeholders.

    >>> scrub_pii("Mail me at jo.doe+x@mail.example.com or see https://example.com/a?b=1.")
    'Mail me at [EMAIL] or see [URL].'
    >>> scrub_pii("Call 555-123-4567, (555) 123-4567, +44 20 7946 0958, 07700 900123 or 555-1234!")
    'Call [PHONE], [PHONE], [PHONE], [PHONE] or [PHONE]!'
    >>> scrub_pii("I follow @jane_doe and visit www.example.org daily")
    'I follow [HANDLE] and visit [URL] daily'
    >>> scrub_pii("I am 34, married in 2019, from 1990-1995, on 2019-03-25, earn $1,500,000.")
    'I am 34, married in 2019, from 1990-1995, on 2019-03-25, earn $1,500,000.'
    >>> scrub_pii("We meet @ 5pm, 3 times a week")
    'We meet @ 5pm, 3 times a week'
    """
    text = _EMAIL.sub("[EMAIL]", text)  # before URLs, so the host of an email is not a URL
    text = _URL.sub("[URL]", text)
    text = _HANDLE.sub("[HANDLE]", text)
    return _PHONE.sub(_phone, text)


def trim_incomplete(text: str) -> str:
    """Drop a trailing unfinished sentence; keep the text whole if no sentence ever ends.

    >>> trim_incomplete("I hear you. That sounds hard. What would")
    'I hear you. That sounds hard.'
    >>> trim_incomplete("no full stop at all")
    'no full stop at all'
    """
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s|$)", text)]
    return text[: ends[-1]].rstrip() if ends else text
