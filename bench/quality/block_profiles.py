"""Sizes of the second replication, run as self-contained blocks: `block` (one H200) and
`block-smoke` (CPU, a minute or two).

A block pretrains a trainee from scratch with the block's seed, extends every arm from it on
the same token budget, evaluates, and keeps only JSON files. Two small models are trained once
(the `weak` stage of the pilot) and carried in the repository: the weak scorer, about a
quarter of the trainee, and its uniform extension to the long context, the independent judge
of LongPPL (it never saw the trainee's pretraining run or its weights).
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from .profiles import Shape, Training

HERE = Path(__file__).resolve().parent
CARRIED = HERE / "carried"  # tokenizer, weak scorer and judge, in bf16: made once by the pilot
CALIBRATION = HERE / "calibration.json"  # the frozen task settings the blocks evaluate with


@dataclass(frozen=True)
class BlockArm:
    name: str
    weighting: str
    params: dict = field(default_factory=dict)
    source: str | None = None  # trainer --score-source; None for uniform
    scorer: str | None = None  # hybrid: "base" (trainee-size, the block's own) or "weak"
    window: int | None = None  # scoring window k (default: the pretraining context)
    stride: int | None = None  # chunk stride s (default 3k/4)
    flops_matched: bool = False  # uniform, with more steps: the scored arms' FLOPs
    data: str = "long"  # extension data: the long pool, or a selection of it ("top", "control")

    def trainer_flags(self, short_len: int) -> list[str]:
        flags = ["--weighting", self.weighting]
        for key, value in self.params.items():
            flags += [f"--{key}", str(value)]
        if self.source:
            flags += ["--score-source", self.source, "--window", str(self.window or short_len)]
        if self.stride:
            flags += ["--stride", str(self.stride)]
        return flags


def block_arms(short_len: int, selection: bool = False) -> tuple[BlockArm, ...]:
    # LongCE as published (PKU-ML/LongPPL, finetune/finetune.py `loss_weight`): the model being
    # trained scores itself (no grad); weight = min(exp(loss_short - loss_full), 5); the first
    # trunc_len + internal tokens keep weight 1 (their "short" pass sees the whole prefix);
    # after that, windows slide by `internal` = trunc_len / 4, so each target's short context
    # holds between trunc_len and trunc_len + internal - 1 tokens. With k = trunc_len + internal
    # and s = internal, DESIGN's chunk plan is the same plan: trunc_len = the pretraining
    # context (the paper's 4k of a 32k sequence is our 512 of 4096, both 1/8). One difference:
    # our chunks start with BOS in place of their first token, theirs with the bare token.
    internal = short_len // 4
    replication = (
        BlockArm("uniform", "uniform"),
        BlockArm("dense", "dense", {"lam": 0.75}, "hybrid", "base"),
        BlockArm("sparse", "sparse", {"kappa": 0.2}, "hybrid", "base"),
        BlockArm("dense-weak", "dense", {"lam": 0.75}, "hybrid", "weak"),
        BlockArm("dense-self", "dense", {"lam": 0.75}, "self"),
        BlockArm(
            "longce", "longce", {"gamma": 5.0}, "self", window=short_len + internal, stride=internal
        ),
        BlockArm("uniform-flops", "uniform", flops_matched=True),
    )
    # The selection experiment: its four arms beside the two they are read against.
    return replication[:2] + SELECTION_ARMS if selection else replication


# Data selection x weighting (`tokenweight rank` + `select`, stage `select`): the top fraction of
# the long pool by the copy-corrected long-range score against a random subset of the same
# size and length strata, each trained uniformly and with dense weighting from the block's own
# frozen scorer. Same base, same steps (equal tokens), equal documents per stratum.
SELECTION_ARMS = tuple(
    BlockArm(f"{data}-{name}", weighting, params, source, scorer, data=data)
    for data in ("top", "control")
    for name, weighting, params, source, scorer in (
        ("uniform", "uniform", {}, None, None),
        ("dense", "dense", {"lam": 0.75}, "hybrid", "base"),
    )
)


@dataclass(frozen=True)
class Knob:
    """A task's difficulty setting the pilot sweeps: eval flags per setting, easiest first."""

    task: str
    settings: tuple[dict, ...]  # each: {"--flag": value, ...}


@dataclass(frozen=True)
class BlockProfile:
    name: str
    trainee: Shape
    weak: Shape
    vocab_size: int
    short_len: int  # pretraining context and the scorers' window k
    long_len: int
    rope_theta: float
    pretrain_tokens: int  # the trainee's pretraining budget: set from the measured speed
    pretrain: Training  # steps is ignored: pretrain_tokens decides it
    weak_tokens: int  # the weak scorer's pretraining (once, in the pilot)
    extend: Training  # every arm's extension (the FLOPs-matched arm takes more steps)
    judge_extend: Training  # the weak scorer extended uniformly: the judge
    corpus_max_bytes: int | None = None  # None: all Python on the machine
    corpus_roots: tuple[str, ...] = ()  # stdlib subdirectories; empty: stdlib + site-packages
    heldout_fraction: float = 0.05
    long_fraction: float = 0.15  # packages with 15% of the bytes; their long files: the pool
    long_min_bytes: int = 16384  # ~4k tokens of code: files that fill the long context
    near_dup_threshold: float = 0.8
    tasks: tuple[str, ...] = ("passkey", "kv", "idrecall")
    knobs: tuple[Knob, ...] = ()
    target_accuracy: tuple[float, float] = (0.3, 0.85)  # uniform at distance 1k-4k
    items_per_bucket: int = 170  # 3 tasks x 2 buckets at 1k-4k x 170 = 1020 paired items
    calibration_items_per_bucket: int = 60  # per knob setting: 120 items at 1k-4k
    eval_max_sequences: int = 128  # held-out files of long_len tokens: id_loss and LongPPL
    # Primary 3 reads the first short_len tokens of every held-out file (1,044 in the block
    # corpus): a bound above any split's size takes them all.
    eval_short_files: int = 1_000_000
    jobs_per_device: int = 4
    carried: Path = CARRIED
    calibration: Path = CALIBRATION
    # The selection experiment's blocks (the pipeline's --selection-arms): uniform, dense and
    # SELECTION_ARMS, the top `selection_fraction` of the long pool by `tokenweight rank`
    # against a matched random subset. Its records stay out of the replication's report.
    selection_arms: bool = False
    selection_fraction: float = 0.3

    @property
    def long_rope_theta(self) -> float:
        """NTK-aware base for the longer context: theta * s^(d/(d-2)), s = long/short."""
        scale = self.long_len / self.short_len
        d = self.trainee.head_dim
        return round(self.rope_theta * scale ** (d / (d - 2)))

    @property
    def pretrain_steps(self) -> int:
        return math.ceil(self.pretrain_tokens / (self.pretrain.batch * self.short_len))

    @property
    def weak_steps(self) -> int:
        return math.ceil(self.weak_tokens / (self.pretrain.batch * self.short_len))

    @property
    def arms(self) -> tuple[BlockArm, ...]:
        return block_arms(self.short_len, self.selection_arms)


# The pilot sweeps, per the eval's options: passkey look-alike distractors, and same-form
# key/value pairs, more of them, whose keys share more and more letters. idrecall has no knob:
# natural items. The easy ends are as easy as the options go: a passkey with no decoys, kv with
# 2 pairs (on the pilot's first, weaker base, no-decoy passkey was 0.30 and kv-32 0.20 at
# 1k-4k); the hard end of kv-shared 2 is its capacity, 23 keys one letter apart.
KNOBS = (
    Knob(
        "passkey",
        tuple(
            {"--passkey-distractors": n, "--passkey-differ": d}
            for n, d in ((0, 5), (4, 5), (8, 3), (16, 2), (16, 1), (32, 1))
        ),
    ),
    Knob(
        "kv",
        tuple(
            {"--kv-pairs": n, "--kv-shared": s}
            for n, s in ((2, 0), (4, 0), (8, 0), (16, 0), (32, 0), (64, 1), (20, 2))
        ),
    ),
)

TRAINEE = Shape(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=1536,
)
# 6.8M parameters (0.23 of the trainee's 29.4M): 13.6 MB in bf16, carried in the repository.
WEAK = Shape(
    hidden_size=256,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=768,
)

BLOCK_PROFILES = {
    "block": BlockProfile(
        name="block",
        trainee=TRAINEE,
        weak=WEAK,
        vocab_size=8192,
        short_len=512,
        long_len=4096,
        rope_theta=10000.0,
        # 250M tokens (~8.5 per parameter): 4.5 min at the 930k tokens/s the pilot measured on
        # this model at 512 (its base is pretrained the same way, with seed 0).
        pretrain_tokens=250_000_000,
        pretrain=Training(steps=0, batch=128, micro_batch=128, lr=1e-3, min_lr=1e-4, warmup=100),
        weak_tokens=150_000_000,
        # 80 x 16 x 4096 = 5.2M tokens per arm.
        extend=Training(steps=80, batch=16, micro_batch=16, lr=3e-4, min_lr=3e-5, warmup=8),
        judge_extend=Training(steps=150, batch=16, micro_batch=16, lr=3e-4, min_lr=3e-5, warmup=15),
        knobs=KNOBS,
    ),
    "block-smoke": BlockProfile(
        name="block-smoke",
        trainee=Shape(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
        ),
        weak=Shape(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
        ),
        vocab_size=512,
        short_len=32,
        long_len=256,
        rope_theta=10000.0,
        pretrain_tokens=8 * 32 * 20,
        pretrain=Training(steps=0, batch=8, micro_batch=8, lr=3e-3, min_lr=3e-4, warmup=2),
        weak_tokens=8 * 32 * 10,
        extend=Training(steps=3, batch=2, micro_batch=2, lr=1e-3, min_lr=1e-4, warmup=1),
        judge_extend=Training(steps=2, batch=2, micro_batch=2, lr=1e-3, min_lr=1e-4, warmup=1),
        corpus_max_bytes=2_000_000,
        corpus_roots=("json", "email", "asyncio", "logging", "http", "xml", "importlib"),
        heldout_fraction=0.2,
        long_fraction=0.2,
        long_min_bytes=1500,
        knobs=tuple(Knob(k.task, k.settings[:2]) for k in KNOBS),
        items_per_bucket=2,
        calibration_items_per_bucket=2,
        eval_max_sequences=16,  # idrecall needs a few files with identifiers far apart
        jobs_per_device=2,
        carried=Path(),  # set per run: WORK/carried (the smoke never writes the repository)
        calibration=Path(),
    ),
}
