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
    compile_blocks = true                  # optional; fused layers on the GPU, same scores
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
    # Decoder layers compiled around eager attention (GPU speed-up; compiles at start-up).
    compile_blocks: bool = False


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8000
    http: bool = True
    # Batcher: tokens coalesced into one engine call (None = the engine's token budget),
    # how long a request may wait for company, and how many requests may wait per scorer.
    batch_tokens: int | None = None
    max_wait_ms: float = 5.0
    queue_size: int = 256
    # Largest request accepted; gRPC message limits are sized from these.
    max_request_tokens: int = 1 << 20
    max_sequences: int = 4096
    # In-memory score cache; 0 disables it.
    cache_mb: float = 0.0
    # Shared bearer token; None = no authentication.
    auth_token: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    # Seconds SIGTERM/SIGINT wait for in-flight requests before the process exits.
    grace_s: float = 30.0


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
