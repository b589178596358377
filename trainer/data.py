"""Training data: prepared token shards, and the per-rank batch order over them.

A prepared dataset (written by `tokenweight prepare`) is a directory holding `index.json`
and shard files of raw little-endian int32 rows `[n, seq_len]`. `TokenShards` memory-maps
them; `RankBatches` turns a seed into a deterministic, resumable order of batches in which
every global step takes `batch_size * world_size` sequences and each rank its own slice.

numpy only (no torch): the client-side prefetcher uses the same batch order and
`batch_token_hash` to fetch scores ahead of the trainer.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "tokenweight-shards-1"
INDEX_FILE = "index.json"
TOKEN_DTYPE = np.dtype("<i4")
INDEX_KEYS = ("format", "seq_len", "num_sequences", "dtype", "shards", "content_hash")


class DataFormatError(ValueError):
    """A prepared dataset that cannot be read as it is; the message says how to fix it."""


class BatchOrderError(ValueError):
    """Batch settings or a resume state that do not fit the dataset."""


class TokenShards:
    """A prepared dataset, memory-mapped: `shards[i]` is row i as int32 `[seq_len]`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.index = _read_index(self.path)
        self.seq_len: int = self.index["seq_len"]
        self.content_hash: str = self.index["content_hash"]
        self.vocab_size: int | None = self.index.get("vocab_size")
        self.eos_token_id: int | None = self.index.get("eos_token_id")
        self.bos_token_id: int | None = self.index.get("bos_token_id")
        self._maps = []
        starts = [0]
        for shard in self.index["shards"]:
            self._maps.append(_map_shard(self.path, shard, self.seq_len))
            starts.append(starts[-1] + shard["num_sequences"])
        # _starts[k] is the global index of shard k's first row; the last entry is the total.
        self._starts = np.asarray(starts, dtype=np.int64)
        if starts[-1] != self.index["num_sequences"]:
            raise DataFormatError(
                f"{self.path / INDEX_FILE}: shards hold {starts[-1]} sequences but the index "
                f"says num_sequences={self.index['num_sequences']}; run `tokenweight prepare` again"
            )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for a dataset of {n} sequences")
        i %= n
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        return np.array(self._maps[shard][i - self._starts[shard]])

    def take(self, indices) -> np.ndarray:
        """Rows `indices` (any order, repeats allowed) as a new int32 `[n, seq_len]` array."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((indices.size, self.seq_len), dtype=TOKEN_DTYPE)
        if indices.size == 0:
            return out
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"sequence indices must be in [0, {len(self)}), got {indices}")
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        for shard in np.unique(shard_of):
            rows = shard_of == shard
            out[rows] = self._maps[shard][indices[rows] - self._starts[shard]]
        return out

    def verify(self) -> None:
        """Re-hash every shard against the index (reads all data; `open` does not)."""
        content = hashlib.sha256()
        for shard, rows in zip(self.index["shards"], self._maps):
            data = memoryview(np.ascontiguousarray(rows)).cast("B")
            digest = hashlib.sha256(data).hexdigest()
            if digest != shard["sha256"]:
                raise DataFormatError(
                    f"{self.path / shard['file']} does not match its sha256 in the index (file "
                    "changed or corrupt); run `tokenweight prepare` again"
                )
            content.update(data)
        if content.hexdigest() != self.content_hash:
            raise DataFormatError(
                f"{self.path}: content_hash does not match the shards; run `tokenweight prepare` again"
            )


def _read_index(path: Path) -> dict:
    index_path = path / INDEX_FILE
    if not index_path.is_file():
        raise DataFormatError(
            f"{index_path} not found: {path} is not a prepared dataset (or its "
            "`tokenweight prepare` was interrupted); run `tokenweight prepare --out "
            f"{path} ...` first"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"{index_path} is not valid JSON ({exc}); run `tokenweight prepare` again"
        ) from None
    missing = [key for key in INDEX_KEYS if key not in index]
    if missing:
        raise DataFormatError(f"{index_path} lacks {missing}; run `tokenweight prepare` again")
    if index["format"] != FORMAT:
        raise DataFormatError(
            f"{index_path} has format {index['format']!r}; this version reads {FORMAT!r}. "
            "Re-run `tokenweight prepare` with this version"
        )
    if index["dtype"] != "int32":
        raise DataFormatError(f"{index_path}: dtype {index['dtype']!r} is not supported (int32 only)")
    if not isinstance(index["seq_len"], int) or index["seq_len"] < 2:
        raise DataFormatError(f"{index_path}: seq_len must be an integer >= 2, got {index['seq_len']!r}")
    return index


def _map_shard(root: Path, shard: dict, seq_len: int) -> np.ndarray:
    file = root / shard["file"]
    rows = shard["num_sequences"]
    expected = rows * seq_len * TOKEN_DTYPE.itemsize
    if not file.is_file():
        raise DataFormatError(
            f"shard {file} listed in the index is missing; run `tokenweight prepare` again"
        )
    size = file.stat().st_size
    if size != expected:
        raise DataFormatError(
            f"shard {file} has {size} bytes; {rows} rows of {seq_len} int32 tokens need "
            f"{expected}. The file is truncated or from another dataset; run `tokenweight prepare` again"
        )
    if rows == 0:
        return np.empty((0, seq_len), dtype=TOKEN_DTYPE)
    return np.memmap(file, dtype=TOKEN_DTYPE, mode="r", shape=(rows, seq_len))


def batch_token_hash(tokens) -> str:
    """Identity of a batch's tokens: blake2b over its shape and int32 bytes.

    Hashing int32 (the dataset's dtype) makes an int64 torch batch and the int32 rows the
    prefetcher sent to the scorer hash alike.
    """
    array = np.asarray(tokens)
    if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids must fit in int32 to be hashed")
    data = np.ascontiguousarray(array, dtype=TOKEN_DTYPE)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(list(data.shape)).encode())
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Batch:
    step: int  # global step, counted from 0 across epochs
    epoch: int
    # int64 [batch_size]: global sequence indices, i.e. rows of the dataset and the score store
    indices: np.ndarray
    tokens: np.ndarray  # int64 [batch_size, seq_len]


class RankBatches:
    """Rank `rank`'s batches: an endless, deterministic, resumable order over the dataset.

    Epoch e visits the dataset in the permutation drawn from `(seed, e)`. Global step s of
    that epoch takes the permutation's slice `[s*G, (s+1)*G)` with `G = batch_size *
    world_size`, and rank r gets `[r*batch_size, (r+1)*batch_size)` of it — so ranks never
    share a sequence within an epoch and the union per step does not depend on timing. The
    `len(shards) % G` sequences left over at the end of an epoch are skipped in that epoch
    (a different set each epoch), so every rank always gets full batches.

    Iterating yields from the current position and advances it; `state_dict()` after the
    batch of step s has been yielded resumes at step s+1. A prefetcher reading ahead should
    use `batch_at(step)` (pure) rather than iterate a shared instance.
    """

    def __init__(
        self, shards: TokenShards, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0
    ):
        if batch_size < 1 or world_size < 1:
            raise BatchOrderError(
                f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}"
            )
        if not 0 <= rank < world_size:
            raise BatchOrderError(f"rank {rank} is outside [0, world_size={world_size})")
        self.shards = shards
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = len(shards) // self.global_batch
        if self.steps_per_epoch == 0:
            raise BatchOrderError(
                f"the dataset has {len(shards)} sequences, fewer than one global batch of "
                f"batch_size {batch_size} x world_size {world_size} = {self.global_batch}; "
                "prepare more data or use a smaller batch"
            )
        self.step = 0
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
            self._perm_epoch = epoch
        return self._perm

    def indices_at(self, step: int) -> np.ndarray:
        """This rank's sequence indices at global step `step` (int64 `[batch_size]`)."""
        if step < 0:
            raise BatchOrderError(f"step must be >= 0, got {step}")
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch + self.rank * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size].astype(np.int64)

    def batch_at(self, step: int) -> Batch:
        indices = self.indices_at(step)
        tokens = self.shards.take(indices).astype(np.int64)
        return Batch(step, step // self.steps_per_epoch, indices, tokens)

    def __iter__(self):
        while True:
            batch = self.batch_at(self.step)
            self.step += 1
            yield batch

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "global_batch": self.global_batch,
            "num_sequences": len(self.shards),
            "content_hash": self.shards.content_hash,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state["step"]`; refuses a state from other data, seed or global batch.

        The world size may change if `batch_size * world_size` stays the same: each step then
        covers the same sequences, split differently among the ranks.
        """
        mine = self.state_dict()
        for key in ("content_hash", "num_sequences", "seed", "global_batch"):
            if state.get(key) != mine[key]:
                raise BatchOrderError(
                    f"cannot resume the batch order: the saved {key} is {state.get(key)!r} but "
                    f"this run has {mine[key]!r}. Resume with the same dataset, seed and "
                    "batch_size * world_size, or start a fresh run"
                )
        self.step = int(state["step"])
