"""The second replication's report over the blocks done: the pre-registered primaries with
hierarchical bootstrap intervals (blocks, then items) and Holm's correction, their verdicts,
the stop rule, every arm's per-block differences, the weak-to-strong ratio and faithful LongCE.
Reads `quality_block*.json`; writes `quality_summary.json`, a plot, and the section of
docs/RESULTS.md between its markers (docs/PREREGISTRATION.md says what is tested and how).
"""

import json
import math
import os
import re
from pathlib import Path

from tokenweight.trainer.evals.stats import (
    N_BOOT,
    block_t_interval,
    hierarchical_bootstrap,
    holm,
    verdict,
)

from .block_profiles import SELECTION_ARMS
from .endpoints import ENDPOINTS, PRIMARIES, PRIMARY_ARM, REFERENCE_ARM
from .jobs import PipelineError

FORMAT = "tokenweight-quality-summary-1"
MARGIN = 0.02  # the stop rule's and the verdicts' band, in each endpoint's units
MIN_BLOCKS, MAX_BLOCKS = 3, 5
EQUAL_FLOPS_ARM = "uniform-flops"  # uniform loss trained for as many FLOPs as the dense arm
# How firm a verdict is against the bootstrap's own Monte Carlo noise: the pre-registered
# interval (N_BOOT replicates, one seed) redrawn with other seeds, and once with many more.
FIRMNESS_SEEDS = 20
FIRMNESS_BOOT = 20 * N_BOOT
BEGIN, END = "<!-- blocks:begin -->", "<!-- blocks:end -->"
RECORD = re.compile(r"quality_block(\d+)\.json$")


def load_records(
    results: Path, exclude: int | None = None, selection: bool = False
) -> list[dict]:
    """One experiment's block records in `results`, in block order (`exclude`: one being
    rewritten): the replication's, or with `selection` the selection experiment's (blocks run
    with --selection-arms), which never enter the replication's report."""
    found = []
    for path in sorted(results.glob("quality_block*.json")):
        m = RECORD.search(path.name)
        if m and int(m.group(1)) != exclude:
            record = json.loads(path.read_text())
            if is_selection(record) == selection:
                found.append(record)
    return sorted(found, key=lambda r: r["block"])


def is_selection(record: dict) -> bool:
    return any(arm.name in record["arms"] for arm in SELECTION_ARMS)


def compare(
    records: list[dict],
    arm: str,
    key: str,
    against: str = REFERENCE_ARM,
    seed: int | None = None,
    n_boot: int = N_BOOT,
) -> dict:
    """Hierarchical bootstrap of arm - `against` on one endpoint, over the blocks' items. Each
    record pairs every arm with the reference item by item; another arm is paired with `arm`
    through that, when both saw the same items (every arm of a block does)."""
    endpoint = next(e for e in ENDPOINTS if e.key == key)
    blocks = []
    for r in records:
        pairs = r["pairs"]
        if arm not in pairs or not pairs[arm][key]["arm"][0]:
            continue
        mine = pairs[arm][key]
        if against == REFERENCE_ARM:
            blocks.append((mine["arm"], mine["reference"]))
        elif against in pairs:
            other = pairs[against][key]
            if other["reference"] != mine["reference"]:
                raise PipelineError(
                    f"block {r['block']}: {arm} and {against} were not evaluated on the same "
                    f"items for {key}; they cannot be paired"
                )
            blocks.append((mine["arm"], other["arm"]))
    seed = len(blocks) if seed is None else seed  # the pre-registered seed: the blocks' count
    return hierarchical_bootstrap(endpoint.stat, blocks, seed=seed, n_boot=n_boot)


def primaries(records: list[dict]) -> list[dict]:
    """The three primaries (dense - uniform), Holm-corrected, each with its verdict."""
    rows = []
    for ep in PRIMARIES:
        d = compare(records, PRIMARY_ARM, ep.key)
        rows.append({"endpoint": ep.key, "label": ep.label, "better": ep.better, **d})
    adjusted = holm({r["endpoint"]: r["p"] for r in rows if not math.isnan(r.get("p", math.nan))})
    for r in rows:
        r["holm"] = adjusted.get(r["endpoint"])
        r["verdict"] = verdict(r["ci"], MARGIN, r["better"])
    return rows


def firmness(records: list[dict], rows: list[dict]) -> list[dict]:
    """Each primary's verdict redrawn (not pre-registered: added after block 5, whose retrieval
    interval ended within 0.001 of its bound): the share of FIRMNESS_SEEDS bootstrap seeds, at
    the pre-registered replicate count, that give the same verdict; the interval from
    FIRMNESS_BOOT replicates; and a t interval over the per-block differences, which depends on
    no resampling."""
    out = []
    for row in rows:
        ep = next(e for e in PRIMARIES if e.key == row["endpoint"])
        redrawn = [
            verdict(compare(records, PRIMARY_ARM, ep.key, seed=s)["ci"], MARGIN, ep.better)
            for s in range(FIRMNESS_SEEDS)
        ]
        many = compare(records, PRIMARY_ARM, ep.key, n_boot=FIRMNESS_BOOT)
        t_ci = block_t_interval(row["per_block"])
        out.append(
            {
                "endpoint": ep.key,
                "verdict": row["verdict"],
                "same_verdict_seeds": sum(v == row["verdict"] for v in redrawn),
                "seeds": FIRMNESS_SEEDS,
                "ci_many": many["ci"],
                "n_boot_many": FIRMNESS_BOOT,
                "verdict_many": verdict(many["ci"], MARGIN, ep.better),
                "ci_block_t": t_ci,
                "verdict_block_t": verdict(t_ci, MARGIN, ep.better),
            }
        )
    return out


def stop_rule(records: list[dict]) -> dict:
    """After 3 blocks, stop when the first primary's interval lies wholly above +0.02, wholly
    below -0.02 or wholly within +-0.02; otherwise run on, to 5 blocks at most."""
    n = len(records)
    if n < MIN_BLOCKS:
        return {"stop": False, "next": f"block {n + 1}", "reason": f"{n} of {MIN_BLOCKS} blocks"}
    d = compare(records, PRIMARY_ARM, PRIMARIES[0].key)
    lo, hi = d["ci"]
    settled = lo > MARGIN or hi < -MARGIN or (-MARGIN < lo and hi < MARGIN)
    if settled or n >= MAX_BLOCKS:
        why = "the primary's interval is settled" if settled else f"{MAX_BLOCKS} blocks are in"
        return {"stop": True, "next": "stop", "reason": f"{why}: [{lo:+.3f}, {hi:+.3f}]"}
    return {
        "stop": False,
        "next": f"block {n + 1}",
        "reason": f"[{lo:+.3f}, {hi:+.3f}] straddles a bound",
    }


def block_refusal(results: Path, block: int, selection: bool) -> str | None:
    """Why block `block` may not run, if it may not: the replication ends where its stop rule
    says (docs/PREREGISTRATION.md), and a selection block never takes a replication block's
    number (its record would replace that block's)."""
    replication = load_records(results)
    if selection:
        if block in {r["block"] for r in replication}:
            return (
                f"block {block} is the replication's; give the selection experiment a new "
                "number (and seed)"
            )
        return None
    done = {r["block"] for r in load_records(results, selection=True)}
    if block in done:
        return f"block {block} is the selection experiment's: add --selection-arms"
    if replication and block > max(r["block"] for r in replication):
        rule = stop_rule(replication)
        if rule["stop"]:
            return (
                f"the replication stopped after block {replication[-1]['block']} "
                f"({rule['reason']}); further blocks run with --selection-arms only"
            )
    return None


def summarize(records: list[dict]) -> dict:
    if not records:
        raise PipelineError("no quality_block*.json yet: run a block first")
    arms = [a for a in records[-1]["arms"] if a not in (REFERENCE_ARM,)]
    comparisons = {arm: {ep.key: compare(records, arm, ep.key) for ep in ENDPOINTS} for arm in arms}
    ratio = {}
    for ep in PRIMARIES[:2]:
        strong = comparisons[PRIMARY_ARM][ep.key]
        weak = comparisons.get("dense-weak", {}).get(ep.key)
        if weak and strong["value"]:
            per_block = [
                w / s if s else math.nan for w, s in zip(weak["per_block"], strong["per_block"])
            ]
            ratio[ep.key] = {"value": weak["value"] / strong["value"], "per_block": per_block}
    # Exploratory (added after block 3, not pre-registered): weighting against compute alone.
    equal_flops = (
        {ep.key: compare(records, PRIMARY_ARM, ep.key, EQUAL_FLOPS_ARM) for ep in ENDPOINTS}
        if EQUAL_FLOPS_ARM in comparisons
        else {}
    )
    rows = primaries(records)
    return {
        "format": FORMAT,
        "blocks": [r["block"] for r in records],
        "primaries": rows,
        "firmness": firmness(records, rows),
        "comparisons": comparisons,
        "dense_vs_equal_flops": equal_flops,
        "weak_to_strong": ratio,
        "stop_rule": stop_rule(records),
        "diagnostics": {r["block"]: r.get("diagnostics") for r in records},
        "progress": [dict(block=r["block"], **r["progress"]) for r in records],
    }


def write_report(results: Path, doc: Path, plots: Path) -> dict:
    summary = summarize(load_records(results))
    (results / "quality_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    figure = _plot(summary, plots)
    _fill(doc, summary, figure)
    print(f"report: {results / 'quality_summary.json'}, {doc}; stop rule: {summary['stop_rule']}")
    return summary


def format_difference(d: dict) -> str:
    if math.isnan(d["value"]):
        return "–"
    shown = "degenerate" if d.get("degenerate") else _ci(d["ci"])
    return f"{d['value']:+.3f} {shown}"


def _ci(ci: list[float], digits: int = 3) -> str:
    return "–" if math.isnan(ci[0]) else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _fill(doc: Path, summary: dict, figure: Path) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise PipelineError(f"{doc} has no {BEGIN} ... {END} section to fill")
    lines = [
        BEGIN,
        f"Blocks done: {', '.join(map(str, summary['blocks']))}. Stop rule: "
        f"**{summary['stop_rule']['next']}** ({summary['stop_rule']['reason']}).",
        "",
        "Primaries, dense (λ = 0.75, frozen trainee-size scorer) minus uniform; hierarchical "
        "bootstrap over blocks then items; Holm over the three:",
        "",
        "| endpoint | better | difference [95% CI] | p (Holm) | verdict | per block |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in summary["primaries"]:
        holm_p = f"{r['holm']['p_holm']:.3f}" if r.get("holm") else "–"
        blocks = ", ".join(f"{v:+.3f}" for v in r.get("per_block", []))
        lines.append(
            f"| {r['label']} | {r['better']} | {format_difference(r)} | {holm_p} "
            f"| {r['verdict']} | {blocks} |"
        )
    if summary.get("firmness"):
        lines += [
            "",
            f"How firm each verdict is (not pre-registered): the share of {FIRMNESS_SEEDS} "
            f"bootstrap seeds at the pre-registered {N_BOOT:,} replicates that give the same "
            f"verdict; the interval from {FIRMNESS_BOOT:,} replicates; a t interval over the "
            "per-block differences (blocks as the unit, no resampling).",
            "",
            "| endpoint | verdict | same verdict | "
            f"{FIRMNESS_BOOT:,} replicates | t over blocks |",
            "|---|---|---:|---|---|",
        ]
        for f in summary["firmness"]:
            label = next(e.label for e in PRIMARIES if e.key == f["endpoint"])
            lines.append(
                f"| {label} | {f['verdict']} | {f['same_verdict_seeds']} of {f['seeds']} | "
                f"{_ci(f['ci_many'], 4)} {f['verdict_many']} | "
                f"{_ci(f['ci_block_t'], 4)} {f['verdict_block_t']} |"
            )
    keys = [ep.key for ep in ENDPOINTS]
    lines += [
        "",
        "Every arm minus uniform (hierarchical bootstrap; not corrected: secondary):",
        "",
        "| arm | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for arm, by_key in summary["comparisons"].items():
        shown = " | ".join(format_difference(by_key[k]) for k in keys)
        lines.append(f"| {arm} | {shown} |")
    if summary.get("dense_vs_equal_flops"):
        lines += [
            "",
            "Weighting against compute alone: dense minus uniform-flops, the uniform arm trained "
            "for the dense arm's FLOPs (training and scoring), items paired within each block; "
            "hierarchical bootstrap, not corrected. Exploratory: added after block 3, not in the "
            "pre-registration.",
            "",
            "| endpoint | better | difference [95% CI] | per block |",
            "|---|---|---:|---|",
        ]
        for ep in ENDPOINTS:
            d = summary["dense_vs_equal_flops"][ep.key]
            blocks = ", ".join(f"{v:+.3f}" for v in d.get("per_block", []))
            lines.append(f"| {ep.label} | {ep.better} | {format_difference(d)} | {blocks} |")
    if summary["weak_to_strong"]:
        lines += ["", "Weak-to-strong ratio (Δ dense-weak / Δ dense):", ""]
        for key, r in summary["weak_to_strong"].items():
            lines.append(
                f"- {key}: {r['value']:.2f} (per block: "
                + ", ".join(f"{v:.2f}" for v in r["per_block"])
                + ")"
            )
    lines += [
        "",
        "Scorer diagnostics (no training), on held-out files: Spearman agreement of the weak and "
        "trainee-size scorers' dense weights, and the AUROC of each scorer's |Δ| for the tokens "
        "of long-range identifier repeats. *own*: each scorer's logp_long with its own "
        "logp_short; both scorers were trained at the short context only, so they read the long "
        "one no better. *hybrid*: each scorer's logp_short with the block's uniformly extended "
        "trainee's logp_long, as the hybrid arms pair it with the trainee's own (from block 2).",
        "",
        "| block | rank agreement own / hybrid | AUROC weak own / hybrid "
        "| AUROC trainee-size own / hybrid |",
        "|---|---:|---:|---:|",
    ]
    for block, d in summary["diagnostics"].items():
        if d:
            hybrid = "auroc_hybrid" in d
            rho = d["rank_agreement_hybrid"]["pooled"] if hybrid else None
            lines.append(
                f"| {block} | {_pair(d['rank_agreement']['pooled'], rho)} | "
                + " | ".join(
                    _pair(d["auroc"][s], d["auroc_hybrid"][s] if hybrid else None)
                    for s in ("weak", "base")
                )
                + " |"
            )
    lines += [
        "",
        "| block | device minutes | training TFLOP/s: pretraining; extension, one arm / all "
        "arms side by side | next |",
        "|---|---:|---|---|",
    ]
    for p in summary["progress"]:
        minutes = p["device_minutes"].get(f"block-{p['block']}", 0.0)
        t = p["training_tflops"]
        lines.append(
            f"| {p['block']} | {minutes:.1f} | {_num(t.get('pretrain'))}; "
            f"{_num(t.get('extend-uniform'))} / {_num(t.get('extend-all-arms'))} | "
            f"{p['next']['next']} |"
        )
    lines += ["", f"![per-block differences]({os.path.relpath(figure, doc.parent)})", END]
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


def _plot(summary: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(ENDPOINTS), figsize=(4 * len(ENDPOINTS), 3.5))
    for ax, ep in zip(axes, ENDPOINTS):
        for i, (arm, by_key) in enumerate(summary["comparisons"].items()):
            d = by_key[ep.key]
            blocks = d.get("per_block", [])
            ax.scatter([i] * len(blocks), blocks, s=10, alpha=0.6)
            if not math.isnan(d["value"]):
                lo, hi = d["ci"]
                ax.errorbar(
                    i,
                    d["value"],
                    yerr=[[d["value"] - lo], [hi - d["value"]]],
                    fmt="o",
                    color="black",
                    capsize=3,
                )
        ax.axhline(0, color="grey", lw=0.8)
        for m in (-MARGIN, MARGIN):
            ax.axhline(m, color="grey", lw=0.5, ls="--")
        ax.set_xticks(
            range(len(summary["comparisons"])),
            list(summary["comparisons"]),
            rotation=45,
            ha="right",
        )
        ax.set_title(f"{ep.key} ({ep.better} is better)", fontsize=9)
    fig.tight_layout()
    path = out / "quality_blocks.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pair(own: float, hybrid: float | None) -> str:
    return f"{own:.3f} / " + ("–" if hybrid is None else f"{hybrid:.3f}")


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"
