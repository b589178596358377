"""GPU-only paths give the same results as the plain path (skipped without CUDA)."""

import copy

import numpy as np
import pytest
import torch

from tokenweight.service.engine import ScoringEngine
from tokenweight.service.logprobs import ForwardOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_model(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).to("cuda", dtype).eval().requires_grad_(False)


def sequences():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 1000, size=n) for n in (2048, 1500, 700, 33, 2)]
    seqs[0][0] = 1
    return seqs


@pytest.mark.parametrize("sdpa_backends, compiled", [
    (("CUDNN_ATTENTION",), False),
    (("FLASH_ATTENTION",), True),
    (("CUDNN_ATTENTION",), True),
])
def test_optimised_paths_match_plain_path_in_bf16(sdpa_backends, compiled):
    model = small_model(torch.bfloat16)
    plain = ScoringEngine(model, window=256, options=ForwardOptions(token_budget=8192))
    fast = ScoringEngine(model, window=256, options=ForwardOptions(
        token_budget=8192, sdpa_backends=sdpa_backends, compile_logprobs=compiled))
    for a, b in zip(plain.score(sequences()), fast.score(sequences())):
        # bf16 kernels round differently; the log-probs of a random model are ~ -7
        np.testing.assert_allclose(a.logp_long, b.logp_long, atol=0.05, rtol=0)
        np.testing.assert_allclose(a.logp_short, b.logp_short, atol=0.05, rtol=0)


def test_maskless_forward_gives_the_masked_paths_numbers_on_cuda(monkeypatch):
    """Skipping transformers' mask preparation (and its host-device sync) keeps the kernel:
    the scores equal those of the masked path bit for bit, in bf16 on the GPU."""
    from tokenweight.service import logprobs

    model = small_model(torch.bfloat16)
    assert model.config._attn_implementation == "sdpa"
    engine = ScoringEngine(model, window=256, options=ForwardOptions(token_budget=8192))
    maskless = engine.score(sequences())
    monkeypatch.setattr(logprobs, "_plain_causal", lambda config: False)
    for a, b in zip(maskless, engine.score(sequences())):
        np.testing.assert_array_equal(a.logp_long, b.logp_long)
        np.testing.assert_array_equal(a.logp_short, b.logp_short)


def test_cuda_fp32_matches_cpu_fp32():
    model = small_model(torch.float32)
    gpu = ScoringEngine(model, window=256, options=ForwardOptions(token_budget=8192, compile_logprobs=True))
    cpu = ScoringEngine(small_model(torch.float32).cpu(), window=256)
    for a, b in zip(gpu.score(sequences()), cpu.score(sequences())):
        np.testing.assert_allclose(a.logp_long, b.logp_long, atol=2e-3, rtol=0)
        np.testing.assert_allclose(a.logp_short, b.logp_short, atol=2e-3, rtol=0)


def test_fp32_scoring_of_a_grouped_head_model_needs_no_score_matrix():
    """fp32 attention with grouped key/value heads once ran torch's math kernel, whose T x T
    scores are 4 GiB per layer here (4 heads, 16k tokens); repeated heads run it in O(T)."""
    model = small_model(torch.float32)
    model.config.max_position_embeddings = 16384  # plain RoPE: positions are not a weight
    engine = ScoringEngine(model, window=4096, options=ForwardOptions(token_budget=16384))
    row = np.random.default_rng(0).integers(3, 1000, size=16384)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    (result,) = engine.score([row])
    assert np.isfinite(result.logp_long).all() and np.isfinite(result.logp_short).all()
    assert torch.cuda.max_memory_allocated() - before < 1 << 30


def test_the_engines_backend_choice_stays_inside_it():
    """In a fresh process whose first attention call is the engine's (cuDNN first), a later
    plain forward still gets torch's own choice: the same numbers as in a process where no
    engine ran. Head dim 64, where cuDNN and flash both apply and round differently."""
    import subprocess
    import sys

    model = """
import numpy as np, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
model = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval().requires_grad_(False)
x = torch.randint(3, 1000, (1, 2048), device="cuda")
"""
    engine_first = """
from tokenweight.service.engine import ScoringEngine
from tokenweight.service.logprobs import ForwardOptions
options = ForwardOptions(sdpa_backends=("CUDNN_ATTENTION",))
ScoringEngine(model, window=256, options=options).score([np.arange(3, 600)])
"""
    report = "\nwith torch.no_grad(): print(repr(model(x).logits.float().abs().sum().item()))\n"

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[-1]

    assert run(model + engine_first + report) == run(model + report)


def test_compiled_blocks_match_plain_path_in_bf16_and_keep_cudnn_attention():
    plain = ScoringEngine(small_model(torch.bfloat16), window=256,
                          options=ForwardOptions(token_budget=8192))
    fused = ScoringEngine(small_model(torch.bfloat16), window=256, compile_blocks=True,
                          options=ForwardOptions(token_budget=8192, compile_logprobs=True))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fast = fused.score(sequences())
    kernels = " ".join(e.name for e in prof.events()).lower()
    assert "cudnn" in kernels or "flash" in kernels  # attention ran a fused SDPA kernel
    for a, b in zip(plain.score(sequences()), fast):
        np.testing.assert_allclose(a.logp_long, b.logp_long, atol=0.05, rtol=0)
        np.testing.assert_allclose(a.logp_short, b.logp_short, atol=0.05, rtol=0)


def logp_diffs(results, reference) -> np.ndarray:
    """|d| of every long and short log-prob of `results` from `reference`."""
    return np.concatenate([
        np.abs(np.concatenate([a.logp_long, a.logp_short]) - np.concatenate([b.logp_long, b.logp_short]))
        for a, b in zip(results, reference)
    ])


def plain_and_fp32_scores():
    """The plain bf16 path's scores and an fp32 run's of the same (bf16, so exact) weights."""
    model = small_model(torch.bfloat16)
    options = ForwardOptions(token_budget=8192)
    exact = ScoringEngine(copy.deepcopy(model).float(), window=256, options=options)
    plain = ScoringEngine(model, window=256, options=options)
    return plain.score(sequences()), exact.score(sequences())


def compiled_blocks_scores(options: ForwardOptions):
    """Scores of a freshly compiled engine: an earlier compilation in the process would count
    against torch's recompile limit, past which the layers silently run eager."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    engine = ScoringEngine(small_model(torch.bfloat16), window=256, options=options)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    return engine.score(sequences())


def test_compiled_blocks_are_no_further_from_fp32_than_the_plain_path():
    """Fused kernels keep fp32 intermediates where eager rounds to bf16, so they differ from
    the plain path; against fp32 scores that must not be lost accuracy. 1.25x: room for two
    different roundings of one model to land unequally far off; 1e-4: a tenth of the plain
    path's own mean error here (~1e-3), for a gap near zero."""
    plain, exact = plain_and_fp32_scores()
    fused = compiled_blocks_scores(
        ForwardOptions(token_budget=8192, compile_logprobs=True, compile_blocks=True))
    plain_error = logp_diffs(plain, exact).mean()
    fused_error = logp_diffs(fused, exact).mean()
    assert fused_error <= 1.25 * plain_error + 1e-4, (fused_error, plain_error)


def test_compiled_blocks_with_eager_rounding_stay_far_closer_to_the_plain_path():
    """Keeping eager's bf16 roundings leaves only fp32-level differences (reduction order in
    the norms, exp/rsqrt implementations), which change a bf16 result only where a value lies
    within that error of a rounding boundary: rare flips, where bf16 rounding itself moves
    every value. On CPU this model's mean drift from the plain path was 3% of the plain path's
    mean error against fp32 (default fusion: 110%); a fifth leaves room for the GPU's own
    math functions while still telling eager rounding from fusion's fp32 intermediates."""
    plain, exact = plain_and_fp32_scores()
    eager_rounded = compiled_blocks_scores(ForwardOptions(
        token_budget=8192, compile_blocks=True, compile_blocks_eager_rounding=True))
    plain_error = logp_diffs(plain, exact).mean()
    drift = logp_diffs(eager_rounded, plain).mean()
    assert drift <= 0.2 * plain_error, (drift, plain_error)
