"""`tokenweight eval`: the long-context evaluation suite on any checkpoint the trainer makes.

    tokenweight eval --model runs/dense/model --data corpus/heldout.jsonl --seq-len 4096 \
        --window 512 --scorer-model runs/judge/model --out eval/dense.json

Writes one JSON file: every metric with a 95% interval, plus the per-item records (`items`,
each with a stable id: records.py) that `bench/quality` pools over seeds and pairs across
arms, and `items_hash`, which is equal for two evals that saw the same sequences and items.
The calibrated tasks of a replication: `--tasks passkey kv idrecall` with their knobs.
"""

import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokenweight.flags import add_flags, flag, values_of

from ..prepare import write_json_atomic
from . import perplexity as ppl
from .filler import Filler, code_blocks
from .heldout import HeldOutError, load_heldout
from .identifiers import long_range_repeats
from .idrecall import (
    IdRecallConfig,
    id_loss_records,
    id_loss_summary,
    idrecall_items,
    source_files,
)
from .retrieval import accuracy_summary, answer_items, label_buckets
from .stats import doubling_edges
from .tasks import TASKS, Codec, TaskConfig, TaskError, generate

FORMAT = "tokenweight-eval-2"
ALL_TASKS = (*TASKS, "idrecall")
DEFAULT_TASKS = ("dict", "passkey", "chain")
FILLER_FILES = 300  # held-out files whose top-level blocks serve as filler


class EvalError(ValueError):
    """Settings the eval cannot run with; the message names the fix."""


WHAT, JUDGE, SIZE, DIFFICULTY = (
    "what to evaluate",
    "long-range tokens (LongPPL-style judge)",
    "size and settings",
    "task difficulty (calibrate on a pilot, then freeze)",
)


@dataclass(frozen=True)
class EvalConfig:
    model: str = flag(help="Hugging Face checkpoint directory", group=WHAT)
    data: str = flag(
        help='held-out .jsonl ({"text"} lines) or a prepared shards directory', group=WHAT
    )
    seq_len: int = flag(help="evaluation context in tokens", group=WHAT)
    out: str = flag(help="JSON file to write", group=WHAT)
    tokenizer: str | None = flag(
        None, "tokenizer directory or tokenizer.json (default: --model)", group=WHAT
    )
    window: int | None = flag(
        None,
        "short (pre-extension) context: short-context perplexity reads each file's first "
        "WINDOW tokens, and position/distance buckets double from it (default seq-len/8)",
        group=WHAT,
    )
    scorer_url: str | None = flag(
        None, "grpc://HOST:PORT of `tokenweight serve` hosting the judge", group=JUDGE
    )
    scorer_model: str | None = flag(
        None, "judge checkpoint loaded here (default: --model itself)", group=JUDGE
    )
    score_window: int | None = flag(
        None, "the judge's short window (default --window)", group=JUDGE
    )
    tasks: tuple[str, ...] = flag(
        DEFAULT_TASKS,
        "retrieval tasks (default: dict passkey chain; calibrated: passkey kv idrecall)",
        group=SIZE,
        nargs="+",
        choices=ALL_TASKS,
    )
    items_per_bucket: int = flag(40, "synthetic items per task and distance bucket", group=SIZE)
    choices: int = flag(4, "candidates per item (chance = 1/choices)", group=SIZE)
    passkey_distractors: int = flag(
        0, "passkey: decoy lines of the same form between passkey and query", group=DIFFICULTY
    )
    passkey_differ: int = flag(
        5, "passkey: digits (of 5) in which a decoy number differs from the passkey",
        group=DIFFICULTY,
    )
    kv_pairs: int = flag(32, "kv: key = value lines", group=DIFFICULTY)
    kv_shared: int = flag(
        0, "kv: leading letters of the 3-letter key suffix all keys share (0-2)", group=DIFFICULTY
    )
    id_min_distance: int | None = flag(
        None,
        "idrecall: the name first seen at least this many tokens back (default --window)",
        group=DIFFICULTY,
    )
    id_absent: int | None = flag(
        None,
        "idrecall: the name absent from this many last tokens (default --window)",
        group=DIFFICULTY,
    )
    id_per_file: int = flag(8, "idrecall: items per held-out file at most", group=DIFFICULTY)
    max_sequences: int = flag(256, "held-out sequences per perplexity metric", group=SIZE)
    short_files: int | None = flag(
        None,
        "held-out files in the short-context perplexity (default --max-sequences)",
        group=SIZE,
    )
    batch_sequences: int = flag(16, "sequences per engine call", group=SIZE)
    key_gain: float = flag(2.0, "key token: logp_long - logp_short above this", group=JUDGE)
    key_min_logp: float = flag(-2.0, "key token: logp_long above this", group=JUDGE)
    seed: int = flag(0, "items, samples and bootstrap", group=SIZE)
    device: str | None = flag(
        None, "cpu, cuda or cuda:N (default: cuda if available)", group=SIZE
    )
    dtype: str | None = flag(
        None,
        "default: bf16 on CUDA, fp32 on CPU",
        group=SIZE,
        choices=["float32", "bfloat16", "float16"],
    )
    progress: bool = flag(True, "progress bar", group=SIZE)

    @property
    def short_window(self) -> int:
        return self.window or max(2, self.seq_len // 8)


def add_arguments(parser) -> None:
    add_flags(parser, EvalConfig)


def run(args) -> int:
    from tokenweight.service.loading import ModelLoadError

    from ..prepare import PrepareError

    values = values_of(args, EvalConfig)
    config = EvalConfig(**{**values, "tasks": tuple(values["tasks"])})
    try:
        result = evaluate(config)
    except (EvalError, HeldOutError, ModelLoadError, PrepareError, TaskError) as exc:
        print(f"tokenweight eval: error: {exc}", file=sys.stderr)
        return 1
    print(headline(result))
    return 0


def evaluate(cfg: EvalConfig) -> dict:
    """Run every metric and write `cfg.out`; returns what was written."""
    from tokenweight.service.engine import ScoringInputError
    from tqdm import tqdm

    from ..prepare import load_tokenizer
    from .lm import LocalJudge, RemoteJudge, load_engine, logprob_fn

    _check(cfg)
    started = time.perf_counter()
    window, score_window = cfg.short_window, cfg.score_window or cfg.short_window
    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    heldout = load_heldout(
        cfg.data, tok.backend, cfg.seq_len, window, cfg.max_sequences, cfg.seed, cfg.short_files
    )
    if "idrecall" in cfg.tasks and heldout.unit != "file":
        raise EvalError("--tasks idrecall reads held-out files: give --data as a .jsonl file")
    engine = load_engine(cfg.model, cfg.seq_len, score_window, cfg.device, cfg.dtype)
    if cfg.scorer_url:
        judge = RemoteJudge(cfg.scorer_url, cfg.score_window)
    elif cfg.scorer_model:
        judge = LocalJudge(
            load_engine(cfg.scorer_model, cfg.seq_len, score_window, cfg.device, cfg.dtype),
            score_window,
        )
    else:
        judge = LocalJudge(engine, score_window)

    edges = doubling_edges(window, cfg.seq_len)
    codec = Codec(tok.backend)
    filler_texts = heldout.texts[:: max(1, len(heldout.texts) // FILLER_FILES)]
    filler = Filler(code_blocks(filler_texts, cfg.seq_len // 4, codec.count), codec.count)
    task_cfg = TaskConfig(
        cfg.seq_len,
        tuple(edges),
        cfg.items_per_bucket,
        cfg.choices,
        passkey_distractors=cfg.passkey_distractors,
        passkey_differ=cfg.passkey_differ,
        kv_pairs=cfg.kv_pairs,
        kv_shared=cfg.kv_shared,
        seed=cfg.seed,
    )
    files = source_files(heldout)
    items = []
    for task in cfg.tasks:
        if task == "idrecall":
            id_cfg = IdRecallConfig(
                tuple(edges),
                cfg.id_min_distance or window,
                cfg.id_absent or window,
                cfg.items_per_bucket,
                cfg.id_per_file,
                cfg.choices,
                cfg.seed,
            )
            found = idrecall_items(files, id_cfg, codec)
            if not found:
                raise EvalError(
                    "no idrecall item in the held-out files: give more or longer files, or "
                    "lower --id-min-distance / --id-absent"
                )
            items += found
        else:
            items += generate(task, task_cfg, codec, filler)

    total = 2 * len(heldout.long) + len(heldout.short) + len(items)
    with tqdm(total=total, unit="seq", desc="eval", disable=not cfg.progress) as bar:
        try:
            model_logps = _batched(logprob_fn(engine), heldout.long, cfg.batch_sequences, bar)
            contrast = _batched(judge.contrast, heldout.long, cfg.batch_sequences, bar)
            short_logps = _batched(logprob_fn(engine), heldout.short, cfg.batch_sequences, bar)
            records = answer_items(
                items, logprob_fn(engine), max(1, cfg.batch_sequences // cfg.choices), bar
            )
        except ScoringInputError as exc:
            raise EvalError(f"{exc} (is --tokenizer the model's tokenizer?)") from None

    label_buckets(records, edges)
    id_loss = id_loss_records(files, model_logps, window)
    keys = ppl.KeyTokens(cfg.key_gain, cfg.key_min_logp)
    masks = [keys.mask(ll, ls) for ll, ls in contrast]
    pos_ce, pos_n = ppl.position_sums(model_logps, edges)
    key_ce, key_n = ppl.masked_sums(model_logps, masks)
    short_ce, short_n = ppl.whole_sums(short_logps)
    result = {
        "format": FORMAT,
        "model": cfg.model,
        "settings": {**asdict(cfg), "window": window, "score_window": score_window},
        "data": {
            "path": cfg.data,
            "unit": heldout.unit,
            "long_sequences": len(heldout.long),
            "short_sequences": len(heldout.short),
        },
        "judge": judge.describe,
        "perplexity": {
            "by_position": ppl.by_position_summary(pos_ce, pos_n, edges, cfg.seed),
            "long_range": {
                **ppl.ppl_summary(key_ce, key_n, cfg.seed),
                "key_fraction": float(key_n.sum() / max(1.0, pos_n.sum())),
                "rule": asdict(keys),
            },
            "short_context": {**ppl.ppl_summary(short_ce, short_n, cfg.seed), "window": window},
        },
        "retrieval": accuracy_summary(records, edges),
        "id_loss": id_loss_summary(id_loss, edges, cfg.seed) if files else None,
        "identifier_repeats": _identifier_repeats(heldout, contrast, score_window),
        "file_ids": "sha256[:16]",
        "items": {
            "long_files": heldout.long_ids,
            "short_files": heldout.short_ids,
            "position_ce": pos_ce.round(4).tolist(),
            "position_n": pos_n.tolist(),
            "key_ce": key_ce.round(4).tolist(),
            "key_n": key_n.tolist(),
            "short_ce": short_ce.round(4).tolist(),
            "short_n": short_n.tolist(),
            "retrieval": records,
            "id_loss": id_loss,
        },
        "items_hash": _items_hash(heldout, items),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result, tmp_dir=out.parent)
    return result


def headline(result: dict) -> str:
    p = result["perplexity"]
    tasks = result["retrieval"]["tasks"]
    acc = ", ".join(f"{t} {v['overall']['value']:.2f}" for t, v in tasks.items())
    id_loss = result.get("id_loss")
    far = f"identifier repeats {id_loss['value']:.3f} nats/token; " if id_loss else ""
    return (
        f"ppl {p['by_position']['overall']['value']:.3f}, long-range ppl {p['long_range']['value']:.3f} "
        f"({p['long_range']['key_fraction']:.1%} of tokens), short-context ppl "
        f"{p['short_context']['value']:.3f}; {far}retrieval accuracy: {acc}; "
        f"{result['elapsed_s']:.1f} s"
    )


def _check(cfg: EvalConfig) -> None:
    if cfg.seq_len < 16:
        raise EvalError(
            f"--seq-len {cfg.seq_len} is too short for the retrieval items (16 at least)"
        )
    if not 2 <= cfg.short_window < cfg.seq_len:
        raise EvalError(f"--window must be in [2, --seq-len), got {cfg.short_window}")
    if (
        cfg.choices < 2
        or cfg.items_per_bucket < 1
        or cfg.max_sequences < 1
        or cfg.batch_sequences < 1
        or cfg.id_per_file < 1
        or (cfg.short_files is not None and cfg.short_files < 1)
    ):
        raise EvalError(
            "--choices must be >= 2, and --items-per-bucket, --max-sequences, --batch-sequences, "
            "--id-per-file, --short-files >= 1"
        )
    for flag, value in (("--id-min-distance", cfg.id_min_distance), ("--id-absent", cfg.id_absent)):
        if value is not None and not 1 <= value < cfg.seq_len:
            raise EvalError(f"{flag} must be in [1, --seq-len), got {value}")
    if cfg.scorer_url and cfg.scorer_model:
        raise EvalError("give the judge as --scorer-url or as --scorer-model, not both")


def _batched(fn, sequences: list, size: int, bar) -> list:
    out = []
    for lo in range(0, len(sequences), size):
        out += fn(sequences[lo : lo + size])
        bar.update(min(size, len(sequences) - lo))
    return out


def _identifier_repeats(heldout, contrast, window: int) -> dict | None:
    """The judge's contrast on identifier repeats first seen >= window earlier vs the rest."""
    if not heldout.long_texts:
        return None
    repeats, other = [], []
    for text, offsets, (ll, ls) in zip(heldout.long_texts, heldout.long_offsets, contrast):
        mask = long_range_repeats(text, offsets, window)
        score = np.abs(ls - ll)
        repeats.append(score[mask])
        other.append(score[~mask])
    repeats, other = np.concatenate(repeats), np.concatenate(other)
    return {
        "window": window,
        "median_repeat": float(np.median(repeats)) if repeats.size else None,
        "median_other": float(np.median(other)) if other.size else None,
        "repeat_tokens": int(repeats.size),
        "other_tokens": int(other.size),
    }


def _items_hash(heldout, items) -> str:
    digest = hashlib.sha256()
    for seq in [
        *heldout.long,
        *heldout.short,
        *(x for it in items for x in (it.prompt, *it.candidates)),
    ]:
        digest.update(np.ascontiguousarray(seq, dtype="<i8").tobytes())
        digest.update(b"|")
    return digest.hexdigest()
