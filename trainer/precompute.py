"""`tokenweight precompute`: score every sequence of a prepared dataset once, into a score store.

Requests of `--batch-size` sequences go to the scorer service from `--concurrency` threads
(the client spreads them round-robin over the URLs and retries); the main thread writes each
answer into the store as it arrives, so the store's `done` array always says what is safe to
skip. Re-running the same command resumes; a store made from other data or by a scorer with
another fingerprint (model, window, stride) is refused before anything is written.

Only `logp_long` and `logp_short` are asked for (the contrast is their difference) and they
are stored exactly as the service returned them.
"""

import logging
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from tokenweight.contrast import no_contrast_warning
from tokenweight.flags import add_flags, flag

from .data import DataFormatError, TokenShards
from .score_store import ScoreStore, ScoreStoreError, StoreMeta, read_meta

OUTPUTS = ("logp_long", "logp_short")
DEFAULT_BATCH = 8  # sequences per request when the scorer does not report a request limit

log = logging.getLogger("tokenweight.precompute")


class PrecomputeError(ValueError):
    """Settings or scorer answers precompute cannot use; the message names the fix."""


@dataclass(frozen=True)
class PrecomputeArgs:
    """The flags of `tokenweight precompute`, each with its default and help."""

    data: str = flag(help="prepared dataset directory (tokenweight prepare --out)")
    scorer_url: str = flag(
        help="grpc://HOST:PORT[,grpc://HOST2:PORT], dns:///NAME:PORT or ipv4:A:PORT,B:PORT"
    )
    out: str = flag(help="score store directory (resumed if it exists)")
    scorer: str | None = flag(None, "scorer name on the server (default: the server's default)")
    window: int | None = flag(None, "short-context window k (default: the scorer's)")
    stride: int | None = flag(
        None, "chunk stride s (default: the scorer's, or 3k/4 with --window)"
    )
    batch_size: int | None = flag(
        None, "sequences per request (default: what fits the server's request limit, at most 8)"
    )
    concurrency: int | None = flag(None, "requests in flight (default: 4 per URL)")
    timeout: float = flag(600.0, "seconds per request attempt")
    retry_for: float = flag(
        600.0,
        "keep retrying an unreachable or busy scorer this many seconds (logged) before giving "
        "up; rerun to resume",
    )


def add_arguments(parser) -> None:
    add_flags(parser, PrecomputeArgs)


def run(args) -> int:
    from tokenweight.client import RetryPolicy, ScorerClient, ScorerError
    from tokenweight.client.urls import parse_urls

    # the client logs each retry; without this a scorer outage would look like a hang
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # The client parses the URL list (an `ipv4:A:P,B:P` target holds commas of its own).
        endpoints = len(parse_urls(args.scorer_url))
        with ScorerClient(
            args.scorer_url, timeout=args.timeout, retry=RetryPolicy.for_duration(args.retry_for)
        ) as client:
            shards = TokenShards(args.data)
            info = _find_scorer(client, args.scorer, shards.seq_len)
            batch_size = args.batch_size or _batch_size_for(info, shards.seq_len)
            meta = precompute(
                shards,
                client,
                args.out,
                window=args.window,
                stride=args.stride,
                scorer=args.scorer,
                batch_size=batch_size,
                concurrency=args.concurrency or 4 * endpoints,
            )
    except (DataFormatError, ScoreStoreError, PrecomputeError, ScorerError, ValueError) as exc:
        print(f"tokenweight precompute: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.out}: scores of all {meta.num_sequences} sequences, scorer {meta.scorer!r}, "
        f"fingerprint {meta.fingerprint}, window {meta.window}, stride {meta.stride}"
    )
    return 0


def precompute(
    shards: TokenShards,
    client,
    out,
    *,
    window: int | None = None,
    stride: int | None = None,
    scorer: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    concurrency: int = 4,
    progress: bool = True,
) -> StoreMeta:
    """Fill the store at `out` with scores of every row of `shards`; returns its metadata.

    `client` is a `tokenweight.client.ScorerClient` (anything with its thread-safe `score`).
    """
    from tqdm import tqdm

    if batch_size < 1 or concurrency < 1:
        raise PrecomputeError(
            f"--batch-size and --concurrency must be >= 1, got {batch_size}, {concurrency}"
        )
    existing = read_meta(out)
    if existing is not None and existing.content_hash != shards.content_hash:
        raise ScoreStoreError(
            f"score store {out} holds scores for other data (content_hash "
            f"{existing.content_hash[:16]}…, {shards.path} has {shards.content_hash[:16]}…); use a "
            "new --out for this dataset"
        )

    def score(indices: np.ndarray):
        sequences = list(shards.take(indices))
        return indices, client.score(
            sequences, window=window, stride=stride, scorer=scorer, outputs=OUTPUTS
        )

    # The first answer fixes the store's identity (fingerprint, resolved window/stride) — or,
    # on resume, must match it; nothing is written before that check.
    todo = _todo(out, existing, len(shards))
    batches = [todo[i : i + batch_size] for i in range(0, todo.size, batch_size)]
    if not batches:
        # Complete already; still make sure the scorer asked for is the one that made it.
        probe = score(np.zeros(1, dtype=np.int64))[1]
        if _identity(probe) != _identity(existing):
            raise ScoreStoreError(
                f"score store {out} is complete, made with (fingerprint, scorer, window, stride) = "
                f"{_identity(existing)}, but the scorer now answers {_identity(probe)}; use a new "
                "--out for these settings"
            )
        return existing
    first_indices, first = score(batches[0])
    if warning := no_contrast_warning(first.window, shards.seq_len, "the dataset's rows"):
        log.warning("%s", warning)
    with ScoreStore.create_or_resume(out, _meta_from(first, shards)) as store:
        with tqdm(
            total=len(shards),
            initial=store.num_done,
            unit="seq",
            desc="precompute",
            disable=not progress,
        ) as bar:
            _write(store, first_indices, first)
            bar.update(first_indices.size)
            pool = ThreadPoolExecutor(concurrency)
            pending, queued = set(), iter(batches[1:])
            try:
                while True:
                    # keep twice the workers busy, no more: bounds the memory held in answers
                    while len(pending) < 2 * concurrency and (batch := next(queued, None)) is not None:
                        pending.add(pool.submit(score, batch))
                    if not pending:
                        break
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        indices, result = future.result()
                        _write(store, indices, result)
                        bar.update(indices.size)
            finally:
                # On an error or Ctrl-C, don't wait for requests still in flight: only this
                # thread writes to the store, and what it wrote is already marked done.
                pool.shutdown(wait=False, cancel_futures=True)
        return store.meta


def _todo(out, existing: StoreMeta | None, num_sequences: int) -> np.ndarray:
    if existing is None:
        return np.arange(num_sequences, dtype=np.int64)
    with ScoreStore.open(out, existing.content_hash) as store:
        return store.missing()


def _meta_from(result, shards: TokenShards) -> StoreMeta:
    return StoreMeta(
        num_sequences=len(shards),
        seq_len=shards.seq_len,
        content_hash=shards.content_hash,
        fingerprint=result.fingerprint,
        scorer=result.scorer,
        window=result.window,
        stride=result.stride,
    )


def _identity(answer_or_meta) -> tuple:
    """What must agree between a scorer's answer (ScoreResult) and a store (StoreMeta)."""
    x = answer_or_meta
    return (x.fingerprint, x.scorer, x.window, x.stride)


def _check_answer(result, meta: StoreMeta) -> None:
    if _identity(result) != _identity(meta):
        raise PrecomputeError(
            f"a scorer answered with fingerprint {result.fingerprint}, scorer {result.scorer!r}, "
            f"window {result.window}, stride {result.stride}, but the store holds "
            f"{meta.fingerprint}, {meta.scorer!r}, {meta.window}, {meta.stride}. Are the "
            "--scorer-url servers running different models or settings? Point precompute at "
            "identical scorers"
        )


def _write(store: ScoreStore, indices: np.ndarray, result) -> None:
    _check_answer(result, store.meta)
    if len(result.results) != indices.size:
        raise PrecomputeError(
            f"the scorer returned {len(result.results)} results for {indices.size} sequences"
        )
    store.put(
        indices,
        np.stack([r.logp_long for r in result.results]),
        np.stack([r.logp_short for r in result.results]),
    )


def _find_scorer(client, name: str | None, seq_len: int):
    """The ScorerInfo precompute will use; refuses early what the scorer cannot take."""
    infos = client.list_scorers()
    if name:
        info = next((i for i in infos if i.name == name), None)
    else:
        info = next((i for i in infos if i.is_default), infos[0] if len(infos) == 1 else None)
    if info is None:
        names = ", ".join(i.name for i in infos)
        raise PrecomputeError(
            f"the server has no scorer {name or '(default)'!r} (it hosts: {names}); pass --scorer NAME"
        )
    if info.max_sequence_length and seq_len > info.max_sequence_length:
        raise PrecomputeError(
            f"the dataset's rows have {seq_len} tokens but scorer {info.name!r} accepts at most "
            f"{info.max_sequence_length}; prepare with a smaller --seq-len or use a longer-context "
            "scorer"
        )
    return info


def _batch_size_for(info, seq_len: int) -> int:
    """As many sequences as the server's request limit allows, up to DEFAULT_BATCH."""
    if not info.max_request_tokens:
        return DEFAULT_BATCH
    return max(1, min(DEFAULT_BATCH, info.max_request_tokens // seq_len))
