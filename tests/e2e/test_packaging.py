"""The distribution builds cleanly and ships its data: the bundled model and the page."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_builds_without_setuptools_warnings_and_ships_the_data(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    # setuptools' deprecations (a license table, data folders missing from `packages`)
    assert "Warning" not in log and "deprecated" not in log, log
    (wheel,) = tmp_path.glob("tokenweight-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tokenweight/models/default/model.safetensors" in names
    assert "tokenweight/models/default/tokenizer.json" in names
    assert "tokenweight/service/static/analysis.html" in names
    assert "tokenweight/v1/scorer_pb2.pyi" in names
