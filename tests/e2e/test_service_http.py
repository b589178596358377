"""The HTTP front end: real uvicorn in the server's event loop, on a loopback port."""

import re
from urllib.parse import urlencode

import msgpack
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ThreadedServer

RNG = np.random.default_rng(1)
SEQS = [RNG.integers(3, 300, n) for n in (33, 1, 5, 120)]
MSGPACK = "application/msgpack"


@pytest.fixture(scope="module")
def http(server):
    with server.http() as client:
        yield client


def assert_bits_equal(results: list[dict], expected):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        for name in ("score", "logp_long", "logp_short"):
            values = np.asarray(got[name], dtype=np.float64).astype(np.float32)
            assert values.tobytes() == getattr(want, name).tobytes(), name


@pytest.mark.parametrize("scorer", ["tiny", "pair"])
def test_json_equals_engine_to_the_bit(server, http, scorer):
    engine = server.scorers[scorer].engine
    body = {"scorer": scorer, "token_ids": [s.tolist() for s in SEQS]}
    response = http.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert (data["scorer"], data["fingerprint"]) == (scorer, engine.fingerprint())
    assert [r["token_ids"] for r in data["results"]] == body["token_ids"]
    assert_bits_equal(data["results"], engine.score(SEQS))


def test_msgpack_equals_engine_to_the_bit(server, http):
    engine = server.scorers["tiny"].engine
    body = msgpack.packb({"token_ids": [s.tolist() for s in SEQS], "window": 6, "stride": 2})
    response = http.post("/v1/score", content=body, headers={"content-type": MSGPACK, "accept": MSGPACK})
    assert response.status_code == 200 and response.headers["content-type"] == MSGPACK
    data = msgpack.unpackb(response.content)
    assert (data["window"], data["stride"]) == (6, 2)
    assert_bits_equal(data["results"], engine.score(SEQS, 6, 2))


def test_text_input_returns_decoded_tokens(server, http):
    scorer = server.scorers["tiny"]
    data = http.post("/v1/score", json={"text": ["the quick brown fox", "a"], "outputs": ["score"]}).json()
    first = data["results"][0]
    ids = scorer.tokenizer("the quick brown fox")["input_ids"]
    assert first["token_ids"] == ids and ids[0] == 1
    assert "".join(first["tokens"][1:]) == "the quick brown fox"
    assert first["logp_long"] is None and len(first["score"]) == len(ids) - 1


def test_scorers_health_and_openapi(http):
    scorers = http.get("/v1/scorers").json()
    assert scorers["default_scorer"] == "tiny"
    assert {s["name"] for s in scorers["scorers"]} == {"tiny", "pair"}
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "serving"}
    schema = http.get("/openapi.json").json()
    assert {"/v1/score", "/v1/scorers", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert MSGPACK in schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert http.get("/docs").status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_process(http, page):
    """GPU clusters often have no internet: every script, stylesheet and icon the page loads
    is a path on this server, and the server answers it."""
    html = http.get(page).text
    assets = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', html)
    assets += re.findall(r"url:\s*'([^']+)'", html)  # the OpenAPI document Swagger UI fetches
    assert any(a.endswith(".js") for a in assets), html
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from outside the process"
        response = http.get(asset)
        assert response.status_code == 200, asset
        assert response.content, asset


BAD = {
    "unknown scorer": ({"scorer": "nope", "token_ids": [[1, 2]]}, 404, "unknown scorer 'nope'"),
    "out-of-vocabulary id": ({"token_ids": [[1, 300]]}, 400, "outside the vocabulary"),
    "too-long sequence": ({"token_ids": [[1] * 513]}, 400, "at most 512"),
    "bad window/stride": ({"token_ids": [[1, 2]], "window": 4, "stride": 4}, 400, "stride must satisfy"),
    "empty request": ({"token_ids": []}, 400, "no sequences"),
    "both inputs": ({"token_ids": [[1]], "text": "x"}, 422, "exactly one of"),
    "wrong type": ({"token_ids": [["a"]]}, 422, "token_ids.0.0"),
    "negative window": ({"token_ids": [[1, 2]], "window": -1}, 422, "window"),
    "unknown field": ({"token_ids": [[1, 2]], "windw": 3}, 422, "windw"),
}


@pytest.mark.parametrize("case", BAD)
def test_errors_are_json_with_status(http, case):
    body, status, message = BAD[case]
    response = http.post("/v1/score", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_malformed_bodies(http):
    response = http.post("/v1/score", content=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = http.post("/v1/score", content=b"\xc1", headers={"content-type": MSGPACK})
    assert response.status_code == 400 and "not valid msgpack" in response.json()["error"]
    response = http.get("/v1/nothing")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}


def test_analysis_page_scores_the_text_as_typed_not_as_the_browser_sends_it(http):
    """A browser sends the textarea's LF line breaks as CRLF; the page must score what the user
    pasted, the same tokens and scores as the API (and the CLI) give for that text."""
    text = "def f(x):\n    return x\n\n\nprint(f(1))\n"
    api = http.post("/v1/score", json={"text": text}).json()["results"][0]
    sent = urlencode({"text": text.replace("\n", "\r\n")})
    page = http.post("/", content=sent, headers={"content-type": "application/x-www-form-urlencoded"})
    assert page.status_code == 200
    assert f"{len(api['token_ids'])} tokens" in page.text
    assert f"max {max(api['score']):.4f}" in page.text
    assert "\r" not in page.text


def test_oversized_body_is_413(tiny_scorers):
    with ThreadedServer(tiny_scorers, max_request_tokens=100, max_sequences=4) as srv, srv.http() as http:
        response = http.post("/v1/score", json={"token_ids": [[1] * 300_000]})
        assert response.status_code == 413 and "Split the request" in response.json()["error"]
        response = http.post("/v1/score", json={"token_ids": [[1, 2]] * 5})
        assert response.status_code == 400 and "at most 4" in response.json()["error"]


def test_analysis_page_renders_and_escapes(http):
    page = http.get("/")
    assert page.status_code == 200 and "<form" in page.text and 'value="pair"' in page.text
    evil = "<script>alert('owned')</script> the quick brown fox"
    page = http.post("/", data={"text": evil, "scorer": "tiny", "window": "4"})
    assert page.status_code == 200
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page.text  # the textarea
    assert page.text.count('class="tok"') > 10  # one span per token with a target
    assert "logp_short" in page.text and "<svg" in page.text  # hover details, histogram
    page = http.post("/", data={"text": "x", "scorer": "<b>nope</b>"})
    assert page.status_code == 404 and "&lt;b&gt;nope&lt;/b&gt;" in page.text and "<b>nope" not in page.text


def test_metrics_parse_and_count(server, http):
    http.post("/v1/score", json={"token_ids": [[1, 2, 3]]})
    http.post("/v1/score", json={"token_ids": [[1, 999]]})
    response = http.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in (
        "tokenweight_http_requests", "tokenweight_http_request_seconds", "tokenweight_queue_seconds",
        "tokenweight_batch_requests", "tokenweight_engine_batches", "tokenweight_tokens_scored",
        "tokenweight_queue_depth", "tokenweight_score_requests",
    ):
        assert name in families, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values() for s in f.samples
    }
    ok = samples[("tokenweight_http_requests_total", (("route", "/v1/score"), ("status", "200")))]
    bad = samples[("tokenweight_http_requests_total", (("route", "/v1/score"), ("status", "400")))]
    assert ok >= 1 and bad >= 1
    assert samples[("tokenweight_score_requests_total", (("scorer", "tiny"), ("status", "INVALID_ARGUMENT")))] >= 1


def test_bearer_token_on_http_headers(tiny_scorers):
    with ThreadedServer(tiny_scorers, auth_token="s3cret") as srv, srv.http() as http:
        body = {"token_ids": [[1, 2, 3]]}
        response = http.post("/v1/score", json=body)
        assert response.status_code == 401 and "bearer token" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
        assert http.post("/v1/score", json=body, headers={"authorization": "Bearer nope"}).status_code == 401
        assert http.get("/v1/scorers").status_code == 401
        assert http.post("/v1/score", json=body, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        assert http.post("/", data={"text": "hi", "token": "nope"}).status_code == 401
        assert http.post("/", data={"text": "hi", "token": "s3cret"}).status_code == 200


def test_readyz_while_starting(tiny_scorers):
    with ThreadedServer(tiny_scorers, load=False) as srv, srv.http() as http:
        response = http.get("/readyz")
        assert response.status_code == 503 and "starting" in response.json()["error"]
        assert http.get("/healthz").status_code == 200
        response = http.post("/v1/score", json={"token_ids": [[1, 2]]})
        assert response.status_code == 503 and "loading" in response.json()["error"]
