"""Scorer URL parsing."""

import pytest

from tokenweight.client import Endpoint, parse_url, parse_urls


def test_schemes_hosts_and_ports():
    assert parse_url("grpc://scorer:50052") == Endpoint("grpc", "scorer", 50052)
    assert parse_url("grpcs://scorer.example.com:443").secure
    assert parse_url("grpc://scorer").port == 50051  # the server's default gRPC port
    assert parse_url("http://127.0.0.1:8000/").target == "127.0.0.1:8000"
    assert parse_url("https://scorer").port is None  # HTTP keeps the usual 443
    assert parse_url("grpc://[::1]:5000").target == "[::1]:5000"
    assert not parse_url("HTTP://a:1").is_grpc


def test_lists_and_comma_separated():
    assert [e.url for e in parse_urls("grpc://a:1, grpc://b:2")] == ["grpc://a:1", "grpc://b:2"]
    assert [e.url for e in parse_urls(["grpc://a:1,grpc://b:2", "grpc://c:3"])] == [
        "grpc://a:1", "grpc://b:2", "grpc://c:3"
    ]


@pytest.mark.parametrize(
    "url, message",
    [
        ("scorer:50051", "needs a scheme"),
        ("tcp://scorer:1", "needs a scheme"),
        ("grpc://:50051", "no host"),
        ("grpc://scorer:port", "invalid port"),
        ("http://scorer:8000/v1/score", "without a path"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        parse_url(url)
    with pytest.raises(ValueError, match="no scorer URL"):
        parse_urls(" , ")


def test_load_balanced_targets_are_one_endpoint_each():
    ipv4 = parse_url("ipv4:127.0.0.1:5001,127.0.0.2")
    assert ipv4.balanced and ipv4.is_grpc and not ipv4.secure
    assert ipv4.target == "ipv4:127.0.0.1:5001,127.0.0.2:50051"  # gRPC's default would be 443
    assert parse_url("ipv6:[::1]:5001,[::2]").target == "ipv6:[::1]:5001,[::2]:50051"
    assert parse_url("dns:///scorer.ns.svc:5001").target == "dns:///scorer.ns.svc:5001"
    assert parse_url("dns:scorer").target == "dns:///scorer:50051"
    assert parse_url("dns://8.8.8.8/scorer:1").target == "dns://8.8.8.8/scorer:1"
    # In a list, bare addresses after an ipv4:/ipv6: target are its replicas.
    assert [e.url for e in parse_urls("grpc://a:1,ipv4:10.0.0.1:2,10.0.0.2:2,grpc://b:3")] == [
        "grpc://a:1", "ipv4:10.0.0.1:2,10.0.0.2:2", "grpc://b:3"
    ]
    assert [e.url for e in parse_urls(["dns:///a:1", "ipv4:10.0.0.1:2"])] == [
        "dns:///a:1", "ipv4:10.0.0.1:2"
    ]


@pytest.mark.parametrize(
    "url, message",
    [
        ("ipv4:scorer:50051", "not an IPV4 address"),
        ("ipv4:10.0.0.1:1,scorer:2", "not an IPV4 address"),
        ("ipv6:10.0.0.1:1", "not an IPV6 address"),
        ("ipv4:10.0.0.1:port", "invalid port"),
        ("dns://scorer:50051", "three slashes"),
        ("dns:///scorer:50051/v1", "is not HOST:PORT"),
        ("dns:///", "is not HOST:PORT"),
    ],
)
def test_bad_load_balanced_targets_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        parse_url(url)
