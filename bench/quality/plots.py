"""The report's figures (PNG): retrieval by distance, perplexity by position, a summary of
the headline metrics, and the extension runs' training curves. Error bars are the 95%
bootstrap intervals the table shows.
"""

from pathlib import Path

import numpy as np

from tokenweight.trainer.evals.stats import bucket_labels
from tokenweight.trainer.metrics_log import LOSS_UNWEIGHTED, METRICS_FILE, STEP, read_metrics

SUMMARY = ("long_range_ppl", "short_ppl", "acc_far")


def draw(out: Path, sample: dict, arms: dict[str, dict], metrics: list, work: Path) -> list[Path]:
    """`sample`: one eval JSON (the layout); `arms`: name -> metric key -> summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = [
        _retrieval(plt, out, arms, sample),
        _positions(plt, out, arms, sample),
        _summary(plt, out, arms, {m.key: m for m in metrics}),
    ]
    curves = _training_curves(plt, out, work)
    return written + ([curves] if curves else [])


def _errorbar(ax, labels: list[str], summaries: list[dict], label: str) -> None:
    """One line over the buckets; positions, not category names, so empty buckets keep their place."""
    x = np.arange(len(labels))
    values = np.asarray([s["value"] for s in summaries], dtype=float)
    ci = np.asarray([s["ci"] for s in summaries], dtype=float).reshape(-1, 2)
    ax.errorbar(
        x, values, yerr=[values - ci[:, 0], ci[:, 1] - values], label=label, marker="o", capsize=3
    )
    ax.set_xticks(x, labels)


def _retrieval(plt, out: Path, arms, sample) -> Path:
    tasks = sorted(sample["retrieval"]["tasks"])
    labels = bucket_labels(sample["retrieval"]["edges"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, summary in arms.items():
            _errorbar(ax, labels, [summary[f"acc_{task}_{label}"] for label in labels], name)
        ax.axhline(
            sample["retrieval"]["tasks"][task]["chance"],
            color="grey",
            linestyle=":",
            label="chance",
        )
        ax.set_title(f"{task}: accuracy by distance (tokens)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, out / "retrieval_by_distance.png")


def _positions(plt, out: Path, arms, sample) -> Path:
    labels = bucket_labels(sample["perplexity"]["by_position"]["edges"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, summary in arms.items():
        _errorbar(ax, labels, [summary[f"ppl_pos_{label}"] for label in labels], name)
    ax.set_yscale("log")
    ax.set_title("held-out perplexity by position (tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, out / "ppl_by_position.png")


def _summary(plt, out: Path, arms, metrics) -> Path:
    fig, axes = plt.subplots(1, len(SUMMARY), figsize=(5 * len(SUMMARY), 3.8))
    names = list(arms)
    for ax, key in zip(axes, SUMMARY):
        s = [arms[n][key] for n in names]
        values = np.asarray([x["value"] for x in s], dtype=float)
        ci = np.asarray([x["ci"] for x in s], dtype=float)
        ax.bar(
            names,
            values,
            yerr=[values - ci[:, 0], ci[:, 1] - values],
            capsize=3,
            color="tab:blue",
            alpha=0.7,
        )
        if metrics[key].kind == "ppl":  # `base` is orders of magnitude above the extended arms
            ax.set_yscale("log")
        ax.set_title(metrics[key].label, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, out / "summary.png")


def _training_curves(plt, out: Path, work: Path) -> Path | None:
    runs = sorted(p for p in (work / "extend").glob(f"*/{METRICS_FILE}"))
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for path in runs:
        records = [r for r in read_metrics(path) if LOSS_UNWEIGHTED in r]
        ax.plot(
            [r[STEP] for r in records],
            [r[LOSS_UNWEIGHTED] for r in records],
            label=path.parent.name,
        )
    ax.set_title("context extension: unweighted training CE")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, out / "extension_loss.png")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
