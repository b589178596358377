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
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ScorerConfig:
    name: str
    model: str
    short_model: str | None = None
    window: int = 1024
    stride: int | None = None
    dtype: str | None = None
    device: str | None = None
    max_length: int | None = None
    allow_pickle: bool = False
    # Tokens per padded forward call inside the engine; None = the engine's default.
    token_budget: int | None = None
    # Every pass in its own forward call: bit-identical scores whatever the batch company.
    batch_invariant: bool = False


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8000
    http: bool = True
    # Batcher: tokens coalesced into one engine call (None = the engine's token budget),
    # how long a request may wait for company, and how many requests and forward tokens
    # may wait per scorer.
    batch_tokens: int | None = None
    max_wait_ms: float = 5.0
    queue_size: int = 256
    queue_tokens: int = 1 << 24
    # The fraction of the queue (requests and tokens) one client connection may hold, so a
    # flooding client cannot lock the others out.
    client_share: float = 0.25
    # Requests one ScoreStream may have in flight; past it the server stops reading the
    # stream until answers go out (flow control, not errors).
    stream_inflight: int = 64
    # Largest request accepted; gRPC message limits are sized from these.
    max_request_tokens: int = 1 << 20
    max_sequences: int = 4096
    # Tokens the model may read for one request (long pass plus short-context chunks): a
    # small stride multiplies the chunks, so this bounds the engine time one request takes.
    # The default fits the largest request at the default stride (about 2.3 per token).
    max_forward_tokens: int = 1 << 22
    # In-memory score cache; 0 disables it.
    cache_mb: float = 0.0
    # Shared bearer token; None = no authentication.
    auth_token: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    # HTTP connections: a request's headers must arrive within header_timeout_s of the
    # connection (or the previous response), its body within body_timeout_s of the headers;
    # idle kept-alive connections close after keep_alive_s; connections past the limit are
    # refused with 503.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    http_keep_alive_s: float = 5.0
    http_max_connections: int = 1024
    # Seconds SIGTERM/SIGINT may take in all: draining in-flight requests, failing the rest
    # as UNAVAILABLE (HTTP 503), and closing both front ends.
    grace_s: float = 30.0

    def __post_init__(self):
        # Limits that would refuse everything, or nothing, are mistakes worth a clear error.
        if not 0 < self.client_share <= 1:
            raise ConfigError(f"client_share must be in (0, 1], got {self.client_share}")
        for name in _POSITIVE_LIMITS:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


_POSITIVE_LIMITS = (
    "queue_size", "queue_tokens", "stream_inflight", "max_request_tokens", "max_sequences",
    "max_forward_tokens", "http_header_timeout_s", "http_body_timeout_s", "http_keep_alive_s",
    "http_max_connections",
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
