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


CALIBRATED = ["--tasks", "passkey", "kv", "idrecall", "--passkey-distractors", "3"]
CALIBRATED += ["--passkey-differ", "1", "--kv-pairs", "12", "--kv-shared", "1"]


def test_eval_writes_paired_records_for_the_calibrated_tasks(tiny_model_dir, heldout, tmp_path):
    extra = [*CALIBRATED, "--max-sequences", "7", "--short-files", "5", "--items-per-bucket", "3"]
    extra += ["--seq-len", "512", "--window", "64", "--choices", "2"]
    result = _eval(tiny_model_dir, heldout, tmp_path / "c.json", *extra)
    assert result["format"] == "tokenweight-eval-2"
    items = result["items"]
    records = items["retrieval"]
    assert {r["task"] for r in records} == {"passkey", "kv", "idrecall"}
    ids = [r["id"] for r in records] + [r["id"] for r in items["id_loss"]]
    assert len(ids) == len(set(ids))
    assert all(r["file"] in items["long_files"] for r in records if r["task"] == "idrecall")
    assert len(items["long_files"]) == len(items["position_ce"]) == 7
    assert len(items["short_files"]) == len(items["short_ce"]) == 5
    assert items["id_loss"] and all(r["distance"] > 64 for r in items["id_loss"])
    loss = result["id_loss"]
    total = sum(r["nll"] for r in items["id_loss"]) / sum(r["tokens"] for r in items["id_loss"])
    assert loss["value"] == pytest.approx(total, rel=1e-4)
    passkey = result["retrieval"]["tasks"]["passkey"]
    assert passkey["overall"]["ci_method"] == "wilson" and passkey["overall"]["items"] == 3 * 4
    assert all(r["bucket"] for r in records if r["task"] != "idrecall")
    # Another eval of the same items (here: the same model again) pairs record for record.
    again = _eval(tiny_model_dir, heldout, tmp_path / "d.json", *extra)
    assert [r["id"] for r in again["items"]["retrieval"]] == [r["id"] for r in records]
    assert again["items"]["id_loss"] == items["id_loss"]


def test_idrecall_needs_files_and_knobs_are_checked(tiny_model_dir, heldout, tmp_path, capsys):
    shards = tmp_path / "shards"
    prepare(tiny_model_dir, [heldout], 256, shards, progress=False)
    out = tmp_path / "x.json"
    assert _run(tiny_model_dir, shards, out, *SIZE, "--tasks", "idrecall") == 1
    assert "idrecall reads held-out files" in capsys.readouterr().err
    far = ["--tasks", "idrecall", "--id-min-distance", "250"]
    assert _run(tiny_model_dir, heldout, out, *SIZE, *far) == 1
    assert "no idrecall item" in capsys.readouterr().err
    assert _run(tiny_model_dir, heldout, out, *SIZE, "--tasks", "kv", "--kv-shared", "5") == 1
    assert "--kv-shared must be in [0, 2]" in capsys.readouterr().err
    assert _run(tiny_model_dir, heldout, out, *SIZE, "--id-absent", "0") == 1
    assert "--id-absent must be in [1, --seq-len)" in capsys.readouterr().err
