"""Where the collator gets a batch's log-probs: the scorer service or a score store.

Both run inside DataLoader worker processes. Their connections (a gRPC channel, memory maps)
are opened lazily in the process that uses them and never pickled, since a worker is forked
or spawned from the trainer after the collator was built, and gRPC channels do not survive
a fork.
"""

import atexit
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenweight.client.grpc_client import ScorerClient
from tokenweight.client.retry import RetryPolicy
from tokenweight.trainer.data import TokenShards
from tokenweight.trainer.score_store import ScoreStore
from tokenweight.trainer.scores import ScoreMismatchError

# The example field StoreScores reads an example's dataset row from.
SEQUENCE_INDEX = "sequence_index"


@dataclass
class FetchedScores:
    """Per-row log-probs of `len(row) - 1` values each; `logp_long` None when not fetched."""

    logp_short: list[np.ndarray]
    logp_long: list[np.ndarray] | None
    fingerprint: str


class _PerProcess:
    """A resource opened on first use in each process, dropped from pickles, and closed when
    the process exits: a gRPC channel left open at interpreter exit can abort the process
    ("terminate called without an active exception") after the work is done."""

    _resource = None
    _pid: int | None = None

    def resource(self):
        if self._pid != os.getpid():
            self._resource, self._pid = self._open(), os.getpid()
            close = getattr(self._resource, "close", None)
            if close is not None:
                atexit.register(close)
        return self._resource

    def _open(self):
        raise NotImplementedError

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_resource", "_pid")}


@dataclass
class ServiceScores(_PerProcess):
    """Scores from `tokenweight serve` at `url` (any form `--scorer-url` takes, including a
    load-balanced `dns:///NAME:PORT`). `hybrid` asks for logp_short alone, which lets the
    scorer skip its long pass; the loss then takes logp_long from the model's own forward.

    Calls are retried with backoff for up to `retry_for` seconds, so a scorer outage makes
    the DataLoader wait, never skip a batch.
    """

    url: str
    hybrid: bool = False
    window: int | None = None
    stride: int | None = None
    scorer: str = ""
    retry_for: float = 3600.0

    def _open(self) -> ScorerClient:
        return ScorerClient(
            self.url, retry=RetryPolicy.for_duration(self.retry_for, max_backoff=3.0)
        )

    def fetch(self, rows: list[np.ndarray], features: list[dict]) -> FetchedScores:
        outputs = ("logp_short",) if self.hybrid else ("logp_long", "logp_short")
        result = self.resource().score(
            rows,
            window=self.window,
            stride=self.stride,
            scorer=self.scorer or None,
            outputs=outputs,
        )
        return FetchedScores(
            logp_short=[r.logp_short for r in result.results],
            logp_long=None if self.hybrid else [r.logp_long for r in result.results],
            fingerprint=result.fingerprint,
        )


@dataclass
class StoreScores(_PerProcess):
    """Scores from a store written by `tokenweight precompute` for the prepared dataset
    `data`. Each example must carry its row of that dataset as `sequence_index` (keep the
    column: `TrainingArguments(remove_unused_columns=False)`); its tokens are checked against
    that row, so scores are never paired with other tokens."""

    store: str | Path
    data: str | Path

    def _open(self) -> tuple[ScoreStore, TokenShards]:
        shards = TokenShards(self.data)
        return ScoreStore.open(self.store, shards.content_hash), shards

    def fetch(self, rows: list[np.ndarray], features: list[dict]) -> FetchedScores:
        store, shards = self.resource()
        if any(SEQUENCE_INDEX not in f for f in features):
            raise ScoreMismatchError(
                f"StoreScores needs each example's dataset row as {SEQUENCE_INDEX!r}; keep the "
                "column (TrainingArguments(remove_unused_columns=False))"
            )
        indices = np.asarray([int(f[SEQUENCE_INDEX]) for f in features], dtype=np.int64)
        logp_long, logp_short = store.get(indices)
        stored = shards.take(indices)
        for row, index, tokens in zip(rows, indices, stored):
            if len(row) > len(tokens) or not np.array_equal(row, tokens[: len(row)]):
                raise ScoreMismatchError(
                    f"example with sequence_index {index} holds other tokens than row {index} of "
                    f"{shards.path}, whose scores the store {store.path} holds"
                )
        lengths = [len(row) - 1 for row in rows]
        return FetchedScores(
            logp_short=[a[:n] for a, n in zip(logp_short, lengths)],
            logp_long=[a[:n] for a, n in zip(logp_long, lengths)],
            fingerprint=store.meta.fingerprint,
        )
