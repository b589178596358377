"""The service end to end on the GPU: gRPC throughput against the engine alone, and many
short requests with dynamic batching against batching turned off, for the 1B shape and a
small scorer (where the per-request cost of the service, not the GPU, sets the pace).

    python -m bench.service_bench [--skip-long]   ->  bench/results/service_h200.json

Starts real `tokenweight serve` processes on loopback; clients are threads of this process
using the project's ScorerClient. Latencies are per request, as a client sees them.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import UNBATCHED, build_model, machine, save_llama, served, write_results
from bench.load import concurrent_load
from tokenweight.service.engine import ScoringEngine

WINDOW = 2048


def engine_tokens_per_s(model_dir: Path, rows: list[np.ndarray], *rows_per_call: int) -> list:
    """The engine alone on `rows`, `n` at a time for each `n` in `rows_per_call` (each after
    one warm-up call), loaded once; the GPU memory is freed before the service starts."""
    engine = ScoringEngine.from_pretrained(model_dir, device="cuda", window=WINDOW)
    rates = []
    for n in rows_per_call:
        calls = [rows[i : i + n] for i in range(0, len(rows), n)]
        engine.score(calls[0])
        torch.cuda.synchronize()
        start = time.perf_counter()
        for call in calls:
            engine.score(call)
        torch.cuda.synchronize()
        rates.append(sum(r.size for r in rows) / (time.perf_counter() - start))
    del engine
    torch.cuda.empty_cache()
    return rates


def service_vs_engine(model_dir: Path, shape: str, rng) -> dict:
    """Long documents: the engine alone vs the service with 8 concurrent clients."""
    long_reqs = [[rng.integers(3, 128000, size=8192) for _ in range(2)] for _ in range(12)]
    (engine_tps,) = engine_tokens_per_s(model_dir, [s for r in long_reqs for s in r], 2)
    with served(str(model_dir), WINDOW) as (_, url):
        service = concurrent_load(url, long_reqs, clients=8)
    return dict(
        bench="service_vs_engine",
        model=shape,
        seq_len=8192,
        window=WINDOW,
        clients=8,
        engine_tokens_per_s=engine_tps,
        **service.prefixed("service"),
        ratio=service.tokens_per_s / engine_tps,
    )


def short_requests(model_dir: Path, shape: str, vocab: int, rng, requests: int) -> dict:
    """64 clients, one 512-token sequence per request: batched (one and two engine calls in
    flight) vs one request per batch; and the engine alone on the same rows, 64 per call and
    one per call, the ratio's ceiling that the model itself sets (what batching can gain with
    no service cost at all)."""
    reqs = [[rng.integers(3, vocab, size=512)] for _ in range(requests)]
    rows = [r[0] for r in reqs]
    engine = dict(zip((64, 1), engine_tokens_per_s(model_dir, rows, 64, 1)))
    runs = {}
    settings = (
        ("batched", ()),
        ("batched_2_in_flight", ("--batches-in-flight", "2")),
        ("one_request_per_batch", UNBATCHED),
    )
    for name, extra in settings:
        with served(str(model_dir), WINDOW, *extra) as (_, url):
            runs[name] = concurrent_load(url, reqs, clients=64)
    return dict(
        bench="short_requests",
        model=shape,
        seq_len=512,
        window=WINDOW,
        clients=64,
        requests=requests,
        **{k: v for name, run in runs.items() for k, v in run.prefixed(name).items()},
        ratio=runs["batched"].tokens_per_s / runs["one_request_per_batch"].tokens_per_s,
        ratio_2_in_flight=(
            runs["batched_2_in_flight"].tokens_per_s / runs["one_request_per_batch"].tokens_per_s
        ),
        engine_64_rows_per_call_tokens_per_s=engine[64],
        engine_one_row_per_call_tokens_per_s=engine[1],
        engine_ratio=engine[64] / engine[1],
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-long", action="store_true", help="only the short-request rows")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    context = dict(machine(), command="python -m bench.service_bench " + " ".join(sys.argv[1:]))
    rows = []

    def record(row: dict) -> None:  # written as each row comes: a call cut off keeps them
        rows.append(dict(row, **context))
        print(rows[-1], flush=True)
        write_results("service_h200.json", rows)

    big = "llama-3.2-1b"
    model = build_model(big, 8192 + 1)
    model.save_pretrained(tmp / big)
    del model
    torch.cuda.empty_cache()
    if not args.skip_long:
        record(service_vs_engine(tmp / big, big, rng))
    record(short_requests(tmp / big, big, 128000, rng, requests=64 * 12))
    # The d512x4 scorer of bench/trainer_wait_bench.py: its forward is cheap, so more
    # requests for a stable rate.
    small = save_llama("small", tmp / "small", 8192 + 1, device="cuda")
    record(short_requests(small, "llama d512x4 (vocab 32000)", 32000, rng, requests=64 * 40))


if __name__ == "__main__":
    main()
