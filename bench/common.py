"""Shared pieces of the GPU benchmarks: model shapes, FLOP counts, the measured ceiling."""

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

# Random-weight models of the public shapes (bf16); weights don't change the speed.
SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
    ),
    "llama-3-8b": dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
    ),
}


def build_model(shape: str, max_positions: int, dtype=torch.bfloat16, device="cuda"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SHAPES[shape], max_position_embeddings=max_positions, bos_token_id=1,
        eos_token_id=2, rope_theta=500000.0,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def forward_flops(config, tokens: int, kept_targets: int) -> float:
    """Matmul FLOPs of one causal forward over `tokens` tokens (attention included) plus the
    LM head on `kept_targets` positions. Counted the same way for every implementation."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = d // heads
    per_layer = 2 * tokens * (d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d)
    per_layer += 2 * tokens * 3 * d * config.intermediate_size
    # causal attention: QK^T and PV over the lower triangle, tokens^2/2 pairs, each 2*2*head_dim
    per_layer += 2 * 2 * heads * head_dim * tokens * tokens / 2
    return layers * per_layer + 2 * kept_targets * d * config.vocab_size


def timed(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of fn() over repeats, synchronising the GPU around each run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(n: int = 8192) -> float:
    """bf16 matmul FLOP/s on random data, measured in this run (the MFU denominator)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = timed(lambda: [a @ b for _ in range(10)], repeats=5, warmup=2) / 10
    return 2 * n**3 / seconds


def machine() -> dict:
    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(name: str, payload) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps(payload, indent=2) + "\n")
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / name).write_text(out.read_text())
    return out
