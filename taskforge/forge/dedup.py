"""Near-duplicate instructions: character 5-gram Jaccard, found fast with MinHash LSH.

Two instructions are near-duplicates when the Jaccard similarity of the sets of character
5-grams of their normalised text (lowercase, markup dropped, whitespace collapsed, digits kept)
is at least NEAR_DUPLICATE_JACCARD. The generator redraws a task whose instruction is a
near-duplicate of an earlier one of the same family; different families use different templates
and never come close.

Candidates come from a one-permutation MinHash (64 buckets of a stable 64-bit hash) split into
16 bands of 4 rows; a candidate whose estimated similarity clears ESTIMATE_FLOOR is confirmed
with the exact Jaccard. Memory per task: the normalised text and a 512-byte signature.
"""

from __future__ import annotations

import hashlib
import re
from array import array

NEAR_DUPLICATE_JACCARD = 0.95
SHINGLE = 5
BUCKETS = 64
BANDS, ROWS = 16, 4
ESTIMATE_FLOOR = 0.85  # 3.7 standard errors below the threshold for 64 buckets
_EMPTY = (1 << 64) - 1


def normalise(text: str) -> str:
    """Lowercase, markup and punctuation dropped, whitespace collapsed; digits kept."""
    text = re.sub(r"[`*_#>\-|:;,.()\[\]{}\"']", " ", text.lower())
    return " ".join(text.split())


def shingles(normalised: str) -> set[str]:
    return {normalised[i : i + SHINGLE] for i in range(max(1, len(normalised) - SHINGLE + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def signature(normalised: str) -> bytes:
    """One-permutation MinHash: per bucket, the smallest hash of the shingles that fall in it."""
    mins = [_EMPTY] * BUCKETS
    for gram in shingles(normalised):
        h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "little")
        bucket, value = h % BUCKETS, h // BUCKETS
        if value < mins[bucket]:
            mins[bucket] = value
    return array("Q", mins).tobytes()


def estimate(sig_a: bytes, sig_b: bytes) -> float:
    a, b = array("Q", sig_a), array("Q", sig_b)
    shared = sum(1 for x, y in zip(a, b, strict=True) if x == y and x != _EMPTY)
    filled = sum(1 for x, y in zip(a, b, strict=True) if x != _EMPTY or y != _EMPTY)
    return shared / filled if filled else 1.0


class NearDuplicateIndex:
    """Instructions seen so far, per group (family); answers 'is this one a near-duplicate?'."""

    def __init__(self, threshold: float = NEAR_DUPLICATE_JACCARD):
        self.threshold = threshold
        self._texts: list[str] = []
        self._sigs: list[bytes] = []
        self._bands: dict[int, list[int]] = {}

    def _band_keys(self, group: str, sig: bytes) -> list[int]:
        values = array("Q", sig)
        keys = []
        for band in range(BANDS):
            chunk = values[band * ROWS : (band + 1) * ROWS].tobytes()
            keys.append(
                int.from_bytes(
                    hashlib.blake2b(group.encode() + bytes([band]) + chunk, digest_size=8).digest(), "little"
                )
            )
        return keys

    def find(self, group: str, normalised: str, sig: bytes) -> int | None:
        """Index of an earlier near-duplicate in `group`, or None."""
        seen: set[int] = set()
        mine: set[str] | None = None
        for key in self._band_keys(group, sig):
            for other in self._bands.get(key, ()):
                if other in seen:
                    continue
                seen.add(other)
                if estimate(sig, self._sigs[other]) < ESTIMATE_FLOOR:
                    continue
                mine = mine if mine is not None else shingles(normalised)
                if jaccard(mine, shingles(self._texts[other])) >= self.threshold:
                    return other
        return None

    def add(self, group: str, normalised: str, sig: bytes) -> int:
        index = len(self._texts)
        self._texts.append(normalised)
        self._sigs.append(sig)
        for key in self._band_keys(group, sig):
            self._bands.setdefault(key, []).append(index)
        return index
