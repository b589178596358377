"""`TokenWeightLoss`: the token-weighted cross-entropy of one batch, from hidden states.

The same pieces as tokenweight's own trainer: the chunked LM-head cross-entropy (never a
`[tokens x vocab]` logits tensor), `compute_weights` for any weighting preset, and in
`hybrid` the model's own per-token CE as `loss_long`.
"""

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from tokenweight.trainer.loss import DEFAULT_CHUNK_SIZE, token_cross_entropy, weighted_mean
from tokenweight.trainer.scores import ScoreMismatchError
from tokenweight.trainer.weighting import WeightingConfig, compute_weights

from .attached import AttachedScores


@dataclass
class TokenWeightLoss:
    """`weighting`: a `WeightingConfig` (e.g. `WeightingConfig.from_preset("dense", lam=0.75)`).
    `hybrid`: logp_long from the model being trained, only logp_short from the scores.
    `fingerprint`: the scorer fingerprint every batch must carry; None pins the first one seen.
    """

    weighting: WeightingConfig
    hybrid: bool = False
    fingerprint: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # Sparsification's random tie-breaks: one generator per rank, carried across steps, seeded
    # as tokenweight's own trainer seeds it (weighting seed + rank).
    _tie_breaks: torch.Generator | None = field(default=None, init=False, repr=False)

    def __call__(
        self,
        hidden: torch.Tensor,
        lm_head: nn.Linear | torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        scores: AttachedScores,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """`sum(w * CE)` over the batch's targets, divided by `num_items_in_batch` (the Trainer's
        count over the whole step) or else by this batch's own target count.

        `hidden` is the last hidden state `[batch, T, d]` of `input_ids` `[batch, T]`;
        `labels` are `input_ids` with ignored positions set to -100 (shifted here).
        """
        if self.fingerprint is None:
            self.fingerprint = scores.fingerprint
        scores.check(input_ids, self.fingerprint)
        targets = labels[:, 1:]
        trained = targets != -100
        if not torch.equal(targets[trained], input_ids[:, 1:][trained]):
            raise ValueError(
                "labels must be the input_ids (or -100 where not trained): the scores belong to "
                "the input tokens"
            )
        token_ce, real = token_cross_entropy(
            hidden[:, :-1], lm_head, targets, chunk_size=self.chunk_size
        )
        loss_short = -scores.logp_short.to(token_ce.device)
        if self.hybrid:
            loss_long = token_ce.detach()
        elif scores.logp_long is None:
            raise ScoreMismatchError(
                "the batch carries logp_short only (scored for `hybrid`), but the loss is not "
                "hybrid; build ServiceScores and TokenWeightLoss with the same hybrid setting"
            )
        else:
            loss_long = -scores.logp_long.to(token_ce.device)
        if not torch.isfinite(loss_short[real]).all() or not torch.isfinite(loss_long[real]).all():
            raise ScoreMismatchError("a trained target has no finite score in the batch's scores")
        weights = compute_weights(
            loss_long, loss_short, self.weighting, mask=real, generator=self._generator()
        )
        return weighted_mean(token_ce, real, weights, num_items=num_items_in_batch).loss

    def _generator(self) -> torch.Generator:
        if self._tie_breaks is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            self._tie_breaks = torch.Generator().manual_seed(self.weighting.seed + rank)
        return self._tie_breaks
