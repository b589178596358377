"""The batcher's schedule alone: closed-loop clients against an engine stand-in that holds no
GIL while it "runs" (it sleeps for the time a GPU would take), so what is measured is how
much of the engine's rate the batching schedule delivers when the event loop spends host time
on every request (decoding it, answering it) between engine calls.

    python -m bench.batcher_sim  ->  bench/results/batcher_sim_cpu.json

The real `Batcher` on a real event loop; each client decodes a request (busy host time), waits
for its answer, encodes the reply (busy host time) and sends again. Rows: one batch in flight;
two with the queue split over the free slots (the batcher's rule); two without the split (the
rule switched off, as the batcher was before it). The GPU rows are `bench/service_bench.py`'s.
"""

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.common import machine, write_results
from tokenweight.service.batcher import Batcher, QueueLimits
from tokenweight.service.engine import ALL_OUTPUTS
from tokenweight.service.metrics import Metrics


class SleepingEngine:
    """`run` takes `per_call_s` plus the batch's tokens at `tokens_per_s`, off the GIL."""

    window, stride = 2048, 1536

    def __init__(self, tokens_per_s: float, per_call_s: float):
        self.tokens_per_s, self.per_call_s = tokens_per_s, per_call_s
        self.calls = 0

    def forward_tokens(self, lengths, window, stride, outputs) -> int:
        return sum(lengths)  # sequences shorter than the window: one pass each

    def run(self, jobs):
        self.calls += 1
        time.sleep(self.per_call_s + sum(j.tokens.numel() for j in jobs) / self.tokens_per_s)
        return [None] * len(jobs)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def closed_loop(args, engine_tokens_per_s: float, batches_in_flight: int, split: bool) -> dict:
    engine = SleepingEngine(engine_tokens_per_s, args.per_call_ms / 1e3)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(
            "sim", engine, executor, Metrics(),
            batch_tokens=args.batch_tokens, max_wait=args.max_wait_ms / 1e3,
            limits=QueueLimits(requests=1 << 20, work=1 << 40, client_share=1.0),
            batches_in_flight=batches_in_flight,
        )
        if not split:  # the rule switched off: every batch may take all that is queued
            batcher._batch_limit = lambda: batcher.batch_tokens
        batcher.start()
        sequence, host_s = np.arange(args.tokens), args.host_ms_per_request / 1e3
        answered = 0
        stop = time.perf_counter() + args.seconds

        async def client(i: int) -> None:
            nonlocal answered
            while time.perf_counter() < stop:
                busy(host_s / 2)  # the request decoded
                await batcher.score([sequence], 2048, 1536, ALL_OUTPUTS, client=f"c{i}")
                busy(host_s / 2)  # the answer encoded
                answered += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(args.clients)))
        elapsed = time.perf_counter() - started
        await batcher.close()
    tokens_per_s = answered * args.tokens / elapsed
    return dict(
        engine_tokens_per_s=engine_tokens_per_s,
        batches_in_flight=batches_in_flight,
        split=split,
        tokens_per_s=tokens_per_s,
        of_engine=tokens_per_s / engine_tokens_per_s,
        engine_calls=engine.calls,
        requests_per_call=answered / max(engine.calls, 1),
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per request")
    parser.add_argument("--engine-tokens-per-s", type=float, nargs="+", default=[170_000, 700_000],
                        help="engine rates on full batches, one run each (default: about the 1B "
                        "shape's on 512-token rows on an H200 at ~60%% MFU, and a small scorer's)")
    parser.add_argument("--per-call-ms", type=float, default=2.0, help="fixed cost per engine call")
    parser.add_argument("--host-ms-per-request", type=float, default=0.5,
                        help="event-loop time per request (decode + answer); ~0.6 ms measured "
                        "by bench/service_overhead.py on a 2-core CPU")
    parser.add_argument("--batch-tokens", type=int, default=131072, help="the CUDA default")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default="batcher_sim_cpu.json")
    args = parser.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("engine_tokens_per_s", "out")}
    context = dict(settings, **machine(), command="python -m bench.batcher_sim " + " ".join(
        sys.argv[1:] if argv is None else argv))
    rows = []
    for rate in args.engine_tokens_per_s:
        for in_flight, split in ((1, True), (2, True), (2, False)):
            row = dict(asyncio.run(closed_loop(args, rate, in_flight, split)), **context)
            rows.append(row)
            print(f"engine {rate:9,.0f} tokens/s, in flight {in_flight}, split {split!s:5}: "
                  f"{row['tokens_per_s']:9,.0f} tokens/s ({row['of_engine']:.0%} of the engine), "
                  f"{row['requests_per_call']:.1f} requests per engine call", flush=True)
    write_results(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
