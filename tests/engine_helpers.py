"""Helpers for tests that hold a real engine busy: gated, recording or slow engines."""

import contextlib
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


@contextlib.contextmanager
def slow_engine(scorer, seconds_per_call: float):
    """A real engine over `scorer`'s model (window 8) that makes one forward call per chunk,
    each taking at least `seconds_per_call`: a stride-1 request of n tokens is n-8 slow
    calls. Yields the engine and the list of call times."""
    from tokenweight.service.engine import ScoringEngine

    model = scorer.engine.long_model
    engine = ScoringEngine(model, window=8, token_budget=8, max_length=512)
    calls: list[float] = []

    def slow_forward(*_):
        calls.append(time.monotonic())
        time.sleep(seconds_per_call)

    hook = model.base_model.register_forward_hook(slow_forward)
    try:
        yield engine, calls
    finally:
        hook.remove()
