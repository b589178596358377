"""gRPC channels to a scorer: TLS, bearer token, message sizes, reconnect backoff, and
gRPC's own load balancing for `dns:`/`ipv4:`/`ipv6:` targets.

Shared by the sync (`grpc`) and async (`grpc.aio`) clients, whose channel constructors take
the same arguments.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import grpc

from tokenweight.v1 import scorer_pb2, scorer_pb2_grpc

from .endpoints import EndpointPool, Member
from .errors import ScorerError
from .retry import RetryPolicy, RetryState
from .score_request import RequestIds
from .urls import Endpoint, parse_urls

DEFAULT_TIMEOUT = 60.0

# Well above the server's default request limit (2**20 tokens: ~13 MB responses, see
# wire.message_limit), so the client is never the side that refuses a message. gRPC's own
# default receive limit of 4 MiB would refuse a response for about 350k tokens.
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20

# gRPC waits up to 120 s between reconnect attempts by default; a scorer that restarts is
# found again within ~2 s with these, which is what a trainer waiting on it wants.
_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

# A resolver target's channel keeps a subchannel to every address the resolver returns and
# sends each call to the next READY one (`round_robin`). Client-side health checking makes a
# subchannel READY only while the replica's grpc.health.v1 Watch says SERVING for the Scorer
# service, so a replica still loading its model, or draining on SIGTERM, gets no calls.
BALANCED_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {
            "serviceName": scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name
        },
    }
)
_BALANCED_OPTIONS = [
    ("grpc.service_config", BALANCED_SERVICE_CONFIG),
    # A DNS TXT record may carry its own service config; ours is the one the client relies on.
    ("grpc.service_config_disable_resolution", 1),
]


def load_pem(value: bytes | str | Path | None) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Per-call metadata; plain metadata (not call credentials) so that a bearer token also
    works on a plaintext channel to a server on localhost or a private network."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def open_channel(
    grpc_module,
    endpoint: Endpoint,
    *,
    root_certificates: bytes | None = None,
    tls_server_name: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: list[tuple] | None = None,
):
    """A channel from `grpc_module` (`grpc` or `grpc.aio`) to one endpoint."""
    if not endpoint.is_grpc:
        raise ValueError(f"{endpoint} is not a gRPC URL; use grpc:// or grpcs://")
    if endpoint.balanced and (root_certificates or tls_server_name):
        raise ValueError(
            f"TLS options given for {endpoint}: load-balanced targets are plaintext; list the "
            "replicas as grpcs://HOST:PORT,grpcs://HOST2:PORT for TLS"
        )
    if not endpoint.secure and (root_certificates or tls_server_name):
        raise ValueError(f"TLS options given for plaintext {endpoint}; use grpcs://")
    opts = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *_RECONNECT_OPTIONS,
        *(_BALANCED_OPTIONS if endpoint.balanced else []),
    ]
    if tls_server_name:
        # The name the server's certificate carries, when it differs from the host dialled.
        opts.append(("grpc.ssl_target_name_override", tls_server_name))
    opts += options or []
    if endpoint.secure:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc_module.secure_channel(endpoint.target, credentials, options=opts)
    return grpc_module.insecure_channel(endpoint.target, options=opts)


def connect(
    grpc_module,
    urls: str | Sequence[str],
    *,
    root_certificates: bytes | str | Path | None,
    tls_server_name: str | None,
    max_message_bytes: int,
    channel_options: list[tuple] | None,
    endpoint_cooldown: float,
) -> tuple[list, EndpointPool]:
    """Channels to every endpoint in `urls`, and the pool of Scorer stubs over them.

    A load-balanced target is one member of the pool: gRPC spreads its calls over the
    replicas, and a call that failed on a replica that went away is retried on the same
    channel, which sends it to a replica that is still READY.
    """
    pem = load_pem(root_certificates)
    channels, members = [], []
    for endpoint in parse_urls(urls):
        channel = open_channel(
            grpc_module,
            endpoint,
            root_certificates=pem,
            tls_server_name=tls_server_name,
            max_message_bytes=max_message_bytes,
            options=channel_options,
        )
        channels.append(channel)
        members.append(Member(endpoint, scorer_pb2_grpc.ScorerStub(channel)))
    return channels, EndpointPool(members, endpoint_cooldown)


class ChannelClient:
    """What the sync and async clients share: settings, call metadata and the endpoint pool.

    `grpc_module` is `grpc` or `grpc.aio`, whose channel constructors take the same arguments.
    """

    grpc_module = grpc

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        root_certificates: bytes | str | Path | None = None,
        tls_server_name: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        endpoint_cooldown: float = 5.0,
        channel_options: list[tuple] | None = None,
    ):
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = call_metadata(token)
        self._ids = RequestIds()
        self._channels, self._pool = connect(
            self.grpc_module,
            urls,
            root_certificates=root_certificates,
            tls_server_name=tls_server_name,
            max_message_bytes=max_message_bytes,
            channel_options=channel_options,
            endpoint_cooldown=endpoint_cooldown,
        )

    def _retry_delay(self, member: Member, exc: Exception, state: RetryState) -> float:
        """Seconds to wait before the next attempt after `exc` (a grpc.RpcError or a
        ScorerError) on `member`; raises it as a ScorerError when it may not be retried."""
        error = exc if isinstance(exc, ScorerError) else ScorerError.from_rpc(exc, member.endpoint.url)
        delay = self._pool.failed(member, error, state)
        if delay is None:
            if error is exc:
                raise error
            raise error from exc
        return delay
