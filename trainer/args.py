"""The trainer's configuration: one dataclass, filled from the command line.

`torchrun --nproc-per-node N -m tokenweight.trainer --help` lists every flag; each is a field
of `TrainConfig` carrying its default and help, and the parser is generated from them. Checks
that need only the flags themselves run here, before any process group or model exists, so a
typo fails in a second instead of after the model has loaded on every rank.
"""

import argparse
from dataclasses import asdict, dataclass

from tokenweight.client.urls import parse_urls
from tokenweight.flags import add_flags, flag, values_of

from .loss import DEFAULT_CHUNK_SIZE
from .weighting import PRESETS, WeightingConfig

SCORE_SOURCES = ("service", "hybrid", "self", "precomputed")


MODEL, OPTIM, DEVICES, SPEED, SCORES, CHECKPOINTS = (
    "model and data", "optimisation", "devices", "speed", "scores and weighting",
    "checkpoints and logs",
)


@dataclass(frozen=True)
class TrainConfig:
    model: str = flag(help="local Hugging Face checkpoint directory (safetensors)", group=MODEL)
    data: str = flag(help="dataset prepared by `tokenweight prepare`", group=MODEL)
    out: str = flag(help="run directory: metrics.jsonl, checkpoints/, model/", group=MODEL)
    max_steps: int = flag(
        help="optimizer steps in total (a resumed run continues to it)", group=OPTIM
    )
    seq_len: int | None = flag(
        None,
        "training context; longer dataset rows are cut to it, and the model's max positions "
        "grow to it (default: the dataset's rows)",
        group=MODEL,
    )
    batch_size: int = flag(8, "sequences per rank per micro-batch", group=OPTIM)
    grad_accum: int = flag(1, "micro-batches per optimizer step", group=OPTIM)
    lr: float = flag(2e-5, "peak learning rate (AdamW)", group=OPTIM)
    min_lr: float = flag(0.0, "learning rate at the end of the cosine schedule", group=OPTIM)
    weight_decay: float = flag(0.0, "AdamW weight decay", group=OPTIM)
    warmup_steps: int = flag(0, "linear warmup from 0 to --lr", group=OPTIM)
    schedule: str = flag("cosine", "after warmup", group=OPTIM, choices=("constant", "cosine"))
    max_grad_norm: float = flag(1.0, "gradient clipping (0 = off)", group=OPTIM)
    seed: int = flag(0, "data order, weighting tie-breaks and RNG", group=OPTIM)
    device: str = flag(
        "auto",
        "cuda: one GPU per rank (LOCAL_RANK), NCCL; cpu: gloo",
        group=DEVICES,
        choices=("auto", "cpu", "cuda"),
    )
    parallel: str = flag(
        "ddp",
        "replicate (DDP) or shard (FSDP2 fully_shard) the model",
        group=DEVICES,
        choices=("ddp", "fsdp"),
    )
    activation_checkpointing: bool = flag(
        True, "recompute each decoder layer in the backward", group=MODEL
    )
    activation_checkpointing_every: int = flag(
        1,
        "recompute only every N-th decoder layer (1 = all; 2 = half the recompute, more memory)",
        group=MODEL,
        metavar="N",
    )
    fast: bool = flag(
        False,
        "the measured speed set: --fused-optimizer --compile-blocks --compile-loss (same "
        "losses; compiles at start)",
        group=SPEED,
    )
    compile_blocks: bool = flag(
        False,
        "torch.compile each decoder layer (norms, RoPE, MLP, residuals fused); attention stays "
        "eager SDPA",
        group=SPEED,
    )
    compile_loss: bool = flag(
        False, "torch.compile the LM head's chunked cross-entropy", group=SPEED
    )
    fused_optimizer: bool = flag(False, "fused AdamW (one kernel per step)", group=SPEED)
    loss_chunk_size: int = flag(
        DEFAULT_CHUNK_SIZE, "tokens per LM-head + cross-entropy chunk", group=SPEED
    )
    loss_recompute: bool = flag(
        True,
        "recompute each chunk's logits in the backward; --no-loss-recompute keeps them (faster "
        "where tokens x vocab fp32 logits fit)",
        group=SPEED,
    )
    bf16_params: bool = flag(
        False,
        "with --parallel fsdp: gather parameters in bf16 (fp32 master weights, fp32 gradient "
        "reduction)",
        group=SPEED,
    )
    rope_theta: float | None = flag(
        None, "new RoPE base for context extension (default: the checkpoint's)", group=MODEL
    )
    score_source: str | None = flag(
        None,
        "where logp_long/logp_short come from (default: precomputed with --scores, service "
        "with --scorer-url)",
        group=SCORES,
        choices=SCORE_SOURCES,
    )
    scorer_url: str | None = flag(
        None,
        "grpc://HOST:PORT[,grpc://HOST2:PORT] of `tokenweight serve`, or a target gRPC balances "
        "over its replicas: dns:///NAME:PORT, ipv4:A:PORT,B:PORT",
        group=SCORES,
    )
    scorer_name: str = flag(
        "", "scorer to ask on the server (default: its default scorer)", group=SCORES
    )
    scorer_retry_for: float = flag(
        3600.0,
        "seconds to keep retrying an unreachable scorer before the run stops (resume it with "
        "--resume auto)",
        group=SCORES,
    )
    prefetch_depth: int = flag(
        3, "batches whose scores are requested ahead of the training step", group=SCORES
    )
    scores: str | None = flag(
        None, "score store written by `tokenweight precompute` (precomputed source)", group=SCORES
    )
    long_from_model: bool = flag(
        False,
        "precomputed: take logp_long from the training forward instead of the store (hybrid "
        "without a live scorer)",
        group=SCORES,
    )
    weighting: str = flag(
        "dense", "postprocessing preset (docs/DESIGN.md §1.2)", group=SCORES, choices=PRESETS
    )
    lam: float | None = flag(None, "dense: interpolation lambda (default 0.75)", group=SCORES)
    kappa: float | None = flag(None, "sparse/ppmi/npmi: kept fraction (default 0.2)", group=SCORES)
    gamma: float | None = flag(None, "longce: truncation (default 5)", group=SCORES)
    shift: float | None = flag(None, "ppmi/npmi: the shift c (default 2)", group=SCORES)
    window: int | None = flag(
        None, "short-context window k (service/hybrid: scorer default; self: 1024)", group=SCORES
    )
    stride: int | None = flag(None, "chunk stride s (default 3k/4)", group=SCORES)
    self_token_budget: int | None = flag(
        None,
        "self source: tokens per no-grad scoring forward (default: the engine's)",
        group=SCORES,
    )
    save_every: int = flag(
        0,
        "checkpoint every N steps into OUT/checkpoints/step_N (the last step is always saved)",
        group=CHECKPOINTS,
    )
    resume: str | None = flag(
        None,
        "checkpoint directory to resume from, or `auto` for the latest in OUT/checkpoints",
        group=CHECKPOINTS,
    )
    stop_at: int | None = flag(
        None,
        "end this invocation after step STEP (checkpointed there) while keeping the schedule "
        "of --max-steps; continue with --resume auto",
        group=CHECKPOINTS,
        metavar="STEP",
    )
    dump_weights: str | None = flag(
        None,
        "debug: save each rank's micro-batch indices, token hash, losses and applied weights "
        "to DIR/step{S}_micro{M}_rank{R}.npz",
        group=CHECKPOINTS,
        metavar="DIR",
    )
    progress: bool = flag(True, "progress bar on rank 0", group=CHECKPOINTS)

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
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m tokenweight.trainer",
        description="Train a Hugging Face causal LM with token-weighted cross-entropy.",
    )
    add_flags(parser, TrainConfig)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    ns = parser.parse_args(argv)
    values = values_of(ns, TrainConfig)
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
    if c.score_source in ("service", "hybrid"):
        if not c.scorer_url:
            raise ValueError(f"--score-source {c.score_source} needs --scorer-url grpc://HOST:PORT")
        # Checked here, before any model loads: a bad URL should cost seconds, not a load.
        not_grpc = [str(e) for e in parse_urls(c.scorer_url) if not e.is_grpc]
        if not_grpc:
            raise ValueError(
                f"--scorer-url {', '.join(not_grpc)}: the trainer talks gRPC to the scorer; use "
                "grpc://HOST:PORT (the server's --grpc-port, 50051 by default)"
            )
    if c.score_source == "precomputed" and not c.scores:
        raise ValueError(
            "--score-source precomputed needs --scores PATH (from `tokenweight precompute`)"
        )
    c.weighting_config()  # raises ValueError naming a bad parameter
