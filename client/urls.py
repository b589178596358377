"""Scorer addresses: `grpc://`, `grpcs://` (TLS), `http://`, `https://`, one or a list.

A trainer takes `--scorer-url grpc://a:50051,grpc://b:50051`; `parse_urls` turns that (or a
list of such strings) into endpoints the clients connect to.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

GRPC_SCHEMES = ("grpc", "grpcs")
HTTP_SCHEMES = ("http", "https")
# `tokenweight serve`'s default gRPC port; HTTP URLs keep their usual defaults (80/443).
DEFAULT_GRPC_PORT = 50051


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int | None

    @property
    def secure(self) -> bool:
        return self.scheme in ("grpcs", "https")

    @property
    def is_grpc(self) -> bool:
        return self.scheme in GRPC_SCHEMES

    @property
    def target(self) -> str:
        """`host:port` as gRPC channels want it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.target}"

    def __str__(self) -> str:
        return self.url


def parse_url(url: str) -> Endpoint:
    """One address; ValueError says what is wrong with it."""
    text = url.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in GRPC_SCHEMES + HTTP_SCHEMES:
        raise ValueError(
            f"scorer URL {url!r} needs a scheme: grpc://HOST:PORT, grpcs://HOST:PORT (TLS), "
            "http://HOST:PORT or https://HOST:PORT"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"scorer URL {url!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"scorer URL {url!r} has no host")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"scorer URL {url!r} must be only scheme://HOST:PORT, without a path")
    if port is None and scheme in GRPC_SCHEMES:
        port = DEFAULT_GRPC_PORT
    return Endpoint(scheme, parts.hostname, port)


def parse_urls(urls: str | Sequence[str]) -> list[Endpoint]:
    """A comma-separated string or a list of them -> endpoints, in the order given."""
    items = [urls] if isinstance(urls, str) else list(urls)
    endpoints = [parse_url(u) for item in items for u in item.split(",") if u.strip()]
    if not endpoints:
        raise ValueError("no scorer URL given")
    return endpoints
