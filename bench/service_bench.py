"""The service end to end on the GPU: gRPC throughput against the engine alone, and many
short requests with dynamic batching against batching turned off.

    python -m bench.service_bench   ->  bench/results/service_h200.json

Starts real `tokenweight serve` processes on loopback; clients are threads of this process
using the project's ScorerClient.
"""

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import build_model, machine, serve, write_results
from tokenweight.client import ScorerClient
from tokenweight.service.engine import ScoringEngine


def concurrent_throughput(url, requests: list[list[np.ndarray]], clients: int) -> float:
    """Tokens/s with `clients` threads, each with its own channel, sharing the request list."""
    work = list(enumerate(requests))
    lock = threading.Lock()
    client_objs = [ScorerClient(url, timeout=600) for _ in range(clients)]

    def worker(client):
        while True:
            with lock:
                if not work:
                    return
                _, req = work.pop()
            client.score(req)

    client_objs[0].score(requests[0])  # warm (compile, allocator)
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in client_objs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return sum(s.size for r in requests for s in r) / seconds


def main():
    shape, window, rows = "llama-3.2-1b", 2048, []
    tmp = Path(tempfile.mkdtemp())
    model = build_model(shape, 8192 + 1)
    model.save_pretrained(tmp / "model")
    del model
    torch.cuda.empty_cache()
    rng = np.random.default_rng(0)

    # 1. Long documents: the engine alone vs the service with 8 concurrent clients.
    long_reqs = [[rng.integers(3, 128000, size=8192) for _ in range(2)] for _ in range(12)]
    engine = ScoringEngine.from_pretrained(tmp / "model", device="cuda", window=window)
    engine.score(long_reqs[0])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for req in long_reqs:
        engine.score(req)
    torch.cuda.synchronize()
    engine_tps = sum(s.size for r in long_reqs for s in r) / (time.perf_counter() - start)
    del engine
    torch.cuda.empty_cache()
    proc, url = serve(str(tmp / "model"), window)
    service_tps = concurrent_throughput(url, long_reqs, clients=8)
    rows.append(dict(bench="service_vs_engine", model=shape, seq_len=8192, window=window,
                     engine_tokens_per_s=engine_tps, service_tokens_per_s=service_tps,
                     ratio=service_tps / engine_tps, clients=8))
    print(rows[-1], flush=True)

    # 2. Many short requests: 64 clients, one 512-token sequence per request.
    short_reqs = [[rng.integers(3, 128000, size=512)] for _ in range(64 * 12)]
    batched = concurrent_throughput(url, short_reqs, clients=64)
    proc.terminate(), proc.wait(60)
    proc, url = serve(str(tmp / "model"), window, "--batch-tokens", "512", "--max-wait-ms", "0")
    one_at_a_time = concurrent_throughput(url, short_reqs, clients=64)
    proc.terminate(), proc.wait(60)
    rows.append(dict(bench="short_requests", model=shape, seq_len=512, clients=64,
                     requests=len(short_reqs), batched_tokens_per_s=batched,
                     one_request_per_batch_tokens_per_s=one_at_a_time, ratio=batched / one_at_a_time))
    print(rows[-1], flush=True)
    context = dict(machine(), command="python -m bench.service_bench")
    write_results("service_h200.json", [dict(r, **context) for r in rows])


if __name__ == "__main__":
    main()
