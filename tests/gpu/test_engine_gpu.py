"""GPU-only paths give the same results as the plain path (skipped without CUDA)."""

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


def test_cuda_fp32_matches_cpu_fp32():
    model = small_model(torch.float32)
    gpu = ScoringEngine(model, window=256, options=ForwardOptions(token_budget=8192, compile_logprobs=True))
    cpu = ScoringEngine(small_model(torch.float32).cpu(), window=256)
    for a, b in zip(gpu.score(sequences()), cpu.score(sequences())):
        np.testing.assert_allclose(a.logp_long, b.logp_long, atol=2e-3, rtol=0)
        np.testing.assert_allclose(a.logp_short, b.logp_short, atol=2e-3, rtol=0)


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
