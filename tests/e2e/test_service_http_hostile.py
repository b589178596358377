"""Hostile HTTP input against a real server on loopback: every failure a JSON error with the
right status, text checked for size before the tokenizer runs and never turned into special
tokens, large bodies parsed off the event loop, and the hardening headers and paths."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest

from conftest import TINY_BOS, ThreadedServer
from tokenweight.service.http_body import INLINE_BYTES
from tokenweight.service.text import longest_token_chars, tokenize
from tokenweight.v1 import scorer_pb2, scorer_pb2_grpc

RNG = np.random.default_rng(16)
MSGPACK = {"content-type": "application/msgpack"}


def raw_post(
    srv: ThreadedServer, path: str, body: bytes, content_type: str
) -> tuple[int, dict, dict]:
    """A POST written by hand: the bytes go as they are (no client re-encodes them)."""
    with socket.create_connection(
        ("127.0.0.1", srv.server.http.port), timeout=30
    ) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(payload)


@pytest.mark.parametrize(
    "body",
    [b"[" * 200_000, b'{"token_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
    ids=["bare", "in-a-field"],
)
def test_deeply_nested_json_is_a_400(server, body):
    status, headers, payload = raw_post(server, "/v1/score", body, "application/json")
    assert status == 400 and headers["content-type"] == "application/json"
    assert "nested too deeply" in payload["error"]


def test_a_lone_surrogate_is_a_400_naming_it(server):
    status, _, payload = raw_post(
        server, "/v1/score", b'{"text": ["fine", "ab\\ud800c"]}', "application/json"
    )
    assert status == 400
    assert payload["error"].startswith(
        "text 1 is not valid Unicode: a lone surrogate U+D800 at character 2"
    )


@pytest.mark.parametrize("body", [b"\xc1", b"\x91\xc1", b"\x92\x01", b"\x01\x02"])
def test_invalid_msgpack_gives_a_reason(server, body):
    status, _, payload = raw_post(server, "/v1/score", body, "application/msgpack")
    prefix = "the body is not valid msgpack: "
    assert status == 400 and payload["error"].startswith(prefix)
    assert payload["error"][len(prefix) :].strip()


@pytest.mark.parametrize("field", ["window", "stride"])
@pytest.mark.parametrize("value", [2**32, 2**64 + 5])
def test_window_and_stride_past_uint32_are_refused(server, field, value):
    with server.http() as http:
        response = http.post("/v1/score", json={"token_ids": [[1, 5, 9]], field: value})
    assert response.status_code == 422
    assert (
        f"{field}: Input should be less than or equal to 4294967295"
        in response.json()["error"]
    )


@pytest.mark.parametrize(
    "method,path,allowed", [("GET", "/v1/score", "POST"), ("DELETE", "/", "GET, POST")]
)
def test_405_names_the_allowed_methods(server, method, path, allowed):
    with server.http() as http:
        response = http.request(method, path)
    assert response.status_code == 405 and "error" in response.json()
    assert sorted(response.headers["allow"].split(", ")) == sorted(allowed.split(", "))


def test_no_text_has_fewer_tokens_than_the_size_bound_assumes(tiny_scorers):
    tokenizer = tiny_scorers["tiny"].tokenizer
    per_token = longest_token_chars(tokenizer)
    alphabet = list("the quick brown fox  \n\t<s>é✓💡") + [
        " " * 40,
        "e" * 30,
        "token weighting",
    ]
    texts = ["".join(RNG.choice(alphabet, RNG.integers(1, 300))) for _ in range(200)]
    ids, _ = tokenize(tokenizer, texts)
    for text, seq in zip(texts, ids):
        assert len(seq) - 1 >= len(text) / per_token, text  # BOS aside


def test_text_too_large_is_refused_before_tokenising(tiny_scorers):
    tokenizer = tiny_scorers["tiny"].tokenizer
    per_token = longest_token_chars(tokenizer)
    calls = []
    original = tokenizer.__class__.__call__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    with (
        ThreadedServer(tiny_scorers, max_request_tokens=100) as srv,
        srv.http() as http,
    ):
        tokenizer.__class__.__call__ = counted
        try:
            too_long = http.post(
                "/v1/score", json={"text": "x" * (100 * per_token + 1)}
            )
            fits = http.post("/v1/score", json={"text": "x" * 60})
        finally:
            tokenizer.__class__.__call__ = original
    assert too_long.status_code == 400
    assert (
        f"more than the 100 tokens a sequence may have can hold ({per_token} characters"
        in (too_long.json()["error"])
    )
    assert fits.status_code == 200 and len(calls) == 1  # only the text that fitted


def test_special_token_strings_in_text_are_plain_text(server, tiny_scorers):
    tokenizer = tiny_scorers["tiny"].tokenizer
    text = "a <s> b </s><pad><unk> c"
    specials = {
        tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens
    }
    with server.http() as http:
        response = http.post("/v1/score", json={"text": text})
    (result,) = response.json()["results"]
    ids = result["token_ids"]
    assert ids[0] == TINY_BOS and not specials & set(ids[1:])
    assert "".join(result["tokens"][1:]) == text
    # The same plain ids as the text without special meaning: the BPE of its characters.
    plain = tokenizer(text, add_special_tokens=False, split_special_tokens=True)[
        "input_ids"
    ]
    assert ids[1:] == plain


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_a_large_body_does_not_stall_grpc(tiny_scorers, encoding):
    """A ~16 MB body (3M ids; more than a request may hold) parses in the parser process while
    gRPC calls on the same event loop keep answering."""
    ids = RNG.integers(3, 300, 3_000_000).tolist()
    body = (
        json.dumps({"token_ids": [ids]}).encode()
        if encoding == "json"
        else msgpack.packb({"token_ids": [ids, ids, ids, ids]})
    )
    assert len(body) > 40 * INLINE_BYTES
    kind = "application/json" if encoding == "json" else "application/msgpack"
    with (
        ThreadedServer(tiny_scorers, max_request_tokens=1 << 24) as srv,
        srv.channel() as ch,
    ):
        stub = scorer_pb2_grpc.ScorerStub(ch)
        stub.ListScorers(scorer_pb2.ListScorersRequest(), timeout=10)
        raw_post(srv, "/v1/score", b"{}", "application/json")  # the server is warm
        # The parser process starts at the first large body; start it before measuring.
        raw_post(
            srv, "/v1/score", b" " * (2 * INLINE_BYTES) + b"{}", "application/json"
        )
        answer, lags = [], []
        sender = threading.Thread(
            target=lambda: answer.append(raw_post(srv, "/v1/score", body, kind)),
            daemon=True,
        )
        sender.start()
        while sender.is_alive():
            started = time.perf_counter()
            stub.ListScorers(scorer_pb2.ListScorersRequest(), timeout=10)
            lags.append(time.perf_counter() - started)
            time.sleep(0.005)
    ((status, _, payload),) = answer
    assert status == 400 and "has 3000000 tokens" in payload["error"]
    assert max(lags) < 0.25, f"gRPC waited {max(lags):.2f}s while the body was parsed"


def test_security_headers_and_a_page_that_needs_no_script(server):
    with server.http() as http:
        page = http.post("/", data={"text": "def f(x): return x"})
        missing = http.get("/nowhere")
    assert page.status_code == 200 and "Score histogram" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert (
        "script-src" not in csp
    )  # falls back to default-src 'none': no script may run
    # What the page uses is what the policy allows: inline CSS, no script, no external loads.
    lowered = page.text.lower()
    assert (
        "<script" not in lowered
        and " on" not in lowered.replace(" one", "").split(">")[0]
    )
    assert "src=" not in lowered and "<link" not in lowered and "<style>" in lowered
    for response in (page, missing):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"


OPERATIONAL = ["/metrics", "/docs", "/redoc", "/openapi.json"]


@pytest.mark.parametrize("open_paths", [False, True])
def test_metrics_and_docs_need_the_token_unless_opened(tiny_scorers, open_paths):
    with (
        ThreadedServer(
            tiny_scorers, auth_token="s3cret", open_operational_paths=open_paths
        ) as srv,
        srv.http() as http,
    ):
        docs = http.get("/docs", headers={"authorization": "Bearer s3cret"})
        asset = docs.text.split('src="')[1].split('"')[
            0
        ]  # Swagger UI's script, served here
        for path in OPERATIONAL + [asset]:
            bare = http.get(path)
            assert bare.status_code == (200 if open_paths else 401), path
            if not open_paths:
                assert bare.json()["error"].startswith(
                    "this server needs a bearer token"
                )
                assert bare.headers["www-authenticate"] == "Bearer"
                wrong = http.get(path, headers={"authorization": "Bearer nope"})
                assert wrong.status_code == 401
            assert (
                http.get(path, headers={"authorization": "Bearer s3cret"}).status_code
                == 200
            )
        assert (
            http.get("/healthz").status_code == 200
            and http.get("/readyz").status_code == 200
        )


@pytest.mark.parametrize("host,warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_serve_warns_when_it_binds_beyond_loopback_without_auth(
    tiny_model_dir, host, warned
):
    cmd = [
        sys.executable,
        "-m",
        "tokenweight.cli",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--host",
        host,
        "--grpc-port",
        "0",
        "--http-port",
        "0",
    ]
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if k != "TOKENWEIGHT_AUTH_TOKEN"
    }
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "listening" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert any("listening" in line for line in lines), "".join(lines)
    warning = [line for line in lines if "without authentication" in line]
    assert bool(warning) == warned, "".join(lines)
    if warned:
        assert "WARNING" in warning[0] and f"binding {host}" in warning[0]
