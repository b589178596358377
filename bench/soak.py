"""Soak: well-behaved clients keep their answers and their latency while two others abuse
the same server.

    python -m bench.soak --seconds 60 --out bench/results/soak_cpu.json

A real `tokenweight serve` process on loopback (a tiny random Llama on the CPU, scores
independent of batch company) and 64 clients: 62 well-behaved ones, a third each unary gRPC,
ScoreStream and HTTP, each sending a request of one or two sequences every `pace_s` seconds
(on average); a stream that floods the server without waiting for answers; and a client
sending stride-1 requests with 1 s deadlines. The abusers run in a process of their own, so
the latency measured is the server's, not this process's GIL.

Phases: references (each sequence scored alone), `alone` (one client of each kind, one
request at a time), `baseline` (the well-behaved clients without the abusers), `soak` (all
64). It passes when every well-behaved request of the soak succeeds with scores
bit-identical to the references, each kind's p99 latency is within 3x its baseline p99, and
the server's RSS does not grow past its bound. The server's RSS (and its children's) is
sampled throughout.
"""

import argparse
import itertools
import json
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np

from tokenweight import wire
from tokenweight.v1 import scorer_pb2_grpc

READY = re.compile(r"ready: grpc=127\.0\.0\.1:(\d+) http=127\.0\.0\.1:(\d+)")
KINDS = ("unary", "stream", "http")
WINDOW = 32
# Seconds the abusers start before the soak is measured (and stop after).
ABUSE_LEAD_S = 2.0
# Each client on its own connection: the server shares its queue by connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_http_proxy", 0)]


@dataclass
class SoakConfig:
    seconds: float = 60.0  # the soak phase
    clients: int = 64  # in all: the well-behaved ones and the two abusers
    pace_s: float = 2.0  # mean seconds between a well-behaved client's requests
    # The well-behaved clients without the abusers; None: as long as the soak, so both p99s
    # are read from about as many requests (a short baseline's p99 is its maximum).
    baseline_s: float | None = None
    alone_requests: int = 40  # per kind, one at a time
    latency_factor: float = 3.0  # soak p99 within this many times the baseline p99
    rss_growth: float = 1.5  # soak peak RSS within this many times the RSS after the baseline
    # Server settings: batch units of ~2 sequences (the flooder's units interleave with
    # everyone's), and a forward-token bound that a stride-1 request of more than ~55 tokens
    # exceeds (refused at once, naming the stride that fits).
    batch_tokens: int = 256
    max_forward_tokens: int = 1000
    seed: int = 0


@dataclass
class Tally:
    """One kind's requests: latencies of the answered ones, and what went wrong."""

    latencies: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    mismatches: int = 0

    def summary(self) -> dict:
        lat = np.array(self.latencies) if self.latencies else np.zeros(1)
        return {
            "requests": len(self.latencies) + len(self.errors),
            "ok": len(self.latencies),
            "errors": len(self.errors),
            "first_errors": self.errors[:5],
            "score_mismatches": self.mismatches,
            "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99)),
            "max_s": float(lat.max()),
        }


class Server:
    """`tokenweight serve` of the model as a process; its ports once ready."""

    def __init__(self, model_dir: Path, config: SoakConfig):
        cmd = [
            sys.executable, "-P", "-m", "tokenweight.cli", "serve", "--model", str(model_dir),
            "--window", str(WINDOW), "--device", "cpu", "--dtype", "float32",
            "--batch-invariant", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
            "--batch-tokens", str(config.batch_tokens), "--max-wait-ms", "2",
            "--max-forward-tokens", str(config.max_forward_tokens),
        ]  # fmt: skip
        # One thread per op: the machine is shared, and the engine is one thread anyway.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"}
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        for line in self.proc.stderr:
            self.log.append(line)
            if match := READY.search(line):
                self.grpc_port, self.http_port = map(int, match.groups())
                threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
                return
        raise RuntimeError("the server exited before it was ready:\n" + "".join(self.log[-30:]))

    def rss_mb(self) -> float:
        """Resident memory of the server and its child processes."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        return total / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _stub(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
    return channel, scorer_pb2_grpc.ScorerStub(channel)


class WellBehaved:
    """One client of a kind: sends a request, checks its scores bit for bit, waits, repeats."""

    def __init__(self, kind: str, server: Server, pool: list[np.ndarray], references, seed: int):
        self.kind, self.pool, self.references = kind, pool, references
        self.rng = np.random.default_rng(seed)
        if kind == "http":
            self.http = httpx.Client(
                base_url=f"http://127.0.0.1:{server.http_port}", trust_env=False, timeout=30
            )
        else:
            self.channel, self.stub = _stub(server.grpc_port)
        if kind == "stream":
            self.outbox: queue.Queue = queue.Queue()
            self.answers = self.stub.ScoreStream(iter(self.outbox.get, None), timeout=3600)

    def request(self, tally: Tally) -> None:
        picked = self.rng.choice(len(self.pool), self.rng.integers(1, 3), replace=False)
        sequences = [self.pool[i] for i in picked]
        started = time.perf_counter()
        try:
            scores = self._send(sequences)
        except Exception as exc:  # any failure of a well-behaved request is a finding
            tally.errors.append(f"{self.kind}: {type(exc).__name__}: {exc}"[:300])
            return
        tally.latencies.append(time.perf_counter() - started)
        if any(
            got.tobytes() != self.references[i].tobytes() for got, i in zip(scores, picked)
        ):
            tally.mismatches += 1

    def _send(self, sequences) -> list[np.ndarray]:
        if self.kind == "http":
            response = self.http.post(
                "/v1/score", json={"token_ids": [s.tolist() for s in sequences]}
            )
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            return [np.array(r["score"], np.float32) for r in response.json()["results"]]
        request = wire.build_request(sequences, request_id=str(self.rng.integers(1 << 62)))
        if self.kind == "unary":
            answer = self.stub.Score(request, timeout=30)
        else:
            self.outbox.put(request)
            answer = next(self.answers)
            if answer.HasField("error"):
                raise RuntimeError(f"stream error {answer.error.code}: {answer.error.message}")
        return [r.score for r in wire.parse_response(answer).results]

    def run_until(self, stop: threading.Event, tally: Tally, pace_s: float) -> None:
        # A random start, then exponential gaps: arrivals spread out, as independent clients'.
        while not stop.wait(self.rng.exponential(pace_s)):
            self.request(tally)

    def close(self) -> None:
        if self.kind == "http":
            self.http.close()
            return
        if self.kind == "stream":
            self.outbox.put(None)
        self.channel.close()


def abuse(grpc_port: int, seconds: float, seed: int) -> dict:
    """The two abusers (run in a process of their own, `--abuse PORT`) for `seconds`: a
    flooding ScoreStream and stride-1 requests with 1 s deadlines. The count of each outcome."""
    stop = threading.Event()
    counts = {"flood": {}, "stride1": {}}
    lock = threading.Lock()

    def count(who: str, outcome: str) -> None:
        with lock:
            counts[who][outcome] = counts[who].get(outcome, 0) + 1

    def flood() -> None:
        rng = np.random.default_rng(seed)
        channel, stub = _stub(grpc_port)
        requests = (
            wire.build_request(
                [rng.integers(3, 32000, 128) for _ in range(2)], request_id=f"flood-{i}"
            )
            for i in itertools.takewhile(lambda _: not stop.is_set(), itertools.count())
        )
        try:
            for answer in stub.ScoreStream(requests, timeout=seconds + 5):
                code = grpc.StatusCode.OK.name
                if answer.HasField("error"):
                    code = next(c.name for c in grpc.StatusCode if c.value[0] == answer.error.code)
                count("flood", code)
        except grpc.RpcError as exc:
            count("flood", f"stream ended: {exc.code().name}")
        channel.close()

    def stride_one() -> None:
        rng = np.random.default_rng(seed + 1)
        channel, stub = _stub(grpc_port)
        while not stop.is_set():
            length = int(rng.integers(24, 400))
            request = wire.build_request([rng.integers(3, 32000, length)], stride=1)
            try:
                stub.Score(request, timeout=1.0)
                count("stride1", "OK")
            except grpc.RpcError as exc:
                count("stride1", exc.code().name)
        channel.close()

    threads = [threading.Thread(target=flood), threading.Thread(target=stride_one)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return counts


def _phase(clients: list[WellBehaved], seconds: float, pace_s: float, sample) -> dict:
    tallies = {kind: Tally() for kind in KINDS}
    stop = threading.Event()
    threads = [
        threading.Thread(target=c.run_until, args=(stop, tallies[c.kind], pace_s)) for c in clients
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sample()
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    return {kind: tally.summary() for kind, tally in tallies.items()}


def run_soak(config: SoakConfig, model_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    pool = [rng.integers(3, 32000, int(n)) for n in rng.integers(40, 160, 48)]
    server = Server(model_dir, config)
    rss: list[tuple[str, float, float]] = []
    t0 = time.monotonic()
    phase = "references"

    def sample():
        rss.append((phase, round(time.monotonic() - t0, 2), round(server.rss_mb(), 1)))

    clients: list[WellBehaved] = []
    try:
        channel, stub = _stub(server.grpc_port)
        references = [
            wire.parse_response(stub.Score(wire.build_request([seq]), timeout=60)).results[0].score
            for seq in pool
        ]
        channel.close()
        well_behaved = config.clients - 2
        clients = [
            WellBehaved(KINDS[i % 3], server, pool, references, config.seed + 1 + i)
            for i in range(well_behaved)
        ]
        phase = "alone"
        alone = {}
        for kind in KINDS:
            tally = Tally()
            client = next(c for c in clients if c.kind == kind)
            for _ in range(config.alone_requests):
                client.request(tally)
            alone[kind] = tally.summary()
        for client in clients:  # connections set up before anything is timed
            client.request(Tally())
        sample()
        phase = "baseline"
        baseline_s = config.seconds if config.baseline_s is None else config.baseline_s
        baseline = _phase(clients, baseline_s, config.pace_s, sample)
        rss_after_baseline = server.rss_mb()
        phase = "soak"
        abusers = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--abuse", str(server.grpc_port),
             "--seconds", str(config.seconds + 2 * ABUSE_LEAD_S), "--seed", str(config.seed)],
            cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(ABUSE_LEAD_S)  # the abusers are at it before the measurement starts
        soak = _phase(clients, config.seconds, config.pace_s, sample)
        abuse_counts = json.loads(abusers.communicate(timeout=120)[0])
    finally:
        for client in clients:
            client.close()
        server.stop()
    soak_rss = [mb for p, _, mb in rss if p == "soak"]
    result = {
        "settings": asdict(config),
        "server_flags": "--batch-invariant --window 32 --batch-tokens "
        f"{config.batch_tokens} --max-forward-tokens {config.max_forward_tokens} --max-wait-ms 2",
        "well_behaved_clients": {kind: sum(c.kind == kind for c in clients) for kind in KINDS},
        "alone": alone,
        "baseline": baseline,
        "soak": soak,
        "abusers": abuse_counts,
        "rss_mb": {
            "after_baseline": round(rss_after_baseline, 1),
            "soak_peak": max(soak_rss, default=0.0),
            "soak_last": soak_rss[-1] if soak_rss else 0.0,
            "samples": rss,
        },
    }
    result["failures"] = failures(result, config)
    return result


def failures(result: dict, config: SoakConfig) -> list[str]:
    """What the soak promises and did not keep (empty when it passed)."""
    found = []
    for kind in KINDS:
        soak, base = result["soak"][kind], result["baseline"][kind]
        if soak["errors"] or soak["score_mismatches"] or not soak["ok"]:
            found.append(f"{kind}: {soak['errors']} errors, {soak['score_mismatches']} mismatches")
        if soak["p99_s"] > config.latency_factor * base["p99_s"]:
            found.append(
                f"{kind}: p99 {soak['p99_s'] * 1e3:.1f} ms under abuse, more than "
                f"{config.latency_factor}x the baseline's {base['p99_s'] * 1e3:.1f} ms"
            )
    rss = result["rss_mb"]
    if rss["soak_peak"] > config.rss_growth * rss["after_baseline"]:
        found.append(f"RSS {rss['soak_peak']} MB, past {config.rss_growth}x {rss['after_baseline']}")
    flood, stride1 = result["abusers"]["flood"], result["abusers"]["stride1"]
    # The flood is held back by the stream's in-flight limit (the server stops reading it)
    # and its client share; it must still have been served, i.e. have loaded the server.
    if not flood.get("OK"):
        found.append(f"the flooding stream got no answers: {flood}")
    if not stride1.get("INVALID_ARGUMENT"):
        found.append(f"no stride-1 request was refused for its work: {stride1}")
    return found


def tiny_model(directory: Path) -> Path:
    from bench.common import save_llama

    return save_llama("tiny", directory / "tiny", max_positions=1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=SoakConfig.seconds, help="soak phase")
    parser.add_argument("--clients", type=int, default=SoakConfig.clients, help="in all")
    parser.add_argument("--out", default="bench/results/soak_cpu.json", help="results JSON")
    parser.add_argument(
        "--pace", type=float, default=SoakConfig.pace_s, help="mean s between a client's requests"
    )
    parser.add_argument("--seed", type=int, default=SoakConfig.seed)
    parser.add_argument("--abuse", type=int, metavar="PORT", help="be the abusers of this gRPC port")
    args = parser.parse_args()
    if args.abuse:
        print(json.dumps(abuse(args.abuse, args.seconds, args.seed + 999)))
        return 0
    config = SoakConfig(
        seconds=args.seconds, clients=args.clients, pace_s=args.pace, seed=args.seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = run_soak(config, tiny_model(Path(tmp)))
    import torch

    result = {
        "command": " ".join(["python -m bench.soak", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "host_cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        **result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("soak", "abusers", "failures")}, indent=1))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
