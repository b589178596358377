"""The record of one block: `quality_block{N}.json` beside the other results.

It holds everything the cross-block report needs and nothing that has to be recomputed: per
arm and endpoint the value, and every arm's per-item arrays paired with uniform's (same item
ids); per-block differences with paired BCa intervals; each task's accuracy with Wilson
intervals; and the progress of the replication (blocks done, GPU minutes, the measured
training TFLOP/s, what the next block should run).
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np

from tokenweight.trainer.evals.stats import paired_bca, wilson
from tokenweight.trainer.metrics_log import METRICS_FILE, TOKENS_PER_S, read_metrics

from .block_estimate import arm_scoring, extension_flops
from .block_report import load_records, stop_rule
from .endpoints import ENDPOINTS, REFERENCE_ARM, paired
from .estimate import forward
from .jobs import PipelineError

FORMAT = "tokenweight-quality-block-1"
# The selection experiment is exploratory: no stop rule, more blocks only narrow it.
SELECTION_NEXT = {
    "stop": False,
    "next": "optional: another block with --selection-arms",
    "reason": "the selection experiment has no stop rule; each block adds a pretraining seed",
}
WARMUP_STEPS = 3  # steps whose speed includes compilation and allocator warm-up


def record_path(results: Path, block: int) -> Path:
    return results / f"quality_block{block}.json"


def write(ctx) -> dict:
    p = ctx.profile
    evals = {}
    for name in (arm.name for arm in p.arms):
        path = ctx.block_path("eval", f"{name}.json")
        if not path.is_file():
            raise PipelineError(f"{path} not found: run the block's eval stage first")
        evals[name] = json.loads(path.read_text())
    lo, hi = 2 * p.short_len, p.long_len
    reference = evals[REFERENCE_ARM]
    arms, pairs, deltas = {}, {}, {}
    for name, e in evals.items():
        arms[name] = {
            "endpoints": {ep.key: _value(ep, ep.arrays(ep.records(e, lo, hi))) for ep in ENDPOINTS},
            "tasks": _task_accuracy(e, lo, hi),
        }
        if name == REFERENCE_ARM:
            continue
        pairs[name], deltas[name] = {}, {}
        for ep in ENDPOINTS:
            a, b = paired(e, reference, ep, lo, hi)
            pairs[name][ep.key] = {
                "arm": [x.round(4).tolist() for x in a],
                "reference": [x.round(4).tolist() for x in b],
            }
            deltas[name][ep.key] = paired_bca(ep.stat, a, b, seed=ctx.block)
    record = {
        "format": FORMAT,
        "profile": p.name,
        "block": ctx.block,
        "seed": ctx.block,
        "date": time.strftime("%Y-%m-%d"),
        "environment": _read_json(ctx.path("environment.json")),
        "corpus": _corpus(ctx),
        "calibration": _read_json(ctx.calibration),
        "distance": [lo, hi],
        "reference": REFERENCE_ARM,
        "arms": arms,
        "deltas": deltas,
        "pairs": pairs,
        "diagnostics": _diagnostics(ctx.block_path("diagnose.json")),
        "selection": _selection(ctx.block_path("select", "selection.json")),
        "progress": progress(ctx),
    }
    out = record_path(ctx.results, ctx.block)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, allow_nan=True) + "\n")
    # What to run next follows from every block recorded so far, this one included.
    record["progress"]["next"] = (
        SELECTION_NEXT if p.selection_arms else stop_rule(load_records(ctx.results))
    )
    out.write_text(json.dumps(record, allow_nan=True) + "\n")
    nxt = record["progress"]["next"]
    print(f"record: {out}; blocks done {record['progress']['blocks_done']}; next: {nxt}")
    return record


def progress(ctx) -> dict:
    """Blocks done, device minutes, measured speed, and what to run next (the stop rule)."""
    p = ctx.profile
    stages = _read_jsonl(ctx.path("stages.jsonl"))
    minutes, walls = {}, {}
    for s in stages:
        key = "pilot" if s.get("block") is None else f"block-{s['block']}"
        minutes[key] = minutes.get(key, 0.0) + s["wall_s"] / 60
        if s.get("block") == ctx.block:  # a stage repeated by a later call adds its ~0 s
            walls[s["stage"]] = walls.get(s["stage"], 0.0) + s["wall_s"]
    earlier = load_records(ctx.results, exclude=ctx.block, selection=p.selection_arms)
    done = sorted({r["block"] for r in earlier} | {ctx.block})
    extend_s = walls.get("extend")
    return {
        "blocks_done": done,
        "device_minutes": {k: round(v, 1) for k, v in minutes.items()},
        "stage_seconds": {k: round(v, 1) for k, v in walls.items() if v >= 1},
        "training_tflops": {
            "pretrain": _tflops(ctx, ctx.block_path("pretrain"), p.short_len, ctx.world),
            "extend-uniform": _tflops(ctx, ctx.block_path("extend", "uniform"), p.long_len, 1),
            # The GPU's total while the arms train side by side: every arm's training and
            # scoring FLOPs over the stage's wall time (scorer start-up included).
            "extend-all-arms": float(f"{extension_flops(p) / extend_s / ctx.world / 1e12:.3g}")
            if extend_s
            else None,
        },
        "flops_ratio": {
            arm.name: round(
                1 + arm_scoring(p, arm) / (3 * forward(p.trainee, p.vocab_size, p.long_len)), 3
            )
            for arm in p.arms
        },
    }


def _diagnostics(path: Path) -> dict | None:
    """Spearman agreement of the two scorers' weights and each scorer's AUROC: their own
    contrasts and (blocks from 2 on) paired with the uniformly extended trainee's logp_long."""
    d = _read_json(path)
    if d is None:
        return None
    names = ("weak", "base")
    out = {
        "rank_agreement": d["rank_agreement"],
        "auroc": {name: s["auroc"] for name, s in zip(names, d["scorers"])},
        "repeat_tokens": d["repeat_tokens"],
        "tokens": d["tokens"],
    }
    if "rank_agreement_hybrid" in d:  # each scorer's logp_short with the extended trainee's long
        out["long_model"] = d["settings"]["long_model"]
        out["rank_agreement_hybrid"] = d["rank_agreement_hybrid"]
        out["auroc_hybrid"] = {name: s["auroc_hybrid"] for name, s in zip(names, d["scorers"])}
    return out


def _selection(path: Path) -> dict | None:
    """What the selection arms trained on: each selection's documents, tokens and rows."""
    d = _read_json(path)
    if d is None:
        return None
    keep = ("documents", "tokens", "rows")
    return {arm: {k: a[k] for k in keep} for arm, a in d["arms"].items()}


def _value(ep, arrays: list[np.ndarray]) -> dict:
    n = int(arrays[0].shape[0])
    return {"value": float(ep.stat(*arrays)) if n else float("nan"), "clusters": n}


def _task_accuracy(e: dict, lo: int, hi: int) -> dict:
    out = {}
    for task in sorted({r["task"] for r in e["items"]["retrieval"]}):
        credits = [
            r["credit"]
            for r in e["items"]["retrieval"]
            if r["task"] == task and lo <= r["distance"] < hi
        ]
        out[task] = wilson(float(np.sum(credits)), len(credits))
    return out


def _tflops(ctx, run: Path, seq_len: int, world: int) -> float | None:
    """Sustained training TFLOP/s per GPU: median tokens/s after warm-up x FLOPs per token."""
    records = read_metrics(run / METRICS_FILE) if (run / METRICS_FILE).is_file() else []
    steady = records[WARMUP_STEPS:] or records  # a run shorter than the warm-up: every step
    speeds = [r[TOKENS_PER_S] for r in steady if TOKENS_PER_S in r]
    if not speeds:
        return None
    p = ctx.profile
    per_token = 3 * forward(p.trainee, p.vocab_size, seq_len) / seq_len
    return float(f"{statistics.median(speeds) * per_token / world / 1e12:.3g}")


def _corpus(ctx) -> dict:
    manifest = _read_json(ctx.path("corpus", "manifest.json"))
    return {"list_hash": manifest["list_hash"], "counts": manifest["counts"]} if manifest else {}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
