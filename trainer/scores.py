"""Score sources: where each micro-batch's `logp_long` and `logp_short` come from
(docs/DESIGN.md §1.3).

| source        | logp_short                         | logp_long                    |
|---------------|------------------------------------|------------------------------|
| `service`     | scorer service                     | scorer service               |
| `hybrid`      | scorer service (short pass only)   | the training forward         |
| `self`        | the live model, no-grad chunks     | the training forward         |
| `precomputed` | score store                        | score store, or the forward  |

A source turns the rank's batch stream into `(batch, BatchScores)` pairs; an array left None
is filled by `OwnScores` from the model being trained. Remote scores are requested `depth` batches
ahead, so the scorer works while the trainer steps, and every pair is checked to belong
together before it is handed out: a batch is never trained with another batch's scores.
"""

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tokenweight.client.grpc_client import ScorerClient
from tokenweight.client.prefetch import BatchScoringError, Prefetcher
from tokenweight.client.retry import RetryPolicy
from tokenweight.service.chunking import check_window, default_stride, share_whole_prefix
from tokenweight.service.engine import Outputs, ScoreJob, compute_logprobs, default_options
from tokenweight.service.logprobs import ForwardOptions

from .data import Batch, batch_token_hash
from .parallel import unshard_root
from .score_store import ScoreStore

log = logging.getLogger("tokenweight.trainer")

SELF_DEFAULT_WINDOW = 1024


class ScoreMismatchError(RuntimeError):
    """Scores that do not belong to the batch they were paired with."""


@dataclass
class BatchScores:
    logp_long: np.ndarray | None  # float32 [B, T-1]; None = from the training forward
    logp_short: np.ndarray | None  # float32 [B, T-1]; None = the live model scores it


class NoScores:
    """`uniform` weighting and the `self` source: nothing to fetch."""

    def __init__(self, short_from_model: bool):
        self.long_from_model = short_from_model
        self.short_from_model = short_from_model

    def scored(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, BatchScores]]:
        for batch in batches:
            yield batch, BatchScores(None, None)

    def close(self) -> None:
        pass


class ServiceSource:
    """`service` / `hybrid`: scores from `tokenweight serve`, `depth` batches in flight.

    The client's Prefetcher scores the next `depth` batches in background threads while the
    trainer steps, and hands them back in order, each with its own batch. The client retries
    and fails over on its own; each retry is logged here, so an outage only makes the trainer
    wait and say so. The scorer's fingerprint, window and stride are pinned by the first
    response: a scorer restarted with another model or settings stops the run instead of
    silently changing the weights.
    """

    def __init__(
        self,
        urls: str,
        *,
        hybrid: bool,
        window: int | None,
        stride: int | None,
        scorer: str,
        depth: int,
        retry_for: float,
    ):
        # Backoff capped at a few seconds: an idle trainer should notice a restarted scorer soon.
        retry = RetryPolicy.for_duration(retry_for, max_backoff=3.0, on_retry=self._on_retry)
        self.client = ScorerClient(urls, retry=retry)
        self.long_from_model = hybrid
        self.short_from_model = False
        # hybrid asks for logp_short alone, which lets the scorer skip its long pass.
        self.outputs = ("logp_short",) if hybrid else ("logp_long", "logp_short")
        self.window, self.stride, self.scorer, self.depth = window, stride, scorer, depth
        self.pinned: tuple[str, int, int] | None = None
        self._outage_since: float | None = None

    def _on_retry(self, event) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic() - event.elapsed
        log.warning(
            "scorer unreachable (attempt %d, %.1f s so far): %s; retrying in %.2f s. Training "
            "waits for this batch's scores; no batch is skipped",
            event.attempt,
            event.elapsed,
            event.error,
            event.delay,
        )

    def _score(self, batch: Batch):
        # The hash of exactly the tokens sent travels with the answer, to be checked
        # against the batch the trainer is about to train on.
        token_hash = batch_token_hash(batch.tokens)
        result = self.client.score(
            list(batch.tokens),
            window=self.window,
            stride=self.stride,
            scorer=self.scorer or None,
            outputs=self.outputs,
        )
        return token_hash, result

    def scored(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, BatchScores]]:
        with Prefetcher(batches, self._score, depth=self.depth) as prefetched:
            while True:
                try:
                    batch, (token_hash, result) = next(prefetched)
                except BatchScoringError as exc:
                    raise RuntimeError(
                        f"{exc}. The run stops here; once the scorer is back, continue from the last "
                        "checkpoint with --resume auto"
                    ) from exc
                if self._outage_since is not None:
                    log.warning(
                        "scorer answering again after %.1f s; training continues",
                        time.monotonic() - self._outage_since,
                    )
                    self._outage_since = None
                yield batch, self._check(batch, token_hash, result)

    def _check(self, batch: Batch, token_hash: str, result) -> BatchScores:
        where = f"batch of data step {batch.step} (sequences {batch.indices[:4].tolist()}...)"
        if batch_token_hash(batch.tokens) != token_hash:
            raise ScoreMismatchError(
                f"the tokens of the {where} changed after they were sent to the scorer"
            )
        settings = (result.fingerprint, result.window, result.stride)
        if self.pinned is None:
            self.pinned = settings
            log.info("scorer %r: fingerprint %s, window %d, stride %d", result.scorer, *settings)
            if result.window >= batch.tokens.shape[1]:
                log.warning(
                    "the scorer's window %d is not shorter than the training rows (%d tokens): "
                    "all contrasts are 0 and the weights uniform",
                    result.window,
                    batch.tokens.shape[1],
                )
        elif settings != self.pinned:
            raise ScoreMismatchError(
                f"the scorer changed mid-run: the {where} was scored with (fingerprint, window, stride) "
                f"= {settings}, earlier batches with {self.pinned}. Restart the scorer with the "
                "original model and settings, then resume this run (--resume auto)"
            )
        arrays = {}
        for name in self.outputs:
            arrays[name] = _stack(
                where, name, [getattr(r, name) for r in result.results], batch.tokens.shape
            )
        return BatchScores(arrays.get("logp_long"), arrays["logp_short"])

    def close(self) -> None:
        self.client.close()


class PrecomputedSource:
    """`precomputed`: rows of a score store, looked up by the batch's sequence indices.

    The store was opened against the dataset's content hash, so row i is sequence i of this
    dataset. Rows longer than the training context are cut like the tokens: a target's
    log-probs depend on its prefix only.
    """

    def __init__(self, store, long_from_model: bool):
        self.store = store
        self.long_from_model = long_from_model
        self.short_from_model = False

    def scored(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, BatchScores]]:
        for batch in batches:
            logp_long, logp_short = self.store.get(batch.indices)
            where = f"batch of data step {batch.step} (score store {self.store.path})"
            targets = batch.tokens.shape[1] - 1
            short = _stack(where, "logp_short", list(logp_short[:, :targets]), batch.tokens.shape)
            long = (
                None
                if self.long_from_model
                else _stack(where, "logp_long", list(logp_long[:, :targets]), batch.tokens.shape)
            )
            yield batch, BatchScores(long, short)

    def close(self) -> None:
        self.store.close()


def _stack(where: str, name: str, rows: list, shape: tuple[int, int]) -> np.ndarray:
    """[B, T-1] float32 from per-sequence arrays, refusing any count or length mismatch."""
    batch_size, length = shape
    if len(rows) != batch_size:
        raise ScoreMismatchError(f"{where}: {len(rows)} {name} arrays for {batch_size} sequences")
    for i, row in enumerate(rows):
        if row is None or row.shape != (length - 1,):
            got = "none" if row is None else f"{row.shape[0]} values"
            raise ScoreMismatchError(
                f"{where}: sequence {i} has {got} of {name}, expected {length - 1}"
            )
    array = np.stack(rows).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ScoreMismatchError(f"{where}: {name} holds NaN or infinite values")
    return array


def self_window(window: int | None, stride: int | None) -> tuple[int, int]:
    k = window or SELF_DEFAULT_WINDOW
    s = stride or default_stride(k)
    check_window(k, s)
    return k, s


def self_logp_short(
    lm: nn.Module, tokens: torch.Tensor, window: int, stride: int, options: ForwardOptions
) -> torch.Tensor:
    """`self` source: the live model's short-context log-probs [B, T-1], no grad.

    The same engine code as the service (`compute_logprobs`), asked for logp_short alone.
    Dropout would make the chunks noisy, so the model runs in eval mode for the call. Under
    FSDP every rank runs the same forward calls (equal shapes give equal chunk plans), which
    the per-layer all-gathers need.
    """
    jobs = [
        ScoreJob(row, window, stride, Outputs(score=False, logp_long=False, logp_short=True))
        for row in tokens.cpu()
    ]
    was_training = lm.training
    lm.eval()
    try:
        results = compute_logprobs(lm, None, jobs, lm.config.bos_token_id, options)
    finally:
        lm.train(was_training)
    return torch.stack([r.short for r in results]).to(tokens.device)


def make_source(cfg, shards):
    """The score source the configuration names (see the table in the module doc)."""
    if not cfg.needs_scores:
        return NoScores(short_from_model=False)
    if cfg.score_source == "self":
        return NoScores(short_from_model=True)
    if cfg.score_source == "precomputed":
        store = ScoreStore.open(cfg.scores, shards.content_hash)
        asked = {"window": cfg.window, "stride": cfg.stride}
        for name, value in asked.items():
            if value is not None and value != getattr(store.meta, name):
                raise ValueError(
                    f"--{name} {value} differs from the score store's {name} {getattr(store.meta, name)}; "
                    "drop the flag or precompute scores with it"
                )
        return PrecomputedSource(store, cfg.long_from_model)
    return ServiceSource(
        cfg.scorer_url,
        hybrid=cfg.score_source == "hybrid",
        window=cfg.window,
        stride=cfg.stride,
        scorer=cfg.scorer_name,
        depth=cfg.prefetch_depth,
        retry_for=cfg.scorer_retry_for,
    )


@dataclass
class OwnScores:
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

    @classmethod
    def for_source(cls, source, cfg, model, lm, seq_len: int, device) -> "OwnScores":
        window, stride = (None, None)
        if source.short_from_model:
            window, stride = self_window(cfg.window, cfg.stride)
            if window >= seq_len:
                log.warning(
                    "--window %d >= --seq-len %d: every short context is the whole prefix, so "
                    "all contrasts are 0 and the weights uniform",
                    window,
                    seq_len,
                )
        options = default_options(device)
        if cfg.self_token_budget:
            options = dataclasses.replace(options, token_budget=cfg.self_token_budget)
        return cls(model, lm, window, stride, options)

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
        share_whole_prefix(loss_short, loss_long, self.window)
        return loss_long, loss_short
