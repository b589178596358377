"""Concurrent gRPC load on a running scorer: throughput and per-request latency percentiles."""

import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from tokenweight.client import ScorerClient


@dataclass
class LoadResult:
    tokens_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    seconds: float

    def prefixed(self, prefix: str) -> dict:
        """The fields as `prefix_name` keys, for one flat JSON row with several runs."""
        return {f"{prefix}_{name}": value for name, value in asdict(self).items()}


def concurrent_load(url: str, requests: list[list[np.ndarray]], clients: int) -> LoadResult:
    """`clients` threads, each with its own channel, take requests from a shared list until it
    is empty; the latency of a request is its `score` call, as the client sees it."""
    work = list(requests)
    lock = threading.Lock()
    latencies: list[float] = []
    client_objs = [ScorerClient(url, timeout=600) for _ in range(clients)]

    def worker(client):
        while True:
            with lock:
                if not work:
                    return
                req = work.pop()
            start = time.perf_counter()
            client.score(req)
            latencies.append(time.perf_counter() - start)  # list.append is atomic

    for client in client_objs:
        client.score(requests[0])  # warm: channels connected, compilation and allocator done
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in client_objs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for client in client_objs:
        client.close()
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return LoadResult(
        tokens_per_s=sum(s.size for r in requests for s in r) / seconds,
        requests_per_s=len(requests) / seconds,
        p50_ms=float(p50),
        p99_ms=float(p99),
        seconds=seconds,
    )
