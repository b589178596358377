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
