"""Driving the second replication: the pilot's and a block's stages in order, each recorded,
the run exported after every stage (a call cut off by its time limit still returns its
progress), and the cross-block report.

Groups (each includes the stages before it, which skip what is already done):
    pilot-a   corpus, tokenizer, prepare, weak          -> the carried tokenizer, weak scorer, judge
    pilot-b   ... pilot-pretrain                         (a base pretrained like a block's)
    pilot-c   ... pilot-extend, calibrate                -> bench/quality/calibration.json
    block-a   corpus, prepare, init, pretrain            (needs --block N)
    block-b   ... scorers, select (with --selection-arms), extend
    block-c   ... eval, diagnose, record, report         -> bench/results/quality_block{N}.json
    report    the cross-block report from the records here

With --selection-arms a block is the selection experiment's (docs/SELECTION.md), not the
replication's: uniform, dense and the four selection arms; its report is selection_report's.
The replication's blocks end where its stop rule says; later blocks need --selection-arms.

Only pilot-a (or `pilot`, or the tokenizer and weak stages named) makes the carried tokenizer,
weak scorer and judge; every other group uses the carried ones, checks that this machine's
corpus is the one they saw, and stops if they are missing rather than retrain them.
"""

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import block_stages, handoff, selection_report
from .block_profiles import BLOCK_PROFILES
from .block_report import block_refusal, write_report
from .block_stages import BlockContext
from .jobs import PipelineError, Runner, record_environment

PILOT_ORDER = list(block_stages.PILOT)
BLOCK_ORDER = list(block_stages.BLOCK) + ["report"]
GROUPS = {
    "pilot-a": PILOT_ORDER[: PILOT_ORDER.index("weak") + 1],
    "pilot-b": PILOT_ORDER[: PILOT_ORDER.index("pilot-pretrain") + 1],
    "pilot-c": PILOT_ORDER,
    "pilot": PILOT_ORDER,
    "block-a": BLOCK_ORDER[: BLOCK_ORDER.index("pretrain") + 1],
    "block-b": BLOCK_ORDER[: BLOCK_ORDER.index("extend") + 1],
    "block-c": BLOCK_ORDER,
    "block": BLOCK_ORDER,
}
STAGE_NAMES = sorted(set(PILOT_ORDER) | set(BLOCK_ORDER))
MAKES_CARRIED = {"pilot-a", "pilot", "tokenizer", "weak"}  # what may train the carried models


def run(args, repo: Path) -> int:
    ctx, doc, plots = context(args, repo)
    (group,) = args.stages if len(args.stages) == 1 else (None,)
    if group == "report":
        report(ctx, doc, plots)
        return 0
    names = [n for s in args.stages for n in GROUPS.get(s, [s])]
    is_block = any(n in BLOCK_ORDER and n not in PILOT_ORDER for n in names)
    if is_block and (ctx.block is None or ctx.block < 1):
        raise SystemExit("block stages need --block N >= 1 (its number and seed; 0 is the pilot's)")
    refusal = is_block and block_refusal(ctx.results, ctx.block, ctx.profile.selection_arms)
    if refusal:
        raise SystemExit(f"pipeline: {refusal}")
    ctx.makes_carried = not is_block and bool(MAKES_CARRIED & set(args.stages))
    order = BLOCK_ORDER if is_block else PILOT_ORDER
    stages = [n for n in order if n in names]
    record_environment(ctx.path("environment.json"), ctx.runner.devices, repo)
    # The carried models go back only from the call that makes them (28 MB of the 64 MiB).
    repo_paths = [ctx.results, ctx.calibration, doc, plots]
    repo_paths += [ctx.carried] if ctx.makes_carried else []
    try:
        for name in stages:
            started = time.time()
            print(f"== {name}" + (f" (block {ctx.block})" if is_block else " (pilot)"), flush=True)
            if name == "report":
                report(ctx, doc, plots)
            else:
                (block_stages.BLOCK if is_block else block_stages.PILOT)[name](ctx)
            entry = {
                "stage": name,
                "block": ctx.block if is_block else None,
                "wall_s": round(time.time() - started, 1),
                "started": started,
                "devices": ctx.runner.devices,
            }
            with ctx.path("stages.jsonl").open("a") as f:
                f.write(json.dumps(entry) + "\n")
            if args.export:
                handoff.export(ctx.work, repo_paths, repo, Path(args.export), {})
    except PipelineError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        if args.export:
            handoff.export(ctx.work, repo_paths, repo, Path(args.export), {})
        return 1
    print("pipeline: done", flush=True)
    return 0


def report(ctx: BlockContext, doc: Path, plots: Path) -> None:
    """The cross-block report of the experiment this profile runs."""
    if ctx.profile.selection_arms:
        selection_report.write_report(ctx.results, doc)
    else:
        write_report(ctx.results, doc, plots)


def context(args, repo: Path) -> tuple[BlockContext, Path, Path]:
    import torch

    profile = BLOCK_PROFILES[args.profile]
    if getattr(args, "selection_arms", False):
        profile = replace(profile, selection_arms=True)
    work = Path(args.work or repo / "runs" / "quality" / profile.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    smoke = profile.name.endswith("smoke")
    if smoke:  # the smoke run keeps everything in --work, the checkout untouched
        profile = replace(profile, carried=work / "carried", calibration=work / "calibration.json")
    if args.devices is not None:
        devices = [d for d in args.devices.split(",") if d]
    else:
        devices = [str(i) for i in range(torch.cuda.device_count())]
    results = (
        Path(args.results)
        if args.results
        else (work / "results" if smoke else repo / "bench" / "results")
    )
    page = "SELECTION.md" if profile.selection_arms else "RESULTS.md"  # where its report goes
    doc = Path(args.doc) if args.doc else (work / page if smoke else repo / "docs" / page)
    if smoke and not doc.exists():
        shutil.copy(repo / "docs" / page, doc)
    plots = (
        Path(args.plots) if args.plots else (work / "plots" if smoke else repo / "docs" / "results")
    )
    ctx = BlockContext(
        profile=profile,
        work=work,
        block=args.block,
        runner=Runner(work, devices or ["cpu"], profile.jobs_per_device),
        device="cuda" if devices else "cpu",
        carried=profile.carried,
        calibration=profile.calibration,
        results=results,
    )
    return ctx, doc, plots
