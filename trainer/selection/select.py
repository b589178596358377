"""`tokenweight select`: keep the top fraction of a ranking, stratified, plus a matched control.

Strata are length bins (quantiles of the ranked documents' lengths, `--length-bins`) and,
with `--by length,source`, the document's source (its `source` field, or the first
`--source-depth` components of its path). Each stratum gives `fraction` of its documents,
rounded by largest remainder so the total is `round(fraction * ranked)` and no stratum is off
its share by a whole document: the top arm takes each stratum's highest scores, the control
arm the same number drawn at random (seeded) from the same stratum. Both arms are written as
prepared datasets (`top/`, `control/`, the format `tokenweight prepare` writes, so the trainer
reads them with `--data`) with `selection.json` beside them: settings, per-stratum counts and
tokens, and the documents of each arm. Documents without statistics (no target beyond the
window) are not ranked, so neither arm takes them.
"""

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenweight.flags import add_flags, flag, values_of

from ..prepare import ShardWriter, write_json_atomic
from .documents import DocumentInput
from .rank import read_meta
from .stats import OK

ARMS = ("top", "control")
SELECTION_FILE = "selection.json"


def comma_list(text: str) -> tuple[str, ...]:
    """`a, b,` -> ("a", "b")."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


class SelectError(ValueError):
    """Settings or a ranking select cannot use; the message names the fix."""


@dataclass(frozen=True)
class SelectConfig:
    fraction: float = flag(0.3, "share kept")
    by: tuple[str, ...] = flag(
        ("length",), "strata, comma-separated: length, source (default: length)", type=comma_list
    )
    length_bins: int = flag(4, "length strata: this many quantile bins of document length")
    source_depth: int | None = flag(
        None, "source of a row without one: the first N components of its path"
    )
    seed: int = flag(0, "control arm's draw")

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise SelectError(f"--fraction must be in (0, 1], got {self.fraction}")
        if unknown := set(self.by) - {"length", "source"}:
            raise SelectError(f"--by takes length and/or source, got {sorted(unknown)}")
        if self.length_bins < 1:
            raise SelectError(f"--length-bins must be at least 1, got {self.length_bins}")


@dataclass(frozen=True)
class RankedInput:
    """A ranking and where its documents are, for the commands that read one."""

    ranking: str = flag(help="the table `tokenweight rank --out` wrote")
    input: tuple[str, ...] | None = flag(
        None, "the ranked input (default: as the ranking records)", nargs="+"
    )
    tokenizer: str | None = flag(
        None, "tokenizer of the text lines (default: as the ranking records)"
    )


@dataclass(frozen=True)
class SelectOutput:
    out: str = flag(help="directory for top/, control/ and selection.json")
    seq_len: int | None = flag(
        None, "tokens per training row (JSON lines input; a prepared dataset keeps its own)"
    )


def add_arguments(parser) -> None:
    for cls in (RankedInput, SelectOutput, SelectConfig):
        add_flags(parser, cls)


def run(args) -> int:
    ranked = RankedInput(**values_of(args, RankedInput))
    output = SelectOutput(**values_of(args, SelectOutput))
    try:
        summary = select(
            ranked.ranking,
            output.out,
            SelectConfig(**values_of(args, SelectConfig)),
            seq_len=output.seq_len,
            inputs=ranked.input,
            tokenizer=ranked.tokenizer,
        )
    except (ValueError, OSError) as exc:
        print(f"tokenweight select: error: {exc}", file=sys.stderr)
        return 1
    for arm in ARMS:
        a = summary["arms"][arm]
        print(
            f"{Path(output.out) / arm}: {a['documents']} documents, {a['tokens']} tokens, "
            f"{a['rows']} rows of {summary['seq_len']}"
        )
    return 0


def read_ranking(path) -> tuple[dict, list[dict]]:
    meta = read_meta(path)
    if meta is None:
        raise SelectError(
            f"{path} has no {Path(path).name}.meta.json; is it a `tokenweight rank` table?"
        )
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if len(rows) != meta["documents"]:
        raise SelectError(
            f"{path} holds {len(rows)} of {meta['documents']} documents; finish it first by "
            "rerunning the same `tokenweight rank` command"
        )
    return meta, rows


def ranked_input(ranking, meta: dict, inputs=None, tokenizer=None) -> DocumentInput:
    """The documents a ranking was made from (by default where it says they are)."""
    documents = DocumentInput(inputs or meta["input"], tokenizer or meta["tokenizer"])
    if documents.identity != meta["input_hash"]:
        raise SelectError(
            f"the input {documents.paths} is not what {ranking} ranked (content hash differs); "
            "pass --input with the ranked files"
        )
    return documents


def strata(rows: list[dict], config: SelectConfig) -> tuple[list[tuple], dict]:
    """The stratum key of each row, and what defines the strata (the length bin edges)."""
    lengths = np.array([r["length"] for r in rows])
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, config.length_bins + 1)[1:-1]))
    keys = []
    for row, length in zip(rows, lengths):
        key = ()
        if "length" in config.by:
            key += (int(np.searchsorted(edges, length, side="right")),)
        if "source" in config.by:
            key += (_source(row, config.source_depth),)
        keys.append(key)
    return keys, {"length_edges": [float(e) for e in edges]}


def _source(row: dict, depth: int | None) -> str:
    if row.get("source") is not None:
        return row["source"]
    if depth:
        return "/".join(row["doc"].split("/")[:depth])
    raise SelectError(
        f'document {row["doc"]!r} has no source; give the input lines a "source" field or '
        "pass --source-depth N (the first N components of its path)"
    )


def allocate(sizes: dict, fraction: float, rng: np.random.Generator) -> dict:
    """Documents per stratum: shares of `round(fraction * total)` by largest remainder.

    Equal remainders (many strata of one document, say) are served in a random order drawn
    from `rng`, so no stratum is favoured for its name.
    """
    keys = sorted(sizes)
    quota = {k: fraction * sizes[k] for k in keys}
    take = {k: int(np.floor(quota[k])) for k in keys}
    left = round(fraction * sum(sizes.values())) - sum(take.values())
    tiebreak = dict(zip(keys, rng.permutation(len(keys))))
    # remainders rounded so that float noise does not order strata that tie
    by_remainder = sorted(keys, key=lambda k: (-round(quota[k] - take[k], 9), tiebreak[k]))
    for k in by_remainder[:left]:
        take[k] += 1
    return take


def choose(rows: list[dict], config: SelectConfig) -> tuple[dict, dict]:
    """Indices of the top and control arms (sets), and the per-stratum summary."""
    ranked = [r for r in rows if r["status"] == OK]
    if not ranked:
        raise SelectError(
            "no document in the ranking has targets beyond the window; nothing to select"
        )
    keys, definition = strata(ranked, config)
    members = defaultdict(list)
    for row, key in zip(ranked, keys):
        members[key].append(row)
    rng = np.random.default_rng(config.seed)
    take = allocate({k: len(v) for k, v in members.items()}, config.fraction, rng)
    arms = {arm: set() for arm in ARMS}
    table = []
    for key in sorted(members):
        group, n = members[key], take[key]
        best = sorted(group, key=lambda r: (-r["score"], r["index"]))[:n]
        drawn = rng.choice(len(group), size=n, replace=False)
        arms["top"].update(r["index"] for r in best)
        arms["control"].update(group[i]["index"] for i in drawn)
        table.append({"stratum": list(key), "ranked": len(group), "selected": n})
    return arms, {
        **definition,
        "strata": table,
        "ranked": len(ranked),
        "unranked": len(rows) - len(ranked),
    }


def select(
    ranking,
    out,
    config: SelectConfig = SelectConfig(),
    *,
    seq_len=None,
    inputs=None,
    tokenizer=None,
    progress=True,
) -> dict:
    meta, rows = read_ranking(ranking)
    documents = ranked_input(ranking, meta, inputs, tokenizer)
    index_meta = _index_meta(documents, meta)
    if documents.shards is not None:
        if seq_len not in (None, documents.shards.seq_len):
            raise SelectError(
                f"the ranked dataset has rows of {documents.shards.seq_len} tokens; selected rows "
                "keep that length, so leave out --seq-len"
            )
        seq_len = documents.shards.seq_len
    elif seq_len is None:
        raise SelectError("pass --seq-len: the tokens per training row of the selected shards")
    arms, summary = choose(rows, config)
    out = Path(out)
    writers = {arm: ShardWriter(out / arm, seq_len) for arm in ARMS}
    tokens = dict.fromkeys(ARMS, 0)
    from tqdm import tqdm

    for document in tqdm(
        documents, total=len(rows), unit="doc", desc="select", disable=not progress
    ):
        for arm in ARMS:
            if document.index in arms[arm]:
                writers[arm].add(document.token_ids)
                tokens[arm] += document.token_ids.size
    result = {
        "ranking": str(ranking),
        "fingerprint": meta["fingerprint"],
        "window": meta["window"],
        "stride": meta["stride"],
        "fraction": config.fraction,
        "by": list(config.by),
        "seed": config.seed,
        "seq_len": seq_len,
        **summary,
        "arms": {},
    }
    for arm in ARMS:
        index = writers[arm].finish(
            {**index_meta, "selection": {"arm": arm, "ranking": str(ranking)}}
        )
        result["arms"][arm] = {
            "documents": len(arms[arm]),
            "tokens": tokens[arm],
            "rows": index["num_sequences"],
            "dropped_tokens": writers[arm].dropped,
            "indices": sorted(arms[arm]),
        }
    write_json_atomic(out / SELECTION_FILE, result, tmp_dir=out)
    return result


def _index_meta(documents: DocumentInput, meta: dict) -> dict:
    """What the selected shards' index says about their tokens."""
    if documents.shards is not None:
        s = documents.shards
        return {
            "vocab_size": s.vocab_size,
            "eos_token_id": s.eos_token_id,
            "bos_token_id": s.bos_token_id,
        }
    if meta["tokenizer"] is None:
        return {"vocab_size": None, "eos_token_id": None, "bos_token_id": None}
    tok = documents.tokenizer
    return {
        "vocab_size": tok.vocab_size,
        "eos_token_id": tok.eos_id,
        "bos_token_id": tok.bos_id,
        "tokenizer": meta["tokenizer"],
    }
