"""Dynamic batching between the front ends and one scorer's engine.

Requests wait in a bounded queue; a loop on the event loop takes the oldest and coalesces
whatever else arrives within `max_wait` (measured from the oldest request's arrival, so a
request that already waited behind a running batch waits no longer), up to `batch_tokens`,
into one `engine.run`. That call runs on the engine thread, so the event loop never blocks
on the model. Requests whose caller gave up (cancelled, deadline passed) are dropped before
they reach the engine. A full queue refuses at once: back-pressure, not unbounded memory.

Callers submit only requests that already passed `engine.check`.
"""

import asyncio
import logging
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from tokenweight.wire import Scores

from .engine import Outputs, ScoreJob, ScoringEngine
from .errors import DeadlineExceeded, QueueFull, ServiceError, Unavailable
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    sequences: list[np.ndarray]
    window: int
    stride: int
    outputs: Outputs
    tokens: int
    enqueued: float
    future: asyncio.Future


class Batcher:
    def __init__(
        self,
        name: str,
        engine: ScoringEngine,
        executor: Executor,
        metrics: Metrics,
        *,
        batch_tokens: int,
        max_wait: float,
        queue_size: int,
    ):
        self.name, self.engine, self._executor = name, engine, executor
        self.batch_tokens, self.max_wait, self.queue_size = batch_tokens, max_wait, queue_size
        self._metrics = metrics
        self._pending: deque[_Pending] = deque()
        self._queued_tokens = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Stop the loop; anything still queued fails as UNAVAILABLE."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._pending:
            pending = self._pop()
            if not pending.future.done():
                pending.future.set_exception(Unavailable("the server is shutting down"))

    async def score(
        self,
        sequences: list[np.ndarray],
        window: int,
        stride: int,
        outputs: Outputs,
        timeout: float | None = None,
    ) -> list[Scores]:
        if len(self._pending) >= self.queue_size:
            raise QueueFull(
                f"scorer {self.name!r} has {len(self._pending)} requests queued, its limit; "
                "back off and retry"
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(
            sequences, window, stride, outputs, sum(s.size for s in sequences), loop.time(),
            loop.create_future(),
        )
        self._pending.append(pending)
        self._queued_tokens += pending.tokens
        self._metrics.queue_depth.labels(self.name).set(len(self._pending))
        self._wakeup.set()
        # Cancelling the caller (or the timeout) cancels the future, which is what the loop
        # checks to drop the request before it reaches the engine.
        try:
            return await asyncio.wait_for(pending.future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the deadline passed after {timeout:.3f}s while the request waited for "
                "scoring; allow a longer deadline or send smaller requests"
            ) from None

    def _pop(self) -> _Pending:
        pending = self._pending.popleft()
        self._queued_tokens -= pending.tokens
        self._metrics.queue_depth.labels(self.name).set(len(self._pending))
        return pending

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            oldest = self._pending[0].enqueued
            while self._queued_tokens < self.batch_tokens:
                remaining = oldest + self.max_wait - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    def _take_batch(self) -> list[_Pending]:
        """The oldest live requests that fit the token budget (at least one)."""
        batch, tokens = [], 0
        while self._pending:
            head = self._pending[0]
            if head.future.done():
                self._pop()
                self._metrics.dropped.labels(self.name).inc()
                continue
            if batch and tokens + head.tokens > self.batch_tokens:
                break
            batch.append(self._pop())
            tokens += head.tokens
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        metrics, name = self._metrics, self.name
        for pending in batch:
            metrics.queue_time.labels(name).observe(started - pending.enqueued)
        tokens = sum(p.tokens for p in batch)
        metrics.engine_batches.labels(name).inc()
        metrics.batch_requests.labels(name).observe(len(batch))
        metrics.batch_tokens.labels(name).observe(tokens)
        try:
            results = await loop.run_in_executor(self._executor, self._score, batch)
        except Exception as exc:
            if len(batch) > 1:
                # Run each request alone so a request that breaks the engine fails alone.
                log.warning("engine batch of %d requests failed (%s); retrying one by one", len(batch), exc)
                for pending in batch:
                    await self._run([pending])
                return
            log.exception("scoring failed on scorer %r", name)
            _resolve(batch[0].future, exc=ServiceError(f"scoring failed: {type(exc).__name__}: {exc}"))
            return
        metrics.tokens_scored.labels(name).inc(tokens)
        for pending, result in zip(batch, results):
            _resolve(pending.future, result=result)

    def _score(self, batch: list[_Pending]) -> list[list[Scores]]:
        """On the engine thread: one engine call for every sequence of every request."""
        jobs = [
            ScoreJob(torch.from_numpy(seq.astype(np.int64)), p.window, p.stride, p.outputs)
            for p in batch
            for seq in p.sequences
        ]
        scores = iter(self.engine.run(jobs))
        return [[next(scores) for _ in p.sequences] for p in batch]


def _resolve(future: asyncio.Future, result=None, exc: Exception | None = None) -> None:
    if future.done():  # the caller gave up while the engine ran
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
