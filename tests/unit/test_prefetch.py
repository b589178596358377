"""The prefetcher: order, failure attribution, bounded read-ahead, no leaked threads."""

import random
import threading
import time

import pytest

from tokenweight.client import BatchScoringError, Prefetcher


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tokenweight-prefetch")]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    assert not prefetch_threads()
    assert set(threading.enumerate()) <= before


class Source:
    """Batches 0..n-1 that count how many were pulled; raises at `fail_at` if given."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at, self.pulled = n, fail_at, 0

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise OSError(f"shard for batch {i} is unreadable")
            self.pulled += 1
            yield i


def jittery_square(batch: int) -> int:
    time.sleep(random.uniform(0, 0.01))  # completions arrive out of order
    return batch * batch


def test_order_is_kept_under_out_of_order_completions():
    random.seed(0)
    with Prefetcher(Source(60), jittery_square, depth=8) as batches:
        got = list(batches)
    assert got == [(i, i * i) for i in range(60)]
    assert batches.stats.batches == 60


def test_read_ahead_is_bounded_by_depth():
    source = Source(30)
    depth = 4
    with Prefetcher(source, jittery_square, depth=depth) as batches:
        for i, (batch, _) in enumerate(batches):
            ahead = source.pulled - (i + 1)  # pulled but not yet handed to the consumer
            assert ahead <= depth
            if i + 1 + depth <= source.n:
                assert ahead == depth  # and it really does read ahead
            time.sleep(0.001)


def test_scoring_failure_is_raised_at_its_batch_with_the_cause():
    def score(batch):
        time.sleep(random.uniform(0, 0.005))
        if batch == 7:
            raise ConnectionError("scorer went away")
        return -batch

    got = []
    with pytest.raises(BatchScoringError, match="scoring batch 107 failed") as info:
        with Prefetcher(Source(20), score, depth=5, start=100) as batches:
            for batch, scores in batches:
                got.append((batch, scores))
    assert got == [(i, -i) for i in range(7)]  # every earlier batch first, with its own scores
    assert info.value.index == 107
    assert isinstance(info.value.__cause__, ConnectionError)


def test_source_error_is_raised_unchanged_at_its_turn():
    got = []
    with pytest.raises(OSError, match="batch 5 is unreadable"):
        with Prefetcher(Source(10, fail_at=5), jittery_square, depth=3) as batches:
            for batch, _ in batches:
                got.append(batch)
    assert got == [0, 1, 2, 3, 4]


def test_early_break_stops_pulling_and_leaves_no_threads():
    source = Source(1000)
    with Prefetcher(source, jittery_square, depth=4) as batches:
        for batch, _ in batches:
            if batch == 3:
                break
    assert source.pulled <= 4 + 4
    # Iterating after close ends at once.
    assert list(batches) == []


def test_close_without_context_manager_and_iteration_end():
    batches = Prefetcher(Source(3), jittery_square, depth=2)
    assert [b for b, _ in batches] == [0, 1, 2]
    assert not prefetch_threads()  # exhausting the source closes it
    batches = Prefetcher(Source(10), jittery_square, depth=2)
    next(batches)
    batches.close()


def test_wait_time_is_recorded_per_batch():
    def slow(batch):
        time.sleep(0.05)
        return batch

    with Prefetcher(Source(3), slow, depth=1) as batches:
        next(batches)
        assert batches.stats.last_wait >= 0.04  # nothing was ahead: waited for the scorer
        time.sleep(0.1)  # the consumer works; the next batch is scored meanwhile
        next(batches)
        assert batches.stats.last_wait < 0.04
    assert batches.stats.batches == 2
    assert batches.stats.max_wait >= 0.04
    assert batches.stats.total_wait >= batches.stats.max_wait


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([], jittery_square, depth=0)
