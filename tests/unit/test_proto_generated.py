"""The checked-in gRPC code is exactly what protoc makes from protos/ (never hand-edited)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = "tokenweight/v1/scorer.proto"
GENERATED = ("scorer_pb2.py", "scorer_pb2.pyi", "scorer_pb2_grpc.py")


def test_generated_code_matches_proto(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the code")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos")]
    cmd += [f"--{kind}_out={tmp_path}" for kind in ("python", "pyi", "grpc_python")]
    subprocess.run(cmd + [str(ROOT / "protos" / PROTO)], check=True)
    for name in GENERATED:
        fresh = (tmp_path / "tokenweight" / "v1" / name).read_text()
        checked_in = (ROOT / "tokenweight" / "v1" / name).read_text()
        assert fresh == checked_in, (
            f"tokenweight/v1/{name} is stale or was edited by hand. Regenerate with the "
            "grpcio-tools pinned in pyproject's dev extra: python -m grpc_tools.protoc -I protos "
            "--python_out=. --pyi_out=. --grpc_python_out=. " + f"protos/{PROTO}"
        )
