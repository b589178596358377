"""The chunk plan of docs/DESIGN.md §1.1: which forward passes score which targets.

Every pass is an independent forward from position 0, so one plan serves any causal LM
(rotary or learned absolute positions alike). A `Segment` is one such pass: the tokens it
feeds, the first position whose prediction is kept, and where its log-probs land in the
sequence's target-aligned output (entry t-1 belongs to target x_t).
"""

from dataclasses import dataclass

import torch

LONG = "long"
SHORT = "short"


@dataclass
class Segment:
    sequence: int  # index of the sequence in the batch
    role: str  # LONG or SHORT: which model runs it and which output it fills
    input_ids: torch.Tensor  # 1-D, the tokens fed to the model
    labels: torch.Tensor  # 1-D, targets predicted at positions score_from .. len-1
    score_from: int  # first position of input_ids whose prediction is kept
    out_offset: int  # index into the target-aligned output of the first kept prediction

    def __len__(self) -> int:
        return self.input_ids.numel()


def default_stride(window: int) -> int:
    return max(1, (3 * window) // 4)


def check_window(window: int, stride: int) -> None:
    """Raise ValueError unless 1 <= stride <= window-1 (so window >= 2)."""
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window - 1:
        raise ValueError(
            f"stride must satisfy 1 <= stride <= window-1 = {window - 1}, got {stride} "
            f"(window {window}; the default stride is 3*window/4 = {default_stride(window)})"
        )


def share_whole_prefix(short, long, window: int) -> None:
    """Targets t < window, whose short context is the whole prefix: when one model plays both
    parts the short prediction is the long one, so `short` takes `long`'s values there (in
    place, along the last axis) and the contrast is exactly 0."""
    short[..., : window - 1] = long[..., : window - 1]


def chunk_count(length: int, window: int, stride: int) -> int:
    """Short-context chunks for a sequence of `length` tokens: targets t >= window."""
    if length <= window:
        return 0
    return -(-(length - window) // stride)


def forward_tokens(
    length: int, window: int, stride: int, need_long: bool, need_short: bool, short_is_long: bool
) -> int:
    """Tokens fed to the model by `plan_sequence`'s segments, without building them: the
    work a sequence costs, so a request can be bounded and queued by it before it runs."""
    if length < 2:
        return 0
    total = length - 1 if need_long else 0
    if not need_short:
        return total
    if not (need_long and short_is_long):
        total += min(window, length) - 1
    chunks = chunk_count(length, window, stride)
    if chunks:
        # Every chunk but the last feeds window-1 tokens; the last ends at x_{L-2}.
        total += (chunks - 1) * (window - 1) + (length - 1 - chunks * stride)
    return total


def plan_sequence(
    sequence: int,
    tokens: torch.Tensor,
    window: int,
    stride: int,
    bos_token_id: int | None,
    need_long: bool,
    need_short: bool,
    short_is_long: bool,
) -> list[Segment]:
    """Segments that give `logp_long` and/or `logp_short` for one sequence.

    - long: one pass over x_0 .. x_{L-2} predicting x_1 .. x_{L-1};
    - short, t < window: the whole prefix is the short context. When one model plays both
      parts and the long pass runs anyway, those entries are copied from it (not planned
      here); otherwise one pass over x_0 .. x_{window-2} gives them;
    - short, t >= window: chunk j = floor((t-k)/s) + 1 starts at a = j*s and feeds
      x_a .. x_{t_last-1}; when x_0 is BOS, BOS replaces x_a, as the paper's code does.
    """
    length = tokens.numel()
    if length < 2:
        return []
    segments = []
    if need_long:
        segments.append(Segment(sequence, LONG, tokens[:-1], tokens[1:], 0, 0))
    if not need_short:
        return segments
    if not (need_long and short_is_long):
        head = min(window, length)
        segments.append(Segment(sequence, SHORT, tokens[: head - 1], tokens[1:head], 0, 0))
    starts_with_bos = bos_token_id is not None and int(tokens[0]) == bos_token_id
    for j in range(1, chunk_count(length, window, stride) + 1):
        start = j * stride
        first_target = window + (j - 1) * stride
        last_target = min(window + j * stride - 1, length - 1)
        input_ids = tokens[start:last_target]
        if starts_with_bos:
            input_ids = input_ids.clone()
            input_ids[0] = bos_token_id
        segments.append(
            Segment(
                sequence,
                SHORT,
                input_ids,
                tokens[first_target : last_target + 1],
                first_target - 1 - start,
                first_target - 1,
            )
        )
    return segments
