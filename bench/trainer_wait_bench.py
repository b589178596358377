"""How long does a training step wait for its scores, with prefetching?

A small scorer (`tokenweight serve`) and a larger trainee (`torchrun -m tokenweight.trainer`,
`--score-source service`) share one GPU; the trainer's metrics log each step's wait.

    python -m bench.trainer_wait_bench   ->  bench/results/trainer_wait_h200.json
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    child_env,
    machine,
    save_llama,
    served,
    steady_summary,
    trainer_command,
    write_results,
    write_tokens,
)
from tokenweight.trainer.metrics_log import read_metrics


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke run)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    save_llama("tiny" if args.tiny else "small", tmp / "scorer", args.seq_len)
    save_llama("tiny" if args.tiny else "1b-body", tmp / "trainee", args.seq_len)
    write_tokens(tmp / "data", args.seq_len, args.steps + 4)

    window = args.seq_len // 4
    with served(tmp / "scorer", window, device=args.device) as (_, url):
        command = trainer_command(1, tmp / "trainee", tmp / "data", tmp / "run", url,
                                  seq_len=args.seq_len, steps=args.steps, device=args.device,
                                  window=window)
        subprocess.run(command, check=True, env=child_env(OMP_NUM_THREADS="4"))
    records = read_metrics(tmp / "run" / "metrics.jsonl")
    row = dict(bench="trainer_scorer_wait", scorer="llama d512x4 (vocab 32000)",
               trainee="llama-3.2-1b body (vocab 32000)", seq_len=args.seq_len, window=window,
               **steady_summary(records),
               command="python -m bench.trainer_wait_bench " + " ".join(sys.argv[1:]))
    print(row)
    if not args.tiny:
        write_results("trainer_wait_h200.json", [dict(row, **machine())])


if __name__ == "__main__":
    main()
