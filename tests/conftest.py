"""Shared fixtures of tests/unit, e2e, gpu and docker: tiny random-weight checkpoints with a
real tokenizer, built once per session.

The tokenizer is a byte-level BPE trained on a few strings, so any text encodes; `<s>` is id 1
and is prepended to every encoding, like a Llama tokenizer. Both models share it (a long/short
pair must share the vocabulary).
"""

import os

import pytest

# The folders the tests are grouped in, each also a marker (pyproject's markers).
GROUPS = ("unit", "e2e", "gpu", "docker")

# Workers for `-n auto`. Many tests start several processes that each import torch (torchrun
# ranks, a scorer), so beyond a few workers they compete for memory and cores and the tests
# that bound latencies get slower, not the suite faster.
MAX_WORKERS = 4

TINY_VOCAB = 300
TINY_BOS = 1
TINY_MAX_POSITIONS = 512

_CORPUS = [
    "Token weighting makes long-context training pay attention to the tokens that need it.",
    "A frozen scorer predicts every token twice: with the whole document and a short window.",
    "The quick brown fox jumps over the lazy dog. <script>alert('x')</script> & friends",
]


def pytest_xdist_auto_num_workers(config):
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.parent.name in GROUPS:
            item.add_marker(item.path.parent.name)


def _tiny_tokenizer():
    from tokenweight.bpe import train_byte_level_bpe

    return train_byte_level_bpe(_CORPUS, TINY_VOCAB)


def _save_tiny_llama(path, seed: int, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_POSITIONS,
        bos_token_id=TINY_BOS,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    _tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama checkpoint (safetensors + tokenizer) in a session temp dir."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny") / "long", seed=0)


@pytest.fixture(scope="session")
def tiny_short_model_dir(tmp_path_factory):
    """A second tiny Llama with the same tokenizer, to serve as a separate short model."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny") / "short", seed=1, layers=1)


@pytest.fixture(scope="session")
def tiny_scorers(tiny_model_dir, tiny_short_model_dir):
    """Loaded scorers shared by the in-process servers: 'tiny' (one model, the default) and
    'pair' (the same long model plus a separate short model, loaded once)."""
    from tokenweight.service.config import ScorerConfig
    from tokenweight.service.scorers import load_scorers

    return load_scorers(
        [
            ScorerConfig("tiny", str(tiny_model_dir), window=8, device="cpu", dtype="float32"),
            ScorerConfig(
                "pair", str(tiny_model_dir), str(tiny_short_model_dir), window=16, stride=4,
                device="cpu", dtype="float32",
            ),
        ]
    )


class ThreadedServer:
    """A real ScorerServer (gRPC + uvicorn on 127.0.0.1, ephemeral ports) on its own event
    loop in a background thread, so tests can use ordinary blocking clients."""

    def __init__(self, scorers, load: bool = True, **server):
        import asyncio
        import threading

        from tokenweight.service.config import ScorerConfig, ServeConfig, ServerConfig
        from tokenweight.service.runner import ScorerServer

        configs = [s.config for s in scorers.values()] or [ScorerConfig("none", "/nonexistent")]
        settings = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "grace_s": 5.0} | server
        self.server = ScorerServer(ServeConfig(configs, configs[0].name, ServerConfig(**settings)))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.server.start())
        if load:
            self.call(self.server.load(scorers))
        self.scorers = scorers

    def call(self, coro, timeout: float = 30):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http.port}"

    def channel(self, **options):
        import grpc

        opts = [("grpc.enable_http_proxy", 0)] + list(options.items())
        return grpc.insecure_channel(self.grpc_target, options=opts)

    def http(self, **kwargs):
        import httpx

        return httpx.Client(base_url=self.http_url, trust_env=False, timeout=30, **kwargs)

    def metric(self, name: str, **labels) -> float:
        value = self.server.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0

    def close(self):
        self.call(self.server.shutdown(grace=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture(scope="module")
def server(tiny_scorers):
    """A server hosting the tiny scorers with default settings, shared by a test module."""
    with ThreadedServer(tiny_scorers) as srv:
        yield srv
