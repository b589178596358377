"""`tokenweight rank` against running scorers: two replica URLs of a real gRPC server, requests
in flight from several threads, long documents in pieces; the table agrees with local scoring."""

import json

import numpy as np
import pytest

from tokenweight.cli import main
from tokenweight.trainer.selection.documents import DocumentInput
from tokenweight.trainer.selection.rank import RankConfig, rank
from tokenweight.trainer.selection.scoring import LocalScorer, RemoteScorer
from tokenweight.trainer.selection.stats import StatsConfig

# The tiny model takes 512 tokens: 700 and 1200 are split (pieces every 252 tokens).
LENGTHS = [0, 1, 5, 40, 300, 700, 1200, 64]


@pytest.fixture
def token_lines(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "ids.jsonl"
    lines = []
    for i, n in enumerate(LENGTHS):
        ids = rng.integers(3, 60, size=n)
        if n == 1200:  # its second half copies the first
            ids[600:] = ids[:600]
        lines.append(json.dumps({"token_ids": ids.tolist(), "id": f"doc{i}"}) + "\n")
    path.write_text("".join(lines))
    return path


def test_remote_replicas_agree_with_local_scoring(server, tiny_model_dir, token_lines, tmp_path):
    url = f"grpc://{server.grpc_target}"
    config = RankConfig(stats=StatsConfig(copy_ngram=4, copy_chars=0), batch_size=2)
    remote = RemoteScorer(f"{url},{url}", scorer="tiny", concurrency=4)
    try:
        rank(
            DocumentInput([str(token_lines)]),
            remote,
            tmp_path / "remote.jsonl",
            config,
            progress=False,
        )
    finally:
        remote.close()
    local = LocalScorer(tiny_model_dir, window=8, device="cpu", dtype="float32")
    rank(DocumentInput([str(token_lines)]), local, tmp_path / "local.jsonl", config, progress=False)

    remote_rows = [json.loads(x) for x in (tmp_path / "remote.jsonl").read_text().splitlines()]
    local_rows = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert [r["doc"] for r in remote_rows] == [f"doc{i}" for i in range(len(LENGTHS))]
    assert [r["pieces"] for r in remote_rows] == [0, 0, 1, 1, 1, 2, 4, 1]
    for a, b in zip(remote_rows, local_rows):
        assert a["fingerprint"] == b["fingerprint"] and (a["window"], a["stride"]) == (8, 6)
        assert a["status"] == b["status"] and a["long_targets"] == b["long_targets"]
        for name in ("context_gain", "key_density", "copied_share", "score"):
            assert a[name] == pytest.approx(b[name], abs=1e-5), (a["doc"], name)
    assert remote_rows[6]["copied_share"] > 0


def test_rank_command_against_a_server(server, tiny_model_dir, token_lines, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    argv = ["rank", "--input", str(token_lines), "--out", str(out)]
    argv += ["--scorer-url", f"grpc://{server.grpc_target}", "--scorer", "pair"]
    assert main(argv) == 1  # token ids and no tokenizer: word-stream copies cannot be seen
    assert "pass --tokenizer" in capsys.readouterr().err
    argv += ["--tokenizer", str(tiny_model_dir)]
    assert main(argv) == 0
    assert "window 16, stride 4" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == len(LENGTHS)
    argv[argv.index("pair")] = "tiny"  # another scorer: another fingerprint, refused
    assert main(argv) == 1
    assert "other settings (fingerprint" in capsys.readouterr().err


def test_a_balanced_target_is_one_scorer_url(server, token_lines, tmp_path):
    """An `ipv4:A:P,B:P` target reaches the client whole; its commas are not a URL list."""
    address = server.grpc_target
    remote = RemoteScorer(f"ipv4:{address},{address}", scorer="tiny")
    try:
        assert remote.concurrency == 4  # one endpoint: gRPC balances over its addresses
        rank(DocumentInput([str(token_lines)]), remote, tmp_path / "t.jsonl",
             RankConfig(stats=StatsConfig(copy_ngram=4, copy_chars=0)), progress=False)
    finally:
        remote.close()
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == len(LENGTHS)
