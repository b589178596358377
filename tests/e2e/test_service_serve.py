"""`tokenweight serve` as a real process: ready line, SIGTERM drain, exit codes."""

import re
import signal
import subprocess
import sys
import time
from datetime import datetime

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenweight import wire
from tokenweight.v1 import scorer_pb2_grpc

from serve_helpers import ServeProcess


def test_no_model_serves_the_bundled_one():
    """`tokenweight serve` with no --model: the bundled code model with its own window, and
    its scores over gRPC equal the engine's on the same model."""
    from tokenweight.bundled import default_model
    from tokenweight.service.engine import ScoringEngine
    from tokenweight.v1 import scorer_pb2

    model, info = default_model()
    server = ServeProcess("--device", "cpu", "--dtype", "float32", "--max-wait-ms", "0")
    try:
        with server.channel() as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            (listed,) = stub.ListScorers(scorer_pb2.ListScorersRequest(), timeout=10).scorers
            assert (listed.default_window, listed.default_stride) == (info["window"], info["stride"])
            assert listed.max_sequence_length == info["seq_len"]
            tokens = np.random.default_rng(0).integers(3, listed.vocab_size, 700)
            (got,) = wire.parse_response(stub.Score(wire.build_request([tokens]), timeout=60)).results
        engine = ScoringEngine.from_pretrained(model, device="cpu", dtype="float32", window=info["window"])
        (want,) = engine.score([tokens])
        np.testing.assert_allclose(got.score, want.score, atol=1e-4)
        assert np.abs(got.score[info["window"] :]).max() > 0  # beyond the window the contrast is real
    finally:
        server.kill()


def serve_tiny(tmp_path, model_dir, *args: str) -> ServeProcess:
    """`serve` of the tiny model as scorer "main" (window 16, CPU), batches run at once."""
    config = tmp_path / "serve.toml"
    config.write_text(f'[[scorers]]\nname = "main"\nmodel = "{model_dir}"\nwindow = 16\ndevice = "cpu"\n')
    return ServeProcess("--config", str(config), "--max-wait-ms", "0", *args)


def test_sigterm_drains_in_flight_request_then_exits_0(tmp_path, tiny_model_dir):
    server = serve_tiny(tmp_path, tiny_model_dir, "--grace", "30")
    try:
        with server.channel() as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            # Genuinely heavy on CPU: stride 1 makes one short-context pass per target (~2 s).
            rng = np.random.default_rng(0)
            heavy = [rng.integers(3, 300, 512) for _ in range(16)]
            in_flight = stub.Score.future(wire.build_request(heavy, window=16, stride=1), timeout=60)
            server.wait_until_scoring(in_flight)
            server.proc.send_signal(signal.SIGTERM)

            deadline = time.monotonic() + 10
            while True:  # the signal lands within milliseconds; from then on, refusals
                try:
                    stub.Score(wire.build_request([[1, 2, 3]]), timeout=5)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    break
                assert time.monotonic() < deadline
            assert not in_flight.done(), "the heavy request should still be in flight"
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING

            parsed = wire.parse_response(in_flight.result(timeout=60))
            assert [r.score.size for r in parsed.results] == [511] * 16
        assert server.proc.wait(30) == 0
        log = "".join(server.lines)
        assert "draining" in log and "stopped" in log and "did not finish" not in log
    finally:
        server.kill()


def test_unloadable_model_exits_1_with_the_reason(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tokenweight.cli", "serve", "--model", str(tmp_path), "--host", "127.0.0.1",
         "--grpc-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "not a Hugging Face checkpoint directory" in result.stderr


def test_sigterm_keeps_to_the_grace_in_all(tmp_path, tiny_model_dir):
    """About 40 s of engine work in flight and --grace 2: the server stops within the grace,
    the cut-off request gets UNAVAILABLE, and the process does not wait for the engine to
    finish the batch before it exits."""
    server = serve_tiny(tmp_path, tiny_model_dir, "--grace", "2")
    try:
        with server.channel() as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            rng = np.random.default_rng(1)
            heavy = [rng.integers(3, 300, 512) for _ in range(320)]
            in_flight = stub.Score.future(wire.build_request(heavy, window=16, stride=1), timeout=120)
            server.wait_until_scoring(in_flight)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as info:
                in_flight.result(timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in info.value.details()
        assert server.proc.wait(60) == 0
        exited = time.monotonic() - signalled
        log = "".join(server.lines)
        stamps = {
            event: datetime.strptime(re.search(rf"^(\S+ \S+) .*{event}", log, re.M)[1], "%Y-%m-%d %H:%M:%S,%f")
            for event in ("draining", "stopped")
        }
        stopping = (stamps["stopped"] - stamps["draining"]).total_seconds()
        assert stopping < 2 + 1, f"shutdown took {stopping:.1f}s with --grace 2"
        assert "did not finish within the grace" in log
        # Interpreter teardown on a busy machine takes seconds; the rest of the batch ~40.
        assert exited < 15, f"exited {exited:.1f}s after SIGTERM"
    finally:
        server.kill()
