"""Expected device time of the pilot and of one block, from matmul FLOPs (estimate.py) and an
assumed sustained rate; the CPU stages at their measured cost on the device machine.

Pass `--tflops` the rate the trainer measured (the record of a block says it): small models
reach a small fraction of the H200's bf16 peak, and the trainer's speed decides how many
pretraining tokens fit a block.
"""

from .block_profiles import BlockArm, BlockProfile
from .estimate import STARTUP_S, forward, scoring

# All Python on the machine (~170 MB here); the block trains no tokenizer (it is carried).
CPU_STAGES_S = {"corpus": 90.0, "tokenizer": 60.0, "prepare": 120.0}
BUCKETS = 4  # distance buckets 0-k, k-2k, 2k-4k, 4k-8k (in units of the short context k)
CHOICES = 4


def _train(p: BlockProfile, shape, steps: int, batch: int, length: int) -> float:
    return steps * batch * 3 * forward(shape, p.vocab_size, length)


def arm_scoring(p: BlockProfile, arm: BlockArm) -> float:
    """Scoring FLOPs per extension sequence: the frozen or self scorer over its chunk plan."""
    if arm.source is None:
        return 0.0
    shape = p.weak if arm.scorer == "weak" else p.trainee
    return scoring(shape, p.vocab_size, arm.window or p.short_len, p.long_len, arm.stride)


def _eval(p: BlockProfile, shape, tasks: int | None = None, per_bucket: int | None = None) -> float:
    """One eval: the model over the held-out files twice, the judge's two passes, the items."""
    long = forward(shape, p.vocab_size, p.long_len)
    judge = forward(p.weak, p.vocab_size, p.long_len) + scoring(
        p.weak, p.vocab_size, p.short_len, p.long_len
    )
    items = (tasks or len(p.tasks)) * BUCKETS * (per_bucket or p.items_per_bucket) * CHOICES
    return p.eval_max_sequences * (2 * long + judge) + items * long


def block_flops(p: BlockProfile) -> dict[str, tuple[float, int]]:
    """stage -> (FLOPs, jobs) of one block."""
    from .block_stages import flops_ratio

    ext = p.extend
    extend = 0.0
    for arm in p.arms:
        steps = round(ext.steps * flops_ratio(p)) if arm.flops_matched else ext.steps
        extend += _train(p, p.trainee, steps, ext.batch, p.long_len)
        extend += steps * ext.batch * arm_scoring(p, arm)
    return {
        "pretrain": (_train(p, p.trainee, p.pretrain_steps, p.pretrain.batch, p.short_len), 1),
        "extend": (extend, len(p.arms)),
        "eval": (len(p.arms) * _eval(p, p.trainee), len(p.arms)),
    }


def pilot_flops(p: BlockProfile) -> dict[str, tuple[float, int]]:
    j = p.judge_extend
    settings = sum(len(k.settings) for k in p.knobs) + 1  # + the plain eval of every task
    return {
        "weak": (
            _train(p, p.weak, p.weak_steps, p.pretrain.batch, p.short_len)
            + _train(p, p.weak, j.steps, j.batch, p.long_len),
            2,
        ),
        "pilot-pretrain": (_train(p, p.trainee, p.pilot_steps, p.pretrain.batch, p.short_len), 1),
        "pilot-extend": (_train(p, p.trainee, p.extend.steps, p.extend.batch, p.long_len), 1),
        "calibrate": (settings * _eval(p, p.trainee, 1, p.calibration_items_per_bucket), settings),
    }


# Which device call of the documented sequence runs each stage (block_pipeline.GROUPS).
CALL = {
    "corpus": "a", "tokenizer": "a", "prepare": "a", "weak": "a", "pretrain": "a",
    "pilot-pretrain": "b", "pilot-extend": "b", "calibrate": "b", "extend": "b", "eval": "c",
}  # fmt: skip


def table(p: BlockProfile, tflops: float) -> str:
    rate = tflops * 1e12
    rows = [
        f"Assumed {tflops:.0f} TFLOP/s sustained on one GPU; jobs side by side share it.",
        "",
        "| part | call | stage | PFLOPs | jobs | expected |",
        "|---|---|---|---:|---:|---:|",
    ]
    for part, stages in (("pilot", pilot_flops(p)), ("block", block_flops(p))):
        cpu = {k: v for k, v in CPU_STAGES_S.items() if part == "pilot" or k != "tokenizer"}
        seconds = {name: (None, 1, s) for name, s in cpu.items()}
        for stage, (flops, jobs) in stages.items():
            seconds[stage] = (
                flops,
                jobs,
                flops / rate + STARTUP_S * max(1, jobs // p.jobs_per_device),
            )
        calls: dict[str, float] = {}
        for stage, (flops, jobs, s) in seconds.items():
            calls[CALL[stage]] = calls.get(CALL[stage], 0.0) + s
            shown = "" if flops is None else f"{flops / 1e15:.1f}"
            name = stage + (" (CPU)" if flops is None else "")
            rows.append(
                f"| {part} | {part}-{CALL[stage]} | {name} | {shown} | {jobs} | {s / 60:.1f} min |"
            )
        per_call = ", ".join(f"{part}-{c} {s / 60:.1f}" for c, s in calls.items())
        rows.append(f"| **{part}** | {per_call} | | | | **{sum(calls.values()) / 60:.1f} min** |")
    return "\n".join(rows)
