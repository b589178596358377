"""`tokenweight serve` as a real process on loopback, for the tests that need one."""

import re
import subprocess
import sys
import threading
import time

import grpc
import httpx
import pytest

READY = re.compile(r"ready: grpc=127\.0\.0\.1:(\d+) http=127\.0\.0\.1:(\d+)")


class ServeProcess:
    def __init__(self, *args: str, timeout: float = 60):
        cmd = [sys.executable, "-m", "tokenweight.cli", "serve", "--host", "127.0.0.1",
               "--grpc-port", "0", "--http-port", "0", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            pytest.fail("server never logged ready:\n" + "".join(self.lines))
        self.grpc_port, self.http_port = map(int, READY.search("".join(self.lines)).groups())

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if READY.search(line):
                self._ready.set()

    def channel(self):
        return grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", options=[("grpc.enable_http_proxy", 0)])

    def wait_until_scoring(self, in_flight, timeout: float = 20):
        """Until the engine runs its first batch, while `in_flight` is still unanswered."""
        metrics = f"http://127.0.0.1:{self.http_port}/metrics"
        deadline = time.monotonic() + timeout
        while (
            'tokenweight_engine_batches_total{scorer="main"} 1.0'
            not in httpx.get(metrics, trust_env=False).text
        ):
            assert time.monotonic() < deadline and not in_flight.done()
            time.sleep(0.02)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
