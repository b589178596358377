"""Helpers for tests that hold a real engine busy: a recording, optionally gated, engine."""

import threading
import time


class RecordingEngine:
    """The real engine, recording the sequence lengths of every `run`; with `gated`, each run
    first waits for the test to open the gate (to hold the engine busy without sleeps)."""

    def __init__(self, engine, gated: bool = False):
        self._engine = engine
        self.gate, self.entered = threading.Event(), threading.Event()
        if not gated:
            self.gate.set()
        self.runs: list[list[int]] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run(self, jobs):
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        self.runs.append([job.tokens.numel() for job in jobs])
        return self._engine.run(jobs)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
