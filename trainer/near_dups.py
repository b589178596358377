"""Near-duplicate detection for the corpus: MinHash signatures and LSH banding, in numpy.

A kept library (datasketch) would do the same, but it pulls in scipy, and the corpus is
rebuilt on machines without network where only this project's own dependencies are present;
the whole method is a few array operations.

- A document's shingles are its runs of `shingle` consecutive word/punctuation tokens, each
  hashed to 64 bits (token ids from crc32, combined by multiply-add in uint64).
- Its signature is, for each of `perms` hash functions h_i(x) = (a_i x + b_i) >> 32 (odd a_i,
  multiply-shift hashing mod 2^64), the minimum over its shingles; two signatures agree in a
  position with probability equal to the documents' Jaccard similarity.
- LSH: the signature is cut into `bands` bands of `perms // bands` rows; documents sharing a
  whole band are candidates, and a candidate pair is a near-duplicate when the share of equal
  signature positions reaches `threshold`. With 16 bands of 8 rows a pair of Jaccard 0.8 is a
  candidate with probability 1 - (1 - 0.8^8)^16 = 0.94; one of 0.5 with 0.06.
"""

import re
import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

TOKEN = re.compile(r"\w+|[^\w\s]")
MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier that spreads token ids over 64 bits
ROWS_AT_ONCE = 1 << 16  # shingles hashed per block: bounds memory to ~64 MB per document
MAX_RIVALS = 64


@dataclass(frozen=True)
class MinHashConfig:
    perms: int = 128
    bands: int = 16
    shingle: int = 5
    threshold: float = 0.8
    seed: int = 0

    def __post_init__(self):
        if self.perms < 1 or self.bands < 1 or self.perms % self.bands:
            raise ValueError(f"perms ({self.perms}) must be a positive multiple of bands")
        if self.shingle < 1 or not 0 < self.threshold <= 1:
            raise ValueError("shingle must be >= 1 and threshold in (0, 1]")


class MinHasher:
    def __init__(self, config: MinHashConfig):
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.a = rng.integers(1, 2**63, config.perms, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, config.perms, dtype=np.uint64)
        self._ids: dict[str, int] = {}

    def shingles(self, text: str) -> np.ndarray:
        """The distinct 64-bit shingle hashes of `text` (a short text is one shingle)."""
        ids = self._ids
        tokens = np.fromiter(
            (
                ids.get(t) or ids.setdefault(t, zlib.crc32(t.encode()) + 1)
                for t in TOKEN.findall(text)
            ),
            dtype=np.uint64,
        )
        if tokens.size == 0:
            return np.zeros(1, dtype=np.uint64)
        width = min(self.config.shingle, tokens.size)
        hashes = np.zeros(tokens.size - width + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for offset in range(width):
                hashes = hashes * MIX + tokens[offset : offset + hashes.size]
        return np.unique(hashes)

    def signature(self, text: str) -> np.ndarray:
        shingles = self.shingles(text)
        out = np.full(self.config.perms, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, shingles.size, ROWS_AT_ONCE):
                block = shingles[start : start + ROWS_AT_ONCE, None]
                out = np.minimum(out, ((self.a * block + self.b) >> np.uint64(32)).min(axis=0))
        return out


def signatures_of(texts: list[str], config: MinHashConfig) -> np.ndarray:
    """Signatures of `texts`, one row each (a function of the texts alone: token ids come from
    crc32, so chunks hashed in different processes agree)."""
    hasher = MinHasher(config)
    return np.stack([hasher.signature(t) for t in texts]).reshape(len(texts), config.perms)


def shadowed(signatures: np.ndarray, ranks: list[int], config: MinHashConfig) -> set[int]:
    """Rows with a near-duplicate of a lower rank (rank 0 wins over 1, ...): the rows to drop so
    that no two ranks share a near-duplicate. Candidates are rows sharing a whole LSH band; a
    pair is a near-duplicate when its signatures agree in >= threshold of positions. Each row
    is checked against at most MAX_RIVALS rows of each bucket, so a bucket of thousands of
    near-identical boilerplate files stays linear."""
    rows = config.perms // config.bands
    ranks_arr = np.asarray(ranks)
    dropped: set[int] = set()
    for band in range(config.bands):
        buckets = defaultdict(list)
        part = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        for i, key in enumerate(map(bytes, part)):
            buckets[key].append(i)
        for members in buckets.values():
            if len(set(ranks_arr[members])) < 2:
                continue
            members = sorted(members, key=lambda i: (ranks[i], i))
            for i in members:
                if i in dropped:
                    continue
                rivals = [j for j in members if ranks[j] < ranks[i]][:MAX_RIVALS]
                if not rivals:
                    continue
                agree = (signatures[rivals] == signatures[i]).mean(axis=1)
                if agree.max() >= config.threshold:
                    dropped.add(i)
    return dropped
