"""The held-out sequences the perplexity metrics read.

From JSON lines (`tokenweight corpus`'s heldout.jsonl, or any `{"text"}` lines): every
document is encoded with the tokenizer's template (BOS first, as in training);
- `long`: the first `seq_len` tokens of each document at least that long (whole files, so
  position t really has t tokens of its own file before it);
- `short`: the first `window` tokens of every document: the short-context retention measure.
From prepared shards (token rows, no text): rows cut to `seq_len` and `window`; rows cross
document boundaries, so positions are positions in the row, and there is no text for the
identifier diagnostic or for filler.
A seeded sample of at most `max_sequences` is taken of the long ones and of at most
`short_files` (default `max_sequences`) of the short ones; each carries its file id (records.py).
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import DataFormatError, TokenShards
from ..prepare import iter_documents
from .records import file_id, row_id


class HeldOutError(ValueError):
    """Held-out data the eval cannot use; the message names the fix."""


@dataclass
class HeldOut:
    unit: str  # "file" or "row": what one sequence is
    long: list[np.ndarray]
    short: list[np.ndarray]
    long_texts: list[str] = field(default_factory=list)  # per long sequence (files only)
    long_offsets: list[np.ndarray] = field(default_factory=list)  # [seq_len, 2] char spans
    texts: list[str] = field(default_factory=list)  # every document (files only)
    long_ids: list[str] = field(default_factory=list)  # file (or row) id of each long sequence
    short_ids: list[str] = field(default_factory=list)  # and of each short one


def load_heldout(
    path,
    backend,
    seq_len: int,
    window: int,
    max_sequences: int,
    seed: int,
    short_files: int | None = None,
) -> HeldOut:
    path = Path(path)
    if path.is_dir():
        return _from_shards(path, seq_len, window, max_sequences, seed)
    if not path.is_file():
        raise HeldOutError(
            f"--data {path} not found (a .jsonl file or a prepared shards directory)"
        )
    texts = list(iter_documents(path))
    encodings = backend.encode_batch(texts, add_special_tokens=True)
    long_ids = [i for i, e in enumerate(encodings) if len(e.ids) >= seq_len]
    if not long_ids:
        raise HeldOutError(
            f"no document in {path} has {seq_len} tokens; lower --seq-len or add longer files"
        )
    rng = np.random.default_rng(seed)
    long_ids = _sample(long_ids, max_sequences, rng)
    short_ids = _sample(
        [i for i, e in enumerate(encodings) if len(e.ids) >= 2], short_files or max_sequences, rng
    )
    return HeldOut(
        unit="file",
        long=[np.asarray(encodings[i].ids[:seq_len], dtype=np.int64) for i in long_ids],
        short=[np.asarray(encodings[i].ids[:window], dtype=np.int64) for i in short_ids],
        long_texts=[texts[i] for i in long_ids],
        long_offsets=[np.asarray(encodings[i].offsets[:seq_len], dtype=np.int64) for i in long_ids],
        texts=texts,
        long_ids=[file_id(texts[i]) for i in long_ids],
        short_ids=[file_id(texts[i]) for i in short_ids],
    )


def _from_shards(path: Path, seq_len: int, window: int, max_sequences: int, seed: int) -> HeldOut:
    try:
        shards = TokenShards(path)
    except DataFormatError as exc:
        raise HeldOutError(str(exc)) from None
    if shards.seq_len < seq_len:
        raise HeldOutError(
            f"{path} holds rows of {shards.seq_len} tokens, shorter than --seq-len {seq_len}; "
            "prepare the held-out data at the evaluation length"
        )
    picked = _sample(list(range(len(shards))), max_sequences, np.random.default_rng(seed))
    rows = shards.take(picked).astype(np.int64)
    ids = [row_id(i) for i in picked]
    return HeldOut(
        unit="row",
        long=list(rows[:, :seq_len]),
        short=list(rows[:, :window]),
        long_ids=ids,
        short_ids=ids,
    )


def _sample(indices: list[int], k: int, rng) -> list[int]:
    """At most k of the indices, chosen by the seed, kept in their original order."""
    if len(indices) <= k:
        return indices
    return sorted(rng.choice(indices, size=k, replace=False).tolist())
