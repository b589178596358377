"""The HTTP server's runtime under abuse, with scripted raw sockets where a client library
cannot misbehave enough: TCP_NODELAY, header/body deadlines, a connection limit, client
disconnects during the body, and a shutdown that keeps to its grace."""

import logging
import socket
import threading
import time

import httpx
import numpy as np

from conftest import ThreadedServer
from engine_helpers import RecordingEngine, slow_engine, wait_for
from tokenweight import wire
from tokenweight.client import HttpScorerClient, RetryPolicy, ScorerError
from tokenweight.service.scorers import Scorer
from tokenweight.v1 import scorer_pb2_grpc


def raw(srv: ThreadedServer, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.server.http.port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (socket.timeout if it never does)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_and_body(response: bytes) -> tuple[int, bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.lower(), body


def test_kept_alive_connections_have_tcp_nodelay_and_answer_at_once(server):
    with httpx.Client(base_url=server.http_url, trust_env=False) as http:
        latencies = []
        for _ in range(6):
            started = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
        connections = server.call(_open_sockets(server))
    assert connections and all(nodelay for nodelay in connections)
    # Without TCP_NODELAY every response after the first waits ~40 ms for a delayed ACK.
    assert sorted(latencies[1:])[2] < 0.03, latencies


async def _open_sockets(srv):
    states = srv.server.http._server.server_state.connections
    return [
        p.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        for p in states
    ]


def test_half_sent_headers_and_slow_bodies_are_cut_off(tiny_scorers, caplog):
    with ThreadedServer(tiny_scorers, http_header_timeout_s=0.3, http_body_timeout_s=0.3) as srv:
        half_headers = raw(srv, b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: app")
        slow_body = raw(
            srv, b'POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"tok'
        )
        started = time.monotonic()
        for sock in (half_headers, slow_body):
            status, head, body = status_and_body(read_all(sock))
            assert status == 408 and b"application/json" in head and b"did not arrive" in body
            sock.close()
        assert time.monotonic() - started < 3
        # A complete request on a fresh connection is not affected.
        with srv.http() as http:
            assert http.post("/v1/score", json={"token_ids": [[1, 5, 9]]}).status_code == 200
        wait_for(
            lambda: (
                srv.metric("tokenweight_http_requests_total", route="/v1/score", status="499") == 1
            )
        )
        assert srv.metric("tokenweight_http_requests_total", route="/v1/score", status="500") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_disconnect_during_the_body_is_no_server_error(tiny_scorers, caplog):
    with ThreadedServer(tiny_scorers) as srv:
        sock = raw(
            srv, b'POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"token_ids"'
        )
        wait_for(lambda: len(srv.server.http._server.server_state.tasks) == 1)
        sock.close()
        wait_for(
            lambda: (
                srv.metric("tokenweight_http_requests_total", route="/v1/score", status="499") == 1
            )
        )
        assert srv.metric("tokenweight_http_requests_total", route="/v1/score", status="500") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_connections_past_the_limit_are_refused(tiny_scorers):
    with ThreadedServer(tiny_scorers, http_max_connections=4) as srv:
        idle = [raw(srv) for _ in range(4)]
        wait_for(lambda: len(srv.server.http._server.server_state.connections) == 4)
        extra = raw(srv)
        status, head, body = status_and_body(read_all(extra))
        assert status == 503 and b"retry-after: 1" in head and b"4 connections" in body
        idle.pop().close()
        wait_for(lambda: len(srv.server.http._server.server_state.connections) == 3)
        with srv.http() as http:
            assert http.get("/healthz").status_code == 200
        for sock in idle + [extra]:
            sock.close()


def test_shutdown_keeps_to_its_grace_and_answers_503_that_clients_retry(tiny_scorers):
    """A request of ~400 slow forward calls is in the engine at SIGTERM time: shutdown ends
    within its grace, the request gets 503 JSON with Retry-After (which HttpScorerClient
    retries), and the engine stops calling the model for it."""
    tiny = tiny_scorers["tiny"]
    retries, outcome = [], {}
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, on_retry=retries.append)
    with slow_engine(tiny, 0.01) as (engine, calls):
        srv = ThreadedServer({"tiny": Scorer(tiny.config, engine, tiny.tokenizer)}, max_wait_ms=0)
        client = HttpScorerClient(srv.http_url, retry=policy)

        def score():
            try:
                client.score([np.random.default_rng(0).integers(3, 300, 400)], window=8, stride=1)
            except ScorerError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=score)
        caller.start()
        try:
            wait_for(lambda: len(calls) > 5)
            grace = 1.0
            started = time.monotonic()
            srv.call(srv.server.shutdown(grace=grace))
            took = time.monotonic() - started
            caller.join(10)
            settled = len(calls)
            time.sleep(0.2)
        finally:
            srv.loop.call_soon_threadsafe(srv.loop.stop)
    assert took < grace + 0.3, f"shutdown took {took:.2f}s with a grace of {grace}s"
    assert len(calls) - settled <= 1, "the engine kept scoring after shutdown"
    assert settled < 300
    (retry,) = retries
    assert retry.error.http_status == 503 and "shutting down" in retry.error.message
    assert "error" in outcome  # the retry found no server, as none is left


def test_retry_after_on_429_and_503(tiny_scorers):
    srv = ThreadedServer(tiny_scorers, load=False)
    try:
        with srv.http() as http:
            starting = http.post("/v1/score", json={"token_ids": [[1, 2, 3]]})
            ready = http.get("/readyz")
    finally:
        srv.close()
    tiny = tiny_scorers["tiny"]
    engine = RecordingEngine(tiny.engine, gated=True)
    with (
        ThreadedServer(
            {"tiny": Scorer(tiny.config, engine, tiny.tokenizer)}, max_wait_ms=0, queue_size=1
        ) as srv,
        srv.channel() as channel,
    ):
        stub = scorer_pb2_grpc.ScorerStub(channel)
        running = stub.Score.future(wire.build_request([[1, 2, 3]]), timeout=30)
        assert engine.entered.wait(10)
        queued = stub.Score.future(wire.build_request([[1, 2, 4]]), timeout=30)
        wait_for(lambda: srv.metric("tokenweight_queue_depth", scorer="tiny") == 1)
        with srv.http() as http:
            busy = http.post("/v1/score", json={"token_ids": [[1, 2, 3]]})
        engine.gate.set()
        running.result(), queued.result()
    for response, status in ((starting, 503), (ready, 503), (busy, 429)):
        assert response.status_code == status and response.headers["retry-after"] == "1"
        assert response.json()["error"]
