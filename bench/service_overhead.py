"""The service's own cost per request: a tiny scorer on CPU, so the model's compute is
negligible and what is measured is gRPC, the batcher, collation and the engine's Python.

    python -m bench.service_overhead [--requests 768] [--profile DIR]
        ->  bench/results/service_overhead_cpu.json

A real `tokenweight serve` on loopback, 64 client threads of this process each sending one
512-token sequence per request: dynamic batching, then one request per engine batch. With
`--profile DIR`, py-spy samples the server's GIL holder during the batched run, writes the
collapsed stacks there (`py-spy` must be installed) and prints the time per request by stage
(bench/stack_profile.py).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import UNBATCHED, child_env, machine, save_llama, served, write_results
from bench.load import concurrent_load
from bench.stack_profile import table

PROFILE_RATE = 250  # py-spy samples per second


def run(model: Path, requests, clients: int, extra=(), profile: Path | None = None):
    # One intra-op thread: the host is shared, and the tiny model's matmuls gain nothing more.
    env = child_env(OMP_NUM_THREADS="1")
    with served(model, 2048, *extra, device="cpu", env=env) as (proc, url):
        if profile is None:
            return concurrent_load(url, requests, clients)
        spy = subprocess.Popen(
            [
                shutil.which("py-spy"),
                "record",
                "--pid",
                str(proc.pid),
                "--gil",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                str(PROFILE_RATE),
                "--output",
                str(profile),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return concurrent_load(url, requests, clients)
        finally:
            spy.send_signal(subprocess.signal.SIGINT)
            spy.wait(60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=768)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--profile", type=Path, help="folder for py-spy's collapsed stacks")
    parser.add_argument("--label", default="", help="what this run measures (e.g. a commit)")
    parser.add_argument("--out", default="service_overhead_cpu.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model = save_llama("micro", tmp / "model", 2048 + 1)
    rng = np.random.default_rng(0)
    requests = [[rng.integers(3, 64, size=args.seq_len)] for _ in range(args.requests)]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    batched = run(
        model,
        requests,
        args.clients,
        profile=args.profile / "batched.txt" if args.profile else None,
    )
    print("batched", batched, flush=True)
    if args.profile:  # the warm-up sends one request per client
        print(table(args.profile / "batched.txt", PROFILE_RATE, args.requests + args.clients))
    unbatched = run(model, requests, args.clients, UNBATCHED)
    print("one request per batch", unbatched, flush=True)
    row = dict(
        bench="service_overhead",
        label=args.label,
        model="llama d16x1 (1 head, vocab 64), fp32, CPU",
        seq_len=args.seq_len,
        window=2048,
        clients=args.clients,
        requests=args.requests,
        **batched.prefixed("batched"),
        **unbatched.prefixed("one_request_per_batch"),
        ratio=batched.tokens_per_s / unbatched.tokens_per_s,
        command="python -m bench.service_overhead " + " ".join(sys.argv[1:]),
        **machine(),
    )
    print(row)
    write_results(args.out, [row])


if __name__ == "__main__":
    main()
