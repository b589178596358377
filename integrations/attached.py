"""Scores carried inside a Hugging Face batch dict, beside the tokens they belong to.

The collator attaches them (DataLoader workers, ahead of the step); the loss takes them off
and checks them against the tokens it is about to train on. The token hash and the scorer
fingerprint travel with the arrays, so a batch paired with another batch's scores, or with
scores of another scorer, is refused instead of trained on.
"""

from dataclasses import dataclass

import torch

from tokenweight.trainer.data import batch_token_hash
from tokenweight.trainer.scores import ScoreMismatchError

LOGP_LONG = "tokenweight_logp_long"
LOGP_SHORT = "tokenweight_logp_short"
FINGERPRINT = "tokenweight_fingerprint"
TOKEN_HASH = "tokenweight_token_hash"


@dataclass
class AttachedScores:
    """Target-aligned float32 `[batch, T-1]` log-probs of a batch's `input_ids` `[batch, T]`;
    NaN past each row's real tokens. `logp_long` is None when the loss takes it from the
    model's own forward (`hybrid`)."""

    logp_short: torch.Tensor
    logp_long: torch.Tensor | None
    fingerprint: str
    token_hash: str

    def attach(self, batch: dict) -> dict:
        batch[LOGP_SHORT] = self.logp_short
        if self.logp_long is not None:
            batch[LOGP_LONG] = self.logp_long
        batch[FINGERPRINT] = self.fingerprint
        batch[TOKEN_HASH] = self.token_hash
        return batch

    @classmethod
    def pop(cls, batch: dict) -> "AttachedScores":
        """Take the scores off `batch` (so the model never sees them as inputs)."""
        if LOGP_SHORT not in batch or TOKEN_HASH not in batch or FINGERPRINT not in batch:
            raise ScoreMismatchError(
                "the batch carries no tokenweight scores: build the DataLoader with "
                "tokenweight.integrations.transformers.ScoreCollator (Trainer(data_collator=...))"
            )
        return cls(
            logp_short=batch.pop(LOGP_SHORT),
            logp_long=batch.pop(LOGP_LONG, None),
            fingerprint=batch.pop(FINGERPRINT),
            token_hash=batch.pop(TOKEN_HASH),
        )

    def check(self, input_ids: torch.Tensor, fingerprint: str) -> None:
        """Refuse scores that were not computed for exactly `input_ids` by scorer `fingerprint`."""
        if self.token_hash != batch_token_hash(input_ids.detach().cpu().numpy()):
            raise ScoreMismatchError(
                f"the scores attached to this batch of {tuple(input_ids.shape)} tokens were "
                "computed for other tokens (token hash differs); the batch is refused. Batches "
                "must reach the Trainer as the ScoreCollator built them: nothing may change, "
                "reorder or re-pair input_ids and scores in between"
            )
        if self.fingerprint != fingerprint:
            raise ScoreMismatchError(
                f"this batch was scored by scorer fingerprint {self.fingerprint}, but the run "
                f"trains with {fingerprint}: the scorer's model or settings changed. Restart "
                "the scorer with the original model and settings, then resume from the last "
                "checkpoint"
            )
        expected = (input_ids.shape[0], input_ids.shape[1] - 1)
        for name, array in (("logp_short", self.logp_short), ("logp_long", self.logp_long)):
            if array is not None and tuple(array.shape) != expected:
                raise ScoreMismatchError(
                    f"{name} attached to the batch has shape {tuple(array.shape)}, but its "
                    f"{tuple(input_ids.shape)} tokens have {expected} targets"
                )
