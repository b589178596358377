"""Training on several GPUs of one host, with the scorer service on GPUs of its own.

1. Scaling: `tokenweight serve` on GPU 0, `torchrun` trainer ranks (`--score-source service`)
   on GPUs 1..N for N = 1 .. G-1, with DDP and with FSDP2: tokens/s per N, scaling efficiency
   against N times the smallest run, and the share of each step spent waiting for scores.
2. Replicas: two scorers (GPUs 0 and 1) behind the client's round-robin against one, for the
   same trainer ranks on the other GPUs (on a 2-GPU host both replicas share GPU 0); then one
   replica SIGKILLed mid-run and left down: every step must still train, each on its own batch
   with that batch's scores, checked from the trainer's --dump-weights records against the
   surviving replica.

    source bench/device_env.sh && python -m bench.multigpu_bench   ->  bench/results/multigpu_h200.json
    python -m bench.multigpu_bench --cpu-smoke   # gloo, tiny models, CPU replicas, 1-2 ranks

The scorer defaults to a frozen model of the trainee's own shape (the paper's frozen setup),
so its share of the work is the real one; `--scorer small` serves a d512x4 instead.
"""

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    child_env,
    machine,
    save_llama,
    serve,
    steady_summary,
    trainer_command,
    write_results,
    write_tokens,
)
from tokenweight.client import ScorerClient
from tokenweight.trainer.data import RankBatches, TokenShards, batch_token_hash
from tokenweight.trainer.metrics_log import METRICS_FILE, read_metrics
from tokenweight.trainer.weighting import WeightingConfig, compute_weights


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, help="GPUs on the host (default: all visible)")
    p.add_argument("--ranks", type=int, nargs="+", help="trainer ranks to measure (default 1 .. G-1)")
    p.add_argument("--parallel", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--parts", nargs="+", default=["scaling", "replicas"], choices=["scaling", "replicas"])
    p.add_argument("--scorer", default="1b-body", choices=["1b-body", "small"])
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--steps", type=int, default=20, help="steps per run; the replica-kill run takes 3x")
    p.add_argument("--out", default="multigpu_h200.json")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="CPU only (gloo): tiny models, 6 steps, 3 pretend GPUs; writes no results")
    args = p.parse_args()
    args.cpu = args.cpu_smoke
    if args.cpu:
        args.gpus, args.seq_len, args.steps, args.scorer = args.gpus or 3, 64, 6, "tiny"
    args.gpus = args.gpus or torch.cuda.device_count()
    if args.gpus < 2:
        p.error(f"needs at least 2 GPUs (one scorer, one trainer rank); found {args.gpus}")
    args.ranks = args.ranks or list(range(1, args.gpus))
    if max(args.ranks) > args.gpus - 1:
        p.error(f"--ranks: at most {args.gpus - 1} trainer ranks beside the scorer's GPU")
    args.device = "cpu" if args.cpu else "cuda"
    args.window = args.seq_len // 4
    args.warmup = 1 if args.cpu else 3  # steps left out of the summaries (compile, allocator)
    return args


def prepare(args) -> None:
    """Random-weight models and random-token data under a fresh temp dir (args.tmp)."""
    args.tmp = Path(tempfile.mkdtemp(prefix="multigpu-"))
    trainee = "tiny" if args.cpu else "1b-body"
    args.trainee_dir = save_llama(trainee, args.tmp / "trainee", args.seq_len)
    # Same shape, same seed: the scorer is the trainee's starting point, saved once.
    same = args.scorer == trainee
    args.scorer_dir = args.trainee_dir if same else save_llama(args.scorer, args.tmp / "scorer", args.seq_len)
    # Enough rows that no run (the longest is the replica kill run) wraps into a second epoch.
    rows = max(args.gpus - 1, 1) * (3 * args.steps + 4)
    args.data = write_tokens(args.tmp / "data", args.seq_len, rows)


def gpu_env(args, gpus: list[int]) -> dict:
    # Two CPU cores here: one thread per process keeps ranks and scorers from fighting.
    threads = {"OMP_NUM_THREADS": "1"} if args.cpu else {}
    return child_env(CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)), **threads)


@contextlib.contextmanager
def scorers(args, gpus: list[int]):
    """One `tokenweight serve` per entry of `gpus`; yields their (process, URL) pairs."""
    started = []
    try:
        for gpu in gpus:
            started.append(serve(args.scorer_dir, args.window, device=args.device, env=gpu_env(args, [gpu])))
        yield started
    finally:
        for proc, _ in started:
            proc.terminate()  # a no-op for a replica killed on purpose
            proc.wait(60)


def start_trainer(args, ranks: int, first_gpu: int, urls: list[str], parallel: str, out: Path,
                  steps: int, *extra) -> subprocess.Popen:
    """torchrun with `ranks` ranks on GPUs first_gpu.., its log in OUT/trainer.log."""
    out.mkdir(parents=True)
    command = trainer_command(ranks, args.trainee_dir, args.data, out, ",".join(urls), seq_len=args.seq_len,
                              steps=steps, device=args.device, window=args.window,
                              extra=("--parallel", parallel, *extra))
    env = gpu_env(args, list(range(first_gpu, first_gpu + ranks)))
    with open(out / "trainer.log", "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish(proc: subprocess.Popen, out: Path) -> list[dict]:
    """Wait for the trainer; its metrics records, or an error with the end of its log."""
    if proc.wait() != 0:
        raise RuntimeError(f"trainer exited with {proc.returncode}:\n" + (out / "trainer.log").read_text()[-6000:])
    return read_metrics(out / METRICS_FILE)


def measure(args, ranks: int, first_gpu: int, urls: list[str], parallel: str) -> dict:
    out = args.tmp / f"run-{parallel}-{ranks}ranks-{len(urls)}scorers"
    records = finish(start_trainer(args, ranks, first_gpu, urls, parallel, out, args.steps), out)
    shutil.rmtree(out)  # a 1B run leaves a checkpoint and an export (~20 GB) behind
    row = dict(parallel=parallel, ranks=ranks, scorers=len(urls), **steady_summary(records, args.warmup))
    print(row, flush=True)
    return row


def scaling(args, rows: list[dict]) -> None:
    with scorers(args, [0]) as started:
        urls = [url for _, url in started]
        for parallel in args.parallel:
            measured = [measure(args, n, 1, urls, parallel) for n in sorted(args.ranks)]
            base = measured[0]
            for row in measured:
                ideal = base["tokens_per_s"] * row["ranks"] / base["ranks"]
                rows.append(dict(bench="scaling", scaling_efficiency=row["tokens_per_s"] / ideal, **row))


def replicas(args, rows: list[dict]) -> None:
    # Trainer ranks on the GPUs the two replicas leave free; a 2-GPU host has one rank and
    # both replicas on GPU 0, which still shows failover, not a throughput gain.
    replica_gpus, first = ([0, 1], 2) if args.gpus >= 3 else ([0, 0], 1)
    ranks, parallel = args.gpus - first, args.parallel[0]
    context = dict(parallel=parallel, ranks=ranks, scorers=2, replica_gpus=replica_gpus)
    with scorers(args, replica_gpus[:1]) as started:
        one = measure(args, ranks, first, [started[0][1]], parallel)
        rows.append(dict(bench="replicas", **one, replica_gpus=replica_gpus[:1]))
    with scorers(args, replica_gpus) as started:
        two = measure(args, ranks, first, [url for _, url in started], parallel)
        rows.append(dict(bench="replicas", **two, replica_gpus=replica_gpus,
                         speedup_vs_one_replica=two["tokens_per_s"] / one["tokens_per_s"]))
        rows.append(dict(bench="replica_killed", **context, **replica_killed(args, ranks, first, started, parallel)))


def replica_killed(args, ranks: int, first: int, started, parallel: str) -> dict:
    """SIGKILL the second replica once a third of the steps are done; it stays down."""
    steps, out = 3 * args.steps, args.tmp / "replica-killed"
    urls = [url for _, url in started]
    proc = start_trainer(args, ranks, first, urls, parallel, out, steps, "--dump-weights", out / "dump")
    metrics = out / METRICS_FILE
    while not (metrics.exists() and len(read_metrics(metrics)) >= args.steps):
        if proc.poll() is not None:
            finish(proc, out)  # raises with the log if it failed
            raise RuntimeError(f"the trainer finished all {steps} steps before the kill")
        time.sleep(0.01)
    started[1][0].kill()
    started[1][0].wait(60)
    killed_after = len(read_metrics(metrics))
    if killed_after >= steps:
        raise RuntimeError(f"the replica was killed only after the last of {steps} steps")
    records = finish(proc, out)
    log = (out / "trainer.log").read_text()
    row = dict(steps=steps, killed_after_step=killed_after,
               failovers_logged=log.count("scorer unreachable"),
               **check_every_batch(args, out, ranks, records, steps, survivor=urls[0]),
               **steady_summary(records, args.warmup))
    print(row, flush=True)
    return row


def check_every_batch(args, out: Path, ranks: int, records: list[dict], steps: int, survivor: str) -> dict:
    """No step lost or reordered, none trained with another batch's scores.

    Each rank's batch of each step is recomputed from the data order (RankBatches is a pure
    function of seed, rank and step) and must be the one trained, with weights that are exactly
    `compute_weights` of the scores it received; either failing raises. Those weights are then
    compared with the weights of the batch rescored on the surviving replica: the largest
    difference is reported, with whether it is within tolerance (1e-5 on CPU, 1e-2 on the GPU
    in bf16), since the service's dynamic batching groups requests differently, which moves
    the last bits.
    """
    if [r["step"] for r in records] != list(range(1, steps + 1)):
        raise AssertionError(f"steps logged: {[r['step'] for r in records]}")
    shards, config = TokenShards(args.data), WeightingConfig.from_preset("dense")

    def weights(loss_long, loss_short) -> np.ndarray:
        return compute_weights(torch.as_tensor(loss_long), torch.as_tensor(loss_short), config).numpy()

    worst = 0.0
    with ScorerClient(survivor, timeout=600) as client:
        for rank in range(ranks):
            order = RankBatches(shards, 1, rank, ranks, seed=0)
            for step in range(1, steps + 1):
                batch = order.batch_at(step - 1)
                with np.load(out / "dump" / f"step{step:06d}_micro0_rank{rank}.npz") as dump:
                    same = np.array_equal(dump["indices"], batch.indices)
                    if not same or str(dump["token_hash"]) != batch_token_hash(batch.tokens):
                        raise AssertionError(f"rank {rank} trained step {step} on another batch")
                    if not np.array_equal(dump["weights"], weights(dump["loss_long"], dump["loss_short"])):
                        raise AssertionError(f"rank {rank} step {step}: weights not from the scores received")
                    result = client.score(list(batch.tokens), window=args.window)
                    long, short = (-np.stack([getattr(r, name) for r in result.results])
                                   for name in ("logp_long", "logp_short"))
                    worst = max(worst, float(np.abs(dump["weights"] - weights(long, short)).max()))
    tolerance = 1e-5 if args.cpu else 1e-2
    return dict(steps_trained=steps, batches_checked=ranks * steps, max_abs_weight_diff=worst,
                weights_match=worst <= tolerance)


def print_table(rows: list[dict]) -> None:
    columns = ("bench", "parallel", "scorers", "ranks", "tokens_per_s", "scaling_efficiency",
               "speedup_vs_one_replica", "wait_fraction", "max_step_wait_fraction", "killed_after_step",
               "weights_match")
    print(" | ".join(columns))
    for row in rows:
        cells = (row.get(c, "") for c in columns)
        print(" | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells))


def main():
    args = parse_args()
    prepare(args)
    rows = []
    try:
        if "scaling" in args.parts:
            scaling(args, rows)
        if "replicas" in args.parts:
            replicas(args, rows)
    finally:  # a failure late in the run keeps the rows measured before it
        print_table(rows)
        shutil.rmtree(args.tmp)
        if rows and not args.cpu:
            context = dict(machine(), gpus=args.gpus, seq_len=args.seq_len, window=args.window,
                           scorer=args.scorer, trainee="1b-body", batch_size_per_rank=1,
                           command="python -m bench.multigpu_bench " + " ".join(sys.argv[1:]))
            write_results(args.out, [dict(row, **context) for row in rows])


if __name__ == "__main__":
    main()
