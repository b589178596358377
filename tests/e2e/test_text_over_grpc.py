"""Text over gRPC: the server tokenizes with the scorer's tokenizer and returns the ids it
scored and each one decoded, the same as over HTTP; `tokenweight score --url grpc://` takes
text lines and `--top` shows decoded tokens."""

import asyncio
import json
import subprocess
import sys

import numpy as np

from tokenweight.client import AsyncScorerClient, HttpScorerClient, ScorerClient

TEXT = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"


def test_text_is_scored_as_over_http(server):
    ids = list(range(3, 30))
    with ScorerClient(f"grpc://{server.grpc_target}") as client:
        as_text, as_ids = client.score([TEXT, ids]).results
    with HttpScorerClient(server.http_url) as http:
        (want,) = http.score(text=[TEXT]).results
        (want_ids,) = http.score([ids]).results
    np.testing.assert_array_equal(as_text.token_ids, want.token_ids)
    assert as_text.tokens == want.tokens and "".join(as_text.tokens[1:]) == TEXT
    for name in ("score", "logp_long", "logp_short"):
        np.testing.assert_allclose(getattr(as_text, name), getattr(want, name), atol=1e-5)
        np.testing.assert_allclose(getattr(as_ids, name), getattr(want_ids, name), atol=1e-5)
    assert as_ids.token_ids is None and as_ids.tokens is None

    async def score_async():
        async with AsyncScorerClient(f"grpc://{server.grpc_target}") as client:
            return (await client.score([TEXT])).results[0]

    np.testing.assert_array_equal(asyncio.run(score_async()).token_ids, want.token_ids)


def test_score_command_takes_text_lines_over_grpc(server):
    lines = json.dumps({"text": TEXT}) + "\n" + json.dumps({"token_ids": list(range(3, 20))}) + "\n"
    cmd = [sys.executable, "-m", "tokenweight.cli", "score", "--window", "8"]

    def score(url, *extra):
        done = subprocess.run(
            cmd + ["--url", url, *extra], input=lines, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    over_grpc = [json.loads(line) for line in score(f"grpc://{server.grpc_target}").splitlines()]
    over_http = [json.loads(line) for line in score(server.http_url).splitlines()]
    assert over_grpc[0]["tokens"] == over_http[0]["tokens"]
    assert over_grpc[0]["token_ids"] == over_http[0]["token_ids"]
    np.testing.assert_allclose(over_grpc[0]["score"], over_http[0]["score"], atol=1e-5)
    assert over_grpc[1]["token_ids"] == list(range(3, 20)) and "tokens" not in over_grpc[1]

    table = score(f"grpc://{server.grpc_target}", "--top", "3").splitlines()
    best = np.argsort(-np.asarray(over_grpc[0]["score"]), kind="stable")[:3] + 1
    tokens = over_grpc[0]["tokens"]
    for row, target in zip(table[2:5], best):
        before, after = (
            "".join(tokens[max(0, target - 4) : target]),
            "".join(tokens[target + 1 : target + 3]),
        )
        assert row.endswith(f"{before}[{tokens[target]}]{after}".replace("\n", "\\n"))


def test_oversized_text_is_refused_before_tokenizing(tiny_scorers):
    """The same size check as HTTP's, before the tokenizer runs: INVALID_ARGUMENT naming it."""
    import grpc
    import pytest

    from conftest import ThreadedServer
    from tokenweight.client import ScorerError
    from tokenweight.service.text import longest_token_chars

    per_token = longest_token_chars(tiny_scorers["tiny"].tokenizer)
    with ThreadedServer(tiny_scorers, max_request_tokens=100) as srv:
        with ScorerClient(f"grpc://{srv.grpc_target}") as client:
            with pytest.raises(ScorerError) as refused:
                client.score(["x" * (100 * per_token + 1)])
            assert len(client.score(["x" * 60]).results[0].token_ids) > 1
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the 100 tokens a sequence may have" in str(refused.value)
