"""Running the pipeline's commands: each one logged to a file, timed, and recorded.

`Runner.run` runs one command with every device visible (corpus, prepare, pretraining with
one rank per GPU); `Runner.run_parallel` spreads independent commands over device slots
(`CUDA_VISIBLE_DEVICES` per command). Every finished command is appended to
`WORK/commands.jsonl` with its wall time: the report's record of what ran and for how long.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..common import child_env, serve

# -P: the repo root (the working directory) must not shadow the installed or shimmed package.
TOKENWEIGHT = [sys.executable, "-P", "-m", "tokenweight.cli"]
TORCHRUN = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone"]


def flags(**values) -> list[str]:
    """`--name value` for each keyword (underscores become dashes), in the order given."""
    return [
        x for name, value in values.items() for x in (f"--{name.replace('_', '-')}", str(value))
    ]


class PipelineError(RuntimeError):
    """A pipeline command failed; the message carries the end of its log."""


@dataclass
class Job:
    name: str
    argv: list[str]
    stage: str


class Runner:
    def __init__(self, work: Path, devices: list[str], jobs_per_device: int):
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.devices = devices  # CUDA device ids, or ["cpu"]
        self.slots = [d for d in devices for _ in range(jobs_per_device)]

    def run(self, job: Job) -> None:
        proc, log, started = self._start(job, None)
        self._finish(job, proc, log, started, None)

    def run_parallel(self, jobs: list[Job], keep_going: bool = False) -> dict[str, PipelineError]:
        """Run `jobs` at most one per slot at a time. The first failure stops new starts and is
        raised; with `keep_going` every job runs and the failures come back by job name."""
        pending, running, failures = list(jobs), {}, {}
        free = list(self.slots)
        while pending or running:
            while pending and free and (keep_going or not failures):
                job, slot = pending.pop(0), free.pop(0)
                running[job.name] = (job, slot, *self._start(job, slot))
            time.sleep(0.5)
            for name, (job, slot, proc, log, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                free.append(slot)
                try:
                    self._finish(job, proc, log, started, slot)
                except PipelineError as exc:
                    failures[name] = exc
            if failures and not running and not keep_going:
                raise next(iter(failures.values()))
        return failures

    def _start(self, job: Job, slot: str | None):
        env = child_env(PYTHONUNBUFFERED="1")
        if slot == "cpu":
            # CPU jobs side by side share the cores instead of each taking all of them.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self.slots)))
        elif slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        log = (self.logs / f"{job.name}.log").open("w")
        print(
            f"[{time.strftime('%H:%M:%S')}] start {job.name}" + (f" on {slot}" if slot else ""),
            flush=True,
        )
        proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        return proc, log, time.time()

    def _finish(
        self, job: Job, proc, log, started: float, slot: str | None, check: bool = True
    ) -> None:
        rc = proc.wait()
        log.close()
        wall = time.time() - started
        record = {
            "name": job.name,
            "stage": job.stage,
            "argv": job.argv,
            "slot": slot,
            "rc": rc,
            "wall_s": round(wall, 1),
            "started": started,
        }
        with (self.work / "commands.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if check and rc != 0:
            raise PipelineError(
                f"{job.name} failed with exit code {rc}; end of {log.name}:\n{_tail(Path(log.name))}"
            )
        print(f"[{time.strftime('%H:%M:%S')}] done  {job.name} in {wall:.0f} s", flush=True)


@contextlib.contextmanager
def scorer_server(model: Path, window: int, device: str):
    """`tokenweight serve` of `model` for the duration of the block; yields its grpc:// URL."""
    proc, url = serve(model, window, device=device, env=child_env())
    print(f"[{time.strftime('%H:%M:%S')}] scorer {model} ready at {url}", flush=True)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


def record_environment(path: Path, devices: list[str], repo: Path) -> None:
    """What ran the pipeline: versions, devices, platform, commit and command line."""
    import platform

    import torch
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "devices": [torch.cuda.get_device_name(int(d)) for d in devices if d != "cpu"] or ["cpu"],
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "command": " ".join(sys.argv),
    }
    path.write_text(json.dumps(env, indent=2) + "\n")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
