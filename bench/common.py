"""Shared pieces of the GPU benchmarks: model shapes, FLOP counts, the measured ceiling, and
the scorer and trainer processes of the end-to-end benchmarks."""

import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
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
        **(SHAPES.get(shape) or TRAIN_SHAPES[shape]), max_position_embeddings=max_positions, bos_token_id=1,
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
    """Median seconds of fn() over repeats, synchronising the GPU (if any) around each run."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
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
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)",
        "cpu": platform.processor() or platform.machine(),
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


# --- Trainer benchmarks: models on disk, data, scorer and trainer processes ---------------

READY = re.compile(r"ready: grpc=[^ ]*:(\d+)")

# Llama shapes with a 32000-token vocabulary: a small scorer, the 1B body as the trainee (or as
# a frozen scorer of its own shape), and a tiny one for CPU smoke runs.
TRAIN_SHAPES = {
    "small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=2048, vocab_size=32000),
    "1b-body": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=8192, vocab_size=32000),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64, vocab_size=32000),
    # One layer, one head, a 64-token vocabulary: on CPU its forward costs next to nothing
    # ("tiny"'s 32000-token LM head and 4-head attention do not), so a service benchmark on
    # CPU sees the service's own cost per request.
    "micro": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                  intermediate_size=32, vocab_size=64),
    # The quality pipeline's block model: ~30M parameters with its 8192-token vocabulary.
    "30m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                intermediate_size=1376, vocab_size=8192, tie_word_embeddings=True),
}

# Set in every process a benchmark starts. NVLink multicast stays off in NCCL, PyTorch and
# NVSHMEM: on the shared multi-GPU hosts a program using it can take the GPUs out of service.
# PYTHONSAFEPATH is `-P` for the processes torchrun itself starts (it runs `python -u -m`), so
# a repo root without the links of bench/device_env.sh never shadows the installed package.
CHILD_ENV = {
    "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
    "PYTHONSAFEPATH": "1",
}


def child_env(**extra: str) -> dict:
    return {**os.environ, **CHILD_ENV, **extra}


def save_llama(shape: str, path: Path, max_positions: int, device: str = "cpu") -> Path:
    """A random-weight Llama of TRAIN_SHAPES[shape] or SHAPES[shape] (fp32) saved with
    save_pretrained; `device` only speeds up the random initialisation of large shapes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**(TRAIN_SHAPES.get(shape) or SHAPES[shape]), max_position_embeddings=max_positions,
                         bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return path


def write_tokens(path: Path, seq_len: int, rows: int, vocab: int = 32000) -> Path:
    """`rows` rows of random tokens below `vocab`, prepared as `tokenweight prepare` would."""
    from tokenweight.trainer.prepare import ShardWriter

    writer = ShardWriter(path, seq_len)
    rng = np.random.default_rng(0)
    writer.add(rng.integers(3, vocab, size=seq_len * rows).astype(np.int32))
    writer.finish({"vocab_size": vocab, "eos_token_id": 2, "bos_token_id": 1, "tokenizer": "random"})
    return path


def serve(model_dir, window: int, *extra: str, device: str = "cuda", env: dict | None = None):
    """Start `tokenweight serve` (gRPC only, any free port); returns (process, grpc URL) once ready."""
    # -P: a repo root without the links of bench/device_env.sh must not shadow the installed package
    cmd = [sys.executable, "-P", "-m", "tokenweight.cli", "serve", "--model", str(model_dir), "--window",
           str(window), "--device", device, "--grpc-port", "0", "--no-http", "--queue-size", "4096", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or child_env())
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if m := READY.search(line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"grpc://127.0.0.1:{m.group(1)}"
    raise RuntimeError("server exited before it was ready:\n" + "".join(seen[-30:]))


# `serve` flags that turn dynamic batching off: one request per engine call, none waited for.
UNBATCHED = ("--batch-tokens", "512", "--max-wait-ms", "0")


@contextlib.contextmanager
def served(model_dir, window: int, *extra: str, device: str = "cuda", env: dict | None = None):
    """`serve` for the length of a with-block: yields (process, grpc URL), stops it after."""
    proc, url = serve(model_dir, window, *extra, device=device, env=env)
    try:
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(60)


def trainer_command(ranks: int, model, data, out, url: str, *, seq_len: int, steps: int, device: str,
                    window: int, extra: tuple = ()) -> list[str]:
    """`torchrun` of the trainer with scores from the service (`--scorer-url` may list replicas)."""
    return [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(ranks), "-m", "tokenweight.trainer", "--model", str(model), "--data", str(data),
            "--out", str(out), "--seq-len", str(seq_len), "--batch-size", "1", "--max-steps", str(steps),
            "--device", device, "--score-source", "service", "--scorer-url", url, "--weighting", "dense",
            "--window", str(window), "--no-progress", *map(str, extra)]


def steady_summary(records: list[dict], warmup: int = 3) -> dict:
    """Step time, throughput and scorer wait over a run's steps after the first `warmup`
    (those include compilation and allocator warm-up)."""
    steady = records[warmup:]
    step_time = sum(r["step_time_s"] for r in steady)
    wait = sum(r["scorer_wait_s"] for r in steady)
    return dict(
        steps_measured=len(steady), mean_step_time_s=step_time / len(steady),
        tokens_per_s=sum(r["tokens_per_s"] * r["step_time_s"] for r in steady) / step_time,
        mean_scorer_wait_s=wait / len(steady), wait_fraction=wait / step_time,
        max_step_wait_fraction=max(r["scorer_wait_s"] / r["step_time_s"] for r in steady),
        max_scorer_wait_s=max(r["scorer_wait_s"] for r in steady),
    )
