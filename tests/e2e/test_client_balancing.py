"""Several scorer replicas behind one `ipv4:` target: gRPC's resolver, `round_robin` and
client-side health checking spread the calls, skip replicas that are not SERVING, and a
replica killed mid-run costs no request."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tokenweight.client import NO_RETRY, ScorerClient

from conftest import ThreadedServer
from train_helpers import Scorer, save_tiny_model

SCORE_OK = {"method": "Score", "code": "OK"}


def ipv4_target(ports) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)


def warm_up(client: ScorerClient, counts, serving: int) -> None:
    """Call until `serving` replicas have answered: gRPC connects to the replicas in parallel
    and round-robins over those READY so far, so the first calls may favour the quickest."""
    deadline = time.monotonic() + 20
    baseline = counts()
    while sum(c > b for c, b in zip(counts(), baseline)) < serving:
        assert time.monotonic() < deadline, counts()
        client.score([[1, 5, 9, 4, 7]])


def test_round_robin_skips_replicas_that_are_not_serving(tiny_scorers):
    """A replica whose health says NOT_SERVING (its model still loading) gets no call, even
    with retries off; once it reports SERVING it gets its share."""
    servers = [ThreadedServer(tiny_scorers) for _ in range(2)]
    loading = ThreadedServer(tiny_scorers, load=False)
    servers.append(loading)
    try:
        ports = [s.server.grpc.port for s in servers]

        def counts():
            return [s.metric("tokenweight_grpc_requests_total", **SCORE_OK) for s in servers]

        with ScorerClient(ipv4_target(ports), retry=NO_RETRY) as client:
            warm_up(client, counts, serving=2)
            before = counts()
            for _ in range(12):
                client.score([[1, 5, 9, 4, 7]])
            assert [a - b for a, b in zip(counts(), before)] == [6, 6, 0], (before, counts())

            loading.call(loading.server.load(tiny_scorers))
            deadline = time.monotonic() + 10
            while loading.metric("tokenweight_grpc_requests_total", **SCORE_OK) == 0:
                assert time.monotonic() < deadline, "the loaded replica never got a call"
                client.score([[1, 5, 9, 4, 7]])
    finally:
        for s in servers:
            s.close()


def test_the_async_client_balances_the_same_way(tiny_scorers):
    import asyncio

    from tokenweight.client import AsyncScorerClient

    servers = [ThreadedServer(tiny_scorers) for _ in range(2)]

    def counts():
        return [s.metric("tokenweight_grpc_requests_total", **SCORE_OK) for s in servers]

    async def run() -> None:
        async with AsyncScorerClient(ipv4_target(s.server.grpc.port for s in servers)) as client:
            while min(counts()) == 0:  # warm up: both replicas READY
                await client.score([[1, 5, 9, 4, 7]])
            before = counts()
            for _ in range(8):
                await client.score([[1, 5, 9, 4, 7]])
            assert [a - b for a, b in zip(counts(), before)] == [4, 4]

    try:
        asyncio.run(asyncio.wait_for(run(), 30))
    finally:
        for s in servers:
            s.close()


def test_tls_options_are_refused_for_a_balanced_target():
    with pytest.raises(ValueError, match="load-balanced targets are plaintext"):
        ScorerClient("ipv4:127.0.0.1:1,127.0.0.1:2", root_certificates=b"pem")


def test_three_replicas_one_killed_mid_run_no_request_lost(tmp_path):
    model = save_tiny_model(tmp_path / "llama")
    replicas = [Scorer(model, http=True) for _ in range(3)]
    rng = np.random.default_rng(0)
    requests = [[rng.integers(3, 128, size=40) for _ in range(2)] for _ in range(60)]
    try:
        with ScorerClient(replicas[0].url) as one:
            expected = [one.score(r, outputs=("score",)) for r in requests]
        with ScorerClient(ipv4_target(r.port for r in replicas)) as client:
            warm_up(client, lambda: [r.score_calls() for r in replicas], serving=3)
            first = [r.score_calls() for r in replicas]
            got = [client.score(r, outputs=("score",)) for r in requests[:30]]
            spread = [r.score_calls() - f for r, f in zip(replicas, first)]
            assert spread == [10, 10, 10], spread  # round robin over all three

            # The rest from 4 threads, the victim SIGKILLed while calls are in flight.
            victim = replicas[1]
            with ThreadPoolExecutor(4) as pool:
                later = [pool.submit(client.score, r, outputs=("score",)) for r in requests[30:]]
                while sum(f.done() for f in later) < 6:
                    time.sleep(0.005)
                victim.kill()
                got += [f.result() for f in later]
        # Both survivors took over some of the victim's share ...
        after = [r.score_calls() - f for r, f in zip(replicas, first) if r is not victim]
        assert min(after) > 10, after
        # ... and every request was answered, with its own scores.
        for want, result in zip(expected, got, strict=True):
            for a, b in zip(want.results, result.results, strict=True):
                np.testing.assert_allclose(a.score, b.score, rtol=0, atol=1e-5)
    finally:
        for r in replicas:
            r.close()
