"""`tokenweight rank`: one row of long-dependency statistics per document (stats.py).

Documents (documents.py) go to the scorer in batches of `--batch-size` documents, from
`--concurrency` threads for running scorers; the main thread writes each batch's rows in input
order as JSON lines, so the table is the same however the answers raced. `OUT.meta.json`,
written before any row, records what the rows were made with: the input's content, the scorer
(fingerprint, name, window, stride), the statistics' settings and the batch size. Re-running
the same command resumes: a trailing partial batch is cut off and scoring continues with the
next whole batch, so nothing is lost or written twice; any other input, scorer or setting is
refused. Batches are fixed by position (documents `b*B .. b*B+B-1`), so a resumed local run
makes exactly the forward calls of an uninterrupted one and the table is byte-identical; with
running scorers that holds under `tokenweight serve --batch-invariant`.
"""

import json
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tokenweight.flags import add_flags, flag, values_of

from .documents import Document, DocumentInput
from .scoring import REFUSE, SPLIT, LocalScorer, RemoteScorer, ScoringError, piece_starts, stitch
from .stats import StatsConfig, document_stats

FORMAT = "tokenweight-rank-1"


class RankError(ValueError):
    """A table that cannot be resumed with these settings; the message names the fix."""


@dataclass(frozen=True)
class RankConfig:
    stats: StatsConfig = field(default_factory=StatsConfig)
    batch_size: int = flag(8, "documents per call")  # fixes the batches a resume repeats
    long_docs: str = flag(
        SPLIT,
        "documents longer than the scorer accepts: score in overlapping pieces, or stop with an "
        "error naming the document",
        choices=(SPLIT, REFUSE),
    )
    overlap: int | None = flag(
        None,
        "tokens shared by consecutive pieces (>= window; default: half the scorer's maximum "
        "length)",
    )

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.long_docs not in (SPLIT, REFUSE):
            raise ValueError(f"--long-docs must be {SPLIT!r} or {REFUSE!r}, got {self.long_docs!r}")


@dataclass(frozen=True)
class RankSources:
    """Where `tokenweight rank` reads documents, which scorer scores them and how it is reached;
    the table's own settings are RankConfig's."""

    input: tuple[str, ...] = flag(
        help='a prepared dataset directory, or JSON lines files ({"text"} or {"token_ids"} per '
        'line, optional "id", "path", "source")',
        nargs="+",
        metavar="FILE_OR_DIR",
    )
    out: str = flag(help="the table, JSON lines (resumed if it exists)")
    scorer_url: str | None = flag(
        None, "running scorers: grpc://HOST:PORT[,grpc://HOST2:PORT]", exclusive="where"
    )
    model: str | None = flag(
        None, "score locally with this checkpoint (default: the bundled model)", exclusive="where"
    )
    tokenizer: str | None = flag(None, "tokenizer for text lines (default: the local model's)")
    short_model: str | None = flag(None, "separate short-context model (local mode)")
    scorer: str | None = flag(None, "scorer name on the server (default: its default)")
    window: int | None = flag(None, "short-context window k (default: the scorer's)")
    stride: int | None = flag(None, "chunk stride s (default 3k/4)")
    device: str | None = flag(None, "cpu, cuda or cuda:N (local mode)")
    dtype: str | None = flag(None, "float32, bfloat16 or float16 (local mode)")
    concurrency: int | None = flag(None, "requests in flight (default: 4 per URL)")
    timeout: float = flag(600.0, "seconds per request attempt")
    retry_for: float = flag(600.0, "keep retrying unreachable scorers this many seconds")


def add_arguments(parser) -> None:
    for cls in (RankSources, RankConfig, StatsConfig):
        add_flags(parser, cls)


def run(args) -> int:
    import logging

    from tokenweight.client import ScorerError

    from tokenweight.bundled import model_or_default

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sources = RankSources(**values_of(args, RankSources))
    scorer = None
    try:
        config = RankConfig(
            stats=StatsConfig(**values_of(args, StatsConfig)), **values_of(args, RankConfig)
        )
        if sources.scorer_url:
            scorer = RemoteScorer(
                sources.scorer_url,
                scorer=sources.scorer,
                window=sources.window,
                stride=sources.stride,
                concurrency=sources.concurrency,
                timeout=sources.timeout,
                retry_for=sources.retry_for,
            )
            tokenizer = sources.tokenizer
        else:
            model, window, stride = model_or_default(sources.model, sources.window, sources.stride)
            scorer = LocalScorer(
                model,
                sources.short_model,
                window=window,
                stride=stride,
                device=sources.device,
                dtype=sources.dtype,
            )
            tokenizer = sources.tokenizer or str(model)
        documents = DocumentInput(sources.input, tokenizer)
        meta = rank(documents, scorer, sources.out, config)
    except (ValueError, OSError, ScorerError) as exc:  # InputError, RankError, ScoringError, ...
        print(f"tokenweight rank: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if scorer is not None:
            scorer.close()
    print(
        f"{sources.out}: {meta['documents']} documents, scorer {meta['scorer']!r}, fingerprint "
        f"{meta['fingerprint']}, window {meta['window']}, stride {meta['stride']}"
    )
    return 0


def meta_path(out) -> Path:
    return Path(f"{out}.meta.json")


def read_meta(out) -> dict | None:
    path = meta_path(out)
    return json.loads(path.read_text()) if path.is_file() else None


def rank(
    documents: DocumentInput, scorer, out, config: RankConfig = RankConfig(), progress=True
) -> dict:
    """Write (or finish) the table at `out`; returns its metadata."""
    from tqdm import tqdm

    out = Path(out)
    probe = scorer.score([np.zeros(2, dtype=np.int64)])  # the identity, before writing anything
    overlap = config.overlap or scorer.max_length // 2
    if config.long_docs == SPLIT and overlap < probe.window:
        raise RankError(f"--overlap {overlap} is shorter than the window {probe.window}; raise it")
    meta = {
        "format": FORMAT,
        # absolute, so that select and rank-page find them from any directory
        "input": [str(p.resolve()) for p in documents.paths],
        "input_hash": documents.identity,
        "tokenizer": documents.tokenizer_path and str(Path(documents.tokenizer_path).resolve()),
        "fingerprint": probe.fingerprint,
        "scorer": probe.scorer,
        "window": probe.window,
        "stride": probe.stride,
        "max_length": scorer.max_length,
        "overlap": overlap,
        **{k: v for k, v in asdict(config).items() if k not in ("stats", "overlap")},
        "stats": asdict(config.stats),
    }
    strings = None
    if config.stats.copy_chars:
        if documents.tokenizer_path is None:
            raise RankError(
                "word-stream copies need the tokens' text: pass --tokenizer (the scorer model's), "
                "or --copy-chars 0 to mark copies by token n-grams alone"
            )
        strings = documents.token_strings()
    done = _resume(out, meta)
    total = len(documents)
    meta["documents"] = total
    _write_meta(out, meta)
    identity = probe.identity
    batches = _batches(documents, config.batch_size, start=done)

    def score(batch: list[Document]) -> list[dict]:
        return _score_batch(batch, scorer, identity, meta, config, strings)

    pool = ThreadPoolExecutor(scorer.concurrency)
    finished: dict[int, list[dict]] = {}  # first document index -> rows, until written in order
    next_index = done
    with (
        out.open("ab") as table,
        tqdm(total=total, initial=done, unit="doc", desc="rank", disable=not progress) as bar,
    ):
        pending: set = set()
        try:
            while True:
                while len(pending) < 2 * scorer.concurrency and (batch := next(batches, None)):
                    pending.add(pool.submit(score, batch))
                if not pending:
                    break
                completed, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in completed:
                    rows = future.result()
                    finished[rows[0]["index"]] = rows
                while next_index in finished:
                    rows = finished.pop(next_index)
                    table.write(b"".join(_line(r) for r in rows))
                    table.flush()
                    os.fsync(table.fileno())
                    next_index += len(rows)
                    bar.update(len(rows))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return meta


def _line(row: dict) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode()


def _batches(documents: DocumentInput, size: int, start: int):
    batch: list[Document] = []
    for document in documents:
        if document.index < start:
            continue
        batch.append(document)
        if (document.index + 1) % size == 0:
            yield batch
            batch = []
    if batch:
        yield batch


def _score_batch(
    batch: list[Document], scorer, identity: tuple, meta: dict, config: RankConfig, strings
):
    plans, sequences = [], []
    for document in batch:
        length = document.token_ids.size
        if length < 2:
            plans.append([])
            continue
        if length > meta["max_length"] and config.long_docs == REFUSE:
            raise ScoringError(
                f"document {document.doc!r} has {length} tokens but the scorer accepts at most "
                f"{meta['max_length']}; rerun with --long-docs split to score it in overlapping "
                "pieces, or leave it out of the input"
            )
        starts = piece_starts(length, meta["max_length"], meta["overlap"], meta["stride"])
        plans.append(starts)
        sequences += [document.token_ids[s : s + meta["max_length"]] for s in starts]
    answers = []
    for request in _requests(sequences, scorer.max_request_tokens):
        answer = scorer.score(request)
        if answer.identity != identity:
            raise ScoringError(
                f"a scorer answered as (fingerprint, scorer, window, stride) = {answer.identity}, "
                f"but this table is made with {identity}; point rank at identical scorers"
            )
        answers += answer.logprobs
    rows, used = [], 0
    for document, starts in zip(batch, plans):
        row = {
            "index": document.index,
            "doc": document.doc,
            "source": document.source,
            "length": int(document.token_ids.size),
            "pieces": len(starts),
        }
        if starts:
            pieces = answers[used : used + len(starts)]
            used += len(starts)
            long, short = stitch(document.token_ids.size, starts, meta["overlap"], pieces)
            text = None
            if strings is not None:
                text = [strings[i] if i < len(strings) else "" for i in document.token_ids]
            row |= document_stats(
                document.token_ids, long, short, meta["window"], config.stats, text
            )
        else:
            row |= document_stats(document.token_ids, np.zeros(0), np.zeros(0), meta["window"])
        row |= {
            "fingerprint": meta["fingerprint"],
            "window": meta["window"],
            "stride": meta["stride"],
        }
        rows.append(row)
    return rows


def _requests(sequences: list[np.ndarray], max_tokens: int):
    """The sequences in requests within the server's request-token limit (0: one request)."""
    request, tokens = [], 0
    for seq in sequences:
        if request and max_tokens and tokens + seq.size > max_tokens:
            yield request
            request, tokens = [], 0
        request.append(seq)
        tokens += seq.size
    if request:
        yield request


def _resume(out: Path, meta: dict) -> int:
    """How many documents the table at `out` already holds (0 if new); cuts off a trailing
    partial batch. Refuses a table made from other input or with other settings."""
    existing = read_meta(out)
    if existing is None:
        if out.exists() and out.stat().st_size:
            raise RankError(f"{out} exists without {meta_path(out).name}; use a new --out")
        out.write_bytes(b"")
        return 0
    # the input's paths may be spelled differently; its content (input_hash) must not differ
    ignored = ("documents", "input")
    differ = sorted(
        k for k in set(existing) | set(meta) if k not in ignored and existing.get(k) != meta.get(k)
    )
    if differ:
        raise RankError(
            f"{out} was made with other settings ({', '.join(differ)} differ: "
            f"{[existing.get(k) for k in differ]} there, {[meta.get(k) for k in differ]} now); "
            "use a new --out, or rerun with the settings it was made with"
        )
    data = out.read_bytes() if out.exists() else b""
    lines = data.count(b"\n")
    keep = lines // meta["batch_size"] * meta["batch_size"]
    cut = 0
    for _ in range(keep):
        cut = data.index(b"\n", cut) + 1
    if cut != len(data):
        with out.open("r+b") as f:
            f.truncate(cut)
    return keep


def _write_meta(out: Path, meta: dict) -> None:
    tmp = out.with_name(f".{out.name}.meta.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, meta_path(out))
