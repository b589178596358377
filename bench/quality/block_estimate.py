"""Expected device time of the pilot's remaining calls and of one block, from measured speeds:
the trainer's tokens/s per training stage (a stage's tokens over its rate), each job's fixed
cost, and the CPU stages at their measured wall time on the device machine. What has no
measured rate (evals, scoring passes, diagnostics) goes by matmul FLOPs (estimate.py) at the
TFLOP/s the extension's rate implies.

The defaults are the pilot's measurements on one H200 (bench/results/quality_pilot_h200.json);
a block's record gives newer ones (`--record bench/results/quality_block1.json`, its measured
training TFLOP/s per stage), `--rate pretrain=TOKENS_PER_S ...` sets them by hand, and
`--tflops` sets one sustained rate for every stage.
"""

import math
from dataclasses import dataclass, field

from .block_profiles import BlockArm, BlockProfile
from .estimate import forward, scoring

# Training tokens/s, one job alone on the GPU, median of the trainer's log (the pilot on one
# H200): the trainee at 512 and at 4096; the weak scorer and the judge are carried, not rerun.
MEASURED_TOKENS_PER_S = {"pretrain": 930_000.0, "extend": 726_000.0}
# A job's fixed cost: start, imports, compile, model load (the pilot: 30M pretraining tokens in
# 77 s of which 32 s at speed; an extension 44 s of which 7 s; a calibration eval 38-43 s).
JOB_S = {"train": 45.0, "eval": 40.0}
# Block 1 on one H200: the 7 arms side by side took 169 s; an eval of every held-out file took
# 162-197 s with four side by side (7 arms: two waves, 370 s); the diagnostics 30 s. Matmul
# FLOPs miss most of an eval's time (per-item work, the judge's passes: the FLOP estimate said
# 3.2 min for the stage), and one arm's tokens/s says little of seven sharing the GPU, so the
# measured times are used as they are.
MEASURED_STAGE_S = {"extend": 169.0, "eval-wave": 185.0, "diagnose": 30.0}
# Measured on the device machine (all Python there, 315 MB); a block trains no tokenizer.
CPU_STAGES_S = {"corpus": 16.0, "prepare": 59.0}
BUCKETS = 4  # distance buckets 0-k, k-2k, 2k-4k, 4k-8k (in units of the short context k)
CHOICES = 4


@dataclass(frozen=True)
class Speeds:
    """Training tokens/s per stage ("pretrain": the trainee at the short context, "extend": at
    the long one), the measured seconds of a block's arms, eval wave and diagnostics, and the
    TFLOP/s of everything else; `tflops` alone sets every rate."""

    tokens_per_s: dict[str, float] = field(default_factory=lambda: dict(MEASURED_TOKENS_PER_S))
    tflops: float | None = None
    stage_s: dict[str, float] = field(default_factory=lambda: dict(MEASURED_STAGE_S))

    def train_rate(self, p: BlockProfile, stage: str) -> float:
        """Tokens/s of a training stage."""
        if self.tflops is not None:
            return self.tflops * 1e12 / _train_flops_per_token(p, stage)
        return self.tokens_per_s[stage]

    def flop_rate(self, p: BlockProfile) -> float:
        """FLOP/s of evals and scoring passes: the given TFLOP/s, else the extension's."""
        if self.tflops is not None:
            return self.tflops * 1e12
        return self.tokens_per_s["extend"] * _train_flops_per_token(p, "extend")


def record_rates(p: BlockProfile, record: dict) -> dict[str, float]:
    """Training tokens/s from a block record's measured TFLOP/s per GPU (block_record.py)."""
    measured = record["progress"]["training_tflops"]
    rates = dict(MEASURED_TOKENS_PER_S)
    for stage, key in (("pretrain", "pretrain"), ("extend", "extend-uniform")):
        if measured.get(key):
            rates[stage] = measured[key] * 1e12 / _train_flops_per_token(p, stage)
    return rates


def extension_tokens(p: BlockProfile) -> float:
    """The arms' extension work in training tokens at the long context: arms side by side share
    the GPU, so their tokens add up, each scored arm's weighed by its scoring FLOPs."""
    from .block_stages import flops_ratio

    arm_tokens = p.extend.steps * p.extend.batch * p.long_len
    train_per_seq = 3 * forward(p.trainee, p.vocab_size, p.long_len)
    return sum(
        arm_tokens * (flops_ratio(p) if arm.flops_matched else 1.0)
        + arm_tokens * arm_scoring(p, arm) / train_per_seq
        for arm in p.arms
    )


def extension_flops(p: BlockProfile) -> float:
    return extension_tokens(p) * _train_flops_per_token(p, "extend")


def record_stage_seconds(p: BlockProfile, record: dict) -> dict[str, float]:
    """A block record's extension, eval wave and diagnostics seconds."""
    walls = record["progress"].get("stage_seconds", {})
    measured = dict(MEASURED_STAGE_S)
    if walls.get("extend"):
        measured["extend"] = walls["extend"]
    if walls.get("eval"):
        measured["eval-wave"] = walls["eval"] / math.ceil(len(p.arms) / p.jobs_per_device)
    if walls.get("diagnose"):
        measured["diagnose"] = walls["diagnose"]
    return measured


def _train_flops_per_token(p: BlockProfile, stage: str) -> float:
    length = p.short_len if stage == "pretrain" else p.long_len
    return 3 * forward(p.trainee, p.vocab_size, length) / length


def arm_scoring(p: BlockProfile, arm: BlockArm) -> float:
    """Scoring FLOPs per extension sequence: the frozen or self scorer over its chunk plan."""
    if arm.source is None:
        return 0.0
    shape = p.weak if arm.scorer == "weak" else p.trainee
    return scoring(shape, p.vocab_size, arm.window or p.short_len, p.long_len, arm.stride)


def _eval(p: BlockProfile, shape, tasks: int | None = None, per_bucket: int | None = None) -> float:
    """One eval's FLOPs: the model over the held-out files twice, the judge's two passes, the
    items."""
    long = forward(shape, p.vocab_size, p.long_len)
    judge = forward(p.weak, p.vocab_size, p.long_len) + scoring(
        p.weak, p.vocab_size, p.short_len, p.long_len
    )
    items = (tasks or len(p.tasks)) * BUCKETS * (per_bucket or p.items_per_bucket) * CHOICES
    return p.eval_max_sequences * (2 * long + judge) + items * long


def _diagnose(p: BlockProfile) -> float:
    """Both scorers over the held-out files: a long pass and the short-window passes each."""
    return p.eval_max_sequences * sum(
        forward(shape, p.vocab_size, p.long_len)
        + scoring(shape, p.vocab_size, p.short_len, p.long_len)
        for shape in (p.weak, p.trainee)
    )


@dataclass(frozen=True)
class Stage:
    call: str  # the device call that runs it
    name: str
    seconds: float
    jobs: int = 1
    cpu: bool = False


def stages(p: BlockProfile, speeds: Speeds) -> list[Stage]:
    """The pilot's calls b and c (a is done: its models are carried) and one block's a, b and
    c, each on the machine the call before it left warm, except pilot-b and block-a: a fresh
    one rebuilds the corpus and the shards."""
    flop_rate = speeds.flop_rate(p)

    def train(stage: str, tokens: float, jobs: int = 1) -> float:
        waves = math.ceil(jobs / p.jobs_per_device)
        return tokens / speeds.train_rate(p, stage) + waves * JOB_S["train"]

    def evals(flops: float, jobs: int) -> float:
        return flops / flop_rate + math.ceil(jobs / p.jobs_per_device) * JOB_S["eval"]

    pretrain_tokens = p.pretrain_steps * p.pretrain.batch * p.short_len
    arm_tokens = p.extend.steps * p.extend.batch * p.long_len
    if speeds.tflops is not None:
        arms = train("extend", extension_tokens(p), len(p.arms))
        block_evals = evals(len(p.arms) * _eval(p, p.trainee), len(p.arms))
        diagnose = evals(_diagnose(p), 1)
    else:
        arms = speeds.stage_s["extend"]
        block_evals = math.ceil(len(p.arms) / p.jobs_per_device) * speeds.stage_s["eval-wave"]
        diagnose = speeds.stage_s["diagnose"]
    settings = sum(len(k.settings) for k in p.knobs) + 1  # + the plain eval of every task
    calibrate = settings * _eval(p, p.trainee, 1, p.calibration_items_per_bucket)
    cpu = [
        Stage(c, n, s, cpu=True) for c in ("pilot-b", "block-a") for n, s in CPU_STAGES_S.items()
    ]
    return [
        *[s for s in cpu if s.call == "pilot-b"],
        Stage("pilot-b", "pilot-pretrain", train("pretrain", pretrain_tokens)),
        Stage("pilot-c", "pilot-extend", train("extend", arm_tokens)),
        Stage("pilot-c", "calibrate", evals(calibrate, settings), settings),
        *[s for s in cpu if s.call == "block-a"],
        Stage("block-a", "pretrain", train("pretrain", pretrain_tokens)),
        Stage("block-b", "extend", arms, len(p.arms)),
        Stage("block-c", "eval", block_evals, len(p.arms)),
        Stage("block-c", "diagnose", diagnose),
    ]


def call_minutes(p: BlockProfile, speeds: Speeds) -> dict[str, float]:
    calls: dict[str, float] = {}
    for s in stages(p, speeds):
        calls[s.call] = calls.get(s.call, 0.0) + s.seconds / 60
    return calls


def table(p: BlockProfile, speeds: Speeds) -> str:
    if speeds.tflops is not None:
        basis = f"{speeds.tflops:.0f} TFLOP/s sustained for every stage"
    else:
        rates = ", ".join(f"{k} {v / 1e3:.0f}k" for k, v in speeds.tokens_per_s.items())
        basis = (
            f"measured training tokens/s ({rates}); evals at the extension's "
            f"{speeds.flop_rate(p) / 1e12:.0f} TFLOP/s"
        )
    rows = [
        f"Expected on one GPU from {basis}; jobs side by side share it.",
        "",
        "| call | stage | jobs | expected |",
        "|---|---|---:|---:|",
    ]
    for s in stages(p, speeds):
        name = s.name + (" (CPU)" if s.cpu else "")
        rows.append(f"| {s.call} | {name} | {s.jobs} | {s.seconds / 60:.1f} min |")
    calls = call_minutes(p, speeds)
    for part in ("pilot", "block"):
        mine = {c: m for c, m in calls.items() if c.startswith(part)}
        per_call = ", ".join(f"{c} {m:.1f}" for c, m in mine.items())
        rows.append(f"| **{part}** | {per_call} | | **{sum(mine.values()):.1f} min** |")
    return "\n".join(rows)


def parse_rates(pairs: list[str], rates: dict[str, float] | None = None) -> dict[str, float]:
    """`pretrain=930000 extend=726000` -> measured tokens/s, over `rates` (or the pilot's)."""
    rates = dict(rates or MEASURED_TOKENS_PER_S)
    for pair in pairs:
        stage, _, value = pair.partition("=")
        if stage not in rates or not value:
            raise ValueError(f"--rate takes STAGE=TOKENS_PER_S with STAGE in {sorted(rates)}")
        rates[stage] = float(value)
    return rates
