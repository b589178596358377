"""An unexpected failure inside the server (a bug, not a bad request) reaches gRPC callers as
INTERNAL and HTTP callers as a JSON 500, both naming the exception, with the traceback in
the server's log; the server goes on answering."""

import logging

import grpc
import pytest

from conftest import ThreadedServer
from tokenweight import wire
from tokenweight.v1 import scorer_pb2, scorer_pb2_grpc

MESSAGE = "internal error: RuntimeError: injected failure"


class Injected:
    """A ScoringService method that fails the first `times` calls, then delegates."""

    def __init__(self, method, times: int):
        self.method, self.left = method, times

    def __call__(self, *args, **kwargs):
        if self.left:
            self.left -= 1
            raise RuntimeError("injected failure")
        return self.method(*args, **kwargs)


@pytest.fixture
def srv(tiny_scorers):
    with ThreadedServer(tiny_scorers) as srv:
        yield srv


def tracebacks(caplog, logger: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name == logger and r.exc_info and isinstance(r.exc_info[1], RuntimeError)
    ]


@pytest.mark.parametrize("method", ["Score", "ListScorers"])
def test_grpc_unexpected_is_internal_with_a_logged_traceback(srv, monkeypatch, caplog, method):
    service = srv.server.service
    target = "score" if method == "Score" else "info"
    monkeypatch.setattr(service, target, Injected(getattr(service, target), times=1))
    with srv.channel() as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        call = {
            "Score": lambda: stub.Score(wire.build_request([[1, 5, 7, 9]], scorer="tiny"), timeout=10),
            "ListScorers": lambda: stub.ListScorers(scorer_pb2.ListScorersRequest(), timeout=10),
        }[method]
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.INTERNAL, MESSAGE)
        call()  # the next call is served as usual
    assert len(tracebacks(caplog, "tokenweight.service.grpc_interceptors")) == 1
    assert srv.metric("tokenweight_grpc_requests_total", method=method, code="INTERNAL") == 1


@pytest.mark.parametrize("route", ["/v1/score", "/v1/scorers"])
def test_http_unexpected_is_a_json_500_with_a_logged_traceback(srv, monkeypatch, caplog, route):
    service = srv.server.service
    target = "score" if route == "/v1/score" else "info"
    monkeypatch.setattr(service, target, Injected(getattr(service, target), times=1))
    with srv.http() as http:
        send = {
            "/v1/score": lambda: http.post(route, json={"token_ids": [[1, 5, 7, 9]]}),
            "/v1/scorers": lambda: http.get(route),
        }[route]
        failed = send()
        assert (failed.status_code, failed.json()) == (500, {"error": MESSAGE})
        assert failed.headers["content-type"] == "application/json"
        assert send().status_code == 200
    logged = tracebacks(caplog, "tokenweight.service.http_app")
    assert [r.getMessage() for r in logged] == [f"{failed.request.method} {route} failed"]
