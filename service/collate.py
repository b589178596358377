"""One padded forward batch built on the host in a few tensor calls and sent in one copy.

The rows (right-padded token ids), the flat indices of the kept positions and their labels
are written into one int64 buffer, pinned when the model is on a GPU, so the host-to-device
transfer is a single asynchronous copy: the host goes on to launch the forward while it runs.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from .chunking import Segment


@dataclass
class Collated:
    rows: torch.Tensor  # [B, width] token ids, right-padded with 0, on the model's device
    positions: torch.Tensor  # [N] indices into the flattened [B * width] of kept predictions
    labels: torch.Tensor  # [N] the targets of those predictions
    kept: list[int]  # kept predictions per row, to split the N results back per segment


def collate(batch: Sequence[Segment], device: torch.device) -> Collated:
    """The forward inputs of `batch` (longest segment first), on `device`.

    Kept positions run row by row, from each segment's `score_from` to its last token, in
    the order the labels are concatenated; padding is never kept (causal attention lets no
    real position see it).
    """
    lengths = [len(seg) for seg in batch]
    score_from = [seg.score_from for seg in batch]
    rows = pad_sequence([seg.input_ids for seg in batch], batch_first=True)
    columns = torch.arange(rows.shape[1])
    keep = (columns >= torch.tensor(score_from)[:, None]) & (
        columns < torch.tensor(lengths)[:, None]
    )
    positions = keep.flatten().nonzero().squeeze(1)
    labels = torch.cat([seg.labels for seg in batch])
    kept = [n - first for n, first in zip(lengths, score_from)]
    if device.type == "cpu":  # already where the model reads them
        return Collated(rows, positions, labels, kept)
    parts = (rows.flatten(), positions, labels)
    sizes = [part.numel() for part in parts]
    packed = torch.empty(sum(sizes), dtype=torch.long, pin_memory=device.type == "cuda")
    torch.cat(parts, out=packed)
    flat_rows, positions, labels = packed.to(device, non_blocking=True).split(sizes)
    return Collated(flat_rows.view(rows.shape), positions, labels, kept)
