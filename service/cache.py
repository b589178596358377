"""An optional in-memory LRU of per-sequence scores, bounded in bytes.

Keyed by fingerprint + window + stride + a digest of the token bytes: the fingerprint already
names the weights and settings, and the explicit window/stride keep keys readable. Only the
event loop touches it, so it needs no lock.
"""

import hashlib
from collections import OrderedDict

import numpy as np

from tokenweight.wire import OUTPUT_NAMES, Scores

from .engine import Outputs



def _size(scores: Scores) -> int:
    return sum(getattr(scores, f).nbytes for f in OUTPUT_NAMES if getattr(scores, f) is not None)


class ScoreCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple, Scores] = OrderedDict()

    @staticmethod
    def key(fingerprint: str, window: int, stride: int, tokens: np.ndarray) -> tuple:
        digest = hashlib.blake2b(tokens.astype("<i4").tobytes(), digest_size=16).digest()
        return fingerprint, window, stride, digest

    def get(self, key: tuple, outputs: Outputs) -> Scores | None:
        """The cached arrays `outputs` asks for, or None if any of them is missing."""
        entry = self._entries.get(key)
        if entry is None or any(
            getattr(outputs, f) and getattr(entry, f) is None for f in OUTPUT_NAMES
        ):
            return None
        self._entries.move_to_end(key)
        return Scores(**{f: getattr(entry, f) if getattr(outputs, f) else None for f in OUTPUT_NAMES})

    def put(self, key: tuple, scores: Scores) -> None:
        """Store, merging with arrays already cached for the key, then evict to the bound."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= _size(old)
            scores = Scores(
                **{f: getattr(scores, f) if getattr(scores, f) is not None else getattr(old, f) for f in OUTPUT_NAMES}
            )
        size = _size(scores)
        if size > self.max_bytes:
            return
        self._entries[key] = scores
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= _size(evicted)

    def __len__(self) -> int:
        return len(self._entries)
