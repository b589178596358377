"""The report: every arm x every metric with intervals, the paper's claims checked, plots,
device time and commands, from the eval JSONs of a pipeline run.

An arm's seeds are pooled item by item (the same held-out sequences and synthetic items in
every eval, checked by `items_hash`): perplexities from the summed CE and token counts of
all seeds, accuracies from the mean credit. Intervals are 95% bootstraps over items;
differences between arms are paired bootstraps (the same resampled items on both sides).
"""

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenweight.trainer.evals.stats import (
    bucket_labels,
    mean_stat,
    paired_difference,
    point,
    ppl_stat,
    summarize,
)

from . import plots
from .jobs import PipelineError
from .profiles import ARMS

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
BASE = "base"  # the pretrained model read at the long context, without extension
RETAIN_TOLERANCE = 0.02  # "short-context performance retained": within 2% of uniform


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    kind: str  # "ppl" (lower is better) or "acc" (higher is better)
    pick: object  # eval JSON -> per-item arrays for the statistic


def metrics_for(sample: dict) -> list[Metric]:
    """The metrics of one eval's layout: its position buckets, tasks and window."""
    edges = sample["perplexity"]["by_position"]["edges"]
    window = sample["settings"]["window"]
    out = [
        Metric(
            "ppl",
            "perplexity, all positions",
            "ppl",
            lambda e: [np.sum(e["items"]["position_ce"], 1), np.sum(e["items"]["position_n"], 1)],
        )
    ]
    for b, label in enumerate(bucket_labels(edges)):
        out.append(
            Metric(
                f"ppl_pos_{label}",
                f"perplexity, positions {label}",
                "ppl",
                lambda e, b=b: [
                    np.asarray(e["items"]["position_ce"])[:, b],
                    np.asarray(e["items"]["position_n"])[:, b],
                ],
            )
        )
    out += [
        Metric(
            "long_range_ppl",
            "long-range-token perplexity (LongPPL)",
            "ppl",
            lambda e: [e["items"]["key_ce"], e["items"]["key_n"]],
        ),
        Metric(
            "short_ppl",
            f"short-context perplexity (first {window} tokens)",
            "ppl",
            lambda e: [e["items"]["short_ce"], e["items"]["short_n"]],
        ),
        Metric(
            "acc_far",
            f"retrieval accuracy, all tasks, distance >= {window}",
            "acc",
            lambda e: [_credits(e, None, window, math.inf)],
        ),
    ]
    distance_edges = sample["retrieval"]["edges"]
    for task in sorted(sample["retrieval"]["tasks"]):
        out.append(
            Metric(
                f"acc_{task}",
                f"retrieval accuracy, {task}",
                "acc",
                lambda e, t=task: [_credits(e, t, 0, math.inf)],
            )
        )
        for lo, hi, label in zip(
            distance_edges[:-1], distance_edges[1:], bucket_labels(distance_edges)
        ):
            out.append(
                Metric(
                    f"acc_{task}_{label}",
                    f"retrieval accuracy, {task}, distance {label}",
                    "acc",
                    lambda e, t=task, lo=lo, hi=hi: [_credits(e, t, lo, hi)],
                )
            )
    return out


def _credits(e: dict, task: str | None, lo: float, hi: float) -> np.ndarray:
    return np.asarray(
        [
            r["credit"]
            for r in e["items"]["retrieval"]
            if (task is None or r["task"] == task) and lo <= r["distance"] < hi
        ]
    )


def pooled(evals: list[dict], metric: Metric) -> list[np.ndarray]:
    """Per-item arrays of several seeds' evals of one arm, pooled item by item."""
    picked = [[np.asarray(a, dtype=np.float64) for a in metric.pick(e)] for e in evals]
    if metric.kind == "ppl":
        return [np.sum([p[i] for p in picked], axis=0) for i in range(len(picked[0]))]
    return [np.mean([p[0] for p in picked], axis=0)]


def _stat(metric: Metric):
    return ppl_stat if metric.kind == "ppl" else mean_stat


def summarize_arm(evals: list[dict], metrics: list[Metric]) -> dict:
    out = {}
    for metric in metrics:
        out[metric.key] = {
            **summarize(_stat(metric), *pooled(evals, metric)),
            "per_seed": [point(_stat(metric), *metric.pick(e)) for e in evals],
        }
    return out


def difference(evals_a, evals_b, metric: Metric) -> dict:
    return paired_difference(_stat(metric), pooled(evals_a, metric), pooled(evals_b, metric))


def verdict(ci: list[float], lo_bound: float, hi_bound: float) -> str:
    """`held` when the whole interval lies inside (lo_bound, hi_bound), `contradicted` when it
    lies wholly outside it, `not resolved` when it straddles a bound. A claim with a band on
    both sides says which way it missed (`contradicted (lower)` / `(higher)`)."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return "not resolved"
    if lo_bound < lo and hi < hi_bound:
        return "held"
    if not (hi < lo_bound or lo > hi_bound):
        return "not resolved"
    if math.isinf(lo_bound) or math.isinf(hi_bound):
        return "contradicted"
    return "contradicted (lower)" if hi < lo_bound else "contradicted (higher)"


def check_claims(groups: dict[str, list[dict]], metrics: dict[str, Metric]) -> list[dict]:
    """The paper's claims, as this replication can test them: each weighted arm against
    uniform; sparse against dense (strongest on retrieval, loses the most short-context
    quality: dense sits between it and uniform); the unfrozen scorer against the frozen one.
    A claim is a difference of one metric between two arms and the range it has to lie in."""
    if "uniform" not in groups:
        return []

    def value(group: str, key: str) -> float:
        return summarize(ppl_stat, *pooled(groups[group], metrics[key]))["value"]

    tolerance = RETAIN_TOLERANCE * value("uniform", "short_ppl")
    per_arm = [
        ("token weighting lowers long-range-token perplexity", "long_range_ppl", -math.inf, 0.0),
        (
            "token weighting raises retrieval accuracy beyond the short window",
            "acc_far",
            0.0,
            math.inf,
        ),
        (
            f"short-context perplexity stays within {RETAIN_TOLERANCE:.0%} of uniform",
            "short_ppl",
            -math.inf,
            tolerance,
        ),
    ]
    specs = [(arm.name, "uniform", *claim) for claim in per_arm for arm in ARMS[1:]]
    sparse_vs_dense = [
        ("sparse beats dense on retrieval beyond the short window", "acc_far", 0.0, math.inf),
        ("sparse loses more short-context quality than dense", "short_ppl", 0.0, math.inf),
    ]
    sparse_arms = [arm.name for arm in ARMS if arm.name.startswith("sparse")]
    specs += [(arm, "dense", *claim) for claim in sparse_vs_dense for arm in sparse_arms]
    if "dense" in groups:
        band = RETAIN_TOLERANCE * value("dense", "long_range_ppl")
        claim = f"the unfrozen scorer (self) matches the frozen one within {RETAIN_TOLERANCE:.0%}"
        specs.append(("dense-self", "dense", claim, "long_range_ppl", -band, band))
    claims = []
    for arm, reference, claim, key, lo, hi in specs:
        if arm not in groups or reference not in groups:
            continue
        d = difference(groups[arm], groups[reference], metrics[key])
        claims.append(
            {
                "claim": claim,
                "arm": arm,
                "reference": reference,
                "metric": key,
                "difference": d,
                "verdict": verdict(d["ci"], lo, hi),
            }
        )
    return claims


def load_evals(eval_dir: Path, seeds: tuple[int, ...]) -> dict[str, list[dict]]:
    """name -> evals of its seeds; `base` has one. Refuses evals of different items."""
    groups, hashes = {}, {}
    names = [(BASE, BASE)] + [(arm.name, f"{arm.name}-s{s}") for arm in ARMS for s in seeds]
    for group, name in names:
        path = eval_dir / f"{name}.json"
        if not path.is_file():
            continue
        e = json.loads(path.read_text())
        hashes[name] = e["items_hash"]
        groups.setdefault(group, []).append(e)
    if len(set(hashes.values())) > 1:
        raise PipelineError(
            f"the evals in {eval_dir} were run on different items ({hashes}); rerun `eval`"
        )
    if not groups:
        raise PipelineError(f"no eval results in {eval_dir}; run the `eval` stage first")
    return groups


def write_report(ctx) -> None:
    groups = load_evals(ctx.path("eval"), ctx.seeds)
    sample = next(iter(groups.values()))[0]
    metrics = metrics_for(sample)
    by_key = {m.key: m for m in metrics}
    arms = {name: summarize_arm(evals, metrics) for name, evals in groups.items()}
    claims = check_claims(groups, by_key)
    stages = read_jsonl(ctx.path("stages.jsonl"))
    commands = read_jsonl(ctx.path("commands.jsonl"))
    environment = json.loads(ctx.path("environment.json").read_text())
    manifest = json.loads(ctx.path("corpus", "manifest.json").read_text())
    result = {
        "profile": ctx.profile.name,
        "environment": environment,
        "corpus": {
            "list_hash": manifest["list_hash"],
            "counts": manifest["counts"],
            "python": manifest["python"],
        },
        "seeds": list(ctx.seeds),
        "metrics": {m.key: {"label": m.label, "kind": m.kind} for m in metrics},
        "arms": {
            name: {"seeds": [e["model"] for e in groups[name]], "metrics": arms[name]}
            for name in arms
        },
        "claims": claims,
        "stage_wall_s": _stage_times(stages),
        "commands": [{k: c[k] for k in ("name", "argv", "wall_s", "slot")} for c in commands],
    }
    ctx.results.parent.mkdir(parents=True, exist_ok=True)
    ctx.results.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    figures = plots.draw(ctx.plots, sample, arms, metrics, ctx.work)
    _fill_doc(ctx, result, metrics, figures)


def read_jsonl(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.is_file()
        else []
    )


def _stage_times(stages: list[dict]) -> dict[str, float]:
    """Wall seconds per stage, summed over the invocations that ran it."""
    out: dict[str, float] = {}
    for s in stages:
        out[s["stage"]] = round(out.get(s["stage"], 0.0) + s["wall_s"], 1)
    return out


def table(arms: dict[str, dict], metrics: list[Metric]) -> list[str]:
    """Markdown rows: one per metric, one column per arm (`arms`: name -> metric summaries)."""
    rows = ["| metric | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for m in metrics:
        rows.append(
            f"| {m.label} | " + " | ".join(cell(a[m.key], m.kind) for a in arms.values()) + " |"
        )
    return rows


def cell(m: dict, kind: str) -> str:
    if m["items"] == 0 or math.isnan(m["value"]):
        return "–"
    digits = 3 if kind == "ppl" else 2
    return f"{m['value']:.{digits}f} [{m['ci'][0]:.{digits}f}, {m['ci'][1]:.{digits}f}]"


def _fill_doc(ctx, result: dict, metrics: list[Metric], figures: list[Path]) -> None:
    doc = ctx.doc.read_text()
    if BEGIN not in doc or END not in doc:
        raise PipelineError(f"{ctx.doc} has no {BEGIN} ... {END} section to fill")
    names = list(result["arms"])
    env = result["environment"]
    corpus = result["corpus"]
    intro = (
        f"Devices: {', '.join(env['devices'])}; torch {env['torch']}, transformers "
        f"{env['transformers']}, Python {env['python']}; commit `{env['commit']}`. Corpus "
        f"`list_hash` `{corpus['list_hash']}` ({corpus['counts']['train_files']} train / "
        f"{corpus['counts']['heldout_files']} held-out files). Seeds per arm: "
        f"{', '.join(map(str, result['seeds']))}. Cells: value [95% bootstrap interval over "
        "items, seeds pooled]; perplexities lower is better, accuracies higher. `base` is the "
        "pretrained model read at the long context without extension."
    )
    lines = [
        BEGIN,
        f"## Results: profile `{result['profile']}`, {env['date']}",
        "",
        intro,
        "",
        *table({n: result["arms"][n]["metrics"] for n in names}, metrics),
    ]
    lines += [
        "",
        "### The paper's claims, as tested here",
        "",
        "| claim | arm | reference | difference [95% CI] | verdict |",
        "|---|---|---|---:|---|",
    ]
    for c in result["claims"]:
        d = c["difference"]
        shown = (
            "–"
            if math.isnan(d["value"])
            else f"{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
        )
        lines.append(f"| {c['claim']} | {c['arm']} | {c['reference']} | {shown} | {c['verdict']} |")
    lines += ["", "### Plots", ""]
    lines += [f"![{f.stem}]({_relative(f, ctx.doc.parent)})" for f in figures]
    lines += ["", "### Device time", "", "| stage | wall time |", "|---|---:|"]
    lines += [
        f"| {stage} | {seconds / 60:.1f} min |" for stage, seconds in result["stage_wall_s"].items()
    ]
    total = sum(result["stage_wall_s"].values())
    lines += [
        f"| **total** | **{total / 60:.1f} min** |",
        "",
        f"Last driver invocation: `{env['command']}`. Every command the run executed, over all "
        "its invocations, with its wall time:",
        "",
        "<details>",
        "",
        "```",
    ]
    lines += [
        f"# {c['name']} ({c['wall_s']:.0f} s)\n" + " ".join(c["argv"]) for c in result["commands"]
    ]
    lines += ["```", "", "</details>", END]
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    ctx.doc.write_text(head + "\n".join(lines) + tail)
    print(
        f"report: {ctx.results}, {ctx.doc}, {len(figures)} plots in {ctx.plots} ({time.strftime('%H:%M:%S')})"
    )


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())
