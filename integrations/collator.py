"""`ScoreCollator`: a DataLoader collate function that attaches tokenweight scores to each batch.

Scoring happens where collation happens: in the DataLoader's worker processes, so with
`dataloader_num_workers=N` and `dataloader_prefetch_factor=P` the Trainer's own DataLoader
keeps up to N*P batches scored ahead of the step, while the model trains.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tokenweight.trainer.data import batch_token_hash
from tokenweight.trainer.scores import ScoreMismatchError

from .attached import AttachedScores
from .sources import SEQUENCE_INDEX, ServiceScores, StoreScores


def _default_base(features: list[dict]) -> dict:
    from transformers import default_data_collator

    return default_data_collator(features)


@dataclass
class ScoreCollator:
    """Collate with `base`, then attach the scores of every row's tokens from `scores`.

    `base` is any Hugging Face collator (default: `default_data_collator`, which stacks
    equal-length `input_ids`); a padding one must pad on the right. Rows are scored up to
    their last real token (`attention_mask`), and `labels` default to `input_ids` with
    padding ignored (-100).
    """

    scores: ServiceScores | StoreScores
    base: Callable[[list[dict]], dict] = _default_base

    def __call__(self, features: list[dict]) -> dict:
        batch = dict(self.base([_without_index(f) for f in features]))
        input_ids = torch.as_tensor(batch["input_ids"])
        lengths = _row_lengths(batch, input_ids)
        if "labels" not in batch:
            labels = input_ids.clone()
            labels[torch.arange(input_ids.shape[1]) >= lengths[:, None]] = -100
            batch["labels"] = labels
        tokens = input_ids.numpy()
        rows = [tokens[i, :n] for i, n in enumerate(lengths.tolist())]
        fetched = self.scores.fetch(rows, features)
        targets = input_ids.shape[1] - 1
        attached = AttachedScores(
            logp_short=_padded("logp_short", fetched.logp_short, rows, targets),
            logp_long=None
            if fetched.logp_long is None
            else _padded("logp_long", fetched.logp_long, rows, targets),
            fingerprint=fetched.fingerprint,
            # Of exactly the tensor the model will see; the loss hashes it again.
            token_hash=batch_token_hash(tokens),
        )
        return attached.attach(batch)


def _without_index(feature: dict) -> dict:
    """The example as the base collator and the model see it (the store's row index is ours)."""
    return {k: v for k, v in feature.items() if k != SEQUENCE_INDEX}


def _row_lengths(batch: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """Real tokens per row; refuses left padding, which would shift every position."""
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1])
    mask = torch.as_tensor(mask).bool()
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, torch.arange(mask.shape[1]) < lengths[:, None]):
        raise ValueError(
            "ScoreCollator needs right-padded rows (attention_mask 1...1 0...0): set the "
            "tokenizer's padding_side='right'"
        )
    return lengths


def _padded(
    name: str, arrays: list[np.ndarray], rows: list[np.ndarray], targets: int
) -> torch.Tensor:
    """[batch, targets] float32, NaN past each row's own `len(row) - 1` values."""
    out = np.full((len(rows), targets), np.nan, dtype=np.float32)
    if len(arrays) != len(rows):
        raise ScoreMismatchError(f"{len(arrays)} {name} arrays for a batch of {len(rows)} rows")
    for i, (array, row) in enumerate(zip(arrays, rows)):
        n = max(len(row) - 1, 0)
        if array is None or array.shape != (n,):
            got = "none" if array is None else f"{array.shape[0]} values"
            raise ScoreMismatchError(f"row {i} has {got} of {name} for {n} targets")
        out[i, :n] = array
    return torch.from_numpy(out)
