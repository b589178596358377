"""Shared pieces of the trainer tests (tests/e2e/test_train_*.py): tiny checkpoints, a tiny
prepared dataset, a live `tokenweight serve` process, and 2-process torchrun runs on CPU."""

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

VOCAB = 128
BOS = 1
SEQ_LEN = 64
ROWS = 64
WINDOW = 16  # short-context window of the scorer and of the `self` source


def save_tiny_model(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A random-weight causal LM: hidden 32, 2 layers, vocab 128, 256 positions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=BOS,
        eos_token_id=2,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:  # Qwen2 with tied input/output embeddings: one parameter used twice, under FSDP too
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    model.save_pretrained(path)
    return path


def make_data(path: Path, seed: int = 0) -> Path:
    """ROWS rows of SEQ_LEN random tokens, each starting with BOS (so chunks use the BOS rule)."""
    from tokenweight.trainer.prepare import ShardWriter

    rng = np.random.default_rng(seed)
    rows = rng.integers(3, VOCAB, size=(ROWS, SEQ_LEN), dtype=np.int32)
    rows[:, 0] = BOS
    writer = ShardWriter(Path(path), SEQ_LEN, 16)
    writer.add(rows.reshape(-1))
    writer.finish(
        {
            "vocab_size": VOCAB,
            "eos_token_id": 2,
            "bos_token_id": BOS,
            "tokenizer": "synthetic",
            "inputs": [],
        }
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scorer:
    """A real `tokenweight serve` subprocess on 127.0.0.1, restartable on its port; gRPC only
    unless `http` (then its /metrics tells which calls it answered)."""

    def __init__(
        self, model_dir: Path, window: int = WINDOW, port: int | None = None, http: bool = False
    ):
        self.model_dir, self.window = model_dir, window
        self.port = port or free_port()
        self.http_port = free_port() if http else None
        self.log: list[str] = []
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tokenweight.cli",
                "serve",
                "--model",
                str(self.model_dir),
                "--window",
                str(self.window),
                "--device",
                "cpu",
                "--grpc-port",
                str(self.port),
                *(["--http-port", str(self.http_port)] if self.http_port else ["--no-http"]),
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for line in self.proc.stderr:
            self.log.append(line)
            if "ready:" in line:
                break
        else:
            raise RuntimeError(
                "tokenweight serve exited before it was ready:\n" + "".join(self.log)
            )
        port = int(re.search(r"grpc=[^ ]+:(\d+)", line).group(1))
        assert port == self.port, line
        # Keep draining its log so a full pipe never blocks the server.
        threading.Thread(
            target=lambda p=self.proc: [self.log.append(x) for x in p.stderr], daemon=True
        ).start()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def score_calls(self) -> float:
        """Score calls this server answered OK so far, from its Prometheus /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "tokenweight_grpc_requests_total"
            and sample.labels == {"method": "Score", "code": "OK"}
        )


def _env() -> dict:
    # One thread per process: two ranks and a scorer share the CI machine's cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun_args(model: Path, data: Path, out: Path, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "tokenweight.trainer",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--seq-len",
        str(SEQ_LEN),
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--lr",
        "1e-3",
        "--dump-weights",
        str(out / "dump"),
        *map(str, extra),
    ]


def train(model: Path, data: Path, out: Path, *extra) -> str:
    """Run the 2-rank CPU trainer to completion; returns its log (stdout + stderr)."""
    proc = subprocess.run(
        torchrun_args(model, data, out, *extra),
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


class BackgroundTraining:
    """The 2-rank CPU trainer started in the background (to act on it mid-run), its log
    collected as it goes."""

    def __init__(self, model: Path, data: Path, out: Path, *extra):
        self.out = out
        self.proc = subprocess.Popen(
            torchrun_args(model, data, out, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        self.output: list[str] = []
        self._reader = threading.Thread(
            target=lambda: self.output.extend(self.proc.stdout), daemon=True
        )
        self._reader.start()

    @property
    def log(self) -> str:
        return "".join(self.output)

    def steps_done(self) -> int:
        from tokenweight.trainer.metrics_log import read_metrics

        metrics = self.out / "metrics.jsonl"
        return len(read_metrics(metrics)) if metrics.exists() else 0

    def wait_for_step(self, step: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.steps_done() < step:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log[-4000:]
            time.sleep(0.01)

    def finish(self, timeout: float = 240) -> str:
        """Wait for a clean exit; returns the whole log."""
        assert self.proc.wait(timeout) == 0, self.log[-6000:]
        self._reader.join(10)
        return self.log

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._reader.join(10)


def losses(out: Path) -> dict[int, float]:
    from tokenweight.trainer.metrics_log import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}


def dumps(out: Path) -> dict[tuple[int, int, int], dict]:
    """(step, micro, rank) -> the arrays the trainer dumped for that micro-batch."""
    found = {}
    for file in sorted((out / "dump").glob("step*_micro*_rank*.npz")):
        step, micro, rank = map(int, re.findall(r"\d+", file.stem))
        with np.load(file) as npz:
            found[step, micro, rank] = {k: npz[k] for k in npz.files}
    return found


def batch_tokens(data: Path, indices) -> np.ndarray:
    from tokenweight.trainer.data import TokenShards

    return TokenShards(data).take(indices).astype(np.int64)[:, :SEQ_LEN]


def scorer_arrays(
    url: str, tokens: np.ndarray, outputs=("logp_long", "logp_short")
) -> dict[str, np.ndarray]:
    """The scorer's own arrays for a batch, fetched independently of the trainer."""
    from tokenweight.client import ScorerClient

    with ScorerClient(url) as client:
        result = client.score(list(tokens), outputs=outputs)
    return {name: np.stack([getattr(r, name) for r in result.results]) for name in outputs}


def expected_weights(
    preset: str, loss_long: np.ndarray, loss_short: np.ndarray, **params
) -> np.ndarray:
    import torch

    from tokenweight.trainer.weighting import WeightingConfig, compute_weights

    config = WeightingConfig.from_preset(preset, **params)
    return compute_weights(torch.as_tensor(loss_long), torch.as_tensor(loss_short), config).numpy()


def check_weights(record: dict, preset: str, loss_long, loss_short, **params) -> None:
    """The weights a micro-batch trained with are `compute_weights` of the scorer's arrays.

    Exactly so for the arrays the trainer received (dumped beside the weights); the arrays
    fetched independently here agree with those to float32 rounding only, because the
    service's dynamic batching groups requests differently, which moves the last bits.
    """
    applied = expected_weights(preset, record["loss_long"], record["loss_short"], **params)
    np.testing.assert_array_equal(record["weights"], applied)
    np.testing.assert_allclose(record["loss_long"], loss_long, rtol=0, atol=1e-5)
    np.testing.assert_allclose(record["loss_short"], loss_short, rtol=0, atol=1e-5)
    want = expected_weights(preset, loss_long, loss_short, **params)
    np.testing.assert_allclose(record["weights"], want, rtol=0, atol=1e-5)


def check_rank_data(found: dict, steps: int, grad_accum: int = 1) -> None:
    """Both ranks trained on different sequences, consecutive data steps, none skipped."""
    seen = []
    for step in range(1, steps + 1):
        for micro in range(grad_accum):
            per_rank = [found[step, micro, rank] for rank in (0, 1)]
            data_step = (step - 1) * grad_accum + micro
            assert [int(d["data_step"]) for d in per_rank] == [data_step, data_step]
            assert not set(per_rank[0]["indices"].tolist()) & set(per_rank[1]["indices"].tolist())
            seen += [i for d in per_rank for i in d["indices"].tolist()]
    assert len(found) == 2 * steps * grad_accum
    if len(seen) <= ROWS:  # within one epoch no sequence repeats
        assert len(set(seen)) == len(seen)


def check_trained_with_scores_of(url: str, out: Path, data: Path, steps: int) -> None:
    """All `steps` steps logged; every data step trained once, in order, none skipped; each
    micro-batch on its own rows with the dense weights of exactly those rows' scores, fetched
    again from the scorer at `url`."""
    from tokenweight.trainer.data import batch_token_hash
    from tokenweight.trainer.metrics_log import read_metrics

    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, steps + 1))
    found = dumps(out)
    check_rank_data(found, steps)
    for record in found.values():
        tokens = batch_tokens(data, record["indices"])
        assert str(record["token_hash"]) == batch_token_hash(tokens)
        scores = scorer_arrays(url, tokens)
        check_weights(record, "dense", -scores["logp_long"], -scores["logp_short"])
