"""The trainer's configuration: one dataclass, filled from the command line.

`torchrun --nproc-per-node N -m tokenweight.trainer --help` lists every flag. Checks that need
only the flags themselves run here, before any process group or model exists, so a typo
fails in a second instead of after the model has loaded on every rank.
"""

import argparse
from dataclasses import asdict, dataclass, fields

from .loss import DEFAULT_CHUNK_SIZE
from .weighting import PRESETS, WeightingConfig

SCORE_SOURCES = ("service", "hybrid", "self", "precomputed")


@dataclass(frozen=True)
class TrainConfig:
    model: str
    data: str
    out: str
    max_steps: int
    seq_len: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-5
    min_lr: float = 0.0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "auto"
    parallel: str = "ddp"
    activation_checkpointing: bool = True
    activation_checkpointing_every: int = 1  # recompute every N-th decoder layer (1 = all)
    fast: bool = False  # fused AdamW, compiled blocks and compiled loss together
    compile_blocks: bool = False  # torch.compile each decoder layer, attention left eager
    compile_loss: bool = False  # torch.compile the LM-head chunk's cross-entropy
    fused_optimizer: bool = False  # AdamW(fused=True): one kernel for all parameters
    loss_chunk_size: int = DEFAULT_CHUNK_SIZE  # tokens per LM-head + cross-entropy chunk
    loss_recompute: bool = True  # recompute each chunk's logits in the backward (not kept)
    bf16_params: bool = False  # FSDP: gather parameters in bf16, reduce gradients in fp32
    rope_theta: float | None = None
    score_source: str | None = None
    scorer_url: str | None = None
    scorer_name: str = ""
    scorer_retry_for: float = 3600.0
    prefetch_depth: int = 3
    scores: str | None = None
    long_from_model: bool = False
    weighting: str = "dense"
    lam: float | None = None
    kappa: float | None = None
    gamma: float | None = None
    shift: float | None = None
    window: int | None = None
    stride: int | None = None
    self_token_budget: int | None = None
    save_every: int = 0
    resume: str | None = None
    stop_at: int | None = None
    dump_weights: str | None = None
    progress: bool = True

    @property
    def needs_scores(self) -> bool:
        return self.weighting != "uniform"

    def weighting_config(self) -> WeightingConfig:
        return WeightingConfig.from_preset(
            self.weighting, seed=self.seed, **self.weighting_params()
        )

    def weighting_params(self) -> dict:
        given = {"lam": self.lam, "kappa": self.kappa, "gamma": self.gamma, "c": self.shift}
        return {k: v for k, v in given.items() if v is not None}

    def to_dict(self) -> dict:
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m tokenweight.trainer",
        description="Train a Hugging Face causal LM with token-weighted cross-entropy.",
    )
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model", required=True, help="local Hugging Face checkpoint directory (safetensors)"
    )
    g.add_argument("--data", required=True, help="dataset prepared by `tokenweight prepare`")
    g.add_argument(
        "--out", required=True, help="run directory: metrics.jsonl, checkpoints/, model/"
    )
    g.add_argument(
        "--seq-len",
        type=int,
        help="training context; longer dataset rows are cut to it, and the model's max positions grow to it (default: the dataset's rows)",
    )
    g.add_argument(
        "--rope-theta",
        type=float,
        help="new RoPE base for context extension (default: the checkpoint's)",
    )
    g.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recompute each decoder layer in the backward (default: on)",
    )

    g.add_argument(
        "--activation-checkpointing-every",
        type=int,
        default=1,
        metavar="N",
        help="recompute only every N-th decoder layer (1 = all; 2 = half the recompute, more memory)",
    )

    g = p.add_argument_group("speed")
    g.add_argument(
        "--fast",
        action="store_true",
        help="the measured speed set: --fused-optimizer --compile-blocks --compile-loss (same losses; compiles at start)",
    )
    g.add_argument(
        "--compile-blocks",
        action="store_true",
        help="torch.compile each decoder layer (norms, RoPE, MLP, residuals fused); attention stays eager SDPA",
    )
    g.add_argument(
        "--compile-loss",
        action="store_true",
        help="torch.compile the LM head's chunked cross-entropy",
    )
    g.add_argument(
        "--fused-optimizer", action="store_true", help="fused AdamW (one kernel per step)"
    )
    g.add_argument(
        "--loss-chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"tokens per LM-head + cross-entropy chunk (default {DEFAULT_CHUNK_SIZE})",
    )
    g.add_argument(
        "--loss-recompute",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recompute each chunk's logits in the backward; --no-loss-recompute keeps them (faster where tokens x vocab fp32 logits fit; default: on)",
    )

    g.add_argument(
        "--bf16-params",
        action="store_true",
        help="with --parallel fsdp: gather parameters in bf16 (fp32 master weights, fp32 gradient reduction)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per rank per micro-batch")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (AdamW)")
    g.add_argument(
        "--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine schedule"
    )
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup-steps", type=int, default=0, help="linear warmup from 0 to --lr")
    g.add_argument(
        "--schedule", choices=("constant", "cosine"), default="cosine", help="after warmup"
    )
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    g.add_argument(
        "--max-steps",
        type=int,
        required=True,
        help="optimizer steps in total (a resumed run continues to it)",
    )
    g.add_argument("--seed", type=int, default=0, help="data order, weighting tie-breaks and RNG")

    g = p.add_argument_group("devices")
    g.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="cuda: one GPU per rank (LOCAL_RANK), NCCL; cpu: gloo",
    )
    g.add_argument(
        "--parallel",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="replicate (DDP) or shard (FSDP2 fully_shard) the model",
    )

    g = p.add_argument_group("scores and weighting")
    g.add_argument(
        "--score-source",
        choices=SCORE_SOURCES,
        help="where logp_long/logp_short come from (default: precomputed with --scores, service with --scorer-url)",
    )
    g.add_argument(
        "--scorer-url", help="grpc://HOST:PORT[,grpc://HOST2:PORT] of `tokenweight serve`"
    )
    g.add_argument(
        "--scorer-name",
        default="",
        help="scorer to ask on the server (default: its default scorer)",
    )
    g.add_argument(
        "--scorer-retry-for",
        type=float,
        default=3600.0,
        help="seconds to keep retrying an unreachable scorer before the run stops (resume it with --resume auto)",
    )
    g.add_argument(
        "--prefetch-depth",
        type=int,
        default=3,
        help="batches whose scores are requested ahead of the training step",
    )
    g.add_argument(
        "--scores", help="score store written by `tokenweight precompute` (precomputed source)"
    )
    g.add_argument(
        "--long-from-model",
        action="store_true",
        help="precomputed: take logp_long from the training forward instead of the store (hybrid without a live scorer)",
    )
    g.add_argument(
        "--weighting", choices=PRESETS, default="dense", help="postprocessing preset (DESIGN §1)"
    )
    g.add_argument("--lam", type=float, help="dense: interpolation lambda (default 0.75)")
    g.add_argument("--kappa", type=float, help="sparse/ppmi/npmi: kept fraction (default 0.2)")
    g.add_argument("--gamma", type=float, help="longce: truncation (default 5)")
    g.add_argument("--shift", type=float, help="ppmi/npmi: the shift c (default 2)")
    g.add_argument(
        "--window",
        type=int,
        help="short-context window k (service/hybrid: scorer default; self: 1024)",
    )
    g.add_argument("--stride", type=int, help="chunk stride s (default 3k/4)")
    g.add_argument(
        "--self-token-budget",
        type=int,
        help="self source: tokens per no-grad scoring forward (default: the engine's)",
    )

    g = p.add_argument_group("checkpoints and logs")
    g.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="checkpoint every N steps into OUT/checkpoints/step_N (the last step is always saved)",
    )
    g.add_argument(
        "--resume",
        help="checkpoint directory to resume from, or `auto` for the latest in OUT/checkpoints",
    )
    g.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="end this invocation after step STEP (checkpointed there) while keeping the schedule of --max-steps; continue with --resume auto",
    )
    g.add_argument(
        "--dump-weights",
        metavar="DIR",
        help="debug: save each rank's micro-batch indices, token hash, losses and applied weights to DIR/step{S}_micro{M}_rank{R}.npz",
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar on rank 0",
    )
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    ns = parser.parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in fields(TrainConfig)}
    values["score_source"] = _score_source(ns, parser)
    if ns.fast:
        values.update(fused_optimizer=True, compile_blocks=True, compile_loss=True)
    config = TrainConfig(**values)
    try:
        check(config)
    except ValueError as exc:
        parser.error(str(exc))
    return config


def _score_source(ns, parser) -> str | None:
    if ns.weighting == "uniform":
        return None  # plain cross-entropy: no scores, no scorer
    if ns.score_source:
        return ns.score_source
    if ns.scores:
        return "precomputed"
    if ns.scorer_url:
        return "service"
    parser.error(
        f"--weighting {ns.weighting} needs scores: pass --scorer-url (service/hybrid), "
        "--scores (precomputed) or --score-source self"
    )


def check(c: TrainConfig) -> None:
    for name in (
        "batch_size",
        "grad_accum",
        "max_steps",
        "prefetch_depth",
        "loss_chunk_size",
        "activation_checkpointing_every",
    ):
        if getattr(c, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}"
            )
    for name in ("warmup_steps", "save_every"):
        if getattr(c, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(c, name)}")
    if c.stop_at is not None and not 1 <= c.stop_at <= c.max_steps:
        raise ValueError(
            f"--stop-at must be between 1 and --max-steps {c.max_steps}, got {c.stop_at}"
        )
    if c.seq_len is not None and c.seq_len < 2:
        raise ValueError(
            f"--seq-len must be at least 2 (one target needs two tokens), got {c.seq_len}"
        )
    if c.bf16_params and c.parallel != "fsdp":
        raise ValueError("--bf16-params needs --parallel fsdp (its mixed-precision policy)")
    if c.score_source in ("service", "hybrid") and not c.scorer_url:
        raise ValueError(f"--score-source {c.score_source} needs --scorer-url grpc://HOST:PORT")
    if c.score_source == "precomputed" and not c.scores:
        raise ValueError(
            "--score-source precomputed needs --scores PATH (from `tokenweight precompute`)"
        )
    c.weighting_config()  # raises ValueError naming a bad parameter
