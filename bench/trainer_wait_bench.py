"""How long does a training step wait for its scores, with prefetching?

A small scorer (`tokenweight serve`) and a larger trainee (`torchrun -m tokenweight.trainer`,
`--score-source service`) share one GPU; the trainer's metrics log each step's wait.

    python bench/trainer_wait_bench.py   ->  bench/results/trainer_wait_h200.json
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, machine, write_results  # noqa: E402
from tokenweight.trainer.prepare import ShardWriter  # noqa: E402

SCORER = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
              intermediate_size=2048, vocab_size=32000)
TRAINEE = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=32000)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=32000)
READY = re.compile(r"ready: grpc=[^ ]*:(\d+)")


def save(shape: dict, path: Path, max_positions: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke run)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    save(TINY if args.tiny else SCORER, tmp / "scorer", args.seq_len, args.device)
    save(TINY if args.tiny else TRAINEE, tmp / "trainee", args.seq_len, args.device)
    writer = ShardWriter(tmp / "data", args.seq_len)
    rng = np.random.default_rng(0)
    writer.add(rng.integers(3, 32000, size=args.seq_len * (args.steps + 4)).astype(np.int32))
    writer.finish({"vocab_size": 32000, "eos_token_id": 2, "bos_token_id": 1, "tokenizer": "random"})

    window = args.seq_len // 4
    server = subprocess.Popen(
        [sys.executable, "-P", "-m", "tokenweight.cli", "serve", "--model", str(tmp / "scorer"),
         "--window", str(window), "--device", args.device, "--grpc-port", "0", "--no-http"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in server.stdout:
        if m := READY.search(line):
            url = f"grpc://127.0.0.1:{m.group(1)}"
            break
    else:
        raise RuntimeError("scorer did not start")
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    command = [sys.executable, "-P", "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m",
               "tokenweight.trainer", "--model", str(tmp / "trainee"), "--data", str(tmp / "data"),
               "--out", str(tmp / "run"), "--seq-len", str(args.seq_len), "--batch-size", "1",
               "--max-steps", str(args.steps), "--device", args.device, "--score-source", "service",
               "--scorer-url", url, "--weighting", "dense", "--window", str(window), "--no-progress"]
    try:
        subprocess.run(command, check=True, env=dict(os.environ, OMP_NUM_THREADS="4"))
    finally:
        server.terminate()
        server.wait(60)
    records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    steady = records[3:]  # the first steps include compilation and allocator warm-up
    wait = sum(r["scorer_wait_s"] for r in steady)
    step_time = sum(r["step_time_s"] for r in steady)
    row = dict(bench="trainer_scorer_wait", scorer="llama d512x4 (vocab 32000)",
               trainee="llama-3.2-1b body (vocab 32000)", seq_len=args.seq_len, window=window,
               steps_measured=len(steady), mean_step_time_s=step_time / len(steady),
               mean_scorer_wait_s=wait / len(steady), wait_fraction=wait / step_time,
               max_scorer_wait_s=max(r["scorer_wait_s"] for r in steady),
               command="python bench/trainer_wait_bench.py " + " ".join(sys.argv[1:]))
    print(row)
    if not args.tiny:
        write_results("trainer_wait_h200.json", [dict(row, **machine())])


if __name__ == "__main__":
    main()
