"""`Prefetcher`: score the next batches while the trainer works on this one.

    with Prefetcher(loader, lambda batch: client.score(batch["input_ids"]), depth=4) as batches:
        for batch, scores in batches:
            ...  # batches.stats.last_wait: seconds this step waited for the scorer

The source is read in the consumer's thread, one batch at a time and only when there is room,
so at most `depth` batches are pulled ahead of the one the consumer holds; `score_fn` runs in
a pool of `depth` threads (the sync ScorerClient is thread-safe and multiplexes all of them
on one connection). Results come back strictly in source order, and a batch is only ever
paired with its own scores.
"""

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

B = TypeVar("B")
S = TypeVar("S")


class BatchScoringError(RuntimeError):
    """Scoring batch `index` failed; the original exception is `__cause__`."""

    def __init__(self, index: int, cause: BaseException):
        super().__init__(f"scoring batch {index} failed: {type(cause).__name__}: {cause}")
        self.index = index


@dataclass
class PrefetchStats:
    """How long the consumer waited for scores (time blocked in next(), not source reads)."""

    batches: int = 0
    last_wait: float = 0.0
    total_wait: float = 0.0
    max_wait: float = 0.0

    def record(self, seconds: float) -> None:
        self.batches += 1
        self.last_wait = seconds
        self.total_wait += seconds
        self.max_wait = max(self.max_wait, seconds)


@dataclass
class _Slot(Generic[B, S]):
    index: int
    batch: B | None = None
    future: Future | None = None
    source_error: BaseException | None = None  # the source raised instead of giving a batch


class Prefetcher(Generic[B, S]):
    """Iterate `(batch, score_fn(batch))` over `batches`, keeping `depth` ahead in flight.

    `start`: the index of the first batch, used in error messages (e.g. the step a resumed
    run starts at). A failed `score_fn` raises BatchScoringError(index) at that batch's turn,
    after every earlier batch was handed out; an exception from the source itself is raised
    unchanged at the turn of the batch it failed to produce. Either ends the iteration.
    `close()` (or leaving the `with` block) cancels what has not started and waits for
    running `score_fn` calls, so no thread outlives it.
    """

    def __init__(
        self,
        batches: Iterable[B],
        score_fn: Callable[[B], S],
        depth: int = 2,
        *,
        start: int = 0,
    ):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._source = iter(batches)
        self._score_fn = score_fn
        self.depth = depth
        self._next_index = start
        self._ahead: deque[_Slot] = deque()
        self._source_done = False
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="tokenweight-prefetch")
        self.stats = PrefetchStats()

    def __iter__(self) -> Iterator[tuple[B, S]]:
        return self

    def __next__(self) -> tuple[B, S]:
        if self._closed:
            raise StopIteration
        self._fill()
        if not self._ahead:
            self.close()
            raise StopIteration
        slot = self._ahead.popleft()
        if slot.source_error is not None:
            self.close()
            raise slot.source_error
        began = time.perf_counter()
        try:
            scores = slot.future.result()
        except Exception as exc:
            self.close()
            raise BatchScoringError(slot.index, exc) from exc
        finally:
            self.stats.record(time.perf_counter() - began)
        # Refill before handing this batch out, so `depth` batches are being scored while
        # the consumer works on it.
        self._fill()
        return slot.batch, scores

    def _fill(self) -> None:
        while not self._source_done and len(self._ahead) < self.depth:
            slot = _Slot(self._next_index)
            self._next_index += 1
            try:
                slot.batch = next(self._source)
            except StopIteration:
                self._source_done = True
                break
            except Exception as exc:
                # Batches already pulled are still good; this error waits for its turn.
                slot.source_error = exc
                self._source_done = True
                self._ahead.append(slot)
                break
            slot.future = self._pool.submit(self._score_fn, slot.batch)
            self._ahead.append(slot)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ahead.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Prefetcher[B, S]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
