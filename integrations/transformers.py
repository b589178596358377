"""Token weighting inside Hugging Face `Trainer` (needs the `[hf]` extra).

    from tokenweight.integrations.transformers import (
        ScoreCollator, ServiceScores, TokenWeightLoss, TokenWeightTrainer, WeightingConfig)

    trainer = TokenWeightTrainer(
        model=model, args=TrainingArguments(..., dataloader_num_workers=2),
        train_dataset=dataset,                                   # examples with input_ids
        data_collator=ScoreCollator(ServiceScores("grpc://scorer:50051", hybrid=True)),
        token_weight_loss=TokenWeightLoss(WeightingConfig.from_preset("dense"), hybrid=True))
    trainer.train()

The collator scores each batch in the DataLoader's workers; `TokenWeightTrainer` runs the
model for its hidden states only (no logits) and hands them to the loss through the
Trainer's own `compute_loss_func` path, so gradient accumulation and multi-process runs
normalise exactly as Trainer does (`num_items_in_batch`). The mixin puts the same loss in
place of the loss of any Trainer subclass:
`class MyTrainer(TokenWeightTrainerMixin, SomeTrainer)`.
"""

import torch
from transformers import Trainer

from tokenweight.trainer.scores import ScoreMismatchError
from tokenweight.trainer.weighting import WeightingConfig

from .attached import AttachedScores
from .collator import ScoreCollator
from .loss import TokenWeightLoss
from .sources import SEQUENCE_INDEX, ServiceScores, StoreScores

__all__ = [
    "SEQUENCE_INDEX",
    "ScoreCollator",
    "ScoreMismatchError",
    "ServiceScores",
    "StoreScores",
    "TokenWeightLoss",
    "TokenWeightTrainer",
    "TokenWeightTrainerMixin",
    "WeightingConfig",
]


class TokenWeightTrainerMixin:
    """Trains on the token-weighted loss of the scores `ScoreCollator` attached to each batch."""

    def __init__(self, *args, token_weight_loss: TokenWeightLoss, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("TokenWeightTrainer brings its own compute_loss_func; pass none")
        self.token_weight_loss = token_weight_loss
        self._batch: tuple[torch.Tensor, AttachedScores] | None = None
        super().__init__(*args, compute_loss_func=self._weighted_loss, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        scores = AttachedScores.pop(inputs)
        input_ids = inputs["input_ids"]
        # The last hidden state, and logits for no position: the loss applies the LM head
        # chunk by chunk. Through the wrapped model's own forward, so DDP/FSDP hooks run.
        inputs.update(
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
        )
        self._batch = (input_ids, scores)
        try:
            # Trainer's own, not a subclass's: this loss replaces theirs (TRL's SFTTrainer, for
            # one, computes metrics from the full logits this forward does not make).
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._batch = None

    def _weighted_loss(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        """Trainer's `compute_loss_func`, called by `Trainer.compute_loss` for this batch."""
        input_ids, scores = self._batch
        head = self.accelerator.unwrap_model(self.model).get_output_embeddings()
        return self.token_weight_loss(
            outputs.hidden_states[-1], head, input_ids, labels, scores, num_items_in_batch
        )


class TokenWeightTrainer(TokenWeightTrainerMixin, Trainer):
    """`transformers.Trainer` with tokenweight's weighted loss; takes `token_weight_loss=`."""
