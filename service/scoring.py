"""The scoring core both front ends call: scorer lookup, validation, cache, batching, drain.

A request is checked in full before it is queued (limits, window/stride, every token id), so
a bad request fails alone and never reaches the engine.
"""

import asyncio
import contextvars
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tokenweight.wire import ScorerInfo, Scores

from .batcher import Batcher, QueueLimits
from .cache import ScoreCache
from .config import ServerConfig
from .engine import Outputs, ScoringInputError
from .errors import InvalidArgument, NotFound, ServiceError, Unavailable
from .metrics import Metrics
from .scorers import Scorer
from .text import check_text_size, longest_token_chars, tokenize

log = logging.getLogger(__name__)

STARTING, SERVING, DRAINING = "starting", "serving", "draining"

# Who is asking (a connection's address), for the batcher's per-client share and
# fair queueing; front ends set it per request where they do not pass `client` explicitly.
current_client: contextvars.ContextVar[str] = contextvars.ContextVar("tokenweight_client", default="")


@dataclass
class Scored:
    scorer: str
    fingerprint: str
    window: int
    stride: int
    results: list[Scores]


class ScoringService:
    def __init__(self, config: ServerConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.state = STARTING
        self.scorers: dict[str, Scorer] = {}
        self.default_scorer = ""
        self._batchers: dict[str, Batcher] = {}
        # One engine thread for every scorer: GPU work is serialised and off the event loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tokenweight-engine")
        # Tokenizers are not safe to share between threads; one thread keeps the loop free.
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenweight-tokenizer")
        self._cache = ScoreCache(int(config.cache_mb * 2**20)) if config.cache_mb > 0 else None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def install(self, scorers: dict[str, Scorer], default: str) -> None:
        """Start serving these scorers (called on the event loop once models are loaded)."""
        self.scorers, self.default_scorer = scorers, default
        for name, scorer in scorers.items():
            batcher = Batcher(
                name,
                scorer.engine,
                self._executor,
                self.metrics,
                batch_tokens=self.config.batch_tokens or scorer.engine.options.token_budget,
                max_wait=self.config.max_wait_ms / 1000,
                batches_in_flight=self.config.batches_in_flight,
                limits=QueueLimits(
                    self.config.queue_size, self.config.queue_tokens, self.config.client_share
                ),
            )
            batcher.start()
            self._batchers[name] = batcher
        self.state = SERVING

    async def drain(self, grace: float) -> bool:
        """Refuse new requests and wait up to `grace` seconds for in-flight ones."""
        self.state = DRAINING
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
            return True
        except TimeoutError:
            log.warning("%d requests still in flight after %.1fs of grace", self._inflight, grace)
            return False

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    async def tokenize(self, scorer_name: str, texts: list[str]) -> tuple[list, list]:
        """Text input of either protocol: the scorer's own tokenizer, sizes checked before it
        runs, off the event loop. Returns (ids, decoded tokens) per text."""
        scorer = self.scorer(scorer_name)
        if scorer.tokenizer is None:
            raise InvalidArgument(
                f"scorer {scorer.config.name!r} has no tokenizer (none in its checkpoint "
                "directory); send token_ids instead of text"
            )
        limit = self.config.max_request_tokens
        check_text_size(
            texts, longest_token_chars(scorer.tokenizer), min(limit, scorer.engine.max_length), limit
        )
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenizer_thread, tokenize, scorer.tokenizer, texts
        )

    def scorer(self, name: str) -> Scorer:
        """The named scorer ("" = the default); NotFound lists the available ones."""
        self._check_state()
        scorer = self.scorers.get(name or self.default_scorer)
        if scorer is None:
            raise NotFound(
                f"unknown scorer {name!r}; this server hosts {sorted(self.scorers)} "
                f"(default {self.default_scorer!r}); leave the scorer empty for the default"
            )
        return scorer

    def info(self) -> list[ScorerInfo]:
        """ListScorers / GET /v1/scorers: each scorer's settings."""
        self._check_state()
        return [
            dataclasses.replace(
                scorer.engine.info(),
                is_default=name == self.default_scorer,
                max_request_tokens=self.config.max_request_tokens,
            )
            for name, scorer in self.scorers.items()
        ]

    async def score(
        self,
        scorer_name: str,
        sequences: list[np.ndarray],
        window: int | None,
        stride: int | None,
        outputs: Outputs,
        timeout: float | None = None,
        client: str | None = None,
    ) -> Scored:
        label = "unknown"
        client = current_client.get() if client is None else client
        try:
            scorer = self.scorer(scorer_name)
            label = scorer.config.name
            scored = await self._score(scorer, sequences, window, stride, outputs, timeout, client)
        except ServiceError as exc:
            self.metrics.score_requests.labels(label, exc.status).inc()
            raise
        except asyncio.CancelledError:
            self.metrics.score_requests.labels(label, "CANCELLED").inc()
            raise
        self.metrics.score_requests.labels(label, "OK").inc()
        return scored

    async def _score(self, scorer, sequences, window, stride, outputs, timeout, client) -> Scored:
        engine, name = scorer.engine, scorer.config.name
        self._check_limits(sequences)
        try:
            k, s = engine.resolve(window, stride)
            engine.check(sequences, k, s)
            engine.check_work(sequences, k, s, outputs, self.config.max_forward_tokens)
        except ScoringInputError as exc:
            raise InvalidArgument(str(exc)) from None
        fingerprint = engine.fingerprint(k, s)
        results: list[Scores | None] = [None] * len(sequences)
        keys = []
        if self._cache is not None:
            keys = [ScoreCache.key(fingerprint, k, s, seq) for seq in sequences]
            results = [self._cache.get(key, outputs) for key in keys]
            hits = sum(r is not None for r in results)
            self.metrics.cache_lookups.labels("hit").inc(hits)
            self.metrics.cache_lookups.labels("miss").inc(len(results) - hits)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            self._inflight += 1
            self._idle.clear()
            try:
                fresh = await self._batchers[name].score(
                    [sequences[i] for i in missing], k, s, outputs, timeout, client
                )
            finally:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.set()
            for i, scores in zip(missing, fresh):
                results[i] = scores
                if self._cache is not None:
                    self._cache.put(keys[i], scores)
        return Scored(name, fingerprint, k, s, results)

    def _check_state(self) -> None:
        if self.state == STARTING:
            raise Unavailable("the server is starting and its models are still loading; retry shortly")
        if self.state == DRAINING:
            raise Unavailable("the server is shutting down; retry against another replica")

    def _check_limits(self, sequences: list[np.ndarray]) -> None:
        limit = self.config.max_sequences
        if len(sequences) > limit:
            raise InvalidArgument(
                f"the request has {len(sequences)} sequences; this server accepts at most "
                f"{limit} per request. Split it into several requests"
            )
        tokens = sum(seq.size for seq in sequences)
        if tokens > self.config.max_request_tokens:
            raise InvalidArgument(
                f"the request has {tokens} tokens; this server accepts at most "
                f"{self.config.max_request_tokens} per request. Split it into several requests"
            )
