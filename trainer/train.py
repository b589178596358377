"""The training loop: `torchrun --nproc-per-node N -m tokenweight.trainer ...`.

Read top to bottom: `build` sets up data, model, parallelism, optimizer and scores (resumed
if asked); `loop` runs the steps, each `optimizer_step` taking `grad_accum` micro-batches
(`micro_step`) that weight every target token by how much it needs long context
(docs/DESIGN.md §1) and optimize the weighted cross-entropy.
"""

import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from tokenweight.service.blocks import compile_blocks

from . import checkpoint
from . import metrics_log as m
from .args import TrainConfig, parse_args
from .data import Batch, RankBatches, TokenShards, batch_token_hash
from .loss import token_cross_entropy, weighted_mean
from .model import HiddenStates, apply_activation_checkpointing, load_model
from .parallel import Dist, all_reduce, gradient_sync, init_distributed, parallelize
from .scores import OwnScores, ScorerUnavailableError, make_source
from .weighting import WeightingConfig, compute_weights

log = logging.getLogger("tokenweight.trainer")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    d = init_distributed(cfg.device)
    try:
        train(cfg, d)
    except ScorerUnavailableError as exc:
        # An outage is no bug: its cause is already logged, the traceback would add nothing.
        log.error("%s", exc)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


def train(cfg: TrainConfig, d: Dist) -> None:
    run = build(cfg, d)
    try:
        loop(run)
    finally:
        run.close()
    if run.step < cfg.max_steps:
        log.info("stopped at step %d of %d; continue with --resume auto", run.step, cfg.max_steps)
        return
    out = Path(cfg.out) / "model"
    checkpoint.export_model(run.model, run.lm, cfg.model, out, d)
    log.info("done: %d steps; Hugging Face checkpoint in %s", run.step, out)


@dataclasses.dataclass
class Run:
    """Everything a training run holds between steps; `build` makes it, `loop` drives it."""

    cfg: TrainConfig
    d: Dist
    out: Path
    seq_len: int
    order: RankBatches
    lm: torch.nn.Module  # the Hugging Face model
    model: torch.nn.Module  # its parallel wrapper, returning hidden states
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    weighting: WeightingConfig
    tie_breaks: torch.Generator
    source: object
    stream: Iterator
    own: OwnScores
    autocast: contextlib.AbstractContextManager
    metrics: m.MetricsLog | None
    bar: tqdm
    step: int = 0

    def close(self) -> None:
        self.stream.close()
        self.source.close()
        self.bar.close()
        if self.metrics:
            self.metrics.close()


def build(cfg: TrainConfig, d: Dist) -> Run:
    """Data, model, parallelism, optimizer and scores, resumed from a checkpoint if asked."""
    _setup_logging(d)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if d.device.type == "cpu":
        # Exact resume compares losses bit for bit; CPU kernels are cheap to pin.
        torch.use_deterministic_algorithms(True)

    # Data: every rank its own slice of each global step, in a seeded, resumable order.
    shards = TokenShards(cfg.data)
    seq_len = min(cfg.seq_len or shards.seq_len, shards.seq_len)
    order = RankBatches(shards, cfg.batch_size, d.rank, d.world_size, cfg.seed)

    # Model: fp32 master weights; context extended before the weights are placed.
    lm = load_model(cfg.model, cfg.seq_len or shards.seq_len, cfg.rope_theta)
    _check_vocab(shards, lm)
    if cfg.compile_blocks:
        compile_blocks(lm)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(lm, every=cfg.activation_checkpointing_every)
    model = parallelize(
        HiddenStates(lm), cfg.parallel, d, torch.bfloat16 if cfg.bf16_params else None
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=True if cfg.fused_optimizer else None,
    )
    scheduler = LambdaLR(optimizer, _lr_factor(cfg))
    # Sparsification breaks ties at random; one generator per rank, carried across steps
    # (and checkpoints), as the released code's global RNG is.
    tie_breaks = torch.Generator().manual_seed(cfg.seed + d.rank)

    step = 0
    resume = checkpoint.resolve_resume(cfg.resume, out)
    if resume is not None:
        state = checkpoint.load(resume, model, optimizer, d)
        step = state["step"]
        _load_schedule(scheduler, optimizer, state["scheduler"])
        order.load_state_dict(state["data"])
        checkpoint.set_rng_state(state["rng"], d.device)
        tie_breaks.set_state(state["tie_breaks"])
        log.info("resumed from %s at step %d", resume, step)

    source = make_source(cfg, shards)
    stream = source.scored(_batches(order, seq_len))
    own = OwnScores.for_source(source, cfg, model, lm, seq_len, d.device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if d.device.type == "cuda"
        else contextlib.nullcontext()
    )
    metrics = m.MetricsLog(out / m.METRICS_FILE) if d.is_main else None
    bar = tqdm(
        total=cfg.max_steps, initial=step, unit="step", disable=not (d.is_main and cfg.progress)
    )
    if cfg.dump_weights:
        Path(cfg.dump_weights).mkdir(parents=True, exist_ok=True)
    log.info(
        f"training {cfg.model} for {cfg.max_steps} steps: {d.world_size} ranks x "
        f"{cfg.batch_size} sequences x {cfg.grad_accum} micro-batches of {seq_len} tokens, "
        f"{cfg.parallel}, weighting {cfg.weighting}, scores {cfg.score_source or 'none'}"
    )
    return Run(
        cfg, d, out, seq_len, order, lm, model, lm.get_output_embeddings(), optimizer,
        scheduler, cfg.weighting_config(), tie_breaks, source, stream, own, autocast, metrics,
        bar, step,
    )


def loop(run: Run) -> None:
    """Steps until --stop-at or --max-steps, checkpointing where asked and at the end."""
    cfg = run.cfg
    while run.step < (cfg.stop_at or cfg.max_steps):
        run.step += 1
        record = optimizer_step(run)
        if run.metrics:
            run.metrics.log(record)
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{record[m.LOSS]:.4f}", wait=f"{record[m.SCORER_WAIT_S]:.2f}s")
        if run.step in (cfg.max_steps, cfg.stop_at) or (
            cfg.save_every and run.step % cfg.save_every == 0
        ):
            save(run)


def optimizer_step(run: Run) -> dict:
    """`grad_accum` micro-batches, then one optimizer step; returns the step's metrics."""
    cfg, d = run.cfg, run.d
    started = time.perf_counter()
    stats = _StepStats(d.device)
    for micro in range(cfg.grad_accum):
        micro_step(run, micro, stats)

    grad_norm = torch.nn.utils.clip_grad_norm_(
        run.model.parameters(), cfg.max_grad_norm or float("inf")
    )
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)

    record = stats.reduce(cfg.grad_accum, d.world_size)
    step_time = time.perf_counter() - started
    tokens = cfg.grad_accum * cfg.batch_size * run.seq_len * d.world_size
    record.update(
        {
            m.STEP: run.step,
            m.LR: lr,
            "grad_norm": _full(grad_norm),
            m.TOKENS_PER_S: tokens / step_time,
            "step_time_s": step_time,
        }
    )
    if d.device.type == "cuda":
        # The allocator's own counter: no device sync.
        record[m.PEAK_MEM_GIB] = torch.cuda.max_memory_allocated(d.device) / 2**30
    return record


def micro_step(run: Run, micro: int, stats: "_StepStats") -> None:
    """Forward and backward of one micro-batch with its weighted loss."""
    cfg = run.cfg
    waited = time.perf_counter()
    batch, scores = next(run.stream)
    stats.scorer_wait += time.perf_counter() - waited
    tokens = torch.as_tensor(batch.tokens, device=run.d.device)
    targets = tokens[:, 1:]
    with gradient_sync(run.model, enabled=micro == cfg.grad_accum - 1):
        with run.autocast:
            hidden = run.model(tokens[:, :-1])
            # Per-token CE first: in `hybrid`/`self` it is loss_long itself, so the weights
            # come from the same LM-head pass the loss backpropagates.
            token_ce, real = token_cross_entropy(
                hidden,
                run.head,
                targets,
                chunk_size=cfg.loss_chunk_size,
                compiled=cfg.compile_loss,
                recompute=cfg.loss_recompute,
            )
            weights = loss_long = loss_short = None
            if cfg.needs_scores:
                loss_long, loss_short = run.own.losses(scores, token_ce.detach(), tokens)
                weights = compute_weights(
                    loss_long, loss_short, run.weighting, generator=run.tie_breaks
                )
            result = weighted_mean(token_ce, real, weights)
        (result.loss / cfg.grad_accum).backward()
    stats.add(result, weights)
    if cfg.dump_weights:
        name = f"step{run.step:06d}_micro{micro}_rank{run.d.rank}.npz"
        _dump(Path(cfg.dump_weights) / name, batch, result, weights, loss_long, loss_short)
    run.order.step = batch.step + 1  # the data position a checkpoint resumes at


def save(run: Run) -> None:
    trainer_state = {
        "step": run.step,
        "scheduler": run.scheduler.state_dict(),
        "data": run.order.state_dict(),
        "rng": checkpoint.rng_state(run.d.device),
        "tie_breaks": run.tie_breaks.get_state(),
    }
    where = checkpoint.step_dir(run.out, run.step)
    meta = {"step": run.step, "config": run.cfg.to_dict()}
    checkpoint.save(where, run.model, run.optimizer, trainer_state, run.d, meta)
    log.info("saved checkpoint %s", where)


def _batches(order: RankBatches, seq_len: int) -> Iterator[Batch]:
    """This rank's batches from the current data position, cut to the training context."""
    for data_step in itertools.count(order.step):
        batch = order.batch_at(data_step)
        yield dataclasses.replace(batch, tokens=batch.tokens[:, :seq_len])


class _StepStats:
    """Sums over a step's micro-batches, all-reduced into the step's metrics."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)
        self.maxima = torch.zeros(2, dtype=torch.float64, device=device)
        self.scorer_wait = 0.0

    def add(self, result, weights: torch.Tensor | None) -> None:
        n = result.num_targets.double()
        w = torch.ones_like(result.token_ce) if weights is None else weights.detach().double()
        self.sums += torch.stack(
            [
                result.loss.detach().double(),
                result.ce_mean.double(),
                w.sum(),
                (w * w).sum(),
                (w > 0).sum().double(),
                n,
            ]
        )
        self.maxima[0] = torch.maximum(self.maxima[0], w.max())

    def reduce(self, grad_accum: int, world_size: int) -> dict:
        self.maxima[1] = self.scorer_wait
        loss, ce, w_sum, w_sq, nonzero, n = all_reduce(self.sums).tolist()
        w_max, wait_max = all_reduce(self.maxima, dist.ReduceOp.MAX).tolist()
        mean = w_sum / n
        micro_batches = grad_accum * world_size
        return {
            m.LOSS: loss / micro_batches,
            m.LOSS_UNWEIGHTED: ce / micro_batches,
            m.WEIGHT_MEAN: mean,
            m.WEIGHT_STD: max(w_sq / n - mean * mean, 0.0) ** 0.5,
            m.WEIGHT_MAX: w_max,
            m.WEIGHT_NONZERO: nonzero / n,
            # The slowest rank's wait is the step's: the others wait for it in the all-reduce.
            m.SCORER_WAIT_S: wait_max,
        }


def _dump(path: Path, batch, result, weights, loss_long, loss_short) -> None:
    """Debug record of exactly what a micro-batch trained with (--dump-weights)."""
    applied = torch.ones_like(result.token_ce) if weights is None else weights
    arrays = {
        "indices": batch.indices,
        "data_step": np.int64(batch.step),
        "token_hash": np.array(batch_token_hash(batch.tokens)),
        "weights": applied.float().cpu().numpy(),
        "token_ce": result.token_ce.float().cpu().numpy(),
    }
    if loss_long is not None:
        arrays["loss_long"] = loss_long.float().cpu().numpy()
        arrays["loss_short"] = loss_short.float().cpu().numpy()
    np.savez(path, **arrays)


def _lr_factor(cfg: TrainConfig):
    """Linear warmup to the peak, then constant or cosine down to min_lr."""
    floor = cfg.min_lr / cfg.lr if cfg.lr else 0.0

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        decay_steps = max(cfg.max_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _load_schedule(scheduler: LambdaLR, optimizer, state: dict) -> None:
    scheduler.load_state_dict(state)
    # The schedule is a function of the step: evaluate it afresh, so a run resumed with
    # another --max-steps or --warmup-steps continues on the new curve, not the old one's.
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas
    ):
        group["lr"] = base * factor(scheduler.last_epoch)


def _full(value: torch.Tensor) -> float:
    """A scalar that may be a DTensor (FSDP gradients' norm) as a float."""
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def _check_vocab(shards: TokenShards, lm) -> None:
    if shards.vocab_size is not None and shards.vocab_size > lm.config.vocab_size:
        raise ValueError(
            f"{shards.path} was tokenized with a vocabulary of {shards.vocab_size} tokens but the "
            f"model has {lm.config.vocab_size}; prepare the data with the model's tokenizer"
        )


def _setup_logging(d: Dist) -> None:
    # Every rank reports warnings (a scorer outage is seen per rank); rank 0 also reports progress.
    logging.basicConfig(
        level=logging.INFO if d.is_main else logging.WARNING,
        format=f"[rank {d.rank}] %(asctime)s %(levelname)s %(name)s: %(message)s",
    )
