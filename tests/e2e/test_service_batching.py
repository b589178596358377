"""The dynamic batcher behind real servers: coalescing, back-pressure, isolation, drops, cache."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from conftest import ThreadedServer
from tokenweight import wire
from tokenweight.service.scorers import Scorer
from tokenweight.v1 import scorer_pb2_grpc


class GatedEngine:
    """The real engine, except that `run` waits for the test to open the gate: a way to hold
    the engine busy for exactly as long as a test needs, without sleeps."""

    def __init__(self, engine):
        self._engine = engine
        self.gate, self.entered = threading.Event(), threading.Event()
        self.runs: list[int] = []  # sequences per engine call

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run(self, jobs):
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        self.runs.append(len(jobs))
        return self._engine.run(jobs)


@pytest.fixture
def gated(tiny_scorers):
    tiny = tiny_scorers["tiny"]
    engine = GatedEngine(tiny.engine)
    with ThreadedServer({"tiny": Scorer(tiny.config, engine, tiny.tokenizer)}, max_wait_ms=0, queue_size=2, client_share=1.0) as srv:
        with srv.channel() as channel:
            yield srv, engine, scorer_pb2_grpc.ScorerStub(channel)
        engine.gate.set()


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.mark.parametrize("batches_in_flight", [1, 2])
def test_32_concurrent_clients_are_coalesced(tiny_scorers, batches_in_flight):
    engine = tiny_scorers["tiny"].engine
    rng = np.random.default_rng(3)
    seqs = [rng.integers(3, 300, int(n)) for n in rng.integers(2, 400, 32)]
    with ThreadedServer(tiny_scorers, max_wait_ms=50, batches_in_flight=batches_in_flight) as srv:
        before = srv.metric("tokenweight_engine_batches_total", scorer="tiny")
        start = threading.Barrier(32)

        def client(i):
            with srv.channel() as channel:
                stub = scorer_pb2_grpc.ScorerStub(channel)
                request = wire.build_request([seqs[i]], request_id=f"client{i}", window=8 + i % 3)
                start.wait()
                return wire.parse_response(stub.Score(request, timeout=60))

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(client, range(32)))
        batches = srv.metric("tokenweight_engine_batches_total", scorer="tiny") - before
    for i, result in enumerate(results):
        assert result.request_id == f"client{i}" and result.window == 8 + i % 3
        want = engine.score([seqs[i]], window=8 + i % 3)[0]
        for name in wire.OUTPUT_NAMES:
            np.testing.assert_allclose(getattr(result.results[0], name), getattr(want, name), atol=1e-5)
    assert 1 <= batches < 32, f"{batches} engine batches for 32 requests"


def test_full_queue_answers_resource_exhausted_at_once(gated):
    srv, engine, stub = gated
    running = stub.Score.future(wire.build_request([[1, 2, 3]]), timeout=30)
    assert engine.entered.wait(10)
    queued = [stub.Score.future(wire.build_request([[1, 2, 3, 4]]), timeout=30) for _ in range(2)]
    wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") == 2)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(wire.build_request([[1, 2]]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "back off" in info.value.details() and time.monotonic() - started < 5
    with srv.http() as http:
        response = http.post("/v1/score", json={"token_ids": [[1, 2]]})
    assert response.status_code == 429 and "back off" in response.json()["error"]
    engine.gate.set()
    assert all(len(f.result().results) == 1 for f in [running, *queued])


def test_bad_request_fails_alone_and_mixed_settings_share_a_batch(gated):
    srv, engine, stub = gated
    first = stub.Score.future(wire.build_request([[1, 2, 3]]), timeout=30)
    assert engine.entered.wait(10)
    seq_a, seq_b = np.arange(3, 40), np.arange(50, 70)
    good_a = stub.Score.future(wire.build_request([seq_a], window=8), timeout=30)
    bad = stub.Score.future(wire.build_request([[1, 2, 300]]), timeout=30)
    good_b = stub.Score.future(wire.build_request([seq_b, seq_a], window=12, stride=3), timeout=30)
    wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") == 2)
    with pytest.raises(grpc.RpcError) as info:
        bad.result()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    engine.gate.set()
    first.result()
    a, b = wire.parse_response(good_a.result()), wire.parse_response(good_b.result())
    assert engine.runs == [1, 3], "the two good requests ran as one engine call"
    real = engine._engine
    np.testing.assert_allclose(a.results[0].score, real.score([seq_a], 8)[0].score, atol=1e-5)
    for got, want in zip(b.results, real.score([seq_b, seq_a], 12, 3)):
        np.testing.assert_allclose(got.logp_short, want.logp_short, atol=1e-5)


def test_timed_out_request_is_dropped_before_the_engine(gated):
    srv, engine, stub = gated
    first = stub.Score.future(wire.build_request([[1, 2, 3]]), timeout=30)
    assert engine.entered.wait(10)
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(wire.build_request([[1, 2, 3, 4, 5]]), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") <= 1)
    engine.gate.set()
    first.result()
    wait_for(lambda: srv.metric("tokenweight_dropped_requests_total", scorer="tiny") == 1)
    assert engine.runs == [1]


def test_cache_serves_repeats_without_the_engine(tiny_scorers):
    engine = tiny_scorers["tiny"].engine
    seqs = [np.arange(1, 60), np.arange(5, 9)]
    with ThreadedServer(tiny_scorers, http=False, cache_mb=1) as srv, srv.channel() as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        short_only = wire.parse_response(stub.Score(wire.build_request(seqs, outputs=["logp_short"]), timeout=10), ["logp_short"])
        full = wire.parse_response(stub.Score(wire.build_request(seqs), timeout=10))  # needs the long pass too
        batches = srv.metric("tokenweight_engine_batches_total", scorer="tiny")
        again = wire.parse_response(stub.Score(wire.build_request(seqs[::-1]), timeout=10))
        assert srv.metric("tokenweight_engine_batches_total", scorer="tiny") == batches == 2
        assert srv.metric("tokenweight_cache_lookups_total", result="hit") == 2
        other_window = wire.parse_response(stub.Score(wire.build_request(seqs, window=5), timeout=10))
        assert srv.metric("tokenweight_engine_batches_total", scorer="tiny") == 3
    expected = engine.score(seqs)
    for got, want in zip([*full.results, *again.results[::-1]], [*expected, *expected]):
        assert got.score.tobytes() == want.score.tobytes()
    assert short_only.results[0].logp_short.tobytes() == expected[0].logp_short.tobytes()
    assert other_window.window == 5


def test_http_client_that_disconnects_is_dropped_before_the_engine(gated):
    import httpx

    srv, engine, stub = gated
    first = stub.Score.future(wire.build_request([[1, 2, 3]]), timeout=30)
    assert engine.entered.wait(10)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{srv.http_url}/v1/score", json={"token_ids": [[1, 2, 3, 4, 5]]}, timeout=0.3)
    # The server notices the closed connection while the request is still queued.
    wait_for(lambda: srv.metric("tokenweight_http_requests_total", route="/v1/score", status="499") == 1)
    engine.gate.set()
    first.result()
    wait_for(lambda: srv.metric("tokenweight_dropped_requests_total", scorer="tiny") == 1)
    assert engine.runs == [1]
