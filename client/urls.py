"""Scorer addresses: `grpc://`, `grpcs://` (TLS), `http://`, `https://`, one or a list, and
gRPC's own load-balanced targets `dns:///NAME:PORT`, `ipv4:A:P,B:P`, `ipv6:[A]:P,[B]:P`.

A trainer takes `--scorer-url grpc://a:50051,grpc://b:50051`; `parse_urls` turns that (or a
list of such strings) into endpoints the clients connect to. The client round-robins over an
explicit list itself; a `dns:`/`ipv4:`/`ipv6:` target is one endpoint whose addresses gRPC's
resolver finds and whose calls gRPC's `round_robin` policy spreads (client/channels.py). In
a comma-separated string the addresses after an `ipv4:`/`ipv6:` target belong to it:
`ipv4:10.0.0.1:50051,10.0.0.2:50051` is one target of two replicas.
"""

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

GRPC_SCHEMES = ("grpc", "grpcs")
HTTP_SCHEMES = ("http", "https")
# gRPC name-resolver schemes (gRPC's naming doc); their channels balance over every address.
RESOLVER_SCHEMES = ("dns", "ipv4", "ipv6")
# `tokenweight serve`'s default gRPC port; HTTP URLs keep their usual defaults (80/443).
DEFAULT_GRPC_PORT = 50051


@dataclass(frozen=True)
class Endpoint:
    """One address. For a resolver target (`balanced`), `host` is what follows the scheme
    (`///NAME:PORT`, or the address list) and `port` is None."""

    scheme: str
    host: str
    port: int | None

    @property
    def secure(self) -> bool:
        return self.scheme in ("grpcs", "https")

    @property
    def is_grpc(self) -> bool:
        return self.scheme in GRPC_SCHEMES or self.balanced

    @property
    def balanced(self) -> bool:
        """A gRPC resolver target: gRPC finds its replicas and balances calls over them."""
        return self.scheme in RESOLVER_SCHEMES

    @property
    def target(self) -> str:
        """What gRPC channels dial: `host:port` (IPv6 hosts in brackets) or the resolver target."""
        if self.balanced:
            return f"{self.scheme}:{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.target if self.balanced else f"{self.scheme}://{self.target}"

    def __str__(self) -> str:
        return self.url


def parse_url(url: str) -> Endpoint:
    """One address; ValueError says what is wrong with it."""
    text = url.strip()
    if _resolver_scheme(text):
        return _parse_resolver_target(text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in GRPC_SCHEMES + HTTP_SCHEMES:
        raise ValueError(
            f"scorer URL {url!r} needs a scheme: grpc://HOST:PORT, grpcs://HOST:PORT (TLS), "
            "http://HOST:PORT, https://HOST:PORT, or a load-balanced gRPC target "
            "dns:///NAME:PORT, ipv4:A:PORT,B:PORT or ipv6:[A]:PORT,[B]:PORT"
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
    endpoints = [parse_url(u) for item in items for u in _split(item)]
    if not endpoints:
        raise ValueError("no scorer URL given")
    return endpoints


def _split(text: str) -> list[str]:
    """Comma-separated addresses; bare `A:P` items continue the `ipv4:`/`ipv6:` list before them."""
    addresses: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        continues = addresses and _resolver_scheme(addresses[-1]) in ("ipv4", "ipv6")
        if continues and ":" in item and "://" not in item and not _resolver_scheme(item):
            addresses[-1] += f",{item}"
        else:
            addresses.append(item)
    return addresses


def _resolver_scheme(text: str) -> str | None:
    scheme, colon, _ = text.partition(":")
    return scheme.lower() if colon and scheme.lower() in RESOLVER_SCHEMES else None


def _parse_resolver_target(text: str) -> Endpoint:
    """`dns:[//AUTHORITY/]NAME[:PORT]`, `ipv4:A[:P],...`, `ipv6:[A][:P],...`, with the port
    made explicit (gRPC's default would be 443, ours is the server's 50051)."""
    scheme = _resolver_scheme(text)
    rest = text.split(":", 1)[1]
    if scheme == "dns":
        authority = ""
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise ValueError(f"scorer target {text!r}: write dns:///NAME:PORT (three slashes)")
        host, port = _host_port(rest, text)
        return Endpoint("dns", f"//{authority}/{_join(host, port)}", None)
    addresses = []
    for item in rest.split(","):
        host, port = _host_port(item.strip(), text)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or f"ipv{address.version}" != scheme:
            raise ValueError(
                f"scorer target {text!r}: {host!r} is not an {scheme.upper()} address; "
                f"{scheme}: takes a comma-separated list of literal addresses (use dns:///NAME:PORT "
                "for a name)"
            )
        addresses.append(_join(host, port))
    return Endpoint(scheme, ",".join(addresses), None)


def _host_port(text: str, target: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`; the port defaults to DEFAULT_GRPC_PORT."""
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"scorer target {target!r} has an invalid port in {text!r}") from None
    if not parts.hostname or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(f"scorer target {target!r}: {text!r} is not HOST:PORT")
    return parts.hostname, DEFAULT_GRPC_PORT if port is None else port


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
