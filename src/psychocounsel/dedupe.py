"""Near-duplicate detection: word 3-shingle Jaccard similarity, first occurrence wins.

Exact, in memory bounded per document, in two passes over the documents:

1. ``ShingleCounts`` sees every document once and learns which shingles occur in two or more
   of them (a pair of Bloom filters: a shingle seen twice is never taken for one seen once) and
   roughly how often (a count sketch), in a fixed size chosen from the expected input size.
2. ``NearDuplicates`` judges the documents in order. A shingle found in one document only can
   match nothing; the others are ranked rarest first, and each kept document is indexed under
   the first few of them (prefix filtering), so common shingles ("i don t") never make the
   comparison quadratic. Every candidate is checked with the exact Jaccard.

Only documents that share shingles with others are indexed (a few percent of real text), so the
memory per document is a 16-byte hash of its text plus, for those, its shingle hashes. Shingles
are compared by their 64-bit hash: two different shingles colliding in one comparison is a
~1e-15 chance.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from array import array
from collections import defaultdict
from collections.abc import Iterable

_WORD = re.compile(r"\w+")
# ASCII text: every character that \w does not match becomes a space, so str.split() gives the
# words findall would, ~3x faster (most speeches are ASCII).
_ASCII_NON_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")})
_K = 4  # Bloom filter positions per shingle: ~2% false "seen" at 7 bits per distinct shingle


def shingles(text: str, n: int = 3) -> set[str]:
    """Casefolded word n-grams; a text shorter than n words is one shingle.

    >>> sorted(shingles("I feel  so TIRED, always"))
    ['feel so tired', 'i feel so', 'so tired always']
    >>> shingles("Help me")
    {'help me'}
    """
    tokens = words(text)
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(gram) for gram in zip(*(tokens[k:] for k in range(n)))}


def words(text: str) -> list[str]:
    """The casefolded words (``\\w+``) of ``text``.

    >>> words("I'm  so TIRED,always_2 ")
    ['i', 'm', 'so', 'tired', 'always_2']
    """
    if text.isascii():
        return text.lower().translate(_ASCII_NON_WORD).split()
    return _WORD.findall(text.casefold())


def shingle_hashes(text: str) -> set[int]:
    """``shingles(text)`` as hashes (the word tuples' hashes: no joined strings, ~2x faster).

    >>> len(shingle_hashes("I feel  so TIRED, always")), shingle_hashes("") == set()
    (3, True)
    """
    tokens = words(text)
    if len(tokens) < 3:
        return {hash(tuple(tokens))} if tokens else set()
    return set(map(hash, zip(tokens, tokens[1:], tokens[2:])))


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


def _pow2(n: float, lo: int, hi: int) -> int:
    return 1 << min(hi, max(lo, math.ceil(math.log2(max(n, 1)))))


class ShingleCounts:
    """Pass 1: which shingle hashes occur in two or more documents, and about how often.

    ``expected``: about how many shingles (words) the documents hold in all. It sizes the
    filters at 4 bits a shingle (~7 a distinct one: ~2% of unique shingles taken for shared),
    capped at 2^29 bits (64 MiB) for "seen", a quarter of that for "seen twice" and 16 MiB of
    counts: 96 MiB in all, whatever the input (1M speeches of ~100 words fit). Past that the
    filters call more shingles shared than are: more documents get indexed (time and memory),
    never a wrong verdict.
    """

    def __init__(self, expected: int):
        import numpy as np

        self._np = np
        self.once = np.zeros(_pow2(4 * expected, 16, 29) // 8, dtype=np.uint8)
        self.twice = np.zeros(max(8, self.once.size // 4), dtype=np.uint8)
        self.counts = np.zeros(_pow2(expected / 4, 12, 22), dtype=np.uint32)
        self._buffer = array("q")
        self._done = False

    def add(self, hashes: Iterable[int]) -> None:
        """Count one document's shingle hashes (a set: each shingle once per document)."""
        self._buffer.extend(hashes)
        if len(self._buffer) >= 1 << 20:  # 8 MiB of hashes at a time
            self._flush()

    def _positions(self, h, size_bytes: int):
        np = self._np
        lo, step = h & np.uint64(0xFFFFFFFF), (h >> np.uint64(32)) | np.uint64(1)
        mask = np.uint64(size_bytes * 8 - 1)
        return [(lo + np.uint64(i) * step) & mask for i in range(_K)]

    def _test(self, bits, h):
        np = self._np
        hit = np.ones(h.size, dtype=bool)
        for pos in self._positions(h, bits.size):
            hit &= (bits[pos >> np.uint64(3)] >> (pos & np.uint64(7)).astype(np.uint8)) & np.uint8(1) == 1
        return hit

    def _set(self, bits, h) -> None:
        np = self._np
        for pos in self._positions(h, bits.size):
            byte, bit = pos >> np.uint64(3), (pos & np.uint64(7)).astype(np.uint8)
            for k in range(8):  # one bit value at a time: a repeated byte index then sets the same bit
                bits[byte[bit == k]] |= np.uint8(1 << k)  # (2-3x faster than np.bitwise_or.at)

    def _flush(self) -> None:
        np = self._np
        if not self._buffer:
            return
        h, n = np.unique(np.frombuffer(self._buffer, dtype=np.uint64), return_counts=True)
        self._buffer = array("q")
        # Shared: in two documents of this batch, or in one here and one before.
        self._set(self.twice, h[(n > 1) | self._test(self.once, h)])
        self._set(self.once, h)
        self.counts += np.bincount(
            (h & np.uint64(self.counts.size - 1)).astype(np.intp), weights=n, minlength=self.counts.size
        ).astype(np.uint32)

    def rank(self, hashes):
        """(shared, estimate) per hash of an int64 array: shared is never False for a shingle
        in two documents; estimate is at least its document count."""
        np = self._np
        if not self._done:
            self._flush()
            self._done = True
        h = hashes.view(np.uint64)
        return self._test(self.twice, h), self.counts[h & np.uint64(self.counts.size - 1)]


class NearDuplicates:
    """Pass 2: each document's verdict, in order, against the documents kept before it."""

    def __init__(self, threshold: float, counts: ShingleCounts | None):
        self.threshold, self.counts = threshold, counts
        self.seen: set[bytes] = set()  # 16-byte hashes of the casefolded texts
        self.index: dict[int, list[int]] = defaultdict(list)  # shingle hash -> indexed docs
        self.sets: list[array] = []  # shingle hashes of each indexed doc

    def judge(self, docs: list[str], shingled: tuple | None = None) -> list[str | None]:
        """For each doc of a batch, in order: None (keep), "exact_duplicate" or "near_duplicate".

        ``shingled``: the docs' ``shingle_hashes`` if already known, as (an int64 array of them
        all, doc after doc; the end of each doc's run in it), so they are not computed twice."""
        keys = [hashlib.blake2b(d.casefold().encode("utf-8", "surrogatepass"), digest_size=16).digest() for d in docs]
        if self.counts:
            np = self.counts._np
            if shingled is None:
                sets = [shingle_hashes(d) for d in docs]
                flat = np.fromiter(itertools.chain.from_iterable(sets), dtype=np.int64, count=sum(map(len, sets)))
                ends = np.cumsum([len(s) for s in sets]).tolist()
            else:
                flat, ends = shingled
            shared, estimate = self.counts.rank(flat)
        verdicts: list[str | None] = []
        for i, key in enumerate(keys):
            if key in self.seen:
                verdicts.append("exact_duplicate")
                continue
            self.seen.add(key)
            start, end = (ends[i - 1] if i else 0, ends[i]) if self.counts else (0, 0)
            if end > start:
                prefix = self._prefix(flat[start:end], shared[start:end], estimate[start:end])
                if prefix:  # shares shingles with other docs: compare, and index it if kept
                    doc = flat[start:end].tolist()
                    if self._has_near(set(doc), prefix):
                        verdicts.append("near_duplicate")
                        continue
                    self.sets.append(array("q", doc))
                    for h in prefix:
                        self.index[h].append(len(self.sets) - 1)
            verdicts.append(None)
        return verdicts

    def _prefix(self, hashes, shared, estimate) -> list[int]:
        """The doc's first shared shingles in the global order (rarest first, then by hash)."""
        n_shared = int(shared.sum())
        size = hashes.size
        take = _prefix_len(size, self.threshold) - (size - n_shared)
        if take <= 0:
            return []
        h, est = hashes[shared], estimate[shared]
        order = self.counts._np.lexsort((h, est))[:take]
        return h[order].tolist()

    def _has_near(self, doc: set[int], prefix: list[int]) -> bool:
        size, checked, t = len(doc), set(), self.threshold
        for h in prefix:
            for j in self.index.get(h, ()):
                if j in checked:
                    continue
                checked.add(j)
                # Jaccard >= t needs t * |A| <= |B| <= |A| / t: skip candidates of the wrong size
                # (1e-9: 0.7 * 10 is 7.000000000000001 in floating point).
                other = len(self.sets[j])
                if t * size - 1e-9 <= other <= size / t + 1e-9 and jaccard(doc, set(self.sets[j])) >= t:
                    return True
        return False


def dedupe(docs: list[str], threshold: float) -> list[str | None]:
    """For each doc, in order: None (keep), "exact_duplicate" or "near_duplicate" of a kept doc.

    Exact = same casefolded text. Near = word 3-shingle Jaccard >= threshold with a kept doc;
    threshold 1.0 means exact only. (``ShingleCounts`` then ``NearDuplicates``, for a list that
    fits in memory; ingest streams the two passes.)

    >>> base = "one two three four five six seven eight nine ten eleven twelve"
    >>> dedupe([base, base.upper(), base + " thirteen", "something else entirely"], 0.9)
    [None, 'exact_duplicate', 'near_duplicate', None]
    >>> dedupe([base, base + " thirteen"], 1.0)
    [None, None]
    """
    counts = None
    if threshold < 1.0:
        counts = ShingleCounts(sum(len(d) for d in docs) // 6)
        for d in docs:
            counts.add(shingle_hashes(d))
    return NearDuplicates(threshold, counts).judge(docs)
