"""Expected device time per stage, from matmul FLOPs and an assumed sustained rate.

FLOPs are counted as bench/common.py counts them (every matmul of a causal forward,
attention included, plus the LM head); training is 3 forwards' worth (no activation
checkpointing). Scoring passes follow the chunk plan: one pass over the first k tokens and
one per chunk of stride s. The rate is an assumption, not a measurement: small models reach a
small fraction of the H200's ~700 TFLOP/s bf16 peak. Each job also pays a fixed start-up
(interpreter, torch, model load), counted separately.
"""

from types import SimpleNamespace

from ..common import forward_flops
from .profiles import ARMS, Profile

ASSUMED_TFLOPS = 100.0  # sustained per GPU for a ~10M-parameter model; measure and adjust
STARTUP_S = 30.0  # per job: interpreter, imports, model load, first-step warm-up
TASKS = 3
CHOICES = 4


def forward(shape, vocab_size: int, length: int) -> float:
    """Matmul FLOPs of one causal forward of `length` tokens through a model of `shape`."""
    return forward_flops(SimpleNamespace(**vars(shape), vocab_size=vocab_size), length, length)


def scoring(shape, vocab_size: int, window: int, long_len: int, stride: int | None = None) -> float:
    """Short-context passes for one long sequence (window k, stride s, default 3k/4)."""
    k, s = window, stride or (3 * window) // 4
    chunks = -(-(long_len - k) // s)
    return forward(shape, vocab_size, k) * (1 + chunks)


def _forward(p: Profile, length: int) -> float:
    return forward(p.shape, p.vocab_size, length)


def _scoring(p: Profile) -> float:
    return scoring(p.shape, p.vocab_size, p.short_len, p.long_len)


def stage_flops(p: Profile, seeds: int) -> dict[str, tuple[float, int]]:
    """stage -> (FLOPs, jobs)."""
    pre = p.pretrain.steps * p.pretrain.batch * 3 * _forward(p, p.short_len)
    ext_seqs = p.extend.steps * p.extend.batch
    per_run = ext_seqs * 3 * _forward(p, p.long_len)
    scored = sum(arm.source is not None for arm in ARMS) * seeds
    runs = len(ARMS) * seeds + 1  # + the judge
    extend = runs * per_run + scored * ext_seqs * _scoring(p)
    buckets = 4
    items = TASKS * buckets * p.eval_items_per_bucket * CHOICES
    per_eval = p.eval_max_sequences * (
        2 * _forward(p, p.long_len) + _scoring(p) + _forward(p, p.short_len)
    ) + items * _forward(p, p.long_len)
    evals = len(ARMS) * seeds + 1  # + the base model
    return {"pretrain": (pre, 1), "extend": (extend, runs), "eval": (evals * per_eval, evals)}


def table(p: Profile, gpus: int, tflops: float, seeds: int) -> str:
    rate = tflops * 1e12
    header = "| stage | PFLOPs | jobs | expected on 1 GPU |" + (
        f" expected on {gpus} GPUs |" if gpus > 1 else ""
    )
    rows = [header, "|---|---:|---:|---:|" + ("---:|" if gpus > 1 else "")]
    totals = [0.0, 0.0]
    for stage, (flops, jobs) in stage_flops(p, seeds).items():
        # Jobs run side by side, one GPU each; pretraining spreads one job over all GPUs.
        times = [
            flops / rate + jobs * STARTUP_S,
            flops / (rate * gpus) + -(-jobs // gpus) * STARTUP_S,
        ]
        totals = [a + b for a, b in zip(totals, times)]
        cells = [f"{t / 60:.1f} min" for t in times[: 1 + (gpus > 1)]]
        rows.append(f"| {stage} | {flops / 1e15:.1f} | {jobs} | " + " | ".join(cells) + " |")
    cells = [f"**{t / 60:.1f} min**" for t in totals[: 1 + (gpus > 1)]]
    rows.append("| **GPU stages** | | | " + " | ".join(cells) + " |")
    return "\n".join(rows)
