"""`tokenweight --help` says what the command is in whole sentences."""

import re
import subprocess
import sys


def test_help_description_is_whole_sentences():
    done = subprocess.run(
        [sys.executable, "-m", "tokenweight.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    description = " ".join(done.stdout.split("\n\n")[1].split())
    assert re.fullmatch(r"[A-Z][^.]*\.( [A-Z][^.]*\.)*", description), description
