"""Every snippet of the README runs as written.

Fenced `sh` and `python` blocks run in a scratch directory that sees the repository's
`examples/` and `tokenweight/` (the bundled model), one after another, as a reader would paste
them. An HTML comment right above a block may say how:

- `<!-- readme-test: needs-server -->`: the block talks to the scorer a reader started above
  (`tokenweight serve`); the test starts one with the bundled model on free ports and points
  the block's `localhost:50051` / `localhost:8000` at it;
- `<!-- readme-test: skip REASON -->`: not run here, for the reason given (a GPU cluster, a
  whole machine's corpus); the reason is part of the README's text for the reader.

Ports written in a block (`50051`, `8000`) are replaced by free ones, so a block that starts
its own server in the background does not collide with anything on this machine; processes a
block leaves running are ended when it exits.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from serve_helpers import ServeProcess
from train_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<directive>[^>]*?) -->\n)?```(?P<lang>sh|python)\n(?P<code>.*?)```",
    re.S,
)


def _blocks():
    text = (ROOT / "README.md").read_text()
    for match in BLOCK.finditer(text):
        line = text[: match.start("code")].count("\n") + 1
        yield pytest.param(match["lang"], match["code"], match["directive"] or "", id=f"line{line}")


@pytest.fixture(scope="module")
def served():
    server = ServeProcess("--device", "cpu", "--dtype", "float32")
    yield server
    server.kill()


@pytest.mark.parametrize("lang, code, directive", list(_blocks()))
def test_readme_block_runs_as_written(lang, code, directive, tmp_path, request):
    if directive.startswith("skip"):
        reason = directive.removeprefix("skip").strip()
        assert reason, "a skipped README block must say why"
        pytest.skip(f"README says: {reason}")
    if directive == "needs-server":
        server = request.getfixturevalue("served")
        grpc_port, http_port = server.grpc_port, server.http_port
    else:
        assert not directive, f"unknown readme-test directive {directive!r}"
        grpc_port, http_port = free_port(), free_port()
    code = re.sub(r"\b50051\b", str(grpc_port), code)
    code = re.sub(r"\b8000\b", str(http_port), code)
    for name in ("examples", "tokenweight"):
        (tmp_path / name).symlink_to(ROOT / name)
    command = (
        ["bash", "-euo", "pipefail", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # Output to a file, not a pipe: a server the block starts in the background keeps its
    # end of a pipe open, and reading to the end would wait for that server.
    log = tmp_path / "block.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what the block left running
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, log.read_text()[-6000:]
