"""The pilot's calibration: each task's difficulty knob swept on a uniform extension of a
base pretrained like a block's, and the setting that puts uniform's accuracy at distances
2k..long (1k-4k tokens for k = 512) inside the target range, nearest its middle, frozen in
calibration.json. The blocks read that file and never change it: tasks are set before any arm
is compared, on a model that is none of theirs. A setting whose eval fails is recorded as
failed, with the error, and the sweep goes on without it.
"""

import json
import time
from pathlib import Path

import numpy as np

from .jobs import Job, PipelineError

FORMAT = "tokenweight-calibration-1"


def run(ctx, model: Path) -> None:
    p = ctx.profile
    if ctx.calibration.is_file():
        return
    if not (model / "config.json").is_file():
        raise PipelineError(f"{model} not found: run pilot-pretrain and pilot-extend first")
    from .block_stages import eval_argv

    # Only the tasks are read: few held-out sequences for the perplexities that come along.
    SMALL = {"max_sequences": 8, "items_per_bucket": p.calibration_items_per_bucket}
    out = ctx.path("pilot", "calibrate")
    knobbed = {k.task for k in p.knobs}
    # One eval per setting of each knob; one more for the tasks without a knob.
    runs = {
        f"{k.task}-{i}": (k.task, setting) for k in p.knobs for i, setting in enumerate(k.settings)
    }
    plain = tuple(t for t in p.tasks if t not in knobbed)
    jobs = []
    for name, (task, setting) in runs.items():
        if not (out / f"{name}.json").is_file():
            argv = eval_argv(ctx, model, out / f"{name}.json", 0, (task,), **SMALL)
            jobs.append(Job(f"calibrate-{name}", argv + _flat(setting), "calibrate"))
    if plain and not (out / "plain.json").is_file():
        argv = eval_argv(ctx, model, out / "plain.json", 0, plain, **SMALL)
        jobs.append(Job("calibrate-plain", argv, "calibrate"))
    failures = ctx.runner.run_parallel(jobs, keep_going=True)

    lo, hi = 2 * p.short_len, p.long_len

    def measure(name: str, task: str, setting: dict) -> dict:
        if f"calibrate-{name}" in failures:
            return {"flags": setting, "failed": _last_line(failures[f"calibrate-{name}"])}
        return {"flags": setting, **far_accuracy(_load(out / f"{name}.json"), task, lo, hi)}

    tasks = {}
    for k in p.knobs:
        sweep = [measure(f"{k.task}-{i}", k.task, s) for i, s in enumerate(k.settings)]
        tasks[k.task] = {**pick(sweep, p.target_accuracy), "sweep": sweep}
    for task in plain:
        measured = measure("plain", task, {})
        tasks[task] = {**measured, "in_range": _inside(measured, p.target_accuracy)}
    calibration = {
        "format": FORMAT,
        "profile": p.name,
        "date": time.strftime("%Y-%m-%d"),
        "model": str(model.relative_to(ctx.work)),
        "target_accuracy": list(p.target_accuracy),
        "distance": [lo, hi],
        "tasks": tasks,
    }
    ctx.calibration.parent.mkdir(parents=True, exist_ok=True)
    ctx.calibration.write_text(json.dumps(calibration, indent=1) + "\n")
    for task, t in tasks.items():
        for failed in [s for s in t.get("sweep", [t]) if "failed" in s]:
            print(f"calibrate: {task} {failed['flags']} FAILED: {failed['failed']}")
        if "failed" not in t:
            print(
                f"calibrate: {task} {t['flags']} -> uniform {t['accuracy']:.2f} at {lo}-{hi} "
                f"({t['items']} items){'' if t['in_range'] else ' (OUTSIDE the target range)'}"
            )


def far_accuracy(e: dict, task: str, lo: int, hi: int) -> dict:
    """Mean credit of `task`'s items whose answer lies lo <= distance < hi tokens back."""
    credits = [
        r["credit"]
        for r in e["items"]["retrieval"]
        if r["task"] == task and lo <= r["distance"] < hi
    ]
    return {"accuracy": float(np.mean(credits)) if credits else float("nan"), "items": len(credits)}


def pick(sweep: list[dict], target: tuple[float, float]) -> dict:
    """The setting inside the target range nearest its middle; if none is inside, the one
    nearest the range (marked `in_range: false`, for a person to look at before block 1).
    Failed settings are passed over."""
    lo, hi = target
    middle = (lo + hi) / 2
    if all("failed" in s for s in sweep):
        failed = "; ".join(f"{s['flags']}: {s['failed']}" for s in sweep)
        raise PipelineError(f"every calibration setting failed: {failed}")
    measured = [s for s in sweep if "failed" not in s and not np.isnan(s["accuracy"])]
    if not measured:
        raise PipelineError("no calibration item fell in the distance range; raise the items")
    inside = [s for s in measured if lo <= s["accuracy"] <= hi]
    if inside:
        best = min(inside, key=lambda s: abs(s["accuracy"] - middle))
    else:
        best = min(measured, key=lambda s: min(abs(s["accuracy"] - lo), abs(s["accuracy"] - hi)))
    return {**best, "in_range": bool(inside)}


def eval_flags(ctx) -> list[str]:
    """The frozen settings as `tokenweight eval` flags; refuses to run without them."""
    if not ctx.calibration.is_file():
        raise PipelineError(f"no {ctx.calibration}: run the pilot (calibrate) before any block")
    calibration = json.loads(ctx.calibration.read_text())
    if calibration["profile"] != ctx.profile.name:
        raise PipelineError(
            f"{ctx.calibration} was made for profile {calibration['profile']!r}, "
            f"not {ctx.profile.name!r}"
        )
    return [x for t in calibration["tasks"].values() for x in _flat(t["flags"])]


def _inside(measured: dict, target: tuple[float, float]) -> bool:
    return "failed" not in measured and bool(target[0] <= measured["accuracy"] <= target[1])


def _last_line(exc: Exception) -> str:
    """The error a failed eval ended with (its log's last line)."""
    return str(exc).strip().splitlines()[-1]


def _flat(setting: dict) -> list[str]:
    return [x for flag, value in setting.items() for x in (flag, str(value))]


def _load(path: Path) -> dict:
    return json.loads(path.read_text())
