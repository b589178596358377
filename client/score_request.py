"""Building ScoreRequests for the clients (the bytes themselves are `wire`'s job)."""

import itertools
import os
from collections.abc import Iterable, Sequence

import numpy as np

from tokenweight import wire
from tokenweight.v1 import scorer_pb2


class RequestIds:
    """Unique request ids: a per-client random prefix, then a counter (thread-safe: the
    counter is an itertools.count, whose next() is atomic under the GIL)."""

    def __init__(self):
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


def make_request(
    sequences: Sequence,
    *,
    request_id: str,
    window: int | None = None,
    stride: int | None = None,
    scorer: str | None = None,
    outputs: Iterable[str] | None = None,
) -> scorer_pb2.ScoreRequest:
    """One ScoreRequest; `sequences` is a list of token-id arrays (or lists, or a 2-D array)."""
    if len(sequences) and isinstance(sequences[0], (int, np.integer)):
        raise TypeError("sequences must be a list of token-id arrays; wrap a single one in [ ]")
    return wire.build_request(
        sequences,
        scorer=scorer or "",
        window=window or 0,
        stride=stride or 0,
        outputs=outputs,
        request_id=request_id,
    )
