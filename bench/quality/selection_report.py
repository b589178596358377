"""The selection experiment's report: blocks run with --selection-arms (docs/SELECTION.md, "The
training comparison"). Every arm is paired item by item with another of its block and the
difference bootstrapped over blocks then items, as the replication's are. Exploratory: no
pre-registration, so no verdicts and no correction for the several comparisons. Reads the
selection blocks' `quality_block*.json`; writes `quality_selection.json` and the section of
docs/SELECTION.md between its markers.
"""

import json
from pathlib import Path

import numpy as np

from .block_report import compare, format_difference, load_records
from .endpoints import ENDPOINTS
from .jobs import PipelineError

FORMAT = "tokenweight-quality-selection-1"
BEGIN, END = "<!-- selection:begin -->", "<!-- selection:end -->"
# (arm, against, what the difference isolates)
COMPARISONS = (
    ("top-uniform", "control-uniform", "selection, uniform loss"),
    ("top-dense", "control-dense", "selection, dense weighting"),
    ("control-dense", "control-uniform", "weighting, on the random subset"),
    ("top-dense", "control-uniform", "selection and weighting together"),
    ("control-uniform", "uniform", "the random subset against the whole pool, uniform loss"),
    ("dense", "uniform", "weighting, on the whole pool"),
)


def summarize(records: list[dict]) -> dict:
    if not records:
        raise PipelineError("no selection block recorded yet: run a block with --selection-arms")
    arms = list(records[-1]["arms"])
    return {
        "format": FORMAT,
        "blocks": [r["block"] for r in records],
        "comparisons": [
            {
                "arm": arm,
                "against": against,
                "isolates": what,
                **{ep.key: compare(records, arm, ep.key, against) for ep in ENDPOINTS},
            }
            for arm, against, what in COMPARISONS
        ],
        # Each arm's own value, the mean over blocks (descriptive).
        "arms": {
            arm: {
                "endpoints": {
                    ep.key: _mean(r["arms"][arm]["endpoints"][ep.key]["value"] for r in records)
                    for ep in ENDPOINTS
                },
                "tasks": {
                    task: _mean(r["arms"][arm]["tasks"][task]["value"] for r in records)
                    for task in records[-1]["arms"][arm]["tasks"]
                },
            }
            for arm in arms
        },
        "selection": {r["block"]: r.get("selection") for r in records},
        "progress": [dict(block=r["block"], **r["progress"]) for r in records],
    }


def write_report(results: Path, doc: Path) -> dict:
    summary = summarize(load_records(results, selection=True))
    (results / "quality_selection.json").write_text(json.dumps(summary, indent=1) + "\n")
    _fill(doc, summary)
    print(f"selection report: {results / 'quality_selection.json'}, {doc}")
    return summary


def _fill(doc: Path, summary: dict) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise PipelineError(f"{doc} has no {BEGIN} ... {END} section to fill")
    keys = [ep.key for ep in ENDPOINTS]
    lines = [
        BEGIN,
        f"Selection blocks: {', '.join(map(str, summary['blocks']))}. Differences, items paired "
        "within each block, hierarchical bootstrap over blocks then items (95%); exploratory, "
        "not corrected. acc_far higher is better; the losses lower.",
        "",
        "| difference | isolates | " + " | ".join(keys) + " |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for c in summary["comparisons"]:
        lines.append(
            f"| {c['arm']} − {c['against']} | {c['isolates']} | "
            + " | ".join(format_difference(c[k]) for k in keys)
            + " |"
        )
    tasks = list(next(iter(summary["arms"].values()))["tasks"])
    lines += [
        "",
        "Each arm (mean over the blocks): accuracy at 1k-4k per task, and the endpoints.",
        "",
        "| arm | " + " | ".join(tasks + keys) + " |",
        "|---|" + "---:|" * (len(tasks) + len(keys)),
    ]
    for arm, a in summary["arms"].items():
        values = [a["tasks"][t] for t in tasks] + [a["endpoints"][k] for k in keys]
        lines.append(f"| {arm} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    lines += ["", "| block | selected: top / control (documents, tokens) | device minutes |"]
    lines += ["|---|---|---:|"]
    for p in summary["progress"]:
        chosen = summary["selection"].get(p["block"]) or {}
        shown = " / ".join(
            f"{chosen[arm]['documents']}, {chosen[arm]['tokens']:,}"
            for arm in ("top", "control")
            if arm in chosen
        )
        minutes = p["device_minutes"].get(f"block-{p['block']}", 0.0)
        lines.append(f"| {p['block']} | {shown or '–'} | {minutes:.1f} |")
    lines.append(END)
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


def _mean(values) -> float:
    return float(np.mean(list(values)))
