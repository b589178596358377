"""The gRPC front end on a real grpc.aio server on a loopback port."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import ThreadedServer
from tokenweight import wire
from tokenweight.v1 import scorer_pb2, scorer_pb2_grpc

RNG = np.random.default_rng(0)
SEQS = [RNG.integers(3, 300, n) for n in (40, 1, 2, 17, 300)]
SEQS[0][0] = 1  # starts with BOS: the chunks replace their first token with BOS


@pytest.fixture(scope="module")
def stub(server):
    with server.channel() as channel:
        yield scorer_pb2_grpc.ScorerStub(channel)


def assert_bits_equal(parsed: wire.ScoreResult, expected):
    assert len(parsed.results) == len(expected)
    for got, want in zip(parsed.results, expected):
        for name in wire.OUTPUT_NAMES:
            a, b = getattr(got, name), getattr(want, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert a.dtype == np.float32 and a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("scorer", ["tiny", "pair"])
def test_score_equals_engine_to_the_bit(server, stub, scorer):
    engine = server.scorers[scorer].engine
    response = stub.Score(wire.build_request(SEQS, scorer=scorer, request_id="r1"), timeout=30)
    parsed = wire.parse_response(response)
    assert (parsed.request_id, parsed.scorer) == ("r1", scorer)
    assert (parsed.window, parsed.stride) == (engine.window, engine.stride)
    assert parsed.fingerprint == engine.fingerprint()
    assert_bits_equal(parsed, engine.score(SEQS))


def test_default_scorer_window_stride_and_output_selection(server, stub):
    engine = server.scorers["tiny"].engine
    request = wire.build_request(SEQS, window=12, stride=5, outputs=["logp_short"])
    parsed = wire.parse_response(stub.Score(request, timeout=30), ["logp_short"])
    assert (parsed.scorer, parsed.window, parsed.stride) == ("tiny", 12, 5)
    assert parsed.fingerprint == engine.fingerprint(12, 5) != engine.fingerprint()
    from tokenweight.service.engine import Outputs

    assert_bits_equal(parsed, engine.score(SEQS, 12, 5, Outputs(False, False, True)))
    assert all(r.score is None and r.logp_long is None for r in parsed.results)


def test_list_scorers(stub, server):
    response = stub.ListScorers(scorer_pb2.ListScorersRequest(), timeout=5)
    assert response.default_scorer == "tiny"
    infos = {s.name: s for s in response.scorers}
    assert set(infos) == {"tiny", "pair"}
    pair = infos["pair"]
    assert (pair.default_window, pair.default_stride, pair.vocab_size) == (16, 4, 300)
    assert pair.short_model and pair.long_model != pair.short_model
    assert (pair.max_sequence_length, pair.dtype, pair.device) == (512, "float32", "cpu")
    assert pair.fingerprint == server.scorers["pair"].engine.fingerprint()
    assert infos["tiny"].is_default and not pair.is_default
    assert pair.max_request_tokens == server.server.config.server.max_request_tokens


BAD_REQUESTS = {
    "unknown scorer": (
        wire.build_request([[1, 2]], scorer="nope"), grpc.StatusCode.NOT_FOUND, "['pair', 'tiny']",
    ),
    "out-of-vocabulary id": (
        wire.build_request([[1, 2, 300]]), grpc.StatusCode.INVALID_ARGUMENT, "outside the vocabulary",
    ),
    "negative id": (wire.build_request([[1, -3]]), grpc.StatusCode.INVALID_ARGUMENT, "negative token id"),
    "too-long sequence": (
        wire.build_request([np.ones(513, int)]), grpc.StatusCode.INVALID_ARGUMENT, "at most 512",
    ),
    "bad stride": (
        wire.build_request([[1, 2]], window=8, stride=8), grpc.StatusCode.INVALID_ARGUMENT, "stride must satisfy",
    ),
    "bad window": (wire.build_request([[1, 2]], window=1), grpc.StatusCode.INVALID_ARGUMENT, "at least 2"),
    "malformed bytes": (
        scorer_pb2.ScoreRequest(sequences=[scorer_pb2.TokenSequence(token_ids=b"\x01\x00\x00")]),
        grpc.StatusCode.INVALID_ARGUMENT, "not a multiple of 4",
    ),
    "empty request": (scorer_pb2.ScoreRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no sequences"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_errors_have_status_and_helpful_message(stub, case):
    request, code, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(request, timeout=10)
    assert info.value.code() == code
    assert message in info.value.details()


def test_stream_pipelines_and_a_bad_request_fails_alone(server, stub):
    engine = server.scorers["tiny"].engine
    requests = [wire.build_request([seq], request_id=f"ok{i}") for i, seq in enumerate(SEQS)]
    requests.insert(2, wire.build_request([[1, 999]], request_id="bad"))
    responses = {r.request_id: r for r in stub.ScoreStream(iter(requests), timeout=30)}
    assert set(responses) == {r.request_id for r in requests}
    with pytest.raises(wire.ScoreStreamError, match="outside the vocabulary") as info:
        wire.parse_response(responses["bad"])
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    for i, seq in enumerate(SEQS):
        parsed = wire.parse_response(responses[f"ok{i}"])
        np.testing.assert_allclose(parsed.results[0].score, engine.score([seq])[0].score, atol=1e-5)


def test_oversized_message_is_refused(tiny_scorers):
    with ThreadedServer(tiny_scorers, http=False, max_request_tokens=1000, max_sequences=10) as srv:
        limit = wire.message_limit(1000, 10)
        with srv.channel(**{"grpc.max_send_message_length": -1}) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(wire.build_request([np.ones(limit // 4, int)]), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in info.value.details()
            # Within the message limit but over the token limit: a clear INVALID_ARGUMENT.
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(wire.build_request([np.ones(400, int)] * 3), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 1000 per request" in info.value.details()


def test_health_flips_and_reflection_lists_the_service(tiny_scorers):
    srv = ThreadedServer(tiny_scorers, load=False, http=False)
    try:
        with srv.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = scorer_pb2_grpc.ScorerStub(channel)

            def status(service=""):
                return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

            assert status() == status("tokenweight.v1.Scorer") == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(wire.build_request([[1, 2]]), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "starting" in info.value.details()

            srv.call(srv.server.load(tiny_scorers))
            assert status() == status("tokenweight.v1.Scorer") == health_pb2.HealthCheckResponse.SERVING
            stub.Score(wire.build_request([[1, 2]]), timeout=5)

            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            response = next(reflect.ServerReflectionInfo(iter([request]), timeout=5))
            names = {s.name for s in response.list_services_response.service}
            assert {"tokenweight.v1.Scorer", "grpc.health.v1.Health"} <= names

            srv.call(srv.server.grpc.drain())
            srv.call(srv.server.service.drain(1))
            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(wire.build_request([[1, 2]]), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in info.value.details()
    finally:
        srv.close()


def test_bearer_token_on_grpc_metadata(tiny_scorers):
    with ThreadedServer(tiny_scorers, http=False, auth_token="s3cret") as srv, srv.channel() as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        request = wire.build_request([[1, 2, 3]])
        for metadata in (None, [("authorization", "Bearer wrong")]):
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(request, metadata=metadata, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ScoreStream(iter([request]), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Score(request, metadata=[("authorization", "Bearer s3cret")], timeout=5).results
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert srv.metric("tokenweight_grpc_requests_total", method="Score", code="UNAUTHENTICATED") == 2


def test_an_idle_open_stream_does_not_hold_up_shutdown(tiny_scorers):
    import threading
    import time

    srv = ThreadedServer(tiny_scorers, http=False)
    hold = threading.Event()

    def requests():
        yield wire.build_request([[1, 2, 3]], request_id="only")
        hold.wait(30)  # a trainer keeps its stream open between batches

    with srv.channel() as channel:
        stream = scorer_pb2_grpc.ScorerStub(channel).ScoreStream(requests(), timeout=30)
        assert next(stream).request_id == "only"
        started = time.monotonic()
        srv.close()  # grace 5 s, but nothing is in flight
        assert time.monotonic() - started < 3
        with pytest.raises(grpc.RpcError):
            next(stream)
        hold.set()
