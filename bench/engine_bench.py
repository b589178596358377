"""Engine vs the straightforward approach and the paper's released code, on the GPU.

Baselines, run on the same sequences in the same process, their agreement with the engine
recorded in each row:
  baseline  a clean full-logits way: a Hugging Face forward returning full logits for the
            whole sequence, then each short chunk one at a time with full logits and fp32
            cross-entropy on them;
  released  the operations of UKPLab/naacl2025-token-weighting src/trainer.py
            (calculate_base_loss -> forward_passes -> calculate_loss_per_token): the chunks
            cut with unfold, minibatch 1, full logits, cross-entropy on the transposed bf16
            logits, and the entropy term that code computes and then drops.

Which of two bf16 paths that disagree is the more accurate their difference cannot say, so
every row also records its distance from an fp32 reference: the same sequences scored by the
plain path on an fp32 copy of the model (the same weights; skip with --no-fp32-reference).

    python -m bench.engine_bench                          # 1B and 8B shapes at 8k and 32k
    python -m bench.engine_bench --lengths 65536 131072 --windows 8192 32768 --impls engine
    python -m bench.engine_bench --cpu-smoke --variants plain cudnn --out /tmp/smoke.json
writes bench/results/engine_h200.json (or --out).
"""

import argparse
import copy
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import build_model, forward_flops, machine, matmul_ceiling, timed, write_results
from tokenweight.service.blocks import decoder_layers
from tokenweight.service.chunking import chunk_count, default_stride
from tokenweight.service.engine import Outputs, ScoringEngine
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
    # Decoder layers compiled around cuDNN attention (service/blocks.py), plus the slice.
    "fused": ForwardOptions(
        token_budget=131072, sdpa_backends=("CUDNN_ATTENTION",), compile_logprobs=True,
        compile_blocks=True,
    ),
    # The same, keeping every bf16 rounding eager makes between the fused operations.
    "fused-eager-casts": ForwardOptions(
        token_budget=131072, sdpa_backends=("CUDNN_ATTENTION",), compile_logprobs=True,
        compile_blocks=True, compile_blocks_eager_rounding=True,
    ),
}


@torch.inference_mode()
def baseline(model, sequences, window, stride, bos):
    """Full logits for the long pass and for each chunk, one forward at a time."""
    out = []
    for x in sequences:
        x = x.to(model.device)
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


def released_token_losses(model, input_ids):
    """The released calculate_loss_per_token: full logits, cross-entropy on the transposed
    logits in their own dtype, and the entropy term it computes and its callers drop."""
    logits = model(input_ids=input_ids).logits
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = input_ids[..., 1:].contiguous()
    transposed = shift_logits.transpose(1, 2)
    loss = F.cross_entropy(transposed, shift_labels, reduction="none")
    F.cross_entropy(transposed, transposed.softmax(dim=1), reduction="none")  # the entropy term
    return loss


@torch.inference_mode()
def released(model, sequences, window, stride, bos):
    """The released code's way: the long pass, then chunks of `window` tokens every `stride`
    (unfold), BOS in place of each chunk's first token, one chunk per forward; each chunk's
    last `stride` losses are the short ones. Before `window` the short context is the whole
    prefix, filled from the long pass as the engine does."""
    out = []
    for x in sequences:
        if (x.numel() - window) % stride:
            raise ValueError("the released code needs stride to divide length - window")
        x = x.to(model.device)[None]
        loss_long = released_token_losses(model, x)[0].float()
        chunks = x.unfold(1, window, stride)[0]
        if int(x[0, 0]) == bos:
            chunks = torch.cat([torch.full_like(chunks[:, :1], bos), chunks[:, 1:]], dim=1)
        loss_short = loss_long.clone()
        for j in range(1, chunks.shape[0]):
            loss = released_token_losses(model, chunks[j : j + 1])[0]
            start = window + (j - 1) * stride - 1
            loss_short[start : start + stride] = loss[-stride:].float()
        out.append((-loss_long.cpu(), -loss_short.cpu()))
    return out


def job_flops(config, length, window, stride):
    """FLOPs of the passes the method needs for one sequence (long pass + chunks)."""
    total = forward_flops(config, length - 1, length - 1)
    for j in range(1, chunk_count(length, window, stride) + 1):
        a, last = j * stride, min(window + j * stride - 1, length - 1)
        first = window + (j - 1) * stride
        total += forward_flops(config, last - a, last - first + 1)
    return total


def uncompile(model):
    """Undo compile_blocks: drop the compiled forward each layer got as an attribute, and
    torch's compiled code with it. A compilation with other options adds its own entries to
    the cache of the one code object all layers share; torch's recompile limit (8) was hit by
    the second (fused-eager-casts after fused), whose layers then silently ran partly eager."""
    for layer in decoder_layers(model):
        layer.__dict__.pop("forward", None)
    torch._dynamo.reset()


def measure(fn, device, repeats):
    """Median seconds of fn(), peak memory and peak above what was allocated before."""
    if device.type != "cuda":
        return timed(fn, repeats=repeats, warmup=1), 0, 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    seconds = timed(fn, repeats=repeats, warmup=1)
    peak = torch.cuda.max_memory_allocated()
    return seconds, peak, peak - base


def agreement(pairs, reference, against="engine") -> dict:
    """Max and mean |d| of (logp_long, logp_short) pairs against a reference's results
    (the first engine variant's, or the fp32 reference's)."""
    out = {}
    for i, name in enumerate(("long", "short")):
        diffs = torch.cat([(pair[i] - torch.from_numpy(getattr(r, "logp_" + name))).abs()
                           for pair, r in zip(pairs, reference)])
        out[f"max_abs_diff_{name}_vs_{against}"] = float(diffs.max())
        out[f"mean_abs_diff_{name}_vs_{against}"] = float(diffs.mean())
    return out


def make_sequences(length, vocab_size, tokens_per_run):
    """The sequences scored at one length, seeded by it: the same for every path."""
    g = torch.Generator().manual_seed(length)
    sequences = [torch.randint(3, vocab_size, (length,), generator=g)
                 for _ in range(max(1, tokens_per_run // length))]
    for x in sequences:
        x[0] = 1  # BOS: exercises the BOS-in-place-of-first-token rule
    return sequences


def fp32_references(model, jobs):
    """Scores of each (sequences, window, stride) job by the plain path on an fp32 copy of
    `model`: the same weights (bf16 ones are exact in fp32), no rounding to bf16 between the
    operations. The copy (32 GB for 8B) lives only while these run."""
    exact = copy.deepcopy(model).float()
    references = [
        ScoringEngine(exact, window=window, stride=stride, options=VARIANTS["plain"])
        .score([x.numpy() for x in sequences])
        for sequences, window, stride in jobs
    ]
    del exact
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    return references


BASELINES = {"baseline": ("hf-full-logits", baseline), "released": ("released-code", released)}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["llama-3.2-1b", "llama-3-8b"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[8192, 32768])
    parser.add_argument("--windows", nargs="+", type=int,
                        help="window k per length (default L/4)")
    parser.add_argument("--tokens-per-run", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up")
    parser.add_argument("--variants", nargs="+",
                        default=["plain", "cudnn+compiled", "fused", "fused-eager-casts"],
                        choices=list(VARIANTS), help="engine paths; the first is the reference")
    parser.add_argument("--hybrid-for", nargs="*", default=["cudnn+compiled"],
                        help="engine variants also timed for logp_short alone (hybrid source)")
    parser.add_argument("--impls", nargs="+", default=["engine", "baseline", "released"],
                        choices=["engine", *BASELINES])
    parser.add_argument("--no-fp32-reference", dest="fp32_reference", action="store_false",
                        help="skip scoring on an fp32 copy of each model (the *_vs_fp32 columns)")
    parser.add_argument("--out", default="engine_h200.json",
                        help="file name under bench/results (and $OUT), or an absolute path")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="a tiny fp32 model on CPU through every path (no speed numbers)")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.shapes, args.lengths, args.windows = ["tiny"], [256], [64]
        args.tokens_per_run, args.repeats = 512, 1
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    windows = args.windows or [length // 4 for length in args.lengths]
    if len(windows) != len(args.lengths):
        parser.error("--windows needs one window per length")

    ceiling = matmul_ceiling() if device.type == "cuda" else None
    if ceiling:
        print(f"bf16 matmul ceiling {ceiling / 1e12:.0f} TFLOP/s", flush=True)
    context = dict(machine() if ceiling else {"device": "cpu"},
                   matmul_tflops=ceiling / 1e12 if ceiling else None,
                   command=" ".join(["python -m bench.engine_bench",
                                     *(sys.argv[1:] if argv is None else argv)]))
    rows = []
    for shape in args.shapes:
        dtype = torch.float32 if args.cpu_smoke else torch.bfloat16
        model = build_model(shape, max(args.lengths) + 1, dtype=dtype, device=device)
        jobs = [(make_sequences(length, model.config.vocab_size, args.tokens_per_run), window,
                 default_stride(window)) for length, window in zip(args.lengths, windows)]
        # Before any timing, so the copy is gone when memory is measured.
        fp32 = fp32_references(model, jobs) if args.fp32_reference else [None] * len(jobs)
        for (sequences, window, stride), fp32_reference in zip(jobs, fp32):
            length, n_seq = sequences[0].numel(), len(sequences)

            def checked(pairs, reference):
                """A row's agreement columns: with the first engine variant and with fp32."""
                out = agreement(pairs, reference) if reference else {}
                if fp32_reference:
                    out.update(agreement(pairs, fp32_reference, against="fp32"))
                return out

            flops = n_seq * job_flops(model.config, length, window, stride)
            tokens = n_seq * length
            common = dict(model=shape, seq_len=length, window=window, stride=stride,
                          sequences=n_seq, flops_per_run=flops)

            def row(impl, variant, seconds, peak, above, run_flops=flops, **extra):
                rows.append(dict(impl=impl, variant=variant,
                                 **dict(common, flops_per_run=run_flops), seconds=seconds,
                                 tokens_per_s=tokens / seconds,
                                 mfu=run_flops / seconds / ceiling if ceiling else None,
                                 peak_mem_gib=peak / 2**30, peak_above_weights_gib=above / 2**30,
                                 **extra, **context))
                print({k: v for k, v in rows[-1].items() if k not in context}, flush=True)
                write_results(args.out, rows)

            reference = None
            # Compiled-blocks variants last: they compile the shared model's layers in place.
            for name in sorted(args.variants, key=lambda v: VARIANTS[v].compile_blocks):
                started = time.perf_counter()
                engine = ScoringEngine(model, window=window, stride=stride, options=VARIANTS[name])
                built = time.perf_counter() - started  # compiled blocks: their compile time
                numpy_seqs = [x.numpy() for x in sequences]
                out = {}
                seconds, peak, above = measure(lambda: out.update(r=engine.score(numpy_seqs)),
                                               device, args.repeats)
                reference = reference or out["r"]
                pairs = [(torch.from_numpy(r.logp_long), torch.from_numpy(r.logp_short))
                         for r in out["r"]]
                row("engine", name, seconds, peak, above, engine_build_s=built,
                    **checked(pairs, reference))
                if name in args.hybrid_for:
                    # logp_short alone (the `hybrid` source): the long pass is skipped, so the
                    # FLOPs are those of the first window and the chunks.
                    hybrid_flops = n_seq * (job_flops(model.config, length, window, stride)
                                            - forward_flops(model.config, length - 1, length - 1)
                                            + forward_flops(model.config, window - 1, window - 1))
                    seconds, peak, above = measure(
                        lambda: engine.score(numpy_seqs, outputs=Outputs(False, False, True)),
                        device, args.repeats)
                    row("engine", name + ", logp_short only", seconds, peak, above, hybrid_flops)
                if VARIANTS[name].compile_blocks:
                    uncompile(model)
            for impl in args.impls:
                if impl == "engine":
                    continue
                variant, fn = BASELINES[impl]
                out = {}
                seconds, peak, above = measure(
                    lambda: out.update(r=fn(model, sequences, window, stride, 1)),
                    device, args.repeats,
                )
                row(impl, variant, seconds, peak, above, **checked(out["r"], reference))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{'model':14} {'L':>6} {'impl':9} {'variant':17} {'tok/s':>9} {'MFU':>6} "
          f"{'peak GiB':>9} {'max|d short|':>12} {'mean|d short| fp32':>18}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        vs_fp32 = r.get("mean_abs_diff_short_vs_fp32")
        print(f"{r['model']:14} {r['seq_len']:>6} {r['impl']:9} {r['variant']:17} "
              f"{r['tokens_per_s']:>9.0f} {mfu:>6} {r['peak_mem_gib']:>9.1f} "
              f"{r.get('max_abs_diff_short_vs_engine', 0):>12.4f} "
              f"{'-' if vs_fp32 is None else f'{vs_fp32:.4f}':>18}")
    return rows


if __name__ == "__main__":
    main()
