"""Dynamic batching between the front ends and one scorer's engine, fair between clients.

A request is split into units of at most `batch_tokens` tokens (whole sequences), each one
engine call's worth, and queued under its client (a connection: a gRPC peer, an HTTP
client address). A loop on the event loop waits for the oldest unit's `max_wait` (so a
request that already waited behind a running batch waits no longer) or until `batch_tokens`
are queued, then builds one `engine.run` from the clients' queues. Up to `batches_in_flight`
engine calls are running or queued for the engine thread at once: with more than one, the
next batch is built while the engine runs the current one, and what is queued is split over
the free slots while the parts stay large (`_batch_limit`).

Clients share the engine by the work they are served (forward tokens), not by turns:
start-time fair queueing. A request starts at the virtual finish of the client's previous
request (its start + its work), or at the current virtual time (the latest start of a unit
served) if that is later: an idle client earns no credit. Its units are tagged by the work of
the request before them, less the first unit's: the first two units share the start, so a
request just over one batch runs back to back. The unit with the smallest tag runs next,
the earlier request first among equals. A client with a backlog (a flood of pipelined
requests, 4,096 sequences at once) has tags far ahead, so a client that asks for less than
its share, however many units the backlog holds, waits only for the batches in flight and
for other light clients; backlogged clients split what is left in equal forward tokens,
whatever the size of their units. A request is charged its work when it is queued,
abandoned or not.

Admission counts the work a request will cost (forward tokens, see `ScoringEngine.
forward_tokens`) and requests: past `queue_tokens` / `queue_size` in all, or past a client's
`client_share` of them, a request is refused at once (back-pressure, not unbounded memory,
and no single client can take the whole queue). A client with nothing queued always gets
one request in if the queue has room, and an empty queue takes any request.

A request whose caller gave up (cancelled, deadline passed, disconnected) leaves the queue at
once, and the engine skips its remaining forward calls, so the next caller does not wait
for abandoned work. The engine call runs on the engine thread, so the event loop never
blocks on the model. Callers submit only requests that already passed `engine.check`.
"""

import asyncio
import itertools
import logging
import threading
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch

from tokenweight.wire import Scores

from .engine import Outputs, ScoreJob, ScoringEngine
from .errors import DeadlineExceeded, QueueFull, ServiceError, Unavailable
from .metrics import Metrics

log = logging.getLogger(__name__)

# A batch is split over free in-flight slots only into parts of at least this fraction of
# the batch tokens (8: 16k tokens of the CUDA default 131k, so each part's GEMMs still have
# 16k rows; below a few thousand rows they run measurably further from the ceiling).
SPLIT_MIN_FRACTION = 8


@dataclass(frozen=True)
class QueueLimits:
    requests: int  # requests waiting per scorer
    work: int  # forward tokens waiting per scorer
    client_share: float  # fraction of each limit one client may hold


@dataclass(eq=False)
class _Request:
    client: str
    window: int
    stride: int
    outputs: Outputs
    enqueued: float
    future: asyncio.Future
    results: list
    units_left: int = 0  # units not yet scored
    units_queued: int = 0
    started: bool = False
    # Set once the caller has its answer or gave up; read by the engine thread.
    finished: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class _Unit:
    request: _Request
    start: int  # index of its first sequence in the request
    sequences: list[np.ndarray]
    tokens: int
    work: int
    # Fair-queueing order: (virtual start, the request's arrival number).
    tag: tuple[int, int] = (0, 0)


class _ClientUsage:
    __slots__ = ("requests", "work")

    def __init__(self):
        self.requests = self.work = 0


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
        limits: QueueLimits,
        batches_in_flight: int = 1,
    ):
        self.name, self.engine, self._executor = name, engine, executor
        self.batch_tokens, self.max_wait, self.limits = batch_tokens, max_wait, limits
        self.batches_in_flight = batches_in_flight
        self._metrics = metrics
        self._queues: dict[str, deque[_Unit]] = {}
        # Fair queueing (see the module docstring), in forward tokens: the virtual time, and
        # the virtual finish of each client's last request while it is ahead of the virtual
        # time or the client has units queued (the others start at the virtual time).
        self._virtual_time = 0
        self._finish_tags: dict[str, int] = {}
        self._arrivals = itertools.count()
        self._usage: dict[str, _ClientUsage] = {}
        self._total = _ClientUsage()
        self._queued_tokens = 0
        self._running: set[_Request] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._batch_tasks: set[asyncio.Task] = set()
        self._in_flight = 0  # batches handed to the engine thread and not yet finished

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Stop the loop; everything queued or running fails as UNAVAILABLE, and the engine
        skips the rest of the batch in progress."""
        tasks = [t for t in (self._task, *self._batch_tasks) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        requests = {unit.request for queue in self._queues.values() for unit in queue}
        for request in requests | self._running:
            _resolve(
                request,
                exc=Unavailable("the server is shutting down; retry against another replica"),
            )

    async def score(
        self,
        sequences: list[np.ndarray],
        window: int,
        stride: int,
        outputs: Outputs,
        timeout: float | None = None,
        client: str = "",
    ) -> list[Scores]:
        loop = asyncio.get_running_loop()
        request = _Request(
            client,
            window,
            stride,
            outputs,
            loop.time(),
            loop.create_future(),
            [None] * len(sequences),
        )
        units = self._split(request, sequences)
        self._admit(client, sum(u.work for u in units))
        self._tag(client, units)
        self._queues.setdefault(client, deque()).extend(units)
        request.units_left = request.units_queued = len(units)
        self._queued_tokens += sum(u.tokens for u in units)
        self._charge(client, 1, sum(u.work for u in units))
        self._metrics.queue_depth.labels(self.name).set(self._total.requests)
        request.future.add_done_callback(lambda _: self._abandon(request))
        self._wakeup.set()
        # Cancelling the caller (or the timeout) cancels the future, which takes the request
        # out of the queue and tells the engine to skip what is left of it.
        try:
            return await asyncio.wait_for(request.future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the deadline passed after {timeout:.3f}s while the request waited for "
                "scoring; allow a longer deadline or send smaller requests"
            ) from None

    def _split(self, request: _Request, sequences: list[np.ndarray]) -> list[_Unit]:
        """Whole sequences, in order, in units of at most `batch_tokens` tokens (or one)."""
        units, start = [], 0
        while start < len(sequences):
            end, tokens = start, 0
            while end < len(sequences) and (
                end == start or tokens + sequences[end].size <= self.batch_tokens
            ):
                tokens += sequences[end].size
                end += 1
            part = sequences[start:end]
            work = self.engine.forward_tokens(
                [s.size for s in part], request.window, request.stride, request.outputs
            )
            units.append(_Unit(request, start, part, tokens, work))
            start = end
        return units

    def _tag(self, client: str, units: list[_Unit]) -> None:
        """Fair-queueing tags of a request's units (see the module docstring)."""
        start = max(self._virtual_time, self._finish_tags.get(client, 0))
        arrival, before = next(self._arrivals), 0
        for unit in units:
            unit.tag = (start + max(0, before - units[0].work), arrival)
            before += unit.work
        self._finish_tags[client] = start + before

    def _admit(self, client: str, work: int) -> None:
        limits, total = self.limits, self._total
        # An empty queue takes any request the size limits allowed, so that a request larger
        # than `queue_tokens` is not refused as busy forever.
        over_work = total.requests and total.work + work > limits.work
        if total.requests + 1 > limits.requests or over_work:
            raise QueueFull(
                f"scorer {self.name!r} has {total.requests} requests ({total.work} forward "
                f"tokens) queued, its limit is {limits.requests} ({limits.work}); back off and retry"
            )
        usage = self._usage.get(client)
        if usage is None:
            return  # a client with nothing queued always gets one request in
        max_requests = max(1, int(limits.requests * limits.client_share))
        max_work = int(limits.work * limits.client_share)
        if usage.requests + 1 > max_requests or usage.work + work > max_work:
            raise QueueFull(
                f"this client has {usage.requests} requests ({usage.work} forward tokens) "
                f"queued on scorer {self.name!r}, its share is {max_requests} ({max_work}); "
                "wait for answers before sending more, back off and retry"
            )

    def _charge(self, client: str, requests: int, work: int) -> None:
        usage = self._usage.setdefault(client, _ClientUsage())
        for u in (usage, self._total):
            u.requests += requests
            u.work += work
        if not usage.requests and not usage.work:
            del self._usage[client]

    def _next_client(self) -> str:
        """The queued client whose next unit has the smallest tag."""
        return min(self._queues, key=lambda client: self._queues[client][0].tag)

    def _pop(self, client: str) -> _Unit:
        """The client's next unit; the virtual time moves to its start."""
        queue = self._queues[client]
        unit = queue.popleft()
        if not queue:
            del self._queues[client]
        self._virtual_time = max(self._virtual_time, unit.tag[0])
        self._unqueued(unit)
        return unit

    def _unqueued(self, unit: _Unit) -> None:
        request = unit.request
        request.units_queued -= 1
        self._queued_tokens -= unit.tokens
        self._charge(request.client, 0 if request.units_queued else -1, -unit.work)
        self._metrics.queue_depth.labels(self.name).set(self._total.requests)

    def _abandon(self, request: _Request) -> None:
        """The caller has its answer or gave up: drop its queued units, stop its engine work."""
        request.finished.set()
        self._running.discard(request)
        if not request.units_queued:
            return
        queue = self._queues[request.client]
        for unit in [u for u in queue if u.request is request]:
            queue.remove(unit)
            self._unqueued(unit)
        if not queue:
            del self._queues[request.client]
        if not request.started:
            self._metrics.dropped.labels(self.name).inc()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        # A slot is taken before the batch is built, so a batch is built as late as possible:
        # only once one of the batches in flight has finished.
        slots = asyncio.Semaphore(self.batches_in_flight)
        while True:
            await slots.acquire()
            while not self._queues:
                self._wakeup.clear()
                await self._wakeup.wait()
            oldest = min(queue[0].request.enqueued for queue in self._queues.values())
            while self._queued_tokens < self.batch_tokens and self._queues:
                remaining = oldest + self.max_wait - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch(self._batch_limit())
            if not batch:
                slots.release()
                continue
            self._in_flight += 1
            task = asyncio.create_task(self._run_in_slot(batch, slots))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    async def _run_in_slot(self, batch: list[_Unit], slots: asyncio.Semaphore) -> None:
        try:
            await self._run(batch)
        finally:
            self._in_flight -= 1
            slots.release()

    def _batch_limit(self) -> int:
        """Tokens the next batch may take. While more than one of the batches in flight is
        free, what is queued is split evenly over as many of them as keep each part at least
        1/SPLIT_MIN_FRACTION of `batch_tokens` (small parts waste the GPU): clients that wait
        for their answers before they send again (a closed loop) then form groups, and the
        engine runs one group's batch while another's answers go out and its next requests
        come in, instead of idling while the event loop does that work."""
        free = self.batches_in_flight - self._in_flight
        min_part = max(1, self.batch_tokens // SPLIT_MIN_FRACTION)
        parts = min(free, self._queued_tokens // min_part)
        if parts > 1:
            return min(self.batch_tokens, -(-self._queued_tokens // parts))
        return self.batch_tokens

    def _take_batch(self, limit: int) -> list[_Unit]:
        """Units in start-tag order while they fit `limit` tokens (at least one)."""
        batch, tokens = [], 0
        while self._queues:
            client = self._next_client()
            head = self._queues[client][0]
            if batch and tokens + head.tokens > limit:
                break
            batch.append(self._pop(client))
            tokens += head.tokens
        # Clients the virtual time has passed start at it anyway (bounded memory).
        self._finish_tags = {
            c: f
            for c, f in self._finish_tags.items()
            if f > self._virtual_time or c in self._queues
        }
        return batch

    async def _run(self, batch: list[_Unit]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        metrics, name = self._metrics, self.name
        for unit in batch:
            request = unit.request
            if not request.started:
                request.started = True
                metrics.queue_time.labels(name).observe(started - request.enqueued)
            self._running.add(request)
        tokens = sum(u.tokens for u in batch)
        metrics.engine_batches.labels(name).inc()
        metrics.batch_requests.labels(name).observe(len({id(u.request) for u in batch}))
        metrics.batch_tokens.labels(name).observe(tokens)
        try:
            results = await loop.run_in_executor(self._executor, self._score, batch)
        except Exception as exc:
            if len(batch) > 1:
                # Run each unit alone so a request that breaks the engine fails alone.
                log.warning(
                    "engine batch of %d units failed (%s); retrying one by one", len(batch), exc
                )
                for unit in batch:
                    await self._run([unit])
                return
            log.exception("scoring failed on scorer %r", name)
            self._running.discard(batch[0].request)
            _resolve(
                batch[0].request, exc=ServiceError(f"scoring failed: {type(exc).__name__}: {exc}")
            )
            return
        metrics.tokens_scored.labels(name).inc(tokens)
        for unit, scores in zip(batch, results):
            request = unit.request
            request.results[unit.start : unit.start + len(scores)] = scores
            request.units_left -= 1
            if not request.units_left:
                self._running.discard(request)
                _resolve(request, result=request.results)

    def _score(self, batch: list[_Unit]) -> list[list[Scores]]:
        """On the engine thread: one engine call for every sequence of every unit."""
        jobs = [
            ScoreJob(
                torch.from_numpy(seq.astype(np.int64)),
                unit.request.window,
                unit.request.stride,
                unit.request.outputs,
                abandoned=unit.request.finished.is_set,
            )
            for unit in batch
            for seq in unit.sequences
        ]
        scores = iter(self.engine.run(jobs))
        return [[next(scores) for _ in unit.sequences] for unit in batch]


def _resolve(request: _Request, result=None, exc: Exception | None = None) -> None:
    future = request.future
    if future.done():  # the caller gave up while the engine ran
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
