"""`tokenweight score` as a new user meets it: no input on a terminal, a window that covers
the whole line, a server that is still starting."""

import json
import os
import pty
import socket
import subprocess
import sys
import time

import numpy as np

from serve_helpers import ServeProcess

CLI = [sys.executable, "-m", "tokenweight.cli", "score"]


def test_no_input_on_a_terminal_says_it_reads_stdin():
    parent, child = pty.openpty()
    try:
        done = subprocess.run(CLI, stdin=child, capture_output=True, text=True, timeout=30)
    finally:
        os.close(parent)
        os.close(child)
    assert done.returncode == 2
    assert "reads JSON lines from stdin" in done.stderr and "--input" in done.stderr


def test_window_not_shorter_than_a_line_warns(tiny_model_dir):
    lines = [list(range(3, 8)), list(range(3, 23)), list(range(3, 9))]  # 5, 20 and 6 tokens
    args = ["--model", str(tiny_model_dir), "--window", "6", "--device", "cpu"]
    stdin = "".join(json.dumps({"token_ids": ids}) + "\n" for ids in lines)
    done = subprocess.run(CLI + args, input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scores = [json.loads(line)["score"] for line in done.stdout.splitlines()]
    assert not any(scores[0]) and not any(scores[2]) and np.abs(scores[1]).max() > 0
    (warning,) = [line for line in done.stderr.splitlines() if "warning" in line]
    assert "window 6 is not shorter than line 1 (5 tokens)" in warning
    assert "1 more" in warning


def test_score_waits_for_a_server_that_is_still_starting(tmp_path, tiny_model_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"token_ids": list(range(3, 40))}) + "\n")
    score = subprocess.Popen(
        CLI + ["--url", f"grpc://127.0.0.1:{port}", "--input", str(lines)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # the client's default five attempts would all have failed by now
    config = tmp_path / "serve.toml"
    config.write_text(f'[[scorers]]\nname = "main"\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n')
    server = ServeProcess("--config", str(config), "--grpc-port", str(port))
    try:
        out, err = score.communicate(timeout=60)
    finally:
        server.kill()
    assert score.returncode == 0, err
    assert len(json.loads(out)["score"]) == 36
    assert err.count("not answering yet") == 1
