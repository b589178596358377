"""The training loop: `torchrun --nproc-per-node N -m tokenweight.trainer ...`.

Read top to bottom: set up data, model, parallelism, optimizer and scores; resume if asked;
then each step takes `grad_accum` micro-batches, weights every target token by how much it
needs long context (DESIGN §1), and optimizes the weighted cross-entropy.
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
from tokenweight.service.engine import default_options
from tokenweight.service.logprobs import ForwardOptions

from . import checkpoint
from . import metrics_log as m
from .args import TrainConfig, parse_args
from .data import Batch, RankBatches, TokenShards, batch_token_hash
from .loss import token_cross_entropy, weighted_mean
from .model import HiddenStates, apply_activation_checkpointing, load_model
from .parallel import Dist, all_reduce, gradient_sync, init_distributed, parallelize, unshard_root
from .scores import BatchScores, make_source, self_logp_short, self_window
from .weighting import compute_weights

log = logging.getLogger("tokenweight.trainer")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    d = init_distributed(cfg.device)
    try:
        train(cfg, d)
    finally:
        dist.destroy_process_group()
    return 0


def train(cfg: TrainConfig, d: Dist) -> None:
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
    head = lm.get_output_embeddings()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=True if cfg.fused_optimizer else None,
    )
    scheduler = LambdaLR(optimizer, _lr_factor(cfg))
    weighting = cfg.weighting_config()
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
    window, stride = (None, None)
    if source.short_from_model:
        window, stride = self_window(cfg.window, cfg.stride)
        if window >= seq_len:
            log.warning(
                "--window %d >= --seq-len %d: every short context is the whole prefix, so all "
                "contrasts are 0 and the weights uniform",
                window,
                seq_len,
            )
    options = default_options(d.device)
    if cfg.self_token_budget:
        options = dataclasses.replace(options, token_budget=cfg.self_token_budget)
    own = _OwnScores(model, lm, window, stride, options)
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

    try:
        while step < (cfg.stop_at or cfg.max_steps):
            step += 1
            started = time.perf_counter()
            stats = _StepStats(d.device)
            for micro in range(cfg.grad_accum):
                waited = time.perf_counter()
                batch, scores = next(stream)
                stats.scorer_wait += time.perf_counter() - waited
                tokens = torch.as_tensor(batch.tokens, device=d.device)
                targets = tokens[:, 1:]
                with gradient_sync(model, enabled=micro == cfg.grad_accum - 1):
                    with autocast:
                        hidden = model(tokens[:, :-1])
                        # Per-token CE first: in `hybrid`/`self` it is loss_long itself, so
                        # the weights come from the same LM-head pass the loss backpropagates.
                        token_ce, real = token_cross_entropy(
                            hidden,
                            head,
                            targets,
                            chunk_size=cfg.loss_chunk_size,
                            compiled=cfg.compile_loss,
                            recompute=cfg.loss_recompute,
                        )
                        weights = loss_long = loss_short = None
                        if cfg.needs_scores:
                            loss_long, loss_short = own.losses(scores, token_ce.detach(), tokens)
                            weights = compute_weights(
                                loss_long, loss_short, weighting, generator=tie_breaks
                            )
                        result = weighted_mean(token_ce, real, weights)
                    (result.loss / cfg.grad_accum).backward()
                stats.add(result, weights)
                if cfg.dump_weights:
                    name = f"step{step:06d}_micro{micro}_rank{d.rank}.npz"
                    dump = Path(cfg.dump_weights) / name
                    _dump(dump, batch, result, weights, loss_long, loss_short)
                order.step = batch.step + 1  # the data position a checkpoint resumes at

            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.max_grad_norm or float("inf")
            )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            record = stats.reduce(cfg.grad_accum, d.world_size)
            step_time = time.perf_counter() - started
            record.update(
                {
                    m.STEP: step,
                    m.LR: lr,
                    "grad_norm": _full(grad_norm),
                    m.TOKENS_PER_S: cfg.grad_accum
                    * cfg.batch_size
                    * seq_len
                    * d.world_size
                    / step_time,
                    "step_time_s": step_time,
                }
            )
            if d.device.type == "cuda":
                # The allocator's own counter: no device sync.
                record[m.PEAK_MEM_GIB] = torch.cuda.max_memory_allocated(d.device) / 2**30
            if metrics:
                metrics.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record[m.LOSS]:.4f}", wait=f"{record[m.SCORER_WAIT_S]:.2f}s")

            if step in (cfg.max_steps, cfg.stop_at) or (
                cfg.save_every and step % cfg.save_every == 0
            ):
                trainer_state = {
                    "step": step,
                    "scheduler": scheduler.state_dict(),
                    "data": order.state_dict(),
                    "rng": checkpoint.rng_state(d.device),
                    "tie_breaks": tie_breaks.get_state(),
                }
                checkpoint.save(
                    checkpoint.step_dir(out, step),
                    model,
                    optimizer,
                    trainer_state,
                    d,
                    {"step": step, "config": cfg.to_dict()},
                )
                log.info("saved checkpoint %s", checkpoint.step_dir(out, step))
    finally:
        stream.close()
        source.close()
        bar.close()
        if metrics:
            metrics.close()

    if step < cfg.max_steps:
        log.info("stopped at step %d of %d; continue with --resume auto", step, cfg.max_steps)
        return
    checkpoint.export_model(model, lm, cfg.model, out / "model", d)
    log.info("done: %d steps; Hugging Face checkpoint in %s", step, out / "model")


def _batches(order: RankBatches, seq_len: int) -> Iterator[Batch]:
    """This rank's batches from the current data position, cut to the training context."""
    for data_step in itertools.count(order.step):
        batch = order.batch_at(data_step)
        yield dataclasses.replace(batch, tokens=batch.tokens[:, :seq_len])


@dataclasses.dataclass
class _OwnScores:
    """The arrays a score source leaves None, from the model being trained.

    `logp_long` is this step's own per-token CE (no second pass through the layers or the
    LM head); `logp_short` comes from no-grad chunk passes of the live model (`self`), with
    the `window`/`stride` and engine options of that source.
    """

    model: torch.nn.Module  # the parallel wrapper
    lm: torch.nn.Module  # the Hugging Face model inside it
    window: int | None
    stride: int | None
    options: ForwardOptions

    @torch.no_grad()
    def losses(self, scores: BatchScores, model_ce, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_long, loss_short) = -logp per target, [B, T-1] fp32; `model_ce` is the
        training forward's detached per-token CE."""
        device = tokens.device
        if scores.logp_long is not None:
            loss_long = -torch.as_tensor(scores.logp_long, device=device)
        else:
            loss_long = model_ce.float()
        if scores.logp_short is not None:
            return loss_long, -torch.as_tensor(scores.logp_short, device=device)
        unshard_root(self.model)
        loss_short = -self_logp_short(self.lm, tokens, self.window, self.stride, self.options)
        # Targets t < window: the short context is the whole prefix and one model plays both
        # parts, so the short prediction is the long one and the contrast exactly 0.
        loss_short[:, : self.window - 1] = loss_long[:, : self.window - 1]
        return loss_long, loss_short


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
