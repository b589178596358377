import argparse

import numpy as np
import pytest

from tokenweight.trainer import plot
from tokenweight.trainer.metrics_log import MetricsLog, read_metrics


def write_run(run_dir, steps=60):
    rng = np.random.default_rng(0)
    with MetricsLog(run_dir / "metrics.jsonl") as log:
        for step in range(steps):
            log.log(
                {
                    "step": step,
                    "loss": np.float32(3 - step / steps),
                    "loss_unweighted": 3.2 - step / steps,
                },
                weight_mean=1.0,
                weight_std=rng.random(),
                weight_max=np.float64(4.0),
                weight_nonzero=0.2,
                tokens_per_s=1000 + rng.random(),
                scorer_wait_s=0.01,
                lr=1e-4,
            )
        log.log(step=steps - 1, eval_ppl=12.5)


def test_metrics_log_round_trip(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.log(step=1, loss=np.float32(2.5), bad=float("nan"), hist=np.arange(3))
        # flushed per line: readable before close
        assert read_metrics(path)[0]["loss"] == 2.5
    with MetricsLog(path) as log:  # a resumed run appends
        log.log({"step": 2, "loss": 2.0})
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["bad"] is None and records[0]["hist"] == [0, 1, 2] and "time" in records[0]


def test_read_metrics_tolerates_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(path)


def test_later_values_win_for_a_repeated_step():
    series = plot.collect_series(
        [{"step": 0, "loss": 3}, {"step": 1, "loss": 2}, {"step": 0, "loss": 5}]
    )
    assert series["loss"] == ([0, 1], [5, 2])


def test_plot_writes_nonempty_pngs(tmp_path, capsys):
    write_run(tmp_path)
    parser = argparse.ArgumentParser()
    plot.add_arguments(parser)
    assert plot.run(parser.parse_args([str(tmp_path)])) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.rsplit("/", 1)[-1] for p in printed)
    assert names == ["plot_loss.png", "plot_other.png", "plot_throughput.png", "plot_weights.png"]
    for path in printed:
        data = open(path, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_without_metrics(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot.plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"time": 1}\n')
    with pytest.raises(plot.NothingToPlot, match="no numeric metrics"):
        plot.plot_run(tmp_path)
    assert plot.run(argparse.Namespace(run_dir=str(tmp_path))) == 1
    assert "no numeric metrics" in capsys.readouterr().err
