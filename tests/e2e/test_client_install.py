"""The client works without torch (the base `pip install tokenweight`)."""

import subprocess
import sys

CODE = """
import sys

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
