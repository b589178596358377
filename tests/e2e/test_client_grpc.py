"""The gRPC clients against real grpc servers on 127.0.0.1 running a scripted servicer.

The servicer fakes scores (a function of the token ids) and fails on purpose, so these tests
are about the client: retries and backoff, failover, pipelining, errors, auth and TLS. The
end-to-end test against `tokenweight serve` is tests/e2e/test_client_e2e.py.
"""

import asyncio
import random
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from tokenweight import wire
from tokenweight.client import (
    AsyncScorerClient,
    RetryPolicy,
    ScorerClient,
    ScorerError,
)
from tokenweight.v1 import scorer_pb2, scorer_pb2_grpc

Code = grpc.StatusCode
SLEEP = "sleep"  # a scripted step that stalls past the client's deadline, then answers


def fake_scores(ids: np.ndarray, wanted) -> wire.Scores:
    long = -ids[1:].astype(np.float32)
    short = long / 2
    arrays = {"score": np.abs(short - long), "logp_long": long, "logp_short": short}
    return wire.Scores(*(arrays[name] if flag else None for name, flag in zip(wire.OUTPUT_NAMES, wanted)))


def answer(request, name: str) -> scorer_pb2.ScoreResponse:
    wanted = wire.requested_outputs(request)
    results = [fake_scores(ids, wanted) for ids in wire.request_sequences(request)]
    return wire.build_response(request.request_id, "fake", name, request.window or 8, request.stride or 6, results)


class Scripted(scorer_pb2_grpc.ScorerServicer):
    """Unary calls fail with the codes in `script`, in turn, then succeed.

    Streams answer each request after a random delay (out of order), fail request number
    `bad_request` with `bad_code`, and abort the first stream with UNAVAILABLE after
    `break_after` responses.
    """

    def __init__(self, name: str, script=(), bad_request=None, bad_code=Code.INVALID_ARGUMENT, break_after=None):
        self.name = name
        self.script = list(script)
        self.calls: list[float] = []
        self.metadata: list[dict] = []
        self.bad_request, self.bad_code = bad_request, bad_code
        self.break_after = break_after
        self.streams = 0
        self.max_outstanding = 0
        self._lock = threading.Lock()

    def Score(self, request, context):
        self.calls.append(time.monotonic())
        self.metadata.append(dict(context.invocation_metadata()))
        step = self.script.pop(0) if self.script else None
        if step == SLEEP:
            time.sleep(0.3)
        elif step is not None:
            context.abort(step, f"scripted {step.name} from {self.name}")
        return answer(request, self.name)

    def ListScorers(self, request, context):
        info = scorer_pb2.ScorerInfo(name="fake", default_window=8, default_stride=6, is_default=True)
        return scorer_pb2.ListScorersResponse(scorers=[info], default_scorer="fake")

    def ScoreStream(self, request_iterator, context):
        self.streams += 1
        first_stream = self.streams == 1
        responses: list = []
        cond = threading.Condition()
        state = {"received": 0, "answered": 0, "done": False}

        def reply(request, number):
            time.sleep(random.uniform(0, 0.01))
            if number == self.bad_request:
                response = wire.build_error_response(request.request_id, self.bad_code, "scripted bad request")
            else:
                response = answer(request, self.name)
            with cond:
                responses.append(response)
                cond.notify()

        def read(pool):
            try:
                for request in request_iterator:
                    with cond:
                        number = self.received_total()
                        state["received"] += 1
                        self.max_outstanding = max(self.max_outstanding, state["received"] - state["answered"])
                    pool.submit(reply, request, number)
            except grpc.RpcError:  # the client cancelled the stream
                pass
            pool.shutdown(wait=True)
            with cond:
                state["done"] = True
                cond.notify()

        pool = ThreadPoolExecutor(4, thread_name_prefix="server")
        threading.Thread(target=read, args=(pool,), name="server-read", daemon=True).start()
        sent = 0
        while True:
            with cond:
                cond.wait_for(lambda: responses or state["done"])
                if not responses:
                    return
                response = responses.pop(0)
                state["answered"] += 1
            if first_stream and self.break_after is not None and sent == self.break_after:
                context.abort(Code.UNAVAILABLE, "scripted: draining")
            sent += 1
            yield response

    def received_total(self) -> int:
        with self._lock:
            self._received = getattr(self, "_received", 0) + 1
            return self._received - 1


@pytest.fixture
def serve():
    """serve(servicer) -> "grpc://127.0.0.1:PORT"; serve(servicer, stopped=True) gives the
    URL of a port that has nothing behind it any more."""
    servers = []

    def start(servicer, stopped=False, credentials=None):
        server = grpc.server(ThreadPoolExecutor(16, thread_name_prefix="server"))
        scorer_pb2_grpc.add_ScorerServicer_to_server(servicer, server)
        if credentials:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        if stopped:
            server.stop(None).wait()
        return f"{'grpcs' if credentials else 'grpc'}://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None).wait()


class Events(list):
    """An on_retry hook that keeps the events."""

    def __call__(self, event):
        self.append(event)


def fast(events=None, **kwargs) -> RetryPolicy:
    return RetryPolicy(initial_backoff=0.02, jitter=0, on_retry=events, **kwargs)


SEQS = [np.array([1, 5, 9, 2], dtype=np.int64), [3, 4]]


def check(result, name="a"):
    assert result.fingerprint == name
    for ids, scores in zip(SEQS, result.results):
        np.testing.assert_array_equal(scores.logp_long, -np.asarray(ids[1:], np.float32))
        assert scores.score.dtype == np.float32


def test_score_returns_numpy_arrays_and_settings(serve):
    with ScorerClient(serve(Scripted("a")), retry=fast()) as client:
        result = client.score(SEQS, window=4, stride=2)
        check(result)
        assert (result.window, result.stride, result.scorer) == (4, 2, "fake")
        assert result.request_id
        only = client.score(SEQS, outputs=["logp_short"])
        assert only.results[0].score is None and only.results[0].logp_long is None
        np.testing.assert_array_equal(only.results[0].logp_short, [-2.5, -4.5, -1.0])
        assert client.list_scorers() == [wire.ScorerInfo(name="fake", default_window=8, default_stride=6, is_default=True)]
        with pytest.raises(TypeError, match="list of token-id arrays"):
            client.score([1, 2, 3])


def test_retries_unavailable_and_resource_exhausted_with_exponential_backoff(serve):
    servicer = Scripted("a", [Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE])
    events = Events()
    with ScorerClient(serve(servicer), retry=fast(events)) as client:
        check(client.score(SEQS))
    assert [e.error.code for e in events] == [Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE]
    assert [e.delay for e in events] == pytest.approx([0.02, 0.04, 0.08])
    assert [e.attempt for e in events] == [1, 2, 3]
    gaps = np.diff(servicer.calls)
    assert (gaps >= np.array([0.02, 0.04, 0.08]) * 0.9).all()
    assert "scripted RESOURCE_EXHAUSTED" in events[1].error.message


@pytest.mark.parametrize("code", [Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.UNAUTHENTICATED])
def test_client_errors_are_not_retried(serve, code):
    servicer = Scripted("a", [code])
    events = Events()
    with ScorerClient(serve(servicer), retry=fast(events)) as client:
        with pytest.raises(ScorerError) as info:
            client.score(SEQS)
    assert info.value.code == code
    assert info.value.message == f"scripted {code.name} from a"
    assert info.value.attempts == 1 and len(servicer.calls) == 1 and not events
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_gives_up_after_max_attempts(serve):
    servicer = Scripted("a", [Code.UNAVAILABLE] * 10)
    with ScorerClient(serve(servicer), retry=fast(max_attempts=3)) as client:
        with pytest.raises(ScorerError, match="after 3 attempts") as info:
            client.score(SEQS)
    assert info.value.code == Code.UNAVAILABLE and len(servicer.calls) == 3


def test_retry_for_a_duration_then_give_up(serve):
    servicer = Scripted("a", [Code.UNAVAILABLE] * 100)
    policy = RetryPolicy.for_duration(0.4, initial_backoff=0.01, max_backoff=0.05, on_retry=None)
    start = time.monotonic()
    with ScorerClient(serve(servicer), retry=policy) as client:
        with pytest.raises(ScorerError) as info:
            client.score(SEQS)
    assert time.monotonic() - start < 0.4 + 0.2
    assert info.value.attempts == len(servicer.calls) > 5


def test_deadline_is_per_attempt_and_retried(serve):
    servicer = Scripted("a", [SLEEP])
    events = Events()
    with ScorerClient(serve(servicer), timeout=0.1, retry=fast(events)) as client:
        check(client.score(SEQS))
    assert [e.error.code for e in events] == [Code.DEADLINE_EXCEEDED]


def test_bearer_token_is_sent(serve):
    servicer = Scripted("a")
    with ScorerClient(serve(servicer), token="s3cret") as client:
        client.score(SEQS)
    assert servicer.metadata[0]["authorization"] == "Bearer s3cret"


def test_round_robin_across_endpoints(serve):
    a, b = Scripted("a"), Scripted("b")
    with ScorerClient(f"{serve(a)},{serve(b)}") as client:
        names = [client.score(SEQS).fingerprint for _ in range(6)]
    assert names == ["a", "b"] * 3


def test_failover_skips_a_down_endpoint(serve):
    live = Scripted("live")
    events = Events()
    with ScorerClient([serve(Scripted("dead"), stopped=True), serve(live)], retry=fast(events)) as client:
        names = [client.score(SEQS).fingerprint for _ in range(5)]
    assert names == ["live"] * 5
    # One failure on the dead endpoint, failed over at once; then it is skipped.
    assert len(events) == 1 and events[0].delay == 0 and events[0].error.code == Code.UNAVAILABLE
    assert len(live.calls) == 5


def stream_items(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 1000, rng.integers(2, 20)) for _ in range(rng.integers(1, 4))] for _ in range(n)]


def check_stream(items, results):
    assert len(results) == len(items)
    for item, result in zip(items, results):
        assert len(result.results) == len(item)
        for ids, scores in zip(item, result.results):
            np.testing.assert_array_equal(scores.logp_long, -ids[1:].astype(np.float32))


def test_stream_pipelines_and_matches_every_response(serve):
    servicer = Scripted("a")
    items = stream_items(60)
    with ScorerClient(serve(servicer)) as client:
        results = list(client.score_many(iter(items), max_in_flight=8))
    check_stream(items, results)
    assert len({r.request_id for r in results}) == 60
    assert 1 < servicer.max_outstanding <= 8  # really pipelined, and bounded


def test_stream_reopens_after_a_break_and_resends_what_was_unanswered(serve):
    servicer = Scripted("a", break_after=10)
    items = stream_items(40)
    events = Events()
    with ScorerClient(serve(servicer), retry=fast(events)) as client:
        results = list(client.score_many(items, max_in_flight=8))
    check_stream(items, results)
    assert servicer.streams == 2 and [e.error.code for e in events] == [Code.UNAVAILABLE]


def test_stream_request_error_names_the_request(serve):
    items = stream_items(20)
    got = []
    with ScorerClient(serve(Scripted("a", bad_request=5)), retry=fast()) as client:
        with pytest.raises(ScorerError, match="request 5 of the stream") as info:
            for result in client.score_many(items, max_in_flight=4):
                got.append(result)
    assert info.value.code == Code.INVALID_ARGUMENT
    check_stream(items[:5], got)


def test_stream_retries_a_request_the_server_could_not_queue(serve):
    items = stream_items(20)
    events = Events()
    servicer = Scripted("a", bad_request=3, bad_code=Code.RESOURCE_EXHAUSTED)
    with ScorerClient(serve(servicer), retry=fast(events)) as client:
        results = list(client.score_many(items, max_in_flight=4))
    check_stream(items, results)
    assert [e.error.code for e in events] == [Code.RESOURCE_EXHAUSTED]


def test_stream_stopped_early_leaves_no_threads(serve):
    url = serve(Scripted("a"))

    def client_threads():  # the server's threads are all named server...
        return {t for t in threading.enumerate() if not t.name.startswith("server")}

    with ScorerClient(url) as client:
        client.score(SEQS)
        before = client_threads()
        stream = client.score_many(stream_items(100), max_in_flight=8)
        next(stream)
        assert client_threads() > before  # grpc's sender and channel threads
        stream.close()  # what a `for` loop that breaks does when the generator is dropped
        deadline = time.monotonic() + 2
        while client_threads() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client_threads() <= before


def test_async_client_retries_fails_over_and_pipelines(serve):
    flaky = Scripted("a", [Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED])
    dead = serve(Scripted("dead"), stopped=True)
    items = stream_items(30)
    events = Events()

    async def main():
        async with AsyncScorerClient([serve(flaky)], retry=fast(events)) as client:
            check(await client.score(SEQS))
            assert (await client.list_scorers())[0].name == "fake"

            async def source():
                for item in items:
                    yield item

            results = [r async for r in client.score_many(source(), max_in_flight=8)]
            check_stream(items, results)
        async with AsyncScorerClient([dead, serve(Scripted("b"))], retry=fast()) as client:
            assert [(await client.score(SEQS)).fingerprint for _ in range(3)] == ["b"] * 3
        async with AsyncScorerClient(serve(Scripted("c", [Code.INVALID_ARGUMENT]))) as client:
            with pytest.raises(ScorerError) as info:
                await client.score(SEQS)
            assert info.value.code == Code.INVALID_ARGUMENT and info.value.attempts == 1

    asyncio.run(main())
    assert [e.delay for e in events] == pytest.approx([0.02, 0.04])


def test_async_stream_reopens_after_a_break_and_reports_a_bad_request(serve):
    items = stream_items(30)
    events = Events()

    async def main():
        async with AsyncScorerClient(serve(Scripted("a", break_after=5)), retry=fast(events)) as client:
            check_stream(items, [r async for r in client.score_many(items, max_in_flight=6)])
        got = []
        async with AsyncScorerClient(serve(Scripted("b", bad_request=4)), retry=fast()) as client:
            with pytest.raises(ScorerError, match="request 4 of the stream"):
                async for result in client.score_many(items, max_in_flight=6):
                    got.append(result)
        check_stream(items[:4], got)

    asyncio.run(main())
    assert [e.error.code for e in events] == [Code.UNAVAILABLE]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
def test_tls_with_a_root_certificate(serve, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=scorer.test", "-addext", "subjectAltName=DNS:scorer.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    url = serve(Scripted("a"), credentials=credentials)
    with ScorerClient(url, root_certificates=cert, tls_server_name="scorer.test", retry=fast()) as client:
        check(client.score(SEQS))
    with ScorerClient(url, retry=fast(max_attempts=1)) as client:  # the system roots do not trust it
        with pytest.raises(ScorerError) as info:
            client.score(SEQS)
        assert info.value.code == Code.UNAVAILABLE
    with pytest.raises(ValueError, match="grpcs://"):
        ScorerClient(url.replace("grpcs", "grpc"), root_certificates=cert)
