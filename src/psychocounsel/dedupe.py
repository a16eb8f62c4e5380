"""Near-duplicate detection: word 3-shingle Jaccard similarity, first occurrence wins.

An inverted index over each text's rarest shingles finds candidates, and every candidate is
checked with the exact Jaccard, so 30k speeches take seconds rather than an all-pairs scan.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 3) -> set[str]:
    """Casefolded word n-grams; a text shorter than n words is one shingle.

    >>> sorted(shingles("I feel  so TIRED, always"))
    ['feel so tired', 'i feel so', 'so tired always']
    >>> shingles("Help me")
    {'help me'}
    """
    words = _WORD.findall(text.casefold())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(gram) for gram in zip(*(words[k:] for k in range(n)))}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|.

    >>> jaccard({1, 2, 3}, {2, 3, 4})
    0.5
    """
    return len(a & b) / len(a | b) if a or b else 1.0


def _prefix_len(size: int, threshold: float) -> int:
    # Prefix filter (Chaudhuri et al. 2006): with every set sorted by one global order, two sets
    # with Jaccard >= t share an element within the first size - ceil(t * size) + 1 of each.
    # The 1e-9 keeps 0.7 * 10 = 7.000000000000001 from rounding up to 8.
    return size - math.ceil(threshold * size - 1e-9) + 1


def dedupe(docs: list[str], threshold: float) -> list[str | None]:
    """For each doc, in order: None (keep), "exact_duplicate" or "near_duplicate" of a kept doc.

    Exact = same casefolded text. Near = word 3-shingle Jaccard >= threshold with a kept doc;
    threshold 1.0 means exact only. Candidates come from an inverted index of the rarest
    shingles of each kept doc (prefix filtering), so common shingles ("i don t") never make
    the comparison quadratic; each candidate is then checked exactly.

    >>> base = "one two three four five six seven eight nine ten eleven twelve"
    >>> dedupe([base, base.upper(), base + " thirteen", "something else entirely"], 0.9)
    [None, 'exact_duplicate', 'near_duplicate', None]
    >>> dedupe([base, base + " thirteen"], 1.0)
    [None, None]
    """
    sets = [shingles(d) for d in docs] if threshold < 1.0 else []
    df: Counter[str] = Counter()
    for shs in sets:
        df.update(shs)
    # Global order: rarest first. Shingles in one doc only (most of them) can match nothing, so
    # they are not ranked at all, just counted as the head of each doc's prefix.
    shared = sorted((s for s, n in df.items() if n > 1), key=lambda s: (df[s], s))
    rank = {s: r for r, s in enumerate(shared)}
    index: dict[int, list[int]] = defaultdict(list)
    seen: set[str] = set()
    verdicts: list[str | None] = []
    for i, doc in enumerate(docs):
        key = doc.casefold()
        if key in seen:
            verdicts.append("exact_duplicate")
            continue
        seen.add(key)
        if threshold < 1.0 and sets[i]:
            ranked = sorted(rank[s] for s in sets[i] & rank.keys())
            unique = len(sets[i]) - len(ranked)
            prefix = ranked[: max(0, _prefix_len(len(sets[i]), threshold) - unique)]
            if _has_near(sets, i, prefix, index, threshold):
                verdicts.append("near_duplicate")
                continue
            for r in prefix:
                index[r].append(i)
        verdicts.append(None)
    return verdicts


def _has_near(sets: list[set], i: int, prefix: list[int], index: dict, threshold: float) -> bool:
    size, checked = len(sets[i]), set()
    for r in prefix:
        for j in index.get(r, ()):
            if j in checked:
                continue
            checked.add(j)
            # Jaccard >= t needs t * |A| <= |B| <= |A| / t: skip candidates of the wrong size
            # (1e-9: 0.7 * 10 is 7.000000000000001 in floating point).
            other = len(sets[j])
            if threshold * size - 1e-9 <= other <= size / threshold + 1e-9 and jaccard(sets[i], sets[j]) >= threshold:
                return True
    return False
