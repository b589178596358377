"""The clients and `tokenweight score --url` against a real `tokenweight serve` process.

Scores must equal the in-process engine's to the bit, and the remote command's output must
equal the local command's, line for line.
"""

import asyncio
import json
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from tokenweight.client import AsyncScorerClient, HttpScorerClient, ScorerClient, ScorerError

READY = re.compile(r"ready: grpc=127\.0\.0\.1:(\d+) http=127\.0\.0\.1:(\d+)")
WINDOW = 8
CLI = [sys.executable, "-m", "tokenweight.cli"]
LOCAL = ["--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """(grpc URL, http URL) of `tokenweight serve` on ephemeral 127.0.0.1 ports."""
    cmd = CLI + ["serve", "--model", str(tiny_model_dir), "--window", str(WINDOW), *LOCAL,
                 "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines, ready = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if READY.search(line):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(60):
            pytest.fail("tokenweight serve never logged ready:\n" + "".join(lines))
        grpc_port, http_port = READY.search("".join(lines)).groups()
        yield f"grpc://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from tokenweight.service.engine import ScoringEngine

    return ScoringEngine.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", window=WINDOW)


def sequences(seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [1, 2, WINDOW - 1, WINDOW, WINDOW + 1, 37, 100]
    return [np.concatenate([[1], rng.integers(3, 300, n - 1)]) for n in lengths]


def assert_bit_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for name in ("score", "logp_long", "logp_short"):
            a, b = getattr(g, name), getattr(e, name)
            if b is None:
                assert a is None
            else:
                assert a.dtype == np.float32 and a.tobytes() == b.tobytes(), name


def test_grpc_scores_equal_the_engine_to_the_bit(served, engine):
    from tokenweight.service.engine import Outputs

    seqs = sequences()
    with ScorerClient(served[0]) as client:
        result = client.score(seqs)
        assert_bit_equal(result.results, engine.score(seqs))
        assert (result.fingerprint, result.window) == (engine.fingerprint(), WINDOW)
        short = client.score(seqs, window=4, stride=2, outputs=["logp_short"])
        assert_bit_equal(short.results, engine.score(seqs, 4, 2, Outputs(False, False, True)))
        info = client.list_scorers()
        assert info[0].fingerprint == engine.fingerprint() and info[0].is_default
        streamed = list(client.score_many([seqs[i:i + 2] for i in range(0, 7, 2)], max_in_flight=3))
        assert_bit_equal([r for res in streamed for r in res.results], engine.score(seqs))
        with pytest.raises(ScorerError, match="outside the vocabulary") as bad:
            client.score([[1, 5, 10_000]])
        assert bad.value.code.name == "INVALID_ARGUMENT" and bad.value.attempts == 1


def test_async_and_http_clients_equal_the_engine(served, engine):
    seqs = sequences(1)
    expected = engine.score(seqs)

    async def main():
        async with AsyncScorerClient(served[0]) as client:
            return await client.score(seqs)

    assert_bit_equal(asyncio.run(main()).results, expected)
    for format in ("msgpack", "json"):
        with HttpScorerClient(served[1], format=format) as client:
            result = client.score(seqs)
            assert_bit_equal(result.results, expected)
            assert result.fingerprint == engine.fingerprint()
            assert [r.token_ids.tolist() for r in result.results] == [s.tolist() for s in seqs]
            assert client.list_scorers()[0].fingerprint == engine.fingerprint()
            with pytest.raises(ScorerError) as bad:
                client.score([[1, 5, 10_000]])
            assert (bad.value.code.name, bad.value.http_status) == ("INVALID_ARGUMENT", 400)


def score_command(*args, input_text: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["score", *args], input=input_text, capture_output=True, text=True, timeout=120)


def test_score_command_remote_output_equals_local(served, tiny_model_dir, tmp_path):
    ids = "".join(json.dumps({"token_ids": s.tolist()}) + "\n" for s in sequences(2))
    text = json.dumps({"text": "The quick brown fox & friends"}) + "\n"
    lines = ids + text + ids  # mixed kinds, order kept
    local = score_command("--model", str(tiny_model_dir), *LOCAL, "--window", str(WINDOW), "--batch-size", "4", input_text=lines)
    assert local.returncode == 0, local.stderr
    remote_http = score_command("--url", served[1], "--batch-size", "4", input_text=lines)
    assert remote_http.returncode == 0, remote_http.stderr
    assert remote_http.stdout == local.stdout
    # gRPC carries token ids only (a different default window is overridden per request).
    only_ids = "".join(local.stdout.splitlines(keepends=True)[:7])
    remote_grpc = score_command("--url", served[0], "--window", str(WINDOW), input_text=ids)
    assert remote_grpc.returncode == 0, remote_grpc.stderr
    assert remote_grpc.stdout == only_ids
    refused = score_command("--url", served[0], input_text=text)
    assert refused.returncode == 1 and "use --url http://" in refused.stderr
    wrong = score_command("--url", served[0], "--device", "cpu", input_text=ids)
    assert wrong.returncode == 2 and "only apply with --model" in wrong.stderr
