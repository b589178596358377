"""Scoring whole documents: a local engine or running scorers, and pieces for long documents.

Both scorers answer `score(sequences) -> Answer` with the target-aligned `logp_long` and
`logp_short` of each sequence and the identity (fingerprint, scorer, window, stride) the
table records. A document longer than the scorer accepts is either refused or scored in
pieces of at most the scorer's maximum length that overlap by at least `overlap` tokens (at
least the window). Pieces start at multiples of the stride, so each piece's short-context
chunks are the unsplit document's chunks; each target is taken from the latest piece that
leaves it at least `overlap` tokens of long context. So every target's long context holds
between `overlap` and `max_length - 1` tokens, and its short context is the unsplit
document's (except that a piece does not begin with BOS, so its chunks get no BOS in place of
their first token).
"""

from dataclasses import dataclass

import numpy as np

OUTPUTS = ("logp_long", "logp_short")
SPLIT, REFUSE = "split", "refuse"


class ScoringError(ValueError):
    """Settings or answers rank cannot use; the message names the fix."""


@dataclass(frozen=True)
class Answer:
    fingerprint: str
    scorer: str
    window: int
    stride: int
    logprobs: list[tuple[np.ndarray, np.ndarray]]  # (logp_long, logp_short) per sequence

    @property
    def identity(self) -> tuple:
        return (self.fingerprint, self.scorer, self.window, self.stride)


class LocalScorer:
    """The scoring engine in this process (`--model`, or the bundled model)."""

    concurrency = 1  # one engine, one device: parallel calls would only contend

    def __init__(
        self, model, short_model=None, *, window=None, stride=None, device=None, dtype=None
    ):
        from tokenweight.service.engine import ScoringEngine

        settings = {
            name: value for name, value in (("window", window), ("stride", stride)) if value
        }
        self.engine = ScoringEngine.from_pretrained(
            model, short_model, device=device, dtype=dtype, **settings
        )
        self.max_length = self.engine.max_length
        self.max_request_tokens = 0

    def score(self, sequences: list[np.ndarray]) -> Answer:
        from tokenweight.service.engine import Outputs, ScoringInputError

        try:
            results = self.engine.score(sequences, outputs=Outputs(score=False))
        except ScoringInputError as exc:
            raise ScoringError(str(exc)) from None
        e = self.engine
        return Answer(
            e.fingerprint(),
            e.name,
            e.window,
            e.stride,
            [(r.logp_long, r.logp_short) for r in results],
        )

    def close(self) -> None:
        pass


class RemoteScorer:
    """Running `tokenweight serve` replicas (`--scorer-url`, round-robin with failover)."""

    def __init__(
        self,
        urls: str,
        *,
        scorer=None,
        window=None,
        stride=None,
        concurrency=None,
        timeout=600.0,
        retry_for=600.0,
    ):
        from tokenweight.client import RetryPolicy, ScorerClient
        from tokenweight.client.urls import parse_urls

        from ..precompute import _find_scorer

        # The client parses the URL list (an `ipv4:A:P,B:P` target holds commas of its own).
        self.client = ScorerClient(urls, timeout=timeout, retry=RetryPolicy.for_duration(retry_for))
        self.name, self.window, self.stride = scorer, window, stride
        info = _find_scorer(self.client, scorer, 1)
        self.max_length = info.max_sequence_length
        self.max_request_tokens = info.max_request_tokens
        self.concurrency = concurrency or 4 * len(parse_urls(urls))

    def score(self, sequences: list[np.ndarray]) -> Answer:
        from tokenweight.client import ScorerError

        try:
            r = self.client.score(
                sequences, window=self.window, stride=self.stride, scorer=self.name, outputs=OUTPUTS
            )
        except ScorerError as exc:
            raise ScoringError(str(exc)) from exc
        if len(r.results) != len(sequences):
            raise ScoringError(f"the scorer returned {len(r.results)} results for {len(sequences)}")
        return Answer(
            r.fingerprint,
            r.scorer,
            r.window,
            r.stride,
            [(x.logp_long, x.logp_short) for x in r.results],
        )

    def close(self) -> None:
        self.client.close()


def piece_starts(length: int, max_length: int, overlap: int, stride: int) -> list[int]:
    """Start of each piece of a `length`-token document (one piece when it fits)."""
    if length <= max_length:
        return [0]
    step = (max_length - overlap) // stride * stride
    if step < 1:
        raise ScoringError(
            f"pieces of {max_length} tokens overlapping by {overlap} leave no room to advance by "
            f"a stride ({stride}); lower --overlap"
        )
    starts = [0]
    while starts[-1] + max_length < length:
        starts.append(starts[-1] + step)
    return starts


def stitch(length: int, starts: list[int], overlap: int, pieces: list[tuple]) -> tuple:
    """Full-document (logp_long, logp_short) from the pieces' answers (see the module doc)."""
    if len(starts) == 1:
        return pieces[0]
    long = np.empty(length - 1, dtype=np.float32)
    short = np.empty(length - 1, dtype=np.float32)
    for i, (start, (piece_long, piece_short)) in enumerate(zip(starts, pieces)):
        # piece i answers for targets t in [first, end): the next piece takes over where it
        # leaves a target `overlap` tokens of context
        first = start + overlap if i else 1
        end = starts[i + 1] + overlap if i + 1 < len(starts) else length
        lo, hi = first - start - 1, end - start - 1  # entry t-1-start of the piece
        long[first - 1 : end - 1] = piece_long[lo:hi]
        short[first - 1 : end - 1] = piece_short[lo:hi]
    return long, short
