"""bench/trainer_bench.py: its FLOP count against torch's own count of a real training step,
and its CPU smoke run end to end (real trainer processes, a real scorer)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaForCausalLM

from bench.trainer_bench import Case, main, shape_config, step_flops


def test_step_flops_match_torch_flop_counter_of_a_training_step():
    case = Case("plain", "tiny", seq_len=33, batch_size=3, weighting="uniform")
    config = shape_config("tiny")
    config._attn_implementation = "eager"  # attention as plain matmuls the counter sees
    lm = LlamaForCausalLM(config)
    tokens = torch.randint(0, config.vocab_size, (case.batch_size, case.seq_len - 1))
    with FlopCounterMode(display=False) as counter:
        lm(tokens, labels=tokens).loss.backward()
    # Eager attention computes the full T x T scores; the benchmark counts the causal half.
    t, heads = case.seq_len - 1, config.num_attention_heads
    head_dim = config.hidden_size // heads
    masked_half = 3 * case.batch_size * config.num_hidden_layers * 4 * heads * head_dim * t * t / 2
    assert counter.get_total_flops() == step_flops(case) + masked_half


def test_cpu_smoke_runs_every_option_and_keeps_the_plain_losses(tmp_path):
    rows = main(["--cpu-smoke", "--out", str(tmp_path / "smoke.json")])
    by_name = {(r["config"], r["weighting"]): r for r in rows}
    assert set(by_name) == {("plain", "uniform"), ("all", "uniform"), ("plain", "hybrid")}
    plain, fast = by_name["plain", "uniform"], by_name["all", "uniform"]
    assert "--compile-blocks" in fast["flags"] and "--fused-optimizer" in fast["flags"]
    # Same data and batch: compiled/fused/unchecked paths train the same fp32 model.
    torch.testing.assert_close(fast["losses"], plain["losses"], rtol=1e-4, atol=0)
    for row in rows:
        assert row["steps_measured"] == 2 and row["tokens_per_s"] > 0
        assert 0 <= row["wait_fraction"] < 1
        flops = step_flops(Case("x", "tiny", 64, 4, "uniform"))
        assert row["model_tflops"] * 1e12 * row["mean_step_time_s"] == pytest.approx(flops)
    assert (tmp_path / "smoke.json").exists()
