"""The documents `tokenweight rank` and `tokenweight select` read, in input order.

Two kinds of input:
- a prepared dataset directory (`tokenweight prepare --out`): each row is one document, named
  `row N` (rows are what the trainer samples, so selecting rows keeps the shard format);
- JSON lines files: each line `{"text": str}` or `{"token_ids": [int]}`, optionally with
  `"id"`, `"path"` (as `tokenweight corpus` writes) and `"source"`. A document is named by its
  `id`, else its `path`, else `FILE:LINE`. Text is tokenized exactly as `tokenweight prepare`
  tokenizes it (the tokenizer's template, EOS appended), so a selected document becomes the
  same tokens in the selection's shards as it would in a prepared dataset. Empty text stays
  empty (zero tokens), so it gets an explicit no-targets row.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import INDEX_FILE, TOKEN_DTYPE, DataFormatError, TokenShards
from ..prepare import DocumentTokenizer, _file_sha256, load_tokenizer

READ_BATCH = 256  # documents tokenized per call


class InputError(ValueError):
    """Input `rank`/`select` cannot read; the message names the line and the fix."""


@dataclass
class Document:
    index: int  # 0-based position in the input: the table's row order
    doc: str  # the input's id, path, FILE:LINE or `row N`
    source: str | None
    token_ids: np.ndarray  # int32


class DocumentInput:
    """Documents of `inputs` (one prepared-dataset directory, or JSON lines files)."""

    def __init__(self, inputs: list[str], tokenizer: str | None = None):
        self.paths = [Path(p) for p in inputs]
        for path in self.paths:
            if not path.exists():
                raise InputError(f"input {path} does not exist")
        self.shards: TokenShards | None = None
        if len(self.paths) == 1 and self.paths[0].is_dir():
            if not (self.paths[0] / INDEX_FILE).is_file():
                raise InputError(
                    f"input directory {self.paths[0]} has no {INDEX_FILE}; give a prepared "
                    "dataset (tokenweight prepare --out) or JSON lines files"
                )
            try:
                self.shards = TokenShards(self.paths[0])
            except DataFormatError as exc:
                raise InputError(str(exc)) from None
        elif any(p.is_dir() for p in self.paths):
            raise InputError("give one prepared dataset directory, or JSON lines files, not both")
        self.tokenizer_path = tokenizer
        self._tokenizer: DocumentTokenizer | None = None

    @property
    def identity(self) -> str:
        """What the input holds: the dataset's content hash, or a hash of the files' bytes."""
        if self.shards is not None:
            return self.shards.content_hash
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(_file_sha256(path).encode())
        return digest.hexdigest()

    def __len__(self) -> int:
        if self.shards is not None:
            return len(self.shards)
        return sum(1 for _ in self._records())

    def __iter__(self) -> Iterator[Document]:
        if self.shards is not None:
            for i in range(len(self.shards)):
                yield Document(i, f"row {i}", None, self.shards[i])
            return
        batch: list[tuple[int, dict, str]] = []
        for index, (record, where) in enumerate(self._records()):
            batch.append((index, record, where))
            if len(batch) == READ_BATCH:
                yield from self._documents(batch)
                batch = []
        yield from self._documents(batch)

    def _records(self) -> Iterator[tuple[dict, str]]:
        for path in self.paths:
            with path.open("rb") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{number}"
                    try:
                        record = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise InputError(f"{where} is not valid UTF-8 JSON ({exc})") from None
                    if not isinstance(record, dict) or ("text" in record) == (
                        "token_ids" in record
                    ):
                        raise InputError(f'{where}: needs exactly one of "text" or "token_ids"')
                    yield record, where

    def _documents(self, batch: list[tuple[int, dict, str]]) -> list[Document]:
        texts = [r["text"] for _, r, _ in batch if r.get("text")]
        encoded = iter(self.tokenizer.encode_documents(texts) if texts else [])
        out = []
        for index, record, where in batch:
            if "text" in record:
                if not isinstance(record["text"], str):
                    raise InputError(f'{where}: "text" must be a string')
                ids = next(encoded) if record["text"] else np.zeros(0, dtype=TOKEN_DTYPE)
            else:
                ids = _token_ids(record["token_ids"], where)
            name = record.get("id", record.get("path", where))
            source = record.get("source")
            out.append(Document(index, str(name), None if source is None else str(source), ids))
        return out

    def token_strings(self) -> list[str]:
        """Each token id's text (special tokens: empty), indexed by id."""
        backend = self.tokenizer.backend
        return [
            backend.decode([i], skip_special_tokens=True) for i in range(self.tokenizer.vocab_size)
        ]

    @property
    def tokenizer(self) -> DocumentTokenizer:
        if self._tokenizer is None:
            if self.tokenizer_path is None:
                raise InputError(
                    'the input has "text" lines; pass --tokenizer (the scorer model\'s tokenizer '
                    "directory) or send token ids"
                )
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer


def _token_ids(value, where: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(t, int) for t in value):
        raise InputError(f'{where}: "token_ids" must be a list of integers')
    return np.asarray(value, dtype=TOKEN_DTYPE)
