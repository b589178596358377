"""The trainer with a scorer it cannot use: a URL it cannot talk to is refused before any
model loads; an unreachable scorer gives one warning per rank and one clear final error."""

import subprocess

import pytest

from train_helpers import _env, free_port, make_data, save_tiny_model, torchrun_args


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unreachable")
    return save_tiny_model(root / "model"), make_data(root / "data")


def run(model_and_data, out, *extra) -> tuple[int, str]:
    model, data = model_and_data
    args = torchrun_args(model, data, out, "--max-steps", "2", "--weighting", "dense", *extra)
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=240)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://127.0.0.1:8000", "the trainer talks gRPC to the scorer; use grpc://HOST:PORT"),
        ("127.0.0.1:50051", "needs a scheme"),
        ("grpc://127.0.0.1:99999", "has an invalid port"),
    ],
)
def test_scorer_url_is_checked_before_the_model_loads(model_and_data, tmp_path, url, message):
    code, log = run(model_and_data, tmp_path / "out", "--scorer-url", url)
    assert code != 0 and message in log
    assert "Loading weights" not in log and "training " not in log


def test_unreachable_scorer_warns_once_per_rank_then_stops_with_one_error(model_and_data, tmp_path):
    url = f"grpc://127.0.0.1:{free_port()}"
    code, log = run(
        model_and_data, tmp_path / "out", "--scorer-url", url, "--scorer-retry-for", "4"
    )
    assert code != 0
    warnings = [
        line for line in log.splitlines() if "WARNING" in line and "scorer unreachable" in line
    ]
    for rank in (0, 1):
        assert sum(line.startswith(f"[rank {rank}]") for line in warnings) <= 1
    assert warnings and all(url in line for line in warnings)
    errors = [line for line in log.splitlines() if "ERROR tokenweight.trainer" in line]
    assert errors and all("--resume auto" in line for line in errors)
    # torchrun's own report of the failed rank is the only traceback
    assert log.count("Traceback (most recent call last)") == 1
    assert 'trainer/train.py"' not in log and 'trainer/scores.py"' not in log
