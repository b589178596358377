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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class EvalConfig:
    model: str
    data: str
    seq_len: int
    out: str
    tokenizer: str | None = None  # default: the model's directory
    window: int | None = None  # short context; default seq_len // 8
    scorer_url: str | None = None
    scorer_model: str | None = None  # local judge; default: the model itself
    score_window: int | None = None  # default: window
    tasks: tuple[str, ...] = DEFAULT_TASKS
    items_per_bucket: int = 40
    choices: int = 4
    passkey_distractors: int = 0  # same-form decoy lines between passkey and query
    passkey_differ: int = 5  # digits in which a decoy number differs from the passkey
    kv_pairs: int = 32  # `key = value` lines of the kv task
    kv_shared: int = 0  # leading letters of the 3-letter key suffix that all keys share
    id_min_distance: int | None = None  # idrecall: first sighting this far back; default window
    id_absent: int | None = None  # idrecall: name absent from this many last tokens; def. window
    id_per_file: int = 8  # idrecall items per held-out file at most
    max_sequences: int = 256
    short_files: int | None = None  # files in the short-context metric; default max_sequences
    batch_sequences: int = 16
    key_gain: float = 2.0
    key_min_logp: float = -2.0
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    progress: bool = True

    @property
    def short_window(self) -> int:
        return self.window or max(2, self.seq_len // 8)


def add_arguments(parser) -> None:
    import argparse

    g = parser.add_argument_group("what to evaluate")
    g.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    g.add_argument("--tokenizer", help="tokenizer directory or tokenizer.json (default: --model)")
    g.add_argument(
        "--data",
        required=True,
        help='held-out .jsonl ({"text"} lines) or a prepared shards directory',
    )
    g.add_argument("--seq-len", type=int, required=True, help="evaluation context in tokens")
    g.add_argument(
        "--window",
        type=int,
        help="short (pre-extension) context: short-context perplexity reads each file's first "
        "WINDOW tokens, and position/distance buckets double from it (default seq-len/8)",
    )
    g.add_argument("--out", required=True, help="JSON file to write")
    g = parser.add_argument_group("long-range tokens (LongPPL-style judge)")
    g.add_argument("--scorer-url", help="grpc://HOST:PORT of `tokenweight serve` hosting the judge")
    g.add_argument("--scorer-model", help="judge checkpoint loaded here (default: --model itself)")
    g.add_argument("--score-window", type=int, help="the judge's short window (default --window)")
    g.add_argument(
        "--key-gain",
        type=float,
        default=2.0,
        help="key token: logp_long - logp_short above this (default 2)",
    )
    g.add_argument(
        "--key-min-logp",
        type=float,
        default=-2.0,
        help="key token: logp_long above this (default -2)",
    )
    g = parser.add_argument_group("size and settings")
    g.add_argument(
        "--tasks",
        nargs="+",
        choices=ALL_TASKS,
        default=list(DEFAULT_TASKS),
        help="retrieval tasks (default: dict passkey chain; calibrated: passkey kv idrecall)",
    )
    g.add_argument(
        "--items-per-bucket",
        type=int,
        default=40,
        help="synthetic items per task and distance bucket",
    )
    g.add_argument(
        "--choices", type=int, default=4, help="candidates per item (chance = 1/choices)"
    )
    g.add_argument(
        "--max-sequences", type=int, default=256, help="held-out sequences per perplexity metric"
    )
    g.add_argument(
        "--short-files",
        type=int,
        help="held-out files in the short-context perplexity (default --max-sequences)",
    )
    g = parser.add_argument_group("task difficulty (calibrate on a pilot, then freeze)")
    g.add_argument(
        "--passkey-distractors",
        type=int,
        default=0,
        help="passkey: decoy lines of the same form between passkey and query (default 0)",
    )
    g.add_argument(
        "--passkey-differ",
        type=int,
        default=5,
        help="passkey: digits (of 5) in which a decoy number differs from the passkey (default 5)",
    )
    g.add_argument("--kv-pairs", type=int, default=32, help="kv: key = value lines (default 32)")
    g.add_argument(
        "--kv-shared",
        type=int,
        default=0,
        help="kv: leading letters of the 3-letter key suffix all keys share (0-2, default 0)",
    )
    g.add_argument(
        "--id-min-distance",
        type=int,
        help="idrecall: the name first seen at least this many tokens back (default --window)",
    )
    g.add_argument(
        "--id-absent",
        type=int,
        help="idrecall: the name absent from this many last tokens (default --window)",
    )
    g.add_argument(
        "--id-per-file", type=int, default=8, help="idrecall: items per held-out file at most"
    )
    g.add_argument("--batch-sequences", type=int, default=16, help="sequences per engine call")
    g.add_argument("--seed", type=int, default=0, help="items, samples and bootstrap")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="default: bf16 on CUDA, fp32 on CPU",
    )
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def run(args) -> int:
    from tokenweight.service.loading import ModelLoadError

    from ..prepare import PrepareError

    values = {f.name: getattr(args, f.name) for f in fields(EvalConfig)}
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
