"""A second `tokenweight serve` on a port in use fails at once, naming the port, and says
nothing more (no second scorer silently sharing the gRPC port, no traceback)."""

import subprocess
import sys

import pytest

from serve_helpers import ServeProcess


@pytest.fixture(scope="module")
def running(tmp_path_factory, tiny_model_dir):
    config = tmp_path_factory.mktemp("serve") / "serve.toml"
    config.write_text(f'[[scorers]]\nname = "main"\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n')
    server = ServeProcess("--config", str(config))
    yield server, config
    server.kill()


def serve_again(config, *ports: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "tokenweight.cli",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        *ports,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port"])
def test_port_in_use_fails_naming_the_port(running, flag):
    server, config = running
    port = server.grpc_port if flag == "--grpc-port" else server.http_port
    second = serve_again(config, flag, str(port))
    assert second.returncode == 1, second.stderr
    assert f"127.0.0.1:{port}" in second.stderr and flag in second.stderr
    assert "Traceback" not in second.stderr and "Exception ignored" not in second.stderr
    assert "ready:" not in second.stderr
    assert server.proc.poll() is None  # the first server goes on
