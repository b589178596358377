"""Intrinsic check of `tokenweight rank`: on held-out Python files, does the document score
follow how often a document repeats an identifier first seen beyond the window?

Held-out files are those `tokenweight corpus --seed 0` puts in heldout.jsonl: the split
depends only on a file's content and the seed, so the bundled model (trained on the train
split of a corpus built with seed 0) never saw them. A seeded sample of files whose length
lies in [--min-tokens, --max-tokens] is ranked with the bundled model (window 512) on CPU;
each document's identifier-repeat density is the share of its targets beyond the window
(t >= k) that repeat an identifier first seen at least k tokens earlier
(`tokenweight.trainer.evals.identifiers.long_range_repeats`). Writes Spearman correlations
of that density with `score`, `context_gain` and `key_density`, and the top 20 documents by
score with their highest-gain tokens.

    tokenweight corpus --out WORK/corpus --seed 0
    python bench/rank_intrinsic.py --corpus WORK/corpus --work WORK --out bench/results/rank_intrinsic_cpu.json
"""

import argparse
import datetime
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tokenweight.trainer.evals.identifiers import long_range_repeats
from tokenweight.trainer.prepare import load_tokenizer
from tokenweight.trainer.selection.documents import DocumentInput
from tokenweight.trainer.selection.rank import rank
from tokenweight.trainer.selection.scoring import LocalScorer

from tokenweight.bundled import default_model

STATISTICS = ("score", "context_gain", "key_density")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="a `tokenweight corpus --seed 0` directory")
    parser.add_argument("--work", required=True, help="directory for the sample and the ranking")
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--min-tokens", type=int, default=768)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model_dir, info = default_model()
    window = info["window"]
    tok = load_tokenizer(model_dir)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sample = work / "heldout_sample.jsonl"
    records = _sample(Path(args.corpus) / "heldout.jsonl", tok, args)
    sample.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    started = time.monotonic()  # a resumed ranking times only what this run scored
    scorer = LocalScorer(model_dir, window=window, device=args.device, dtype="float32")
    table = work / "rank.jsonl"
    rank(DocumentInput([str(sample)], str(model_dir)), scorer, table)
    seconds = time.monotonic() - started
    rows = [json.loads(line) for line in table.read_text().splitlines()]

    density = [_repeat_density(r["text"], tok, window) for r in records]
    ranked = [i for i, row in enumerate(rows) if row["status"] == "ok"]
    correlations = {}
    for name in STATISTICS:
        rho, p = spearmanr([rows[i][name] for i in ranked], [density[i] for i in ranked])
        correlations[name] = {"spearman": round(float(rho), 4), "p_value": float(p)}
    order = sorted(ranked, key=lambda i: -rows[i]["score"])
    result = {
        "what": "Spearman correlation of rank's document statistics with the density of "
        "identifier repeats beyond the window, on held-out Python files",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpus_visible": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "corpus": _corpus_summary(Path(args.corpus)),
        "sample": f"{len(records)} held-out files of {args.min_tokens}-{args.max_tokens} tokens "
        f"(seed {args.seed})",
        "model": "bundled default (tokenweight/models/default)",
        "fingerprint": rows[0]["fingerprint"],
        "window": window,
        "files": len(rows),
        "ranked": len(ranked),
        "tokens": int(sum(r["length"] for r in rows)),
        "rank_seconds": round(seconds, 1),
        "correlations": correlations,
        "repeat_density_median": float(np.median(density)),
        "top20": [_inspect(rows[i], density[i], records[i]["text"], tok) for i in order[:20]],
        "top20_repetition_share_median": float(
            np.median([rows[i]["repetition_share"] for i in order[:20]])
        ),
        "all_repetition_share_median": float(
            np.median([rows[i]["repetition_share"] for i in ranked])
        ),
        "bottom5": [_inspect(rows[i], density[i], records[i]["text"], tok) for i in order[-5:]],
    }
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("files", "ranked", "rank_seconds", "correlations")}, indent=1
        )
    )
    return 0


def _corpus_summary(corpus: Path) -> dict:
    manifest = json.loads((corpus / "manifest.json").read_text())
    return {
        "list_hash": manifest["list_hash"],
        "python": manifest["python"],
        "heldout_files": manifest["counts"]["heldout_files"],
        "settings": manifest["settings"],
    }


def _sample(heldout: Path, tok, args) -> list[dict]:
    records = [json.loads(line) for line in heldout.read_text().splitlines() if line.strip()]
    lengths = [ids.size for ids in tok.encode_documents([r["text"] for r in records])]
    fits = [r for r, n in zip(records, lengths) if args.min_tokens <= n <= args.max_tokens]
    fits.sort(key=lambda r: r["path"])
    chosen = random.Random(args.seed).sample(fits, min(args.files, len(fits)))
    return [{"text": r["text"], "path": r["path"]} for r in sorted(chosen, key=lambda r: r["path"])]


def _repeat_density(text: str, tok, window: int) -> float:
    offsets = tok.backend.encode(text, add_special_tokens=True).offsets
    beyond = long_range_repeats(text, offsets, window)[window - 1 :]
    return float(beyond.mean()) if beyond.size else 0.0


def _inspect(row: dict, density: float, text: str, tok) -> dict:
    enc = tok.backend.encode(text, add_special_tokens=True)
    pieces = [text[a:b] for a, b in enc.offsets]
    tokens = []
    for position, gain, _, _, copied in row["top_tokens"][:5]:
        if position >= len(pieces):  # the EOS rank appends
            continue
        before = "".join(pieces[max(0, position - 6) : position])
        tokens.append(f"{gain:.1f}{' (copy)' if copied else ''}: {before}[{pieces[position]}]")
    return {
        "doc": row["doc"],
        "length": row["length"],
        **{name: row[name] for name in (*STATISTICS, "repetition_share", "copied_share")},
        "repeat_density": round(density, 4),
        "top_tokens": tokens,
    }


if __name__ == "__main__":
    sys.exit(main())
