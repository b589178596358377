"""The batcher's scheduling between clients, driven directly on a real tiny engine: a light
client's request overtakes a flooder's backlog (behind at most the batches in flight), and
backlogged clients share the engine by forward tokens, not by turns."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from engine_helpers import RecordingEngine
from tokenweight.service.batcher import Batcher, QueueLimits
from tokenweight.service.engine import ALL_OUTPUTS
from tokenweight.service.metrics import Metrics

RNG = np.random.default_rng(23)


def batcher(
    engine, executor, batch_tokens: int, batches_in_flight: int = 1, max_wait: float = 0.0
) -> Batcher:
    return Batcher(
        "tiny",
        engine,
        executor,
        Metrics(),
        batch_tokens=batch_tokens,
        max_wait=max_wait,
        limits=QueueLimits(requests=1000, work=1 << 24, client_share=1.0),
        batches_in_flight=batches_in_flight,
    )


def score(b: Batcher, engine, seq: np.ndarray, client: str):
    return b.score([seq], engine.window, engine.stride, ALL_OUTPUTS, client=client)


def behind_a_flood(engine: RecordingEngine, floods: int, in_flight: int, *light_requests):
    """Runs a batcher (batches of 32 tokens, `in_flight` batches in flight) where a flooder
    has queued `floods` requests of one full batch each; once the first one holds the (gated)
    engine, `light_requests` (functions of the batcher, returning coroutines) are queued in
    order, then the gate opens. Returns the light requests' results."""

    async def main():
        with ThreadPoolExecutor(1) as executor:
            b = batcher(engine, executor, batch_tokens=32, batches_in_flight=in_flight)
            b.start()
            flood = [
                asyncio.ensure_future(score(b, engine, RNG.integers(3, 300, 32), "flood"))
                for _ in range(floods)
            ]
            assert await asyncio.to_thread(engine.entered.wait, 10)
            light = [asyncio.ensure_future(request(b)) for request in light_requests]
            await asyncio.sleep(0)  # all queued before the engine frees
            engine.gate.set()
            got = await asyncio.wait_for(asyncio.gather(*light), 30)
            await b.close()
            await asyncio.gather(*flood, return_exceptions=True)
            return got

    return asyncio.run(main())


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_light_request_runs_right_after_the_batches_in_flight(tiny_scorers, in_flight):
    """100 queued requests of a flooder, each a full batch; a light client's one request,
    sent while the flooder's first batch runs, is the next engine call after the batches
    already in flight (the running one, and with 2 in flight the one built behind it)."""
    engine = RecordingEngine(tiny_scorers["tiny"].engine, gated=True)
    light_seq = RNG.integers(3, 300, 9)
    (got,) = behind_a_flood(engine, 100, in_flight, lambda b: score(b, engine, light_seq, "light"))
    assert engine.runs[: in_flight + 1] == [[32]] * in_flight + [[9]], engine.runs[:4]
    np.testing.assert_allclose(got[0].score, engine.score([light_seq])[0].score, atol=1e-5)


def test_backlogged_clients_share_the_engine_by_forward_tokens(tiny_scorers):
    """Two clients with 40 requests queued each, one sequence of 32 tokens per request for
    one and of 8 for the other (about 8x less work each): at every point of the run the
    forward tokens served to each differ by at most one request of each."""
    engine = RecordingEngine(tiny_scorers["tiny"].engine)
    work = {
        n: engine.forward_tokens([n], engine.window, engine.stride, ALL_OUTPUTS) for n in (32, 8)
    }
    assert work[32] > 4 * work[8]

    async def main():
        with ThreadPoolExecutor(1) as executor:
            # Every unit is an engine call of its own: a batch of 8 tokens fits one.
            b = batcher(engine, executor, batch_tokens=8)
            b.start()
            requests = [
                score(b, engine, RNG.integers(3, 300, n), client)
                for client, n in (("big", 32), ("small", 8))
                for _ in range(40)
            ]
            await asyncio.gather(*requests)
            await b.close()

    asyncio.run(main())
    assert all(len(run) == 1 for run in engine.runs) and len(engine.runs) == 80
    served = {32: 0, 8: 0}
    # While both still have requests queued (the small client's 40 outlast 5 big ones).
    for (n,) in engine.runs[:40]:
        served[n] += work[n]
        assert abs(served[32] - served[8]) <= work[32] + work[8], (served, engine.runs[:40])


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_request_of_two_units_runs_back_to_back(tiny_scorers, in_flight):
    """While a flooder's batch runs, one light client sends a request of two batches and then
    another light client a request of one: the first request's two units run next, one after
    the other, then the second request, all ahead of the flood's backlog."""
    engine = RecordingEngine(tiny_scorers["tiny"].engine, gated=True)
    pair, single = [RNG.integers(3, 300, n) for n in (20, 24)], RNG.integers(3, 300, 9)
    got_pair, got_single = behind_a_flood(
        engine,
        20,
        in_flight,
        lambda b: b.score(pair, engine.window, engine.stride, ALL_OUTPUTS, client="first"),
        lambda b: score(b, engine, single, "second"),
    )
    flood = [[32]] * in_flight
    assert engine.runs[: in_flight + 3] == flood + [[20], [24], [9]], engine.runs[:6]
    for got, seq in zip([*got_pair, *got_single], [*pair, single]):
        np.testing.assert_allclose(got.score, engine.score([seq])[0].score, atol=1e-5)
