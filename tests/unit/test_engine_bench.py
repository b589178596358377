"""bench/engine_bench.py end to end on CPU: the released code's way and the clean baseline
agree with the engine (fp32, so to rounding), and every row is written."""

import json

import pytest

from bench.engine_bench import main, released


def test_cpu_smoke_rows_agree_with_the_engine(tmp_path):
    out = tmp_path / "smoke.json"
    rows = main(["--cpu-smoke", "--variants", "plain", "cudnn", "--hybrid-for", "cudnn",
                 "--out", str(out)])
    assert json.loads(out.read_text()) == rows
    kinds = [(r["impl"], r["variant"]) for r in rows]
    assert kinds == [("engine", "plain"), ("engine", "cudnn"), ("engine", "cudnn, logp_short only"),
                     ("baseline", "hf-full-logits"), ("released", "released-code")]
    hybrid = rows[2]
    assert 0 < hybrid["flops_per_run"] < rows[1]["flops_per_run"]
    for row in rows[:2] + rows[3:]:
        assert row["seq_len"] == 256 and row["window"] == 64 and row["tokens_per_s"] > 0
        assert row["max_abs_diff_long_vs_engine"] < 1e-4, row
        assert row["max_abs_diff_short_vs_engine"] < 1e-4, row


def test_released_way_needs_a_stride_that_divides_the_rest():
    import torch

    with pytest.raises(ValueError, match="stride to divide"):
        released(torch.nn.Linear(1, 1), [torch.zeros(100, dtype=torch.long)], 64, 48, 1)
