"""`tokenweight score --model`: JSON lines in, one JSON line out per input, in input order,
equal to the engine's arrays; bad lines refused with a message naming the line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tokenweight.service.engine import ScoringEngine

CLI = [sys.executable, "-m", "tokenweight.cli", "score"]


def run_score(model_dir, lines: str, *extra: str) -> subprocess.CompletedProcess:
    args = ["--model", str(model_dir), "--window", "6", "--stride", "4", "--device", "cpu", "--dtype", "float32"]
    return subprocess.run(CLI + args + list(extra), input=lines, capture_output=True, text=True, timeout=120)


def test_local_scoring_matches_the_engine_in_input_order(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 300, size=n).tolist() for n in (20, 1, 7, 13)]
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"token_ids": s}) + "\n" for s in sequences[:2])
        + json.dumps({"text": "<script>x</script> & the lazy dog"}) + "\n\n"
        + "".join(json.dumps({"token_ids": s}) + "\n" for s in sequences[2:])
    )
    done = run_score(tiny_model_dir, "", "--input", str(path), "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == 5
    engine = ScoringEngine.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", window=6, stride=4)
    expected_ids = sequences[:2] + [out[2]["token_ids"]] + sequences[2:]
    for line, ids in zip(out, expected_ids):
        assert line["token_ids"] == ids
        (want,) = engine.score([np.array(ids)])
        for name in ("score", "logp_long", "logp_short"):
            # the command batches lines together; batch composition moves fp32 rounding only
            np.testing.assert_allclose(line[name], getattr(want, name), atol=1e-5, rtol=0)
    assert out[2]["tokens"][0] == "<s>" and "".join(out[2]["tokens"][1:]) == "<script>x</script> & the lazy dog"
    assert "tokens" not in out[0]


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "input line 1 is not JSON"),
        ('{"token_ids": [1], "text": "a"}', 'exactly one of "token_ids" or "text"'),
        ('{"token_ids": [1, 2, 300000]}', "outside the vocabulary"),
    ],
)
def test_bad_lines_are_refused_with_a_clear_error(tiny_model_dir, line, message):
    done = run_score(tiny_model_dir, line + "\n")
    assert done.returncode == 1 and message in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top", "0"], "--top must be at least 1"),
        (["--short-model", "/s"], "--short-model needs --model"),
        (["--url", "grpc://127.0.0.1:1", "--device", "cpu"], "--device only apply with --model"),
    ],
)
def test_inconsistent_flags_are_refused(argv, message):
    done = subprocess.run(CLI + argv, input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr


def test_top_prints_the_highest_scores_in_context(tiny_model_dir):
    lines = json.dumps({"token_ids": [1, 5, 9, 5, 9, 5, 9, 5, 9, 5, 9, 5, 9, 7]}) + "\n"
    table = run_score(tiny_model_dir, lines, "--top", "3").stdout.splitlines()
    (out,) = [json.loads(line) for line in run_score(tiny_model_dir, lines).stdout.splitlines()]
    assert table[0].startswith("line 1: 14 tokens") and len(table) == 2 + 3
    best = np.argsort(-np.asarray(out["score"]), kind="stable")[:3] + 1
    for row, target in zip(table[2:], best):
        pos, score = row.split()[:2]
        assert int(pos) == target and float(score) == pytest.approx(out["score"][target - 1], abs=1e-3)
        assert f"[{out['token_ids'][target]}]" in row
