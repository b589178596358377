"""What `tokenweight serve` runs: scorers, batching, limits and network settings.

A TOML config file hosts several scorers in one process:

    default = "main"              # optional; else the first scorer

    [server]                      # optional; any ServerConfig field, command-line flags win
    grpc_port = 50051
    max_wait_ms = 5

    [[scorers]]
    name = "main"
    model = "/models/llama-3.2-1b"         # relative paths are relative to this file
    short_model = "/models/small"          # optional; else the long model plays both parts
    window = 1024
    stride = 768                           # optional; default 3*window/4
    dtype = "bfloat16"                     # optional; bf16 on CUDA, fp32 on CPU
    device = "cuda:0"                      # optional; CUDA if available
    max_length = 32768                     # optional; default the model's positions
    batch_invariant = true                 # optional; scores independent of batch company
    compile_blocks = true                  # optional; fused layers on the GPU, bf16-rounded differently
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from tokenweight.flags import flag

from .auth import TOKEN_ENV


class ConfigError(ValueError):
    pass


# Flag groups of `tokenweight serve`.
WHAT, NETWORK, LIMITS = "what to serve", "network", "batching and limits"


@dataclass(frozen=True)
class ScorerConfig:
    """One scorer: a [[scorers]] entry of the config file, or the flags of a single --model."""

    name: str = flag(help="scorer name for --model (default: 'default')", group=WHAT)
    model: str = flag(
        help="local Hugging Face checkpoint directory (the long model; default: the bundled "
        "code model, with its window)",
        group=WHAT,
    )
    short_model: str | None = flag(
        None, "separate short-context model (same tokenizer)", group=WHAT
    )
    window: int = flag(
        1024,
        "short-context window k (default 1024; the bundled model, served when no --model is "
        "given, uses its own window 512)",
        group=WHAT,
    )
    stride: int | None = flag(None, "stride s (default 3k/4)", group=WHAT)
    dtype: str | None = flag(
        None,
        "default: bf16 on CUDA, fp32 on CPU",
        group=WHAT,
        choices=["float32", "bfloat16", "float16"],
    )
    device: str | None = flag(
        None, "cpu, cuda or cuda:N (default: cuda if available)", group=WHAT
    )
    max_length: int | None = flag(
        None,
        "longest sequence accepted, at most the model's positions (default: those); 65536 or "
        "131072 for 64k/128k contexts, with --window 8192 or 32768",
        group=WHAT,
    )
    allow_pickle: bool = flag(
        False, "allow pytorch_model.bin checkpoints (runs code from the file)", group=WHAT
    )
    # Tokens per padded forward call inside the engine; None = the engine's default.
    token_budget: int | None = None
    batch_invariant: bool = flag(
        False,
        "run each pass in its own forward so scores never depend on what a request is "
        "batched with (bit-identical; slower for short sequences)",
        group=WHAT,
    )
    compile_blocks: bool = flag(
        False,
        "compile the decoder layers (norms, RoPE, MLP fused; attention stays cuDNN/SDPA): "
        "faster on GPUs (1.07-1.22x on an H200); scores round differently in bf16 (up to 0.14 "
        "nats at 1B, 0.47 at 8B from the plain path, no further than it from fp32 at 8B, "
        "BENCHMARKS.md); compiles once at start-up",
        group=WHAT,
    )


@dataclass(frozen=True)
class ServerConfig:
    """The [server] table of the config file and the network/limits flags (flags win)."""

    host: str = flag(
        "127.0.0.1", "address to bind (0.0.0.0 for all interfaces)", group=NETWORK
    )
    grpc_port: int = flag(50051, "gRPC port (0 = any free port)", group=NETWORK)
    http_port: int = flag(8000, "HTTP port (0 = any free port)", group=NETWORK)
    http: bool = flag(
        True,
        "serve gRPC only (default: HTTP too)",
        group=NETWORK,
        flag="--no-http",
        action="store_false",
    )
    # Batcher: tokens coalesced into one engine call, how long a request may wait for
    # company, and how many requests and forward tokens may wait per scorer.
    batch_tokens: int | None = flag(
        None, "tokens coalesced per engine call (default: the engine's token budget)", group=LIMITS
    )
    max_wait_ms: float = flag(
        5.0, "longest a request waits for others to batch with", group=LIMITS
    )
    # With 2 the batcher builds the next engine call while the engine runs the current one,
    # splitting what is queued over the free slots (batcher.py, `_batch_limit`); a request that
    # arrives meanwhile then waits behind up to that many batches instead of one. 1 by default:
    # on an H200 the smaller batches cost more engine calls, whose Python shares the GIL with
    # the event loop, than the overlap saved (BENCHMARKS.md, *The service end to end*).
    batches_in_flight: int = flag(
        1, "engine calls each scorer's batcher may have running or queued at once", group=LIMITS
    )
    queue_size: int = flag(
        256, "requests waiting per scorer before RESOURCE_EXHAUSTED", group=LIMITS
    )
    queue_tokens: int = flag(
        1 << 24, "forward tokens waiting per scorer before RESOURCE_EXHAUSTED", group=LIMITS
    )
    # The fraction of the queue (requests and tokens) one client connection may hold, so a
    # flooding client cannot lock the others out.
    client_share: float = flag(
        0.25, "fraction of the queue one client connection may hold", group=LIMITS
    )
    # Past this the server stops reading the stream until answers go out (flow control,
    # not errors).
    stream_inflight: int = flag(
        64, "requests in flight per ScoreStream before the server stops reading it", group=LIMITS
    )
    # Largest request accepted; gRPC message limits are sized from these.
    max_request_tokens: int = flag(
        1 << 20,
        "tokens per request (eight 128k sequences); gRPC and HTTP message limits are sized from "
        "it",
        group=LIMITS,
    )
    max_sequences: int = flag(4096, "sequences per request", group=LIMITS)
    # A small stride multiplies the short-context chunks, so this bounds the engine time one
    # request takes. The default fits the largest request at the default stride (about 2.3
    # forward tokens per token).
    max_forward_tokens: int = flag(
        1 << 22, "tokens the model may read for one request, chunks included", group=LIMITS
    )
    cache_mb: float = flag(0.0, "in-memory score cache size (0 = off)", group=LIMITS)
    auth_token: str | None = flag(
        None,
        f"shared bearer token required on every request (default ${TOKEN_ENV})",
        group=NETWORK,
        repr=False,
    )
    # With a token, metrics and the API docs need it too by default: they describe the
    # deployment. Opening them lets Prometheus scrape and a browser read /docs without one.
    open_operational_paths: bool = flag(
        False,
        "serve /metrics, /docs, /redoc and /openapi.json without the bearer token",
        group=NETWORK,
        flag="--open-metrics-and-docs",
    )
    tls_cert: str | None = flag(
        None, "PEM certificate: serve gRPC and HTTP over TLS", group=NETWORK
    )
    tls_key: str | None = flag(None, "PEM private key for --tls-cert", group=NETWORK)
    # HTTP connections: a request's headers must arrive within the header timeout of the
    # connection (or the previous response), its body within the body timeout of the headers.
    http_header_timeout_s: float = flag(
        10.0,
        "seconds a request's headers may take to arrive",
        group=NETWORK,
        flag="--http-header-timeout",
    )
    http_body_timeout_s: float = flag(
        60.0,
        "seconds a request's body may take after its headers",
        group=NETWORK,
        flag="--http-body-timeout",
    )
    http_keep_alive_s: float = flag(
        5.0,
        "seconds an idle kept-alive connection stays open",
        group=NETWORK,
        flag="--http-keep-alive",
    )
    http_max_connections: int = flag(
        1024, "open HTTP connections before new ones get 503", group=NETWORK
    )
    # In all: draining in-flight requests, failing the rest as UNAVAILABLE (HTTP 503), and
    # closing both front ends.
    grace_s: float = flag(
        30.0,
        "seconds SIGTERM may take in all, draining included",
        group=LIMITS,
        flag="--grace",
    )

    def __post_init__(self):
        # Limits that would refuse everything, or nothing, are mistakes worth a clear error.
        if not 0 < self.client_share <= 1:
            raise ConfigError(f"client_share must be in (0, 1], got {self.client_share}")
        for name in _POSITIVE_LIMITS:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


_POSITIVE_LIMITS = (
    "batches_in_flight", "queue_size", "queue_tokens", "stream_inflight", "max_request_tokens",
    "max_sequences", "max_forward_tokens", "http_header_timeout_s", "http_body_timeout_s",
    "http_keep_alive_s", "http_max_connections",
)


@dataclass(frozen=True)
class ServeConfig:
    scorers: list[ScorerConfig]
    default_scorer: str
    server: ServerConfig = ServerConfig()

    def __post_init__(self):
        if not self.scorers:
            raise ConfigError("no scorers configured")
        names = [s.name for s in self.scorers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"scorer names must be unique; repeated: {duplicates}")
        if self.default_scorer not in names:
            raise ConfigError(f"default scorer {self.default_scorer!r} is not one of {names}")
        if bool(self.server.tls_cert) != bool(self.server.tls_key):
            raise ConfigError("TLS needs both a certificate and a key")


def _build(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def server_config(file_values: dict, overrides: dict) -> ServerConfig:
    """File values, then every override that is not None (command-line flags win)."""
    values = dict(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(ServerConfig, values, "[server]")


def load_config(path: str | Path, server_overrides: dict | None = None) -> ServeConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    unknown = sorted(set(data) - {"default", "server", "scorers"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {unknown}")
    scorers = []
    for i, entry in enumerate(data.get("scorers", [])):
        entry = dict(entry)
        for key in ("model", "short_model"):
            if entry.get(key):
                entry[key] = str((path.parent / entry[key]).resolve())
        scorers.append(_build(ScorerConfig, entry, f"{path}: scorers[{i}]"))
    if not scorers:
        raise ConfigError(f"{path} defines no [[scorers]]")
    return ServeConfig(
        scorers=scorers,
        default_scorer=data.get("default", scorers[0].name),
        server=server_config(data.get("server", {}), server_overrides or {}),
    )
