"""The batcher with two engine calls in flight, driven directly on a real tiny engine: the next
batch is built while the engine runs the current one, every request still gets the scores of
its own sequences in its own order, and closing fails everything in flight at once."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from engine_helpers import RecordingEngine
from test_batcher_fair import batcher

from tokenweight.service.engine import ALL_OUTPUTS
from tokenweight.service.errors import Unavailable


class CountingExecutor(ThreadPoolExecutor):
    """One engine thread that records the most engine calls submitted and not yet done."""

    def __init__(self):
        super().__init__(1)
        self._lock = threading.Lock()
        self.outstanding = self.most_outstanding = 0

    def submit(self, fn, *args, **kwargs):
        with self._lock:
            self.outstanding += 1
            self.most_outstanding = max(self.most_outstanding, self.outstanding)
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _):
        with self._lock:
            self.outstanding -= 1


def test_every_request_gets_its_own_scores_in_order_with_two_batches_in_flight(tiny_scorers):
    """16 clients, each sending 4 requests one after another of 1-3 sequences of 5-40 tokens,
    batches of 48 tokens: batches overlap (two calls queued for the engine at once), and every
    sequence's scores equal the engine's for that sequence alone, in the request's order; the
    engine scored each sequence exactly once."""
    engine = RecordingEngine(tiny_scorers["tiny"].engine)
    rng = np.random.default_rng(5)
    plan = {
        f"client-{c}": [
            [rng.integers(3, 300, rng.integers(5, 41)) for _ in range(rng.integers(1, 4))]
            for _ in range(4)
        ]
        for c in range(16)
    }

    async def client(b, name):
        return [
            await b.score(seqs, engine.window, engine.stride, ALL_OUTPUTS, client=name)
            for seqs in plan[name]
        ]

    async def main(executor):
        b = batcher(engine, executor, batch_tokens=48, batches_in_flight=2, max_wait=0.002)
        b.start()
        got = await asyncio.wait_for(asyncio.gather(*(client(b, n) for n in plan)), 60)
        await b.close()
        return dict(zip(plan, got))

    with CountingExecutor() as executor:
        got = asyncio.run(main(executor))
    assert executor.most_outstanding == 2
    sent = sorted(s.size for requests in plan.values() for seqs in requests for s in seqs)
    assert sorted(n for run in engine.runs for n in run) == sent
    for name, requests in plan.items():
        for seqs, scores in zip(requests, got[name]):
            assert len(scores) == len(seqs)
            for seq, s in zip(seqs, scores):
                alone = engine.score([seq])[0]
                assert s.score.shape == alone.score.shape
                np.testing.assert_allclose(s.score, alone.score, atol=1e-5)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_closing_fails_the_running_the_queued_and_the_waiting_requests(tiny_scorers, in_flight):
    """Three full batches from three clients while the first holds the (gated) engine, the
    second built behind it when two are in flight: closing answers all three UNAVAILABLE
    before the engine frees, and the engine never runs the ones not yet started."""
    engine = RecordingEngine(tiny_scorers["tiny"].engine, gated=True)
    rng = np.random.default_rng(6)

    async def main():
        with ThreadPoolExecutor(1) as executor:
            b = batcher(engine, executor, batch_tokens=32, batches_in_flight=in_flight)
            b.start()
            requests = [
                asyncio.ensure_future(
                    b.score([rng.integers(3, 300, 32)], engine.window, engine.stride,
                            ALL_OUTPUTS, client=f"c{i}")
                )
                for i in range(3)
            ]
            assert await asyncio.to_thread(engine.entered.wait, 10)
            await asyncio.sleep(0.05)  # the loop builds what it may while the engine is held
            await asyncio.wait_for(b.close(), 5)
            outcomes = await asyncio.gather(*requests, return_exceptions=True)
            engine.gate.set()
            return outcomes

    outcomes = asyncio.run(main())
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
    assert len(engine.runs) == 1


@pytest.mark.parametrize(
    "in_flight, sizes, expected_runs",
    [
        (2, [4] * 8, [[4] * 4, [4] * 4]),  # 32 tokens, two free slots: two parts of 16 >= 64/8
        (1, [4] * 8, [[4] * 8]),  # one slot: everything queued in one batch
        (2, [3, 3], [[3, 3]]),  # parts of 3 tokens would be under 64/8: not split
        (4, [4] * 4, [[4, 4], [4, 4]]),  # four free slots, but only two parts of 64/8
    ],
)
def test_queued_work_is_split_over_free_slots_into_parts_worth_a_batch(
    tiny_scorers, in_flight, sizes, expected_runs
):
    """Requests queued at once (closed-loop clients answered together) are split evenly over
    the free in-flight slots, so one part's answers go out while the engine runs the other;
    parts too small to be worth an engine call are not split off."""
    engine = RecordingEngine(tiny_scorers["tiny"].engine)
    rng = np.random.default_rng(7)

    async def main():
        with ThreadPoolExecutor(1) as executor:
            b = batcher(engine, executor, batch_tokens=64, batches_in_flight=in_flight, max_wait=0.2)
            b.start()
            await asyncio.gather(
                *(
                    b.score([rng.integers(3, 300, n)], engine.window, engine.stride,
                            ALL_OUTPUTS, client=f"c{i}")
                    for i, n in enumerate(sizes)
                )
            )
            await b.close()

    asyncio.run(main())
    assert engine.runs == expected_runs
