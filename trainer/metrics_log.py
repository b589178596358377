"""Training metrics as JSON lines: one object per logged step, in `RUN_DIR/metrics.jsonl`.

Each line is flushed as it is written, so `tokenweight plot` (or `tail -f`) sees progress
during the run and a crash loses at most the line being written. A resumed run appends to
the same file; readers take the last value logged for a step.

Calling it on rank 0 only is the caller's business. Keys are free-form; these are the ones
`tokenweight plot` knows how to group (others get a figure of their own):
"""

import json
import math
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"

STEP = "step"  # global optimizer step: the x axis of every plot
# loss
LOSS = "loss"  # weighted loss that was optimized
LOSS_UNWEIGHTED = "loss_unweighted"  # plain mean CE over the same targets
# token weights of the step's batch
WEIGHT_MEAN, WEIGHT_STD, WEIGHT_MAX = "weight_mean", "weight_std", "weight_max"
WEIGHT_NONZERO = "weight_nonzero"  # fraction of targets with a weight > 0
# throughput
TOKENS_PER_S = "tokens_per_s"
SCORER_WAIT_S = "scorer_wait_s"  # time the step waited for scores
PEAK_MEM_GIB = "peak_mem_gib"  # CUDA only: the most memory this rank's tensors held so far
LR = "lr"


class MetricsFormatError(ValueError):
    """A metrics file that is not JSON lines; the message names the line."""


class MetricsLog:
    """Appends one JSON object per `log` call to `path` (created with its parents)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, record: dict | None = None, **fields) -> None:
        """Write `record` merged with `fields`; a `time` (unix seconds) is added if absent.

        Values may be numpy or torch scalars; NaN/inf become null, keeping the line valid JSON.
        """
        line = _clean({"time": time.time(), **(record or {}), **fields})
        self._file.write(json.dumps(line, allow_nan=False, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clean(value):
    """JSON form of a metric: numpy/torch scalars and arrays to Python, NaN/inf to None."""
    if hasattr(value, "tolist"):  # numpy and torch, scalars and arrays alike
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics file, in order.

    A malformed last line (the writer was killed mid-line) is skipped; one in the middle is
    an error naming the line.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if n == len(lines):
                break
            raise MetricsFormatError(
                f"{path} line {n} is not valid JSON ({exc}); fix or delete that line"
            ) from None
    return records
