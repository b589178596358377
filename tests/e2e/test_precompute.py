"""precompute against real `tokenweight serve` processes (tiny CPU model, gRPC only)."""

import argparse
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from tokenweight.client import ScorerClient
from tokenweight.trainer import precompute as precompute_mod
from tokenweight.trainer.data import TokenShards
from tokenweight.trainer.precompute import PrecomputeError, precompute
from tokenweight.trainer.prepare import ShardWriter
from tokenweight.trainer.score_store import ScoreStore, ScoreStoreError

SEQ_LEN, ROWS, WINDOW = 24, 10, 8


def launch_server(model_dir, window):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenweight.cli",
            "serve",
            "--model",
            str(model_dir),
            "--window",
            str(window),
            "--device",
            "cpu",
            "--grpc-port",
            "0",
            "--no-http",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc) -> str:
    """The gRPC URL of a launched `tokenweight serve`, once it logs that it is ready."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "ready:" in line:
            break
    else:
        raise RuntimeError("tokenweight serve exited before it was ready:\n" + "".join(seen))
    # keep reading its log so the pipe never fills and blocks the server
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return "grpc://127.0.0.1:" + re.search(r"grpc=[^ ]+:(\d+)", line).group(1)


@pytest.fixture(scope="module")
def servers(tiny_model_dir):
    """Two scorers on the same model: window 8 (`url`) and window 12 (`other_url`)."""
    procs = [
        launch_server(tiny_model_dir, WINDOW),
        launch_server(tiny_model_dir, 12),
    ]  # start in parallel
    try:
        yield argparse.Namespace(url=wait_ready(procs[0]), other_url=wait_ready(procs[1]))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


class Recorder:
    """Passes calls to a ScorerClient, keeping every answer; can fail after some calls."""

    def __init__(self, client, fail_after=None):
        self.client, self.fail_after, self.calls = client, fail_after, 0
        self.answered = {}  # token bytes -> the Scores the service returned for that sequence
        self.lock = threading.Lock()

    def score(self, sequences, **kwargs):
        with self.lock:
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise ConnectionError("scorer went away")
        result = self.client.score(sequences, **kwargs)
        with self.lock:
            for seq, scores in zip(sequences, result.results):
                self.answered[seq.tobytes()] = scores
        return result


@pytest.fixture
def client(servers):
    with ScorerClient(servers.url) as c:
        yield c


def make_data(path, seed=0):
    tokens = np.random.default_rng(seed).integers(3, 300, size=ROWS * SEQ_LEN, dtype=np.int32)
    tokens[::SEQ_LEN] = 1  # every row starts with BOS, so chunks swap in BOS as well
    writer = ShardWriter(path, SEQ_LEN, shard_sequences=4)
    writer.add(tokens)
    writer.finish(
        {"vocab_size": 300, "eos_token_id": 2, "bos_token_id": 1, "tokenizer": "test", "inputs": []}
    )
    return TokenShards(path)


def test_store_holds_exactly_the_service_scores(client, tmp_path):
    shards = make_data(tmp_path / "data")
    recorder = Recorder(client)
    meta = precompute(shards, recorder, tmp_path / "store", batch_size=3, concurrency=2, progress=False)
    fingerprint = client.list_scorers()[0].fingerprint
    assert (meta.window, meta.stride, meta.fingerprint, meta.scorer) == (
        WINDOW,
        6,
        fingerprint,
        "default",
    )
    store = ScoreStore.open(tmp_path / "store", shards.content_hash, fingerprint)
    indices = np.array([9, 0, 4])
    long, short = store.get(indices)
    answered = [recorder.answered[row.tobytes()] for row in shards.take(indices)]
    np.testing.assert_array_equal(long, np.stack([r.logp_long for r in answered]))  # bit for bit
    np.testing.assert_array_equal(short, np.stack([r.logp_short for r in answered]))
    assert not np.array_equal(long[:, WINDOW:], short[:, WINDOW:])  # chunks really ran
    np.testing.assert_array_equal(long[:, : WINDOW - 1], short[:, : WINDOW - 1])  # t < k: contrast 0


def test_interrupted_precompute_resumes(client, tmp_path):
    shards = make_data(tmp_path / "data")
    with pytest.raises(ConnectionError):
        precompute(
            shards,
            Recorder(client, fail_after=2),
            tmp_path / "store",
            batch_size=2,
            concurrency=1,
            progress=False,
        )
    with ScoreStore.open(tmp_path / "store", shards.content_hash) as partial:
        done_before = partial.num_done
    assert 0 < done_before < ROWS
    resumed = Recorder(client)
    precompute(shards, resumed, tmp_path / "store", batch_size=2, concurrency=1, progress=False)
    assert resumed.calls == -(-(ROWS - done_before) // 2)  # only the missing rows were scored
    precompute(shards, client, tmp_path / "fresh", batch_size=5, concurrency=2, progress=False)
    a = ScoreStore.open(tmp_path / "store", shards.content_hash)
    b = ScoreStore.open(tmp_path / "fresh", shards.content_hash)
    rows = np.arange(ROWS)
    # the same scores whether resumed or not (up to float rounding: other batch compositions)
    np.testing.assert_allclose(a.get(rows)[1], b.get(rows)[1], rtol=0, atol=1e-5)
    again = Recorder(client)
    precompute(shards, again, tmp_path / "store", progress=False)
    assert again.calls == 1  # complete: only a probe that the scorer is still the same
    with pytest.raises(ScoreStoreError, match="is complete"):
        precompute(shards, client, tmp_path / "store", window=12, progress=False)


def test_resume_refuses_another_scorer_or_data(client, tmp_path):
    shards = make_data(tmp_path / "data")
    with pytest.raises(ConnectionError):
        precompute(
            shards,
            Recorder(client, fail_after=1),
            tmp_path / "store",
            batch_size=2,
            concurrency=1,
            progress=False,
        )
    with pytest.raises(ScoreStoreError, match="fingerprint"):
        precompute(shards, client, tmp_path / "store", window=12, progress=False)
    other = make_data(tmp_path / "other", seed=1)
    with pytest.raises(ScoreStoreError, match="other data"):
        precompute(other, client, tmp_path / "store", progress=False)


def test_cli_with_two_urls(servers, tmp_path, capsys):
    shards = make_data(tmp_path / "data")
    parser = argparse.ArgumentParser()
    precompute_mod.add_arguments(parser)
    argv = ["--data", str(shards.path), "--out", str(tmp_path / "store"), "--batch-size", "2"]
    # the same scorer twice: requests spread over both entries
    assert (
        precompute_mod.run(parser.parse_args([*argv, "--scorer-url", f"{servers.url},{servers.url}"]))
        == 0
    )
    assert "all 10 sequences" in capsys.readouterr().out
    assert ScoreStore.open(tmp_path / "store", shards.content_hash).complete
    # a target gRPC balances itself, whose address list has commas of its own
    address = servers.url.removeprefix("grpc://")
    argv[3] = str(tmp_path / "balanced")
    target = f"ipv4:{address},{address}"
    assert precompute_mod.run(parser.parse_args([*argv, "--scorer-url", target])) == 0
    assert ScoreStore.open(tmp_path / "balanced", shards.content_hash).complete
    # scorers with different settings behind one URL list: refused, not mixed into one store
    argv[3] = str(tmp_path / "mixed")
    assert (
        precompute_mod.run(
            parser.parse_args([*argv, "--scorer-url", f"{servers.url},{servers.other_url}"])
        )
        == 1
    )
    assert "different models or settings" in capsys.readouterr().err


def test_rows_longer_than_the_scorer_accepts(client, tmp_path):
    shards = make_data(tmp_path / "data")
    with pytest.raises(PrecomputeError, match="smaller --seq-len"):
        precompute_mod._find_scorer(client, None, 4096)
    with pytest.raises(PrecomputeError, match="no scorer 'nope'"):
        precompute_mod._find_scorer(client, "nope", shards.seq_len)


def test_unreachable_scorer_is_reported(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shards = make_data(tmp_path / "data")
    parser = argparse.ArgumentParser()
    precompute_mod.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(shards.path),
            "--out",
            str(tmp_path / "store"),
            "--scorer-url",
            f"grpc://127.0.0.1:{port}",
            "--retry-for",
            "0.5",
        ]
    )
    assert precompute_mod.run(args) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing written


def test_window_covering_the_rows_warns_at_precompute_and_at_training(client, tmp_path, caplog):
    """A window not shorter than the rows leaves every contrast 0: said when the store is
    written and again when a run trains from it."""
    from tokenweight.trainer.scores import make_source

    shards = make_data(tmp_path / "data")
    warning = f"window {SEQ_LEN} is not shorter than"
    with caplog.at_level("WARNING"):
        meta = precompute(shards, client, tmp_path / "store", window=SEQ_LEN, progress=False)
    assert meta.window == SEQ_LEN
    assert [r.message for r in caplog.records if warning in r.message] == [
        f"{warning} the dataset's rows ({SEQ_LEN} tokens): every short context is the whole "
        "prefix, so all contrasts are 0 and the weights uniform"
    ]
    caplog.clear()
    cfg = argparse.Namespace(
        needs_scores=True, score_source="precomputed", scores=str(tmp_path / "store"),
        window=None, stride=None, long_from_model=False,
    )
    with caplog.at_level("WARNING"):
        make_source(cfg, shards).close()
    assert any(warning in r.message and "score store" in r.message for r in caplog.records)
