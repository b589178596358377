"""`tokenweight prepare`: tokenize documents into fixed-length training rows (token shards).

Each document is encoded with the tokenizer's own special-token template
(`add_special_tokens=True`, as a Hugging Face causal-LM data pipeline calls it): a Llama-style
tokenizer puts BOS in front of every document, a GPT-2-style one adds nothing. EOS then closes
every document (unless the template already ended it with EOS), so the model learns where
documents end. `index.json` records both ids (`bos_token_id` is null when the template adds
none). Documents are concatenated and cut into rows of exactly `seq_len` tokens; the
tail that does not fill a row is dropped and reported. Rows therefore cross document
boundaries and only some start with BOS.

Input files ending in `.jsonl`/`.json` hold one `{"text": ...}` object per line (a `.json`
file may instead hold one JSON array of such objects); any other file is one document.

Output: see `trainer/data.py` for the reader. Shards are written into a staging folder and
moved into place before `index.json` is written last (temp file + rename), so an interrupted
run never leaves an index pointing at incomplete shards.
"""

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenweight.flags import add_flags, flag, values_of

from .data import FORMAT, INDEX_FILE, TOKEN_DTYPE

SHARD_PATTERN = "shard-*.bin"
STAGING_DIR = ".prepare-staging"
ENCODE_BATCH = 256  # documents per tokenizer call; the Rust side parallelizes within a call
DEFAULT_SHARD_SEQUENCES = 65536
# Tried in order when a bare tokenizer.json (which names no EOS) is given without --eos-token.
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


class PrepareError(ValueError):
    """Bad input or settings for `tokenweight prepare`; the message names the fix."""


@dataclass(frozen=True)
class PrepareConfig:
    tokenizer: str = flag(help="HF tokenizer directory, or a bare tokenizer.json")
    input: tuple[str, ...] = flag(
        help='.jsonl/.json: {"text"} per line; other files: one document each',
        nargs="+",
        metavar="FILE",
    )
    seq_len: int = flag(help="tokens per training row")
    out: str = flag(
        help="output directory (created; an earlier prepared dataset there is replaced)"
    )
    eos_token: str | None = flag(
        None, "EOS token string, when the tokenizer does not name one (bare tokenizer.json)"
    )
    shard_sequences: int = flag(DEFAULT_SHARD_SEQUENCES, "rows per shard file")


def add_arguments(parser) -> None:
    add_flags(parser, PrepareConfig)


def run(args) -> int:
    config = PrepareConfig(**values_of(args, PrepareConfig))
    try:
        summary = prepare(
            config.tokenizer,
            config.input,
            config.seq_len,
            config.out,
            eos_token=config.eos_token,
            shard_sequences=config.shard_sequences,
        )
    except PrepareError as exc:
        print(f"tokenweight prepare: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {summary['num_sequences']} sequences of {summary['seq_len']} tokens in "
        f"{len(summary['shards'])} shard(s) to {config.out} from {summary['stats']['documents']} "
        f"documents ({summary['stats']['tokens']} tokens); dropped the last "
        f"{summary['stats']['dropped_tokens']} tokens that did not fill a row. Documents end "
        f"with EOS {summary['stats']['eos_token']!r} (id {summary['eos_token_id']}); BOS id: "
        f"{summary['bos_token_id']}"
    )
    return 0


def prepare(
    tokenizer_path,
    inputs,
    seq_len: int,
    out,
    *,
    eos_token=None,
    shard_sequences=DEFAULT_SHARD_SEQUENCES,
    progress=True,
) -> dict:
    """Tokenize `inputs` into `out`; returns the index written (plus `stats`)."""
    from tqdm import tqdm

    if seq_len < 2:
        raise PrepareError(f"--seq-len must be at least 2 (one target needs two tokens), got {seq_len}")
    if shard_sequences < 1:
        raise PrepareError(f"--shard-sequences must be at least 1, got {shard_sequences}")
    inputs = [Path(p) for p in inputs]
    for path in inputs:
        if not path.is_file():
            raise PrepareError(f"input {path} does not exist or is not a file")
    tok = load_tokenizer(tokenizer_path, eos_token)
    writer = ShardWriter(Path(out), seq_len, shard_sequences)
    documents = 0
    total_bytes = sum(p.stat().st_size for p in inputs)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=not progress) as bar:
        for path in inputs:
            for texts in _batched(iter_documents(path, bar.update), ENCODE_BATCH):
                for ids in tok.encode_documents(texts):
                    writer.add(ids)
                documents += len(texts)
                bar.set_postfix_str(f"docs={documents} rows={writer.rows_written}", refresh=False)
    meta = {
        "vocab_size": tok.vocab_size,
        "eos_token_id": tok.eos_id,
        "bos_token_id": tok.bos_id,
        "tokenizer": str(tokenizer_path),
        "inputs": [{"path": str(p), "sha256": _file_sha256(p)} for p in inputs],
    }
    index = writer.finish(meta)
    index["stats"] = {
        "documents": documents,
        "tokens": writer.tokens_seen,
        "dropped_tokens": writer.dropped,
        "eos_token": tok.eos_token,
    }
    return index


class DocumentTokenizer:
    """A `tokenizers.Tokenizer` plus the EOS/BOS conventions described in the module doc."""

    def __init__(self, backend, eos_token: str, eos_id: int, vocab_size: int):
        self.backend = backend
        self.eos_token, self.eos_id = eos_token, eos_id
        self.vocab_size = vocab_size
        self.bos_id = self._template_bos()

    def _template_bos(self) -> int | None:
        """The single token the template puts before a document's text, if any."""
        bare = self.backend.encode("a", add_special_tokens=False).ids
        full = self.backend.encode("a", add_special_tokens=True).ids
        starts = [i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare]
        prefix = full[: starts[0]] if bare and starts else []
        return prefix[0] if len(prefix) == 1 else None

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        out = []
        for enc in self.backend.encode_batch(texts, add_special_tokens=True):
            ids = enc.ids
            if not ids or ids[-1] != self.eos_id:
                ids = ids + [self.eos_id]
            out.append(np.asarray(ids, dtype=TOKEN_DTYPE))
        return out


def load_tokenizer(path, eos_token: str | None = None) -> DocumentTokenizer:
    """A HF tokenizer directory (AutoTokenizer, local files only) or a bare tokenizer.json."""
    path = Path(path)
    if path.is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(path))
        name = eos_token or next((n for n in EOS_NAMES if backend.token_to_id(n) is not None), None)
        if name is None:
            raise PrepareError(
                f"{path} does not say which token is EOS; pass --eos-token (e.g. one of its "
                "special tokens) or give the tokenizer's directory with tokenizer_config.json"
            )
    elif path.is_dir():
        from tokenweight.service.loading import TOKENIZER_FILES, has_tokenizer, load_hf_tokenizer

        if not has_tokenizer(path):
            raise PrepareError(
                f"{path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); pass "
                "--tokenizer with the directory the model was trained with"
            )
        hf = load_hf_tokenizer(path)
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise PrepareError(
                f"{path} loads as a slow tokenizer; prepare needs a fast one (tokenizer.json)"
            )
        name = eos_token or hf.eos_token
        if name is None:
            raise PrepareError(f"the tokenizer in {path} has no eos_token; pass --eos-token")
    else:
        raise PrepareError(f"tokenizer {path} not found (expected a directory or a tokenizer.json file)")
    eos_id = backend.token_to_id(name)
    if eos_id is None:
        raise PrepareError(f"EOS token {name!r} is not in the vocabulary of {path}")
    return DocumentTokenizer(backend, name, eos_id, backend.get_vocab_size(with_added_tokens=True))


def iter_documents(path: Path, on_bytes=lambda n: None):
    """Document texts of one input file, in order; empty documents are skipped.

    `on_bytes(n)` is told how many bytes of the file have been read since its last call
    (per line for JSON lines), for a progress bar.
    """
    if path.suffix not in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        on_bytes(path.stat().st_size)
        if text:
            yield text
        return
    with path.open("rb") as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
        f.seek(0)
        if first == b"[":
            records = enumerate(json.load(f), 1)
            on_bytes(path.stat().st_size)
            where = "item"
        else:
            records = ((n, _parse_line(path, n, line, on_bytes)) for n, line in enumerate(f, 1))
            where = "line"
        for n, record in records:
            if record is None:  # blank line
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise PrepareError(f'{path} {where} {n}: expected an object with a string "text" field')
            if record["text"]:
                yield record["text"]


def _parse_line(path: Path, n: int, line: bytes, on_bytes):
    on_bytes(len(line))
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PrepareError(f"{path} line {n} is not valid UTF-8 JSON ({exc})") from None


def _batched(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Cuts a token stream into rows of `seq_len` and writes shards plus the index.

    Shards go to a staging folder inside `out`; `finish` moves them in and writes the
    index last, so the index only ever names complete shards.
    """

    def __init__(self, out: Path, seq_len: int, shard_sequences: int = DEFAULT_SHARD_SEQUENCES):
        _check_out_dir(out)
        self.out, self.seq_len, self.shard_sequences = out, seq_len, shard_sequences
        self.staging = out / STAGING_DIR
        shutil.rmtree(self.staging, ignore_errors=True)  # leftovers of an interrupted run
        self.staging.mkdir(parents=True)
        self.shards: list[dict] = []
        self.content = hashlib.sha256()
        self.rows_written = 0
        self.tokens_seen = 0
        self._pending: list[np.ndarray] = []  # tokens not yet in a full row
        self._pending_len = 0
        self._file = None

    def add(self, ids: np.ndarray) -> None:
        self.tokens_seen += ids.size
        self._pending.append(ids)
        self._pending_len += ids.size
        if self._pending_len < self.seq_len:
            return
        stream = np.concatenate(self._pending)
        full = stream.size // self.seq_len * self.seq_len
        self._write_rows(stream[:full].reshape(-1, self.seq_len))
        self._pending = [stream[full:]]
        self._pending_len = stream.size - full

    def _write_rows(self, rows: np.ndarray) -> None:
        while rows.size:
            if self._file is None:
                name = f"shard-{len(self.shards):05d}.bin"
                self._file = (self.staging / name).open("wb")
                self.shards.append({"file": name, "num_sequences": 0, "sha256": hashlib.sha256()})
            shard = self.shards[-1]
            take = min(self.shard_sequences - shard["num_sequences"], rows.shape[0])
            data = np.ascontiguousarray(rows[:take], dtype=TOKEN_DTYPE).tobytes()
            self._file.write(data)
            shard["sha256"].update(data)
            self.content.update(data)
            shard["num_sequences"] += take
            self.rows_written += take
            rows = rows[take:]
            if shard["num_sequences"] == self.shard_sequences:
                self._close_shard()

    def _close_shard(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    @property
    def dropped(self) -> int:
        return self._pending_len

    def finish(self, meta: dict) -> dict:
        if self._file is not None:
            self._close_shard()
        if self.rows_written == 0:
            shutil.rmtree(self.staging)
            raise PrepareError(
                f"the inputs gave {self.tokens_seen} tokens, not enough for one row of "
                f"{self.seq_len}; add data or lower --seq-len"
            )
        index = {
            "format": FORMAT,
            "seq_len": self.seq_len,
            "num_sequences": self.rows_written,
            "dtype": "int32",
            **meta,
            "shards": [{**s, "sha256": s["sha256"].hexdigest()} for s in self.shards],
            "content_hash": self.content.hexdigest(),
        }
        # Drop the old index first: from here until the new index lands, no index exists,
        # so nothing can read a mix of old and new shards.
        (self.out / INDEX_FILE).unlink(missing_ok=True)
        for old in self.out.glob(SHARD_PATTERN):
            old.unlink()
        for shard in self.shards:
            os.replace(self.staging / shard["file"], self.out / shard["file"])
        write_json_atomic(self.out / INDEX_FILE, index, tmp_dir=self.staging)
        self.staging.rmdir()
        return index


def _check_out_dir(out: Path) -> None:
    """Only replace what an earlier prepare wrote; never delete a user's other files."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} exists and is not a directory")
    if not out.exists():
        return
    ours = {INDEX_FILE, STAGING_DIR}
    foreign = [p.name for p in out.iterdir() if p.name not in ours and not p.match(SHARD_PATTERN)]
    if foreign:
        raise PrepareError(
            f"--out {out} already holds files that are not a prepared dataset "
            f"({', '.join(sorted(foreign)[:5])}); choose an empty or new directory"
        )


def write_json_atomic(path: Path, obj: dict, tmp_dir: Path) -> None:
    """Write JSON to a temp file in `tmp_dir` (same filesystem), fsync, rename over `path`."""
    tmp = tmp_dir / f".{path.name}.tmp-{os.getpid()}"
    with tmp.open("w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
