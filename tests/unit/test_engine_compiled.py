"""The engine's compiled-blocks path gives the plain path's numbers (fp32 on CPU; in bf16 too
when it keeps eager's roundings), pays its compilation when the engine is built, not per
request, and has a fingerprint of its own."""

import dataclasses

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenweight.service.engine import ScoringEngine
from tokenweight.service.logprobs import ForwardOptions

VOCAB = 101


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, VOCAB, size=n) for n in (200, 131, 64, 17, 2)]
    seqs[0][0] = 1
    return seqs


def test_compiled_blocks_give_the_plain_scores_and_compile_at_start():
    plain = ScoringEngine(tiny_model(), window=32, options=ForwardOptions(token_budget=512))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    fast = ScoringEngine(tiny_model(), window=32, compile_blocks=True,
                         options=ForwardOptions(token_budget=512))
    compiled_at_start = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert compiled_at_start > 0
    for a, b in zip(plain.score(sequences()), fast.score(sequences())):
        np.testing.assert_allclose(b.logp_long, a.logp_long, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.logp_short, a.logp_short, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.score, a.score, atol=1e-5, rtol=0)
    # New lengths and batch sizes reuse the start-up compilation.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled_at_start
    # Fused kernels may round differently in bf16: cached and stored scores tell them apart.
    assert fast.fingerprint() != plain.fingerprint()


def test_compiled_blocks_with_eager_rounding_give_the_plain_bf16_scores():
    """In bf16 the default fused kernels skip roundings eager makes (scores differ by ~1e-3
    here); keeping them gives the plain path's numbers, far inside one bf16 step (~0.03 at a
    log-prob of -7)."""
    plain = ScoringEngine(tiny_model().to(torch.bfloat16), window=32,
                          options=ForwardOptions(token_budget=512))
    torch._dynamo.reset()  # a fresh compilation, not the recompile limit of an earlier one
    rounded = ScoringEngine(tiny_model().to(torch.bfloat16), window=32, options=ForwardOptions(
        token_budget=512, compile_blocks=True, compile_blocks_eager_rounding=True))
    for a, b in zip(plain.score(sequences()), rounded.score(sequences())):
        np.testing.assert_allclose(b.logp_long, a.logp_long, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.logp_short, a.logp_short, atol=1e-5, rtol=0)
    # Not bit-identical on every device: stored scores keep it apart from both other paths.
    eager_rounded = rounded.fingerprint()
    rounded.options = dataclasses.replace(rounded.options, compile_blocks_eager_rounding=False)
    assert eager_rounded not in {plain.fingerprint(), rounded.fingerprint()}
