"""The quality pipeline: corpus -> tokenizer -> shards -> pretrain at short context -> extend
every arm 8x longer -> eval -> report -> bundle, with the project's own commands.

The second replication (profiles `block`, `block-smoke`; see block_pipeline.py):

    python -m bench.quality.pipeline pilot --profile block-smoke --work /tmp/tw-bs      # CPU
    python -m bench.quality.pipeline block --block 1 --profile block-smoke --work /tmp/tw-bs
    python -m bench.quality.pipeline pilot-a --profile block --export "$OUT"  # docs/RESULTS.md
    python -m bench.quality.pipeline estimate --profile block   # from the pilot's measured rates

The first, smaller replication (profiles `h200`, `smoke`):

    python -m bench.quality.pipeline all --profile smoke --work /tmp/tw-smoke     # CPU, minutes
    python -m bench.quality.pipeline part1 --profile h200 --export "$OUT"         # see docs/RESULTS.md
    python -m bench.quality.pipeline unpack --source FILES_AT                     # here, between calls
    python -m bench.quality.pipeline estimate --profile h200 --gpus 1             # expected times

Stages skip what is already done in --work, so the same command continues a run that a time
limit cut off. `all` runs every stage in order, `part1` and `part2` split them over two
device calls (see handoff.py); stage names may also be given one by one.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from . import block_estimate, block_pipeline, handoff
from . import estimate as estimate_module
from .block_profiles import BLOCK_PROFILES
from .jobs import PipelineError, Runner, record_environment
from .profiles import ARMS, PROFILES
from .stages import STAGES, Context

REPO = Path(__file__).resolve().parents[2]

ORDER = list(STAGES)
REPORTING = {"report", "bundle"}  # stages that only read what the others computed
GROUPS = {
    "all": ORDER,
    # Call 1: everything up to the pretrained model and the judge, which travel to call 2.
    "part1": ["corpus", "tokenizer", "prepare", "init", "pretrain", "judge"],
    # Call 2: the corpus rebuilt (and checked) from this machine's files, then the arms.
    "part2": ["corpus", "prepare", "scorer", "extend", "eval", "report", "bundle"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "stages",
        nargs="+",
        choices=sorted(
            {*GROUPS, "estimate", "unpack", *ORDER, *block_pipeline.GROUPS, "report"}
            | set(block_pipeline.STAGE_NAMES)
        ),
        metavar="STAGE",
        help=f"{', '.join(GROUPS)}, estimate, unpack, or some of: {', '.join(ORDER)}; for the "
        f"block profiles: {', '.join(block_pipeline.GROUPS)}, report, or stages by name",
    )
    parser.add_argument("--profile", choices=sorted({*PROFILES, *BLOCK_PROFILES}), default="h200")
    parser.add_argument("--block", type=int, help="block profiles: the block's number and seed")
    parser.add_argument(
        "--selection-arms",
        action="store_true",
        help="block profiles: add the data-selection arms (top 30%% of the long pool by "
        "`tokenweight rank` vs a matched random 30%%, each uniform and dense)",
    )
    parser.add_argument("--work", help="working directory (default runs/quality/PROFILE)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="extension seeds (default: the profile's)"
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=[a.name for a in ARMS],
        help="arms to extend and evaluate (default all)",
    )
    parser.add_argument(
        "--devices", help="comma-separated CUDA device ids (default: all visible; none: CPU)"
    )
    parser.add_argument(
        "--results", help="quality JSON (default bench/results/quality_h200.json; smoke: in --work)"
    )
    parser.add_argument(
        "--doc", help="RESULTS.md to fill (default docs/RESULTS.md; smoke: a copy in --work)"
    )
    parser.add_argument("--plots", help="PNG directory (default docs/results; smoke: in --work)")
    parser.add_argument("--bundle", help="bundled-model directory to write (default WORK/bundle)")
    parser.add_argument(
        "--export",
        help="write the run's results (and --export-models) here at the end, as export.tar.NN parts",
    )
    parser.add_argument(
        "--export-models",
        nargs="*",
        default=[],
        choices=sorted(handoff.EXPORTABLE_MODELS),
        help="trained models to include in bf16 (part1: pretrain judge)",
    )
    parser.add_argument(
        "--source", help="unpack: the folder holding export.tar.NN (a call's files_at)"
    )
    parser.add_argument("--gpus", type=int, default=8, help="estimate: GPUs to plan for")
    parser.add_argument(
        "--tflops",
        type=float,
        help="estimate: sustained bf16 TFLOP/s per GPU assumed (default: "
        f"{estimate_module.ASSUMED_TFLOPS:.0f}; block profiles: the measured --rate)",
    )
    parser.add_argument(
        "--rate",
        nargs="+",
        default=[],
        metavar="STAGE=TOKENS_PER_S",
        help="estimate, block profiles: measured training tokens/s (pretrain=, extend=) in place "
        "of the pilot's",
    )
    parser.add_argument(
        "--record",
        help="estimate, block profiles: a block's record (quality_blockN.json) whose measured "
        "training TFLOP/s and eval and diagnostics seconds set the rates",
    )
    args = parser.parse_args(argv)
    if args.profile in BLOCK_PROFILES:
        if args.stages == ["estimate"]:
            profile = BLOCK_PROFILES[args.profile]
            record = json.loads(Path(args.record).read_text()) if args.record else None
            try:
                rates = block_estimate.parse_rates(
                    args.rate, record and block_estimate.record_rates(profile, record)
                )
            except ValueError as exc:
                parser.error(str(exc))
            stage_s = (
                block_estimate.record_stage_seconds(profile, record)
                if record
                else dict(block_estimate.MEASURED_STAGE_S)
            )
            speeds = block_estimate.Speeds(rates, args.tflops, stage_s)
            print(block_estimate.table(profile, speeds))
            return 0
        if args.stages == ["unpack"]:
            if not args.source:
                parser.error("unpack needs --source FOLDER")
            work = Path(args.work or REPO / "runs" / "quality" / args.profile).resolve()
            handoff.unpack(Path(args.source), work, REPO)
            return 0
        return block_pipeline.run(args, REPO)
    profile = PROFILES[args.profile]

    if args.stages == ["estimate"]:
        print(
            estimate_module.table(
                profile,
                args.gpus,
                args.tflops or estimate_module.ASSUMED_TFLOPS,
                len(args.seeds or profile.seeds),
            )
        )
        return 0
    if args.stages == ["unpack"]:
        if not args.source:
            parser.error("unpack needs --source FOLDER")
        handoff.unpack(Path(args.source), _work(args, profile), REPO)
        return 0
    ctx = _context(args, profile)
    wanted = {s for name in args.stages for s in GROUPS.get(name, [name])}
    stages = [s for s in ORDER if s in wanted]
    # The machine that computes, not one that only re-reports, is the run's record.
    computing = bool(set(stages) - REPORTING)
    if computing:
        record_environment(ctx.path("environment.json"), ctx.runner.devices, REPO)
    try:
        for name in stages:
            started = time.time()
            print(f"== {name}", flush=True)
            STAGES[name](ctx)
            if not computing:
                continue
            with ctx.path("stages.jsonl").open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "stage": name,
                            "wall_s": round(time.time() - started, 1),
                            "started": started,
                            "devices": ctx.runner.devices,
                        }
                    )
                    + "\n"
                )
            if (
                args.export
            ):  # after every stage: a call killed at its time limit still returns its progress
                handoff.first_run_export(ctx, REPO, Path(args.export), args.export_models)
    except PipelineError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        if args.export:
            handoff.first_run_export(ctx, REPO, Path(args.export), args.export_models)
        return 1
    print("pipeline: done", flush=True)
    return 0


def _context(args, profile) -> Context:
    import torch

    smoke = profile.name == "smoke"
    work = _work(args, profile)
    work.mkdir(parents=True, exist_ok=True)
    if args.devices is not None:
        devices = [d for d in args.devices.split(",") if d]
    else:
        devices = [str(i) for i in range(torch.cuda.device_count())]
    device = "cuda" if devices else "cpu"
    doc = (
        Path(args.doc)
        if args.doc
        else (work / "RESULTS.md" if smoke else REPO / "docs" / "RESULTS.md")
    )
    if smoke and not args.doc and not doc.exists():
        shutil.copy(REPO / "docs" / "RESULTS.md", doc)  # the smoke run never rewrites the real one
    return Context(
        profile=profile,
        work=work,
        runner=Runner(work, devices or ["cpu"], profile.jobs_per_device),
        device=device,
        seeds=tuple(args.seeds or profile.seeds),
        arms=tuple(a for a in ARMS if not args.arms or a.name in args.arms),
        results=Path(args.results)
        if args.results
        else (
            work / "quality_smoke.json"
            if smoke
            else REPO / "bench" / "results" / f"quality_{profile.name}.json"
        ),
        doc=doc,
        plots=Path(args.plots)
        if args.plots
        else (work / "plots" if smoke else REPO / "docs" / "results"),
        bundle=Path(args.bundle) if args.bundle else work / "bundle",
    )


def _work(args, profile) -> Path:
    return Path(args.work or REPO / "runs" / "quality" / profile.name).resolve()


if __name__ == "__main__":
    sys.exit(main())
