"""The client works without torch (the base `pip install tokenweight`)."""

import subprocess
import sys

import pytest

CODE = """
import sys

import pytest

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "fastapi"):
            raise ImportError(f"{name} is not installed (client-only install)")

sys.meta_path.insert(0, NoTorch())
import tokenweight.client as client
from tokenweight import wire
request = wire.build_request([[1, 2, 3]])
client.ScorerClient("grpc://127.0.0.1:1").close()
client.HttpScorerClient("http://127.0.0.1:1").close()
client.Prefetcher([], lambda batch: batch).close()
print("ok")
"""


def test_client_imports_without_torch():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# Every third-party module of the extras, absent as after `pip install tokenweight`.
WITHOUT_EXTRAS = """
import sys

EXTRAS = {"torch", "transformers", "safetensors", "tokenizers", "fastapi", "fastapi_offline",
          "uvicorn", "grpc_health", "grpc_reflection", "prometheus_client", "tqdm",
          "matplotlib", "scipy", "accelerate"}

class ClientOnly:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, ClientOnly())
from tokenweight.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "argv, extra",
    [
        (["score"], "service"),
        (["serve"], "service"),
        (["plot", "{tmp}"], "trainer"),
        (["prepare", "--tokenizer", "{tmp}", "--input", "{tmp}/in.txt", "--seq-len", "64",
          "--out", "{tmp}/data"], "trainer"),
        (["tokenizer", "--corpus", "{tmp}", "--out", "{tmp}/tok"], "trainer"),
        (["eval", "--model", "{tmp}", "--data", "{tmp}", "--seq-len", "64", "--out",
          "{tmp}/eval"], "trainer"),
        (["diagnose", "--scorer", "self", "--data", "{tmp}", "--seq-len", "64", "--out",
          "{tmp}/diag"], "trainer"),
    ],
)
def test_commands_needing_an_extra_name_it(tmp_path, argv, extra):
    (tmp_path / "in.txt").write_text("def f():\n    return 1\n")
    (tmp_path / "train.jsonl").write_text('{"text": "def f():\\n    return 1\\n"}\n')
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *argv],
        input='{"token_ids": [1, 2, 3]}\n', capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"tokenweight {argv[0]}: needs ")
    assert line.endswith(f"pip install 'tokenweight[{extra}]'")
