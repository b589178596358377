"""Do the engine's paths and the baseline give the same numbers, and which attention kernel
does each run? Max and mean |Δ| of logp_long and logp_short against the engine's plain path,
with the attention kernels torch.profiler saw, on one random-weight model.

    python -m bench.agreement_bench --shape llama-3.2-1b --length 8192
writes bench/results/agreement_h200.json.
"""

import argparse
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from bench.common import build_model, machine, write_results
from bench.engine_bench import VARIANTS, baseline
from bench.engine_profile import category
from tokenweight.service.chunking import default_stride
from tokenweight.service.engine import ScoringEngine


def attention_kernels(fn):
    """(result, names of the attention kernels it launched)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    names = {e.key[:60] for e in prof.key_averages() if category(e.key) == "attention"}
    return result, sorted(names)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-3.2-1b")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument(
        "--first", default="engine plain",
        help="the path whose attention call is the process's first (torch's own backend choice "
        "afterwards depends on it, see BENCHMARKS.md)",
    )
    args = parser.parse_args()
    window = args.length // 4
    stride = default_stride(window)
    model = build_model(args.shape, args.length + 1)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, model.config.vocab_size, (args.length,), generator=g) for _ in range(args.sequences)]
    for x in seqs:
        x[0] = 1

    def engine(options):
        e = ScoringEngine(model, window=window, stride=stride, options=options)
        return lambda: [(torch.from_numpy(r.logp_long), torch.from_numpy(r.logp_short))
                        for r in e.score([x.numpy() for x in seqs])]

    def forced(fn, backend):
        def run():
            with sdpa_kernel([backend]):
                return fn()
        return run

    plain_baseline = lambda: baseline(model, seqs, window, stride, 1)
    paths = {
        "engine plain": engine(VARIANTS["plain"]),
        "engine cudnn+compiled": engine(VARIANTS["cudnn+compiled"]),
        "engine flash+compiled": engine(VARIANTS["flash+compiled"]),
        "baseline (torch's choice)": plain_baseline,
        "baseline, cuDNN forced": forced(plain_baseline, SDPBackend.CUDNN_ATTENTION),
        "baseline, flash forced": forced(plain_baseline, SDPBackend.FLASH_ATTENTION),
    }
    if args.first not in paths:
        parser.error(f"--first must be one of: {', '.join(paths)}")
    order = [args.first] + [name for name in paths if name != args.first]
    outputs, kernels = {}, {}
    for name in order:
        paths[name]()  # warm-up (compilation)
        outputs[name], kernels[name] = attention_kernels(paths[name])
    rows = []
    for name in order:
        diffs = {}
        for i, array in enumerate(("logp_long", "logp_short")):
            d = torch.cat([(a[i] - b[i]).abs() for a, b in zip(outputs[name], outputs["engine plain"])])
            diffs[f"max_abs_diff_{array}"] = float(d.max())
            diffs[f"mean_abs_diff_{array}"] = float(d.mean())
        rows.append(dict(path=name, first=args.first, model=args.shape, seq_len=args.length, window=window,
                         stride=stride, sequences=args.sequences, attention_kernels=kernels[name], **diffs))
    name = "agreement_h200.json" if args.first == "engine plain" else "agreement_h200_engine_first.json"
    write_results(name, [dict(r, **machine(), command="python " + " ".join(sys.argv)) for r in rows])
    print(f"{'path':28} {'max|Δ| long':>12} {'max|Δ| short':>12} {'mean|Δ| short':>13}  attention kernels")
    for r in rows:
        print(f"{r['path']:28} {r['max_abs_diff_logp_long']:>12.2e} {r['max_abs_diff_logp_short']:>12.2e} "
              f"{r['mean_abs_diff_logp_short']:>13.2e}  {', '.join(r['attention_kernels'])}")


if __name__ == "__main__":
    main()
