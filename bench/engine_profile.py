"""Where the engine's GPU time goes, next to the baseline's: one profiled run of each
(torch.profiler, after warm-up), kernel time grouped into matmuls, attention, compiled
(Triton) kernels and the rest, plus the time the GPU sat idle between kernels.

    python -m bench.engine_profile --shape llama-3.2-1b --length 32768
writes bench/results/engine_profile_h200.json;
    python -m bench.engine_profile --runs fused --out engine_profile_h200_fused.json
profiles the fused decoder blocks (`tokenweight serve --compile-blocks`) instead.
"""

import argparse
import re
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import build_model, machine, write_results
from bench.engine_bench import VARIANTS, baseline, uncompile
from tokenweight.service.chunking import default_stride
from tokenweight.service.engine import ScoringEngine

# First match wins: attention kernels can contain "gemm" in their names.
CATEGORIES = [
    ("attention", re.compile(r"flash|fmha|cudnn|attention|attn|sdpa", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|splitk", re.I)),
    ("compiled (triton)", re.compile(r"^triton", re.I)),
]


def category(kernel: str) -> str:
    return next((name for name, pattern in CATEGORIES if pattern.search(kernel)), "other")


def profiled(fn) -> dict:
    fn()  # warm-up: compilation and allocator growth stay out of the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = {  # key_averages has one entry per kernel name
        event.key: event.self_device_time_total / 1e6
        for event in prof.key_averages()
        if event.device_type == torch.autograd.DeviceType.CUDA
    }
    busy = sum(kernels.values())
    by_category = {}
    for name, seconds in kernels.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + seconds
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
    return {
        "wall_s": wall,
        "kernel_s": busy,
        "idle_fraction": max(0.0, 1 - busy / wall),
        "by_category_s": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "top_kernels": [{"kernel": k[:120], "seconds": s} for k, s in top],
        "table": prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-3.2-1b")
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--runs", nargs="+", default=["cudnn+compiled", "baseline"],
                        choices=[*VARIANTS, "baseline"],
                        help="engine paths (bench.engine_bench's variants) and/or the baseline")
    parser.add_argument("--out", default="engine_profile_h200.json")
    args = parser.parse_args()
    window = args.length // 4
    stride = default_stride(window)
    model = build_model(args.shape, args.length + 1)
    x = torch.randint(3, model.config.vocab_size, (args.length,), generator=torch.Generator().manual_seed(0))
    x[0] = 1
    rows = []
    for run in args.runs:
        if run == "baseline":
            impl, fn = "baseline (hf-full-logits)", lambda: baseline(model, [x], window, stride, 1)
        else:
            engine = ScoringEngine(model, window=window, stride=stride, options=VARIANTS[run])
            impl, fn = f"engine ({run})", lambda: engine.score([x.numpy()])
        result = profiled(fn)
        if run != "baseline" and VARIANTS[run].compile_blocks:
            uncompile(model)  # the runs after it get the eager layers back
        table = result.pop("table")
        print(f"== {impl}\n{table}", flush=True)
        rows.append(dict(impl=impl, model=args.shape, seq_len=args.length, window=window, stride=stride,
                         **result, **machine(), command="python " + " ".join(sys.argv)))
    write_results(args.out, rows)
    for r in rows:
        print(f"{r['impl']:28} wall {r['wall_s']:.3f} s  kernels {r['kernel_s']:.3f} s  idle {r['idle_fraction']:.1%}")
        for name, seconds in r["by_category_s"].items():
            print(f"    {name:20} {seconds:8.3f} s  {seconds / r['wall_s']:6.1%}")


if __name__ == "__main__":
    main()
