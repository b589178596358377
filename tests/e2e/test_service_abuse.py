"""Abuse of the scoring core behind a real server on loopback: bounded work per request,
abandoned work dropped between forward calls, fair queueing between clients, per-message
error isolation on streams, and no retries of messages that are too large."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch

from conftest import ThreadedServer
from engine_helpers import RecordingEngine, slow_engine, wait_for
from tokenweight import wire
from tokenweight.client import RetryPolicy, ScorerClient, ScorerError
from tokenweight.service.chunking import forward_tokens, plan_sequence
from tokenweight.service.config import ConfigError, ServerConfig
from tokenweight.service.engine import ALL_OUTPUTS
from tokenweight.service.scorers import Scorer
from tokenweight.v1 import scorer_pb2_grpc

RNG = np.random.default_rng(15)
# Channels in one process share connections unless told not to; the server tells clients
# apart by connection.
OWN_CONNECTION = {"grpc.use_local_subchannel_pool": 1}


def serve(tiny_scorers, engine, **settings) -> ThreadedServer:
    tiny = tiny_scorers["tiny"]
    return ThreadedServer({"tiny": Scorer(tiny.config, engine, tiny.tokenizer)}, **settings)


@pytest.mark.parametrize(
    "need_long,need_short,short_is_long", [(1, 1, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)]
)
def test_forward_tokens_equal_the_plan(need_long, need_short, short_is_long):
    for length in (0, 1, 2, 7, 8, 9, 30, 101):
        for window, stride in ((8, 1), (8, 6), (8, 7), (16, 5), (2, 1)):
            tokens = torch.arange(length)
            plan = plan_sequence(
                0, tokens, window, stride, None, need_long, need_short, short_is_long
            )
            got = forward_tokens(length, window, stride, need_long, need_short, short_is_long)
            assert got == sum(len(seg) for seg in plan), (length, window, stride)


@pytest.mark.parametrize(
    "setting",
    [{"client_share": 0}, {"client_share": 1.5}, {"queue_tokens": 0}, {"http_body_timeout_s": 0}],
)
def test_limits_that_refuse_everything_are_config_errors(setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        ServerConfig(**setting)


def test_work_per_request_is_bounded_and_the_fitting_stride_named(tiny_scorers):
    engine = tiny_scorers["tiny"].engine
    seq = RNG.integers(3, 300, 400)
    limit = 1500
    costs = {s: engine.forward_tokens([seq.size], 8, s, ALL_OUTPUTS) for s in range(1, 8)}
    fitting = min(s for s, cost in costs.items() if cost <= limit)
    assert costs[1] > limit and fitting > 1
    with ThreadedServer(tiny_scorers, max_forward_tokens=limit) as srv, srv.channel() as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(wire.build_request([seq], window=8, stride=1), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {limit} per request" in info.value.details()
        assert f"stride >= {fitting} (window 8)" in info.value.details()
        with pytest.raises(grpc.RpcError):
            stub.Score(wire.build_request([seq], window=8, stride=fitting - 1), timeout=10)
        ok = wire.parse_response(
            stub.Score(wire.build_request([seq], window=8, stride=fitting), timeout=10)
        )
        np.testing.assert_allclose(
            ok.results[0].score, engine.score([seq], 8, fitting)[0].score, atol=1e-5
        )
        with srv.http() as http:
            response = http.post(
                "/v1/score", json={"token_ids": [seq.tolist()], "window": 8, "stride": 1}
            )
        assert response.status_code == 400 and f"stride >= {fitting}" in response.json()["error"]


def test_abandoned_work_stops_between_forward_calls(tiny_scorers):
    """A request of ~400 forward calls whose deadline passes after a few: the engine stops
    calling the model for it, and the next caller is served at once."""
    with (
        slow_engine(tiny_scorers["tiny"], 0.005) as (engine, calls),
        serve(tiny_scorers, engine, http=False, max_wait_ms=0) as srv,
        srv.channel() as channel,
    ):
        stub = scorer_pb2_grpc.ScorerStub(channel)
        long_request = wire.build_request([RNG.integers(3, 300, 400)], window=8, stride=1)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(long_request, timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        started = time.monotonic()
        quick = wire.parse_response(stub.Score(wire.build_request([[1, 5, 9, 4]]), timeout=10))
        waited = time.monotonic() - started
    assert len(quick.results) == 1
    assert waited < 1.0, f"the next caller waited {waited:.2f}s behind abandoned work"
    assert len(calls) < 200, f"{len(calls)} forward calls for a request abandoned after 0.3 s"


def test_one_client_cannot_take_the_whole_queue(tiny_scorers):
    """A flooding stream gets RESOURCE_EXHAUSTED past its share (2 of 8 requests); other
    clients, over gRPC and HTTP, still get in."""
    engine = RecordingEngine(tiny_scorers["tiny"].engine, gated=True)
    srv = serve(tiny_scorers, engine, max_wait_ms=0, queue_size=8, client_share=0.25)
    flood_channel, other_channel = srv.channel(**OWN_CONNECTION), srv.channel(**OWN_CONNECTION)
    try:
        flood = scorer_pb2_grpc.ScorerStub(flood_channel)
        requests = [wire.build_request([[1, 2, 3 + i]], request_id=f"f{i}") for i in range(20)]
        responses = []
        reader = threading.Thread(
            target=lambda: responses.extend(flood.ScoreStream(iter(requests), timeout=30))
        )
        reader.start()
        assert engine.entered.wait(10)
        wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") == 2)
        other = scorer_pb2_grpc.ScorerStub(other_channel)
        seqs = [RNG.integers(3, 300, 12), RNG.integers(3, 300, 30), RNG.integers(3, 300, 7)]
        mine = [other.Score.future(wire.build_request([seq]), timeout=30) for seq in seqs[:2]]
        with ThreadPoolExecutor(1) as pool, srv.http() as http:
            by_http = pool.submit(http.post, "/v1/score", json={"token_ids": [seqs[2].tolist()]})
            wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") == 5)
            engine.gate.set()
            got = [wire.parse_response(f.result()).results[0].score for f in mine]
            got.append(np.array(by_http.result().json()["results"][0]["score"], np.float32))
        reader.join(20)
    finally:
        engine.gate.set()
        flood_channel.close(), other_channel.close()
        srv.close()
    for score, seq in zip(got, seqs):
        np.testing.assert_allclose(score, engine.score([seq])[0].score, atol=1e-5)
    refused = [r.error for r in responses if r.HasField("error")]
    assert len(responses) == 20 and len(refused) >= 17
    assert {e.code for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
    assert all("its share is 2" in e.message for e in refused)


def test_the_token_queue_refuses_by_work_but_never_an_only_request(tiny_scorers):
    engine = RecordingEngine(tiny_scorers["tiny"].engine, gated=True)
    seq = RNG.integers(3, 300, 40)
    work = engine.forward_tokens([seq.size], engine.window, engine.stride, ALL_OUTPUTS)
    assert 50 < work <= 100  # one fits the queue's 100 forward tokens, two do not
    with (
        serve(tiny_scorers, engine, http=False, max_wait_ms=0, queue_tokens=100) as srv,
        srv.channel(**OWN_CONNECTION) as first,
        srv.channel(**OWN_CONNECTION) as second,
        srv.channel(**OWN_CONNECTION) as third,
    ):
        running = scorer_pb2_grpc.ScorerStub(first).Score.future(wire.build_request([seq]))
        assert engine.entered.wait(10)
        # The queue is empty: a request of more work than it holds still gets in.
        big = scorer_pb2_grpc.ScorerStub(second).Score.future(wire.build_request([seq, seq]))
        wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") == 1)
        with pytest.raises(grpc.RpcError) as info:
            scorer_pb2_grpc.ScorerStub(third).Score(wire.build_request([seq]), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{2 * work} forward tokens) queued, its limit is 256 (100)" in info.value.details()
        engine.gate.set()
        assert len(running.result(10).results) == 1 and len(big.result(10).results) == 2


def test_a_stream_is_held_to_its_in_flight_limit(tiny_scorers):
    engine = RecordingEngine(tiny_scorers["tiny"].engine, gated=True)
    with (
        serve(
            tiny_scorers, engine, http=False, max_wait_ms=0, client_share=1.0, stream_inflight=4
        ) as srv,
        srv.channel() as channel,
    ):
        stub = scorer_pb2_grpc.ScorerStub(channel)
        requests = [wire.build_request([[1, 2, 3 + i]], request_id=f"r{i}") for i in range(40)]
        responses = []
        reader = threading.Thread(
            target=lambda: responses.extend(stub.ScoreStream(iter(requests), timeout=30)),
            daemon=True,
        )
        reader.start()
        assert engine.entered.wait(10)
        wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") >= 3)
        time.sleep(0.3)  # time for more to arrive, were the stream read past its limit
        assert srv.metric("tokenweight_queue_depth", scorer="tiny") == 3  # 1 running + 3
        engine.gate.set()
        reader.join(20)
    assert sorted(r.request_id for r in responses) == sorted(f"r{i}" for i in range(40))
    assert not any(r.HasField("error") for r in responses)


def test_a_huge_request_does_not_hold_up_a_later_small_one(tiny_scorers):
    """4,000 tiny sequences from one client run a unit at a time; a request from another
    client that arrives after them runs within the next engine calls, not after all."""
    engine = RecordingEngine(tiny_scorers["tiny"].engine, gated=True)
    with serve(tiny_scorers, engine, http=False, max_wait_ms=0, batch_tokens=64) as srv:
        with (
            srv.channel(**OWN_CONNECTION) as big_channel,
            srv.channel(**OWN_CONNECTION) as small_channel,
        ):
            big = scorer_pb2_grpc.ScorerStub(big_channel).Score.future(
                wire.build_request([RNG.integers(3, 300, 4) for _ in range(4000)]), timeout=60
            )
            assert engine.entered.wait(10)
            small_seq = RNG.integers(3, 300, 9)
            small = scorer_pb2_grpc.ScorerStub(small_channel).Score.future(
                wire.build_request([small_seq]), timeout=60
            )
            wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") == 2)
            engine.gate.set()
            got = wire.parse_response(small.result()).results[0]
            assert len(wire.parse_response(big.result()).results) == 4000
    np.testing.assert_allclose(got.score, engine.score([small_seq])[0].score, atol=1e-5)
    run_of_small = next(i for i, run in enumerate(engine.runs) if 9 in run)
    assert run_of_small <= 2 and len(engine.runs) > 100, (run_of_small, len(engine.runs))


def test_stream_survives_malformed_messages_and_refuses_duplicate_ids(tiny_scorers):
    engine = RecordingEngine(tiny_scorers["tiny"].engine, gated=True)
    with serve(tiny_scorers, engine, http=False, max_wait_ms=0) as srv, srv.channel() as channel:
        stream = channel.stream_stream("/tokenweight.v1.Scorer/ScoreStream")
        good = [RNG.integers(3, 300, 20), RNG.integers(3, 300, 25)]
        # A valid request_id field, then bytes that are no protobuf at all.
        garbage = b"\x0a\x03bad" + b"\xff\xff\xff\xff"
        messages = [
            wire.build_request([good[0]], request_id="a").SerializeToString(),
            garbage,
            wire.build_request([good[1]], request_id="a").SerializeToString(),
            b"\xfe\x01junk",
            wire.build_request([good[1]], request_id="b").SerializeToString(),
        ]

        def send():
            yield from messages[:1]
            assert engine.entered.wait(10)  # "a" is in the engine while the rest arrive
            yield from messages[1:]
            wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") == 1)
            engine.gate.set()

        from tokenweight.v1 import scorer_pb2

        responses = [scorer_pb2.ScoreResponse.FromString(r) for r in stream(send(), timeout=30)]
        unary = channel.unary_unary("/tokenweight.v1.Scorer/Score")
        with pytest.raises(grpc.RpcError) as info:
            unary(garbage, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid tokenweight.v1.ScoreRequest" in info.value.details()
    errors = {(r.request_id, r.error.code) for r in responses if r.HasField("error")}
    assert errors == {
        ("bad", grpc.StatusCode.INVALID_ARGUMENT.value[0]),
        ("", grpc.StatusCode.INVALID_ARGUMENT.value[0]),
        ("a", grpc.StatusCode.ALREADY_EXISTS.value[0]),
    }
    scored = {r.request_id: wire.parse_response(r) for r in responses if not r.HasField("error")}
    assert sorted(scored) == ["a", "b"]
    for rid, seq in (("a", good[0]), ("b", good[1])):
        np.testing.assert_allclose(
            scored[rid].results[0].score, engine.score([seq])[0].score, atol=1e-5
        )


def test_message_too_large_is_not_retried(tiny_scorers):
    with ThreadedServer(tiny_scorers, http=False, max_request_tokens=1000, max_sequences=10) as srv:
        attempts = []
        policy = RetryPolicy(max_attempts=5, initial_backoff=0.01, on_retry=attempts.append)
        client = ScorerClient(f"grpc://{srv.grpc_target}", retry=policy, timeout=10)
        try:
            with pytest.raises(ScorerError) as info:
                client.score([np.ones(wire.message_limit(1000, 10) // 4, int)])
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.attempts == 1 and not attempts
        finally:
            client.close()
        # A full queue is RESOURCE_EXHAUSTED too, and is still retried (client side rule).
        from tokenweight.client.retry import is_retryable

        busy = ScorerError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; back off and retry")
        assert is_retryable(busy, policy.retry_on)
