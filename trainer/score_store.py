"""The score store: per-token log-probs of a whole prepared dataset, computed once.

`tokenweight precompute` writes it; the trainer's `precomputed` score source reads it.
A store is a directory:

    meta.json         format, num_sequences, seq_len, targets, content_hash (of the data),
                      fingerprint, scorer, window, stride
    logp_long.f32     raw little-endian float32 [num_sequences, seq_len - 1]
    logp_short.f32    same shape
    done.u8           uint8 [num_sequences]; 1 = that row of both arrays is written

Row i belongs to sequence i of the dataset (`TokenShards[i]`, `Batch.indices`). The arrays
are exactly the float32 values the scorer service returned, so precomputed training sees
the same scores as live `service` training. A row is marked done only after its data is
flushed, so an interrupted precompute resumes from `done` without trusting half-written rows.
"""

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FORMAT = "tokenweight-scores-1"
META_FILE = "meta.json"
ARRAY_FILES = {"logp_long": "logp_long.f32", "logp_short": "logp_short.f32"}
DONE_FILE = "done.u8"
LOCK_FILE = ".lock"
SCORE_DTYPE = np.dtype("<f4")
DONE_DTYPE = np.dtype("u1")


class ScoreStoreError(ValueError):
    """A store that does not fit the request; the message says what differs and the fix."""


@dataclass(frozen=True)
class StoreMeta:
    num_sequences: int
    seq_len: int
    content_hash: str  # TokenShards.content_hash of the scored dataset
    fingerprint: str  # the scorer's fingerprint (model weights + scoring settings)
    scorer: str
    window: int
    stride: int

    @property
    def targets(self) -> int:
        return self.seq_len - 1

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self), "targets": self.targets}

    @classmethod
    def from_json(cls, data: dict, where: Path) -> "StoreMeta":
        if data.get("format") != FORMAT:
            raise ScoreStoreError(
                f"{where} has format {data.get('format')!r}; this version reads {FORMAT!r}. "
                "Run `tokenweight precompute` again into a new store"
            )
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except KeyError as exc:
            raise ScoreStoreError(f"{where} lacks {exc}; run `tokenweight precompute` again") from None


def read_meta(path: str | Path) -> StoreMeta | None:
    """The store's metadata, or None when `path` holds no store yet."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        return None
    try:
        data = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ScoreStoreError(
            f"{meta_path} is not valid JSON ({exc}); delete the store and precompute again"
        ) from None
    return StoreMeta.from_json(data, meta_path)


class ScoreStore:
    """A memory-mapped score store; see the module doc. Build with `open` or `create_or_resume`."""

    def __init__(self, path: Path, meta: StoreMeta, writable: bool):
        self.path, self.meta, self.writable = path, meta, writable
        mode = "r+" if writable else "r"
        shape = (meta.num_sequences, meta.targets)
        layout = {file: (shape, SCORE_DTYPE) for file in ARRAY_FILES.values()}
        layout[DONE_FILE] = ((meta.num_sequences,), DONE_DTYPE)
        for file, (file_shape, dtype) in layout.items():
            expected = int(np.prod(file_shape)) * dtype.itemsize
            size = (path / file).stat().st_size if (path / file).is_file() else None
            if size != expected:
                raise ScoreStoreError(
                    f"{path / file} has {size} bytes, expected {expected} for {file_shape}; the "
                    "store is damaged: delete it and run `tokenweight precompute` again"
                )
        self._arrays = {
            name: _memmap(path / file, SCORE_DTYPE, mode, shape) for name, file in ARRAY_FILES.items()
        }
        self._done = _memmap(path / DONE_FILE, DONE_DTYPE, mode, (meta.num_sequences,))

    @classmethod
    def open(
        cls, path: str | Path, expected_content_hash: str, expected_fingerprint: str | None = None
    ) -> "ScoreStore":
        """Open for reading; refuses a store of other data, or of another scorer when given."""
        path = Path(path)
        meta = read_meta(path)
        if meta is None:
            raise ScoreStoreError(
                f"{path / META_FILE} not found: {path} is not a score store; create it with "
                f"`tokenweight precompute --data DIR --out {path} ...`"
            )
        if meta.content_hash != expected_content_hash:
            raise ScoreStoreError(
                f"score store {path} was computed for data with content_hash "
                f"{meta.content_hash[:16]}…, but the training data has {expected_content_hash[:16]}…; "
                "precompute scores for this dataset (same `tokenweight prepare` output)"
            )
        if expected_fingerprint is not None and meta.fingerprint != expected_fingerprint:
            raise ScoreStoreError(
                f"score store {path} holds scores of scorer fingerprint {meta.fingerprint}, but this "
                f"run expects {expected_fingerprint}; precompute with the expected scorer (model, "
                "window, stride) or drop the expected fingerprint"
            )
        return cls(path, meta, writable=False)

    @classmethod
    def create_or_resume(cls, path: str | Path, meta: StoreMeta) -> "ScoreStore":
        """Open for writing: a new store, or an existing one made for the same data and scorer.

        Holds an exclusive lock on the store until `close`, so two precomputes cannot
        interleave their writes.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lock = _lock(path)
        existing = read_meta(path)
        if existing is None:
            _allocate(path, meta)
        elif existing != meta:
            lock.close()
            differ = [
                f"{k}: store {getattr(existing, k)!r} vs now {getattr(meta, k)!r}"
                for k in StoreMeta.__dataclass_fields__
                if getattr(existing, k) != getattr(meta, k)
            ]
            raise ScoreStoreError(
                f"cannot resume score store {path}: it was made with other settings "
                f"({'; '.join(differ)}). Use a new --out, or delete the store to start over"
            )
        store = cls(path, meta, writable=True)
        store._lock = lock
        return store

    @property
    def num_done(self) -> int:
        return int(np.count_nonzero(self._done))

    @property
    def complete(self) -> bool:
        return self.num_done == self.meta.num_sequences

    def missing(self) -> np.ndarray:
        """Indices of rows not yet written, ascending (int64)."""
        return np.flatnonzero(self._done == 0).astype(np.int64)

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(logp_long, logp_short) for rows `indices`, each float32 `[n, seq_len - 1]`."""
        indices = self._check_indices(indices)
        not_done = indices[self._done[indices] == 0]
        if not_done.size:
            raise ScoreStoreError(
                f"score store {self.path} has no scores yet for {np.unique(not_done).size} of the "
                f"requested sequences (e.g. {np.unique(not_done)[:5].tolist()}); "
                f"{self.num_done}/{self.meta.num_sequences} are done. Run `tokenweight precompute "
                f"--out {self.path} ...` again to finish it"
            )
        return (
            np.array(self._arrays["logp_long"][indices]),
            np.array(self._arrays["logp_short"][indices]),
        )

    def put(self, indices, logp_long, logp_short) -> None:
        """Write rows and mark them done, data first: a crash never leaves a done row unwritten."""
        if not self.writable:
            raise ScoreStoreError(f"score store {self.path} was opened read-only")
        indices = self._check_indices(indices)
        shape = (indices.size, self.meta.targets)
        for name, values in (("logp_long", logp_long), ("logp_short", logp_short)):
            values = np.asarray(values)
            if values.shape != shape or values.dtype != np.float32:
                raise ScoreStoreError(
                    f"{name} must be float32 {shape}, got {values.dtype} {values.shape}"
                )
            self._arrays[name][indices] = values
            self._arrays[name].flush()
        self._done[indices] = 1
        self._done.flush()

    def close(self) -> None:
        for array in (*self._arrays.values(), self._done):
            if self.writable:
                array.flush()
        self._arrays, self._done = {}, None
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "ScoreStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_indices(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.meta.num_sequences):
            raise IndexError(
                f"sequence indices must be in [0, {self.meta.num_sequences}) for score store {self.path}"
            )
        return indices


def _memmap(file: Path, dtype, mode: str, shape: tuple) -> np.ndarray:
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(file, dtype=dtype, mode=mode, shape=shape)


def _allocate(path: Path, meta: StoreMeta) -> None:
    """Create zero-filled (sparse) array files, then meta.json last via rename.

    meta.json existing means the files are complete in size, so `ScoreStore` can trust it.
    """
    rows = meta.num_sequences
    for file in ARRAY_FILES.values():
        with (path / file).open("wb") as f:
            f.truncate(rows * meta.targets * SCORE_DTYPE.itemsize)
    with (path / DONE_FILE).open("wb") as f:
        f.truncate(rows)
    tmp = path / f".{META_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    os.replace(tmp, path / META_FILE)


def _lock(path: Path):
    handle = (path / LOCK_FILE).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ScoreStoreError(
            f"score store {path} is being written by another process (a running `tokenweight "
            "precompute`?); wait for it or use another --out"
        ) from None
    return handle
