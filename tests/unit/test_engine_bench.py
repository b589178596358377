"""bench/engine_bench.py end to end on CPU: the released code's way, the clean baseline and the
compiled blocks agree with the engine and with the fp32 reference (an fp32 model, so to
rounding), and every row is written."""

import json

import pytest

from bench.engine_bench import main, released


def test_cpu_smoke_rows_agree_with_the_engine_and_fp32(tmp_path):
    out = tmp_path / "smoke.json"
    rows = main(["--cpu-smoke", "--variants", "plain", "cudnn", "fused-eager-casts",
                 "--hybrid-for", "cudnn", "--out", str(out)])
    assert json.loads(out.read_text()) == rows
    kinds = [(r["impl"], r["variant"]) for r in rows]
    assert kinds == [("engine", "plain"), ("engine", "cudnn"), ("engine", "cudnn, logp_short only"),
                     ("engine", "fused-eager-casts"), ("baseline", "hf-full-logits"),
                     ("released", "released-code")]
    hybrid = rows[2]
    assert 0 < hybrid["flops_per_run"] < rows[1]["flops_per_run"]
    for row in rows[:2] + rows[3:]:
        assert row["seq_len"] == 256 and row["window"] == 64 and row["tokens_per_s"] > 0
        for against in ("engine", "fp32"):
            for stat in ("max", "mean"):
                for part in ("long", "short"):
                    assert row[f"{stat}_abs_diff_{part}_vs_{against}"] < 1e-4, row


def test_fp32_reference_can_be_skipped(tmp_path):
    rows = main(["--cpu-smoke", "--variants", "plain", "--hybrid-for", "--impls", "engine",
                 "--no-fp32-reference", "--out", str(tmp_path / "smoke.json")])
    assert [r["variant"] for r in rows] == ["plain"]
    assert "max_abs_diff_short_vs_fp32" not in rows[0]


def test_released_way_needs_a_stride_that_divides_the_rest():
    import torch

    with pytest.raises(ValueError, match="stride to divide"):
        released(torch.nn.Linear(1, 1), [torch.zeros(100, dtype=torch.long)], 64, 48, 1)
