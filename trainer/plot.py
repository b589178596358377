"""`tokenweight plot RUN_DIR`: draw `RUN_DIR/metrics.jsonl` as PNG files in RUN_DIR.

One figure per group of related metrics (loss, token weights, throughput), plus one for any
other numeric keys (learning rate, evals, ...), against the global step. When a resumed run
logged a step twice, the later value wins.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from tokenweight.flags import add_flags, flag, values_of

from . import metrics_log as m
from .metrics_log import MetricsFormatError

# figure name -> panels; each panel is (title, keys drawn on it)
GROUPS = {
    "loss": [("loss", [m.LOSS, m.LOSS_UNWEIGHTED])],
    "weights": [
        ("token weights", [m.WEIGHT_MEAN, m.WEIGHT_STD, m.WEIGHT_MAX]),
        ("fraction of nonzero weights", [m.WEIGHT_NONZERO]),
    ],
    "throughput": [("tokens / s", [m.TOKENS_PER_S]), ("scorer wait (s per step)", [m.SCORER_WAIT_S])],
}
NOT_PLOTTED = {m.STEP, "time"}
SMOOTH_ABOVE = 50  # points; per-step curves this long get a moving average over the raw line


@dataclass(frozen=True)
class PlotConfig:
    run_dir: str = flag(
        help=f"training run directory holding {m.METRICS_FILE}", flag="run_dir", metavar="RUN_DIR"
    )


def add_arguments(parser) -> None:
    add_flags(parser, PlotConfig)


def run(args) -> int:
    config = PlotConfig(**values_of(args, PlotConfig))
    try:
        paths = plot_run(config.run_dir)
    except (FileNotFoundError, NothingToPlot, MetricsFormatError) as exc:
        print(f"tokenweight plot: error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


class NothingToPlot(ValueError):
    """The metrics file has no plottable records yet."""


def collect_series(records: list[dict]) -> dict[str, tuple[list, list]]:
    """key -> (steps, values), sorted by step; the last value logged for a step wins."""
    by_key: dict[str, dict] = {}
    for record in records:
        step = record.get(m.STEP)
        if not isinstance(step, (int, float)):
            continue
        for key, value in record.items():
            if key in NOT_PLOTTED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            by_key.setdefault(key, {})[step] = value
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in by_key.items()}


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the figures; returns their paths. NothingToPlot if there is nothing yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / m.METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found; pass the --out directory of a training run")
    series = collect_series(m.read_metrics(metrics))
    if not series:
        raise NothingToPlot(
            f"{metrics} has no numeric metrics with a {m.STEP!r} yet; plot again once the run has logged"
        )
    figures = {
        name: [(t, [k for k in keys if k in series]) for t, keys in panels]
        for name, panels in GROUPS.items()
    }
    grouped = {k for panels in GROUPS.values() for _, keys in panels for k in keys}
    figures["other"] = [(key, [key]) for key in sorted(series) if key not in grouped]

    written = []
    for name, panels in figures.items():
        panels = [(title, keys) for title, keys in panels if keys]
        if not panels:
            continue
        cols = 1 if len(panels) < 3 else 2
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.6 * rows), squeeze=False)
        for ax, (title, keys) in zip(axes.flat, panels):
            for key in keys:
                # per-step training metrics are noisy; schedules and evals are drawn as logged
                _draw(ax, key, *series[key], smooth=key in grouped)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(keys) > 1 or keys[0] != title:
                ax.legend()
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(f"{run_dir.name}: {name}")
        fig.tight_layout()
        path = run_dir / f"plot_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _draw(ax, key: str, steps: list, values: list, smooth: bool) -> None:
    if not smooth or len(values) <= SMOOTH_ABOVE:
        ax.plot(steps, values, label=key, marker="." if len(values) < 20 else None)
        return
    window = max(2, len(values) // 25)
    spans = [values[max(0, i - window + 1) : i + 1] for i in range(len(values))]
    (line,) = ax.plot(steps, values, alpha=0.25)
    ax.plot(
        steps,
        [sum(v) / len(v) for v in spans],
        color=line.get_color(),
        label=f"{key} (mean of {window})",
    )
