"""`tokenweight eval` end to end on a tiny checkpoint: JSON lines and prepared shards as
held-out data, a local judge and one served by `tokenweight serve`, deterministic output."""

import json

import pytest
from eval_helpers import source_texts, write_jsonl

from tokenweight.cli import main
from tokenweight.trainer.prepare import prepare

SIZE = ["--seq-len", "256", "--window", "32", "--items-per-bucket", "2", "--max-sequences", "3"]
SIZE += ["--no-progress"]


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("heldout") / "heldout.jsonl", source_texts())


def _run(model, data, out, *extra) -> int:
    return main(["eval", "--model", str(model), "--data", str(data), "--out", str(out), *extra])


def _eval(model, data, out, *extra) -> dict:
    assert _run(model, data, out, *SIZE, *extra) == 0
    return json.loads(out.read_text())


def test_eval_writes_every_metric(tiny_model_dir, heldout, tmp_path, capsys):
    result = _eval(tiny_model_dir, heldout, tmp_path / "a.json")
    assert "long-range ppl" in capsys.readouterr().out
    p = result["perplexity"]
    buckets = [b["bucket"] for b in p["by_position"]["buckets"]]
    assert buckets == ["0-32", "32-64", "64-128", "128-256"]
    assert p["by_position"]["overall"]["tokens"] == 3 * 255
    assert p["short_context"]["tokens"] == 3 * 31
    assert p["long_range"]["rule"] == {"key_gain": 2.0, "key_min_logp": -2.0}
    assert set(result["retrieval"]["tasks"]) == {"dict", "passkey", "chain"}
    assert len(result["items"]["retrieval"]) == 3 * 4 * 2
    assert result["judge"]["kind"] == "local" and result["data"]["unit"] == "file"
    repeats = result["identifier_repeats"]
    assert repeats["window"] == 32
    assert repeats["repeat_tokens"] + repeats["other_tokens"] == 3 * 255
    again = _eval(tiny_model_dir, heldout, tmp_path / "b.json")
    assert again["items_hash"] == result["items_hash"]
    assert again["perplexity"] == result["perplexity"]
    assert again["retrieval"] == result["retrieval"]


def test_eval_on_shards_with_a_served_judge(tiny_model_dir, heldout, tmp_path, server):
    shards = tmp_path / "shards"
    prepare(tiny_model_dir, [heldout], 256, shards, progress=False)
    url = f"grpc://{server.grpc_target}"
    result = _eval(
        tiny_model_dir, shards, tmp_path / "s.json", "--scorer-url", url, "--score-window", "8"
    )
    assert result["data"]["unit"] == "row" and result["identifier_repeats"] is None
    assert result["judge"]["kind"] == "service" and result["judge"]["fingerprint"]
    assert result["perplexity"]["by_position"]["overall"]["tokens"] == 3 * 255


def test_eval_errors(tiny_model_dir, heldout, tmp_path, capsys):
    out = tmp_path / "x.json"
    assert _run(tiny_model_dir, heldout, out, "--seq-len", "100000") == 1
    assert "lower --seq-len" in capsys.readouterr().err
    assert _run(tiny_model_dir, tmp_path / "none.jsonl", out, "--seq-len", "256") == 1
    assert "not found" in capsys.readouterr().err
