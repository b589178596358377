"""The trainer's own speed on one GPU: `python -m tokenweight.trainer` (torchrun, one rank) on
random-weight Llama shapes and synthetic prepared shards, plain and with each speed option.

    python3 -m bench.trainer_bench --out $OUT/trainer_h200.json          # everything (est. 7-9 min)
    python3 -m bench.trainer_bench --parts small --out $OUT/trainer_h200_small.json
    python3 -m bench.trainer_bench --parts small --seq-lens 4096          # a subset
    python3 -m bench.trainer_bench --parts big --big-batch-sizes 1 2 --big-extras bf16-params
    python3 -m bench.trainer_bench --cpu-smoke --out /tmp/smoke.json      # tiny, CPU

Parts:
  small  the ~30M block model (d512, 8 layers, vocab 8192, tied) at each --seq-lens, uniform
         weighting plain (the trainer's defaults, 8 sequences), as the quality pipeline runs it,
         with each option alone and all together, and hybrid weighting
         (logp_short from a `tokenweight serve` of the same shape on the same GPU) plain and all.
  big    the Llama-3.2-1B shape at 8k: FSDP2 on one rank, bf16 autocast, activation
         checkpointing, the chunked weighted loss, hybrid scores from a small scorer served on
         the same GPU; plain, the fast set per --big-batch-sizes, and the fast set with each
         of --big-extras (bf16 FSDP parameters, checkpointing every 2nd layer, none).

FLOPs are model FLOPs, counted as in bench/engine_bench.py (bench/common.forward_flops): per
sequence of T = seq_len - 1 trained positions, a forward is 2*T*(matmul parameters of the
layers) + 4*heads*head_dim*T^2/2 for causal attention (QK^T and PV over the lower triangle:
causal halved) + 2*T*d*vocab for the LM head; a training step counts 3 forwards (the backward
is twice the forward). Activation-checkpointing recompute is not counted, so MFU compares
options on the same work. MFU is against the bf16 matmul ceiling measured at the start of the
run. Each row times the steps after --warmup-steps (compilation and allocator warm-up).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.common import (
    SHAPES,
    TRAIN_SHAPES,
    child_env,
    forward_flops,
    machine,
    matmul_ceiling,
    save_llama,
    serve,
    steady_summary,
    write_tokens,
)
from tokenweight.trainer.metrics_log import read_metrics

# Each speed option as trainer flags; "all" is every one of them together.
OPTIONS = {
    "fused-adamw": ("--fused-optimizer",),
    "compile-blocks": ("--compile-blocks",),
    "compile-loss": ("--compile-loss",),
    "no-act-ckpt": ("--no-activation-checkpointing",),
    "keep-logits": ("--no-loss-recompute",),
    "big-batch": (),  # only the micro-batch grows (Case.batch_size)
}
# Tokens per micro-batch of the small model's "big-batch" and "all" rows.
BIG_BATCH_TOKENS = 65536
# The quality pipeline's own settings (docs/RESULTS.md commands): micro-batch per seq_len, no
# activation checkpointing. Its row is the ~38 TFLOP/s that the options are to improve on.
QUALITY_PIPELINE_BATCH = {512: 64, 4096: 16}


@dataclass(frozen=True)
class Case:
    name: str
    shape: str
    seq_len: int
    batch_size: int
    weighting: str  # "uniform" or "hybrid" (dense weights, logp_short from the served scorer)
    flags: tuple = ()
    parallel: str = "ddp"
    scorer_shape: str | None = None  # hybrid: the served model


@dataclass
class Plan:
    device: str
    steps: int
    warmup: int
    cases: list = field(default_factory=list)


def small_cases(shape: str, seq_len: int, options: list[str]) -> list[Case]:
    plain_batch = 8
    big = max(BIG_BATCH_TOKENS // seq_len, plain_batch)
    every = tuple(f for o in OPTIONS.values() for f in o)
    cases = [Case("plain", shape, seq_len, plain_batch, "uniform")]
    if seq_len in QUALITY_PIPELINE_BATCH:
        cases.append(Case("quality-pipeline", shape, seq_len, QUALITY_PIPELINE_BATCH[seq_len],
                          "uniform", OPTIONS["no-act-ckpt"]))
    for option in options:
        batch = big if option == "big-batch" else plain_batch
        cases.append(Case(option, shape, seq_len, batch, "uniform", OPTIONS[option]))
    cases.append(Case("all", shape, seq_len, big, "uniform", every))
    cases.append(Case("plain", shape, seq_len, plain_batch, "hybrid", scorer_shape=shape))
    cases.append(Case("all", shape, seq_len, big, "hybrid", every, scorer_shape=shape))
    return cases


# The 1B shape's options beyond the fast set, each measured on top of it at micro-batch 1.
BIG_EXTRAS = {
    "bf16-params": ("--bf16-params",),
    "ckpt-every-2": ("--activation-checkpointing-every", "2"),
    "no-act-ckpt": ("--no-activation-checkpointing",),
}


def big_cases(shape: str, scorer: str, seq_len: int, batch_sizes: list[int],
              extras: list[str] = ()) -> list[Case]:
    # 8k x 128k logits fit on the GPU (about 6 GiB with their fp32 copy): one chunk, kept.
    fast = ("--fast", "--loss-chunk-size", "8192", "--no-loss-recompute")
    common = dict(shape=shape, seq_len=seq_len, weighting="hybrid", parallel="fsdp",
                  scorer_shape=scorer)
    return [Case("plain", batch_size=1, **common)] + [
        Case(f"fast-batch{b}", batch_size=b, flags=fast, **common) for b in batch_sizes
    ] + [Case(f"fast-batch1+{e}", batch_size=1, flags=fast + BIG_EXTRAS[e], **common) for e in extras]


def shape_config(shape: str):
    from transformers import LlamaConfig

    return LlamaConfig(**(TRAIN_SHAPES.get(shape) or SHAPES[shape]))


def step_flops(case: Case) -> float:
    """Model FLOPs of one optimizer step (one micro-batch of case.batch_size sequences)."""
    positions = case.seq_len - 1
    return 3 * case.batch_size * forward_flops(shape_config(case.shape), positions, positions)


def trainer_command(case: Case, model: Path, data: Path, out: Path, plan: Plan, url: str | None):
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "1", "-m", "tokenweight.trainer", "--model", str(model), "--data", str(data), "--out",
           str(out), "--seq-len", str(case.seq_len), "--batch-size", str(case.batch_size),
           "--max-steps", str(plan.steps), "--device", plan.device, "--parallel", case.parallel,
           "--lr", "1e-4", "--schedule", "constant", "--no-progress", *case.flags]
    if case.weighting == "uniform":
        return cmd + ["--weighting", "uniform"]
    return cmd + ["--weighting", "dense", "--score-source", "hybrid", "--scorer-url", url,
                  "--window", str(case.seq_len // 4)]


def train_until_measured(command: list[str], metrics: Path, steps: int) -> None:
    """Run the trainer until its metrics hold `steps` steps, then stop it: its final
    checkpoint and model export (20 GB at the 1B shape) are not part of what is measured."""
    proc = subprocess.Popen(command, env=child_env(OMP_NUM_THREADS="4"))
    try:
        while proc.poll() is None and _lines(metrics) < steps:
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(120)
    if _lines(metrics) < steps:
        raise RuntimeError(f"trainer exited with {proc.returncode} after {_lines(metrics)} steps")


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def run_case(case: Case, plan: Plan, tmp: Path, models: dict, data: Path, url: str | None,
             ceiling: float | None) -> dict:
    out = tmp / "runs" / f"{case.shape}-{case.seq_len}-{case.weighting}-{case.name}"
    started = time.perf_counter()
    train_until_measured(trainer_command(case, models[case.shape], data, out, plan, url),
                         out / "metrics.jsonl", plan.steps)
    records = read_metrics(out / "metrics.jsonl")
    shutil.rmtree(out)  # the next runs need the disk
    summary = steady_summary(records, warmup=plan.warmup)
    tflops = step_flops(case) / summary["mean_step_time_s"]
    return dict(
        bench="trainer", config=case.name, model=case.shape, seq_len=case.seq_len,
        batch_size=case.batch_size, weighting=case.weighting, parallel=case.parallel,
        flags=" ".join(case.flags), scorer=case.scorer_shape, **summary,
        model_tflops=tflops / 1e12, mfu=tflops / ceiling if ceiling else None,
        peak_mem_gib=max((r.get("peak_mem_gib", 0.0) for r in records), default=None) or None,
        losses=[r["loss"] for r in records], wall_s=time.perf_counter() - started,
    )


def build_plan(args) -> Plan:
    if args.cpu_smoke:
        plan = Plan("cpu", steps=3, warmup=1)
        plan.cases = [
            Case("plain", "tiny", 64, 4, "uniform"),
            Case("all", "tiny", 64, 4, "uniform", tuple(f for o in OPTIONS.values() for f in o)),
            Case("plain", "tiny", 64, 4, "hybrid", scorer_shape="tiny"),
        ]
        return plan
    plan = Plan(args.device, steps=args.steps, warmup=args.warmup_steps)
    if "small" in args.parts:
        for seq_len in args.seq_lens:
            plan.cases += small_cases("30m", seq_len, args.options)
    if "big" in args.parts:
        plan.cases += big_cases("llama-3.2-1b", "small", args.big_seq_len, args.big_batch_sizes,
                                args.big_extras)
    return plan


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(os.environ.get("OUT", ".")) / "trainer_h200.json"))
    parser.add_argument("--parts", nargs="+", choices=("small", "big"), default=["small", "big"])
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[512, 4096])
    # compile-loss alone is left out by default (it is in "all"): each compile costs start-up time.
    parser.add_argument("--options", nargs="*", choices=list(OPTIONS),
                        default=[o for o in OPTIONS if o != "compile-loss"],
                        help="small model: speed options measured one at a time")
    parser.add_argument("--big-seq-len", type=int, default=8192)
    parser.add_argument("--big-batch-sizes", nargs="+", type=int, default=[1],
                        help="1B shape: micro-batch sizes of the fast rows (plain: 1)")
    parser.add_argument("--big-extras", nargs="*", choices=list(BIG_EXTRAS), default=[],
                        help="1B shape: options measured on top of the fast set (micro-batch 1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU, end to end")
    args = parser.parse_args(argv)
    plan = build_plan(args)
    on_gpu = plan.device == "cuda"
    ceiling = matmul_ceiling() if on_gpu else None
    if ceiling:
        print(f"bf16 matmul ceiling {ceiling / 1e12:.0f} TFLOP/s", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="trainer_bench_"))
    longest = max(c.seq_len for c in plan.cases)
    shapes = {c.shape for c in plan.cases} | {c.scorer_shape for c in plan.cases if c.scorer_shape}
    models = {s: save_llama(s, tmp / s, longest, device=plan.device) for s in sorted(shapes)}
    if on_gpu:
        torch.cuda.empty_cache()  # the GPU is the trainers' and scorers' from here on
    header = dict(command="python3 -m bench.trainer_bench " + " ".join(argv or sys.argv[1:]),
                  bf16_matmul_ceiling_tflops=ceiling / 1e12 if ceiling else None,
                  flops="3 x forward_flops per sequence (bench/common.py): causal attention halved,"
                        " activation-checkpointing recompute not counted",
                  steps=plan.steps, warmup_steps=plan.warmup,
                  **(machine() if on_gpu else {"device": "cpu"}))
    rows = []
    # One dataset and (for hybrid) one scorer per (scorer shape, seq_len), shared by its cases.
    groups = {}
    for case in plan.cases:
        groups.setdefault((case.seq_len, case.scorer_shape, shape_config(case.shape).vocab_size),
                          []).append(case)
    try:
        measure_groups(groups, plan, tmp, models, ceiling, header, rows, Path(args.out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}")
    return rows


def measure_groups(groups, plan, tmp, models, ceiling, header, rows, out: Path) -> None:
    """Each group's dataset, its scorer (hybrid) and its cases, the rows written as they come."""
    for i, ((seq_len, scorer_shape, vocab), cases) in enumerate(groups.items()):
        scorer_vocab = shape_config(scorer_shape).vocab_size if scorer_shape else vocab
        rows_needed = plan.steps * max(c.batch_size for c in cases) + 1
        data = write_tokens(tmp / f"data-{i}", seq_len, rows_needed,
                            vocab=min(vocab, scorer_vocab))
        server, url = (None, None)
        if scorer_shape:
            server, url = serve(models[scorer_shape], seq_len // 4, device=plan.device)
        try:
            for case in cases:
                rows.append(run_case(case, plan, tmp, models, data, url, ceiling))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "losses"}), flush=True)
                out.write_text(json.dumps(dict(header, rows=rows), indent=2) + "\n")
        finally:
            if server:
                server.terminate()
                server.wait(60)


if __name__ == "__main__":
    main()
