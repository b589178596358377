"""Engine vs the straightforward approach, on the GPU.

Baseline = the paper's released code's way: a Hugging Face forward returning full logits
for the whole sequence, then each short chunk one at a time with full logits and
cross-entropy on them. Same window/stride, same numbers (checked).

    python -m bench.engine_bench --shapes llama-3.2-1b llama-3-8b --lengths 8192 32768
writes bench/results/engine_h200.json.
"""

import argparse
import sys

import torch
import torch.nn.functional as F

from bench.common import build_model, forward_flops, machine, matmul_ceiling, timed, write_results
from tokenweight.service.chunking import chunk_count, default_stride
from tokenweight.service.engine import ScoringEngine
from tokenweight.service.logprobs import ForwardOptions


# The engine's paths: torch's own attention choice or a backend tried first, with or without
# the compiled LM-head slice. On an H200 the service's CUDA default (torch's own choice, which
# is cuDNN there, plus the compiled slice) amounts to "cudnn+compiled".
VARIANTS = {
    "plain": ForwardOptions(token_budget=131072),
    "cudnn": ForwardOptions(token_budget=131072, sdpa_backends=("CUDNN_ATTENTION",)),
    "cudnn+compiled": ForwardOptions(
        token_budget=131072, sdpa_backends=("CUDNN_ATTENTION",), compile_logprobs=True
    ),
    "flash+compiled": ForwardOptions(
        token_budget=131072, sdpa_backends=("FLASH_ATTENTION",), compile_logprobs=True
    ),
}


@torch.inference_mode()
def baseline(model, sequences, window, stride, bos):
    """Full logits for the long pass and for each chunk, one forward at a time."""
    out = []
    for x in sequences:
        x = x.cuda()
        logits = model(x[None]).logits[0]
        logp_long = -F.cross_entropy(logits[:-1].float(), x[1:], reduction="none")
        logp_short = logp_long.clone()
        length = x.numel()
        for j in range(1, chunk_count(length, window, stride) + 1):
            a = j * stride
            first, last = window + (j - 1) * stride, min(window + j * stride - 1, length - 1)
            chunk = x[a : last + 1].clone()
            if int(x[0]) == bos:
                chunk[0] = bos
            chunk_logits = model(chunk[None]).logits[0]
            ce = F.cross_entropy(chunk_logits[:-1].float(), chunk[1:], reduction="none")
            logp_short[first - 1 : last] = -ce[first - 1 - a :]
        out.append((logp_long.cpu(), logp_short.cpu()))
    return out


def job_flops(config, length, window, stride):
    """FLOPs of the passes the method needs for one sequence (long pass + chunks)."""
    total = forward_flops(config, length - 1, length - 1)
    for j in range(1, chunk_count(length, window, stride) + 1):
        a, last = j * stride, min(window + j * stride - 1, length - 1)
        first = window + (j - 1) * stride
        total += forward_flops(config, last - a, last - first + 1)
    return total


def measure(fn, sequences):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    seconds = timed(fn, repeats=3, warmup=1)
    peak = torch.cuda.max_memory_allocated()
    return seconds, peak, peak - base


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["llama-3.2-1b", "llama-3-8b"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[8192, 32768])
    parser.add_argument("--tokens-per-run", type=int, default=65536)
    parser.add_argument("--variants", nargs="+", default=["plain", "cudnn", "cudnn+compiled"])
    parser.add_argument("--skip-baseline-for", nargs="*", default=[])
    parser.add_argument("--out", default="engine_h200.json")
    args = parser.parse_args()

    ceiling = matmul_ceiling()
    print(f"bf16 matmul ceiling {ceiling / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    for shape in args.shapes:
        model = build_model(shape, max(args.lengths) + 1)
        weights = torch.cuda.memory_allocated()
        for length in args.lengths:
            window = length // 4
            stride = default_stride(window)
            n_seq = max(1, args.tokens_per_run // length)
            g = torch.Generator().manual_seed(length)
            sequences = [torch.randint(3, model.config.vocab_size, (length,), generator=g) for _ in range(n_seq)]
            for x in sequences:
                x[0] = 1  # BOS: exercises the BOS-in-place-of-first-token rule
            flops = n_seq * job_flops(model.config, length, window, stride)
            tokens = n_seq * length
            common = dict(model=shape, seq_len=length, window=window, stride=stride,
                          sequences=n_seq, flops_per_run=flops)
            results = {}
            for name in args.variants:
                engine = ScoringEngine(model, window=window, stride=stride, options=VARIANTS[name])
                numpy_seqs = [x.numpy() for x in sequences]
                out = {}
                seconds, peak, above = measure(lambda: out.update(r=engine.score(numpy_seqs)), sequences)
                results[name] = out["r"]
                rows.append(dict(impl="engine", variant=name, **common, seconds=seconds,
                                 tokens_per_s=tokens / seconds, mfu=flops / seconds / ceiling,
                                 peak_mem_gib=peak / 2**30, peak_above_weights_gib=above / 2**30))
                print(rows[-1], flush=True)
            reference = results[args.variants[0]]
            for name, res in results.items():
                diff = max(float(abs(torch.from_numpy(a.logp_short) - torch.from_numpy(b.logp_short)).max())
                           for a, b in zip(res, reference))
                print(f"  {name} vs {args.variants[0]}: max |d logp_short| = {diff:.4f}")
                for row in rows:
                    if row["impl"] == "engine" and row["variant"] == name and row["seq_len"] == length and row["model"] == shape:
                        row["max_abs_diff_vs_plain"] = diff
            if shape in args.skip_baseline_for:
                continue
            out = {}
            seconds, peak, above = measure(
                lambda: out.update(r=baseline(model, sequences, window, stride, 1)), sequences
            )
            diff_long = max(float((a[0] - torch.from_numpy(r.logp_long)).abs().max()) for a, r in zip(out["r"], reference))
            diff_short = max(float((a[1] - torch.from_numpy(r.logp_short)).abs().max()) for a, r in zip(out["r"], reference))
            rows.append(dict(impl="baseline", variant="hf-full-logits", **common, seconds=seconds,
                             tokens_per_s=tokens / seconds, mfu=flops / seconds / ceiling,
                             peak_mem_gib=peak / 2**30, peak_above_weights_gib=above / 2**30,
                             max_abs_diff_long_vs_engine=diff_long, max_abs_diff_short_vs_engine=diff_short))
            print(rows[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    context = dict(machine(), matmul_tflops=ceiling / 1e12, command="python " + " ".join(sys.argv))
    path = write_results(args.out, [dict(row, **context) for row in rows])
    print("wrote", path)
    print(f"{'model':14} {'L':>6} {'impl':9} {'variant':16} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['model']:14} {r['seq_len']:>6} {r['impl']:9} {r['variant']:16} {r['tokens_per_s']:>9.0f} {r['mfu']:>6.1%} {r['peak_mem_gib']:>9.1f}")


if __name__ == "__main__":
    main()
