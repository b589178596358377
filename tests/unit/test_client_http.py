"""HttpScorerClient's encoding, error mapping and retries (against httpx's mock transport;
the real server is in tests/e2e/test_client_e2e.py)."""

import json

import grpc
import httpx
import msgpack
import numpy as np
import pytest

from tokenweight.client import HttpScorerClient, RetryPolicy, ScorerError

BODY = {
    "scorer": "s",
    "fingerprint": "fp",
    "window": 8,
    "stride": 6,
    "results": [{"token_ids": [1, 5, 9], "tokens": None, "score": [0.5, 0.25], "logp_long": [-1.0, -2.0], "logp_short": None}],
}


def client_for(handler, **kwargs) -> HttpScorerClient:
    policy = RetryPolicy(initial_backoff=0.001, on_retry=None)
    return HttpScorerClient("http://scorer.test:8000", transport=httpx.MockTransport(handler), retry=policy, **kwargs)


def test_msgpack_request_and_response():
    seen = []

    def handler(request: httpx.Request):
        seen.append(request)
        return httpx.Response(200, content=msgpack.packb(BODY, use_single_float=True), headers={"content-type": "application/msgpack"})

    with client_for(handler, token="t0k") as client:
        result = client.score([np.array([1, 5, 9])], window=8, outputs=["score", "logp_long"])
    body = msgpack.unpackb(seen[0].content)
    assert body == {"token_ids": [[1, 5, 9]], "window": 8, "outputs": ["score", "logp_long"]}
    assert seen[0].headers["content-type"] == "application/msgpack"
    assert seen[0].headers["authorization"] == "Bearer t0k"
    (scores,) = result.results
    assert scores.score.dtype == np.float32 and scores.score.tolist() == [0.5, 0.25]
    assert scores.logp_short is None and scores.token_ids.tolist() == [1, 5, 9]
    assert (result.scorer, result.fingerprint, result.window, result.stride) == ("s", "fp", 8, 6)


def test_json_text_input():
    def handler(request: httpx.Request):
        assert json.loads(request.content) == {"text": ["hi there"]}
        return httpx.Response(200, json=BODY | {"results": [BODY["results"][0] | {"tokens": ["<s>", "hi", " there"]}]})

    with client_for(handler, format="json") as client:
        assert client.score(text=["hi there"]).results[0].tokens == ["<s>", "hi", " there"]
        with pytest.raises(ValueError, match="either sequences"):
            client.score([[1, 2]], text="x")


def test_errors_map_to_grpc_codes_and_only_retryable_ones_are_retried():
    replies = [httpx.Response(429, json={"error": "queue full"}), httpx.Response(503, json={"error": "draining"}),
               httpx.Response(200, json=BODY), httpx.Response(404, json={"error": "no scorer 'x'"})]
    calls = []

    def handler(request):
        calls.append(request)
        return replies[len(calls) - 1]

    with client_for(handler) as client:
        assert client.score([[1, 5, 9]]).fingerprint == "fp"
        assert len(calls) == 3
        with pytest.raises(ScorerError) as info:
            client.score([[1, 5, 9]], scorer="x")
    assert (info.value.code, info.value.http_status, info.value.message) == (grpc.StatusCode.NOT_FOUND, 404, "no scorer 'x'")
    assert len(calls) == 4


def test_unreachable_server_is_unavailable_after_retries():
    def handler(request):
        raise httpx.ConnectError("connection refused")

    with client_for(handler) as client:
        with pytest.raises(ScorerError, match="after 5 attempts") as info:
            client.list_scorers()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_grpc_url_is_refused():
    with pytest.raises(ValueError, match="ScorerClient"):
        HttpScorerClient("grpc://scorer:50051")
