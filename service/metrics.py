"""Prometheus metrics, in a registry of their own per server instance (tests run several)."""

from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = tuple(2**i for i in range(6, 21, 2))


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self):
        reg = self.registry
        # Per protocol call, recorded by the gRPC interceptor and the HTTP middleware.
        self.grpc_requests = Counter(
            "tokenweight_grpc_requests", "gRPC calls by method and status code",
            ["method", "code"], registry=reg,
        )
        self.grpc_latency = Histogram(
            "tokenweight_grpc_request_seconds", "gRPC call latency", ["method"],
            buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.http_requests = Counter(
            "tokenweight_http_requests", "HTTP requests by route and status",
            ["route", "status"], registry=reg,
        )
        self.http_latency = Histogram(
            "tokenweight_http_request_seconds", "HTTP request latency", ["route"],
            buckets=LATENCY_BUCKETS, registry=reg,
        )
        # Per scoring request (a unary call, one ScoreStream message or one HTTP score).
        self.score_requests = Counter(
            "tokenweight_score_requests", "Scoring requests by scorer and outcome",
            ["scorer", "status"], registry=reg,
        )
        # Batcher and engine.
        self.queue_time = Histogram(
            "tokenweight_queue_seconds", "Time a request waited before its engine batch ran",
            ["scorer"], buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.queue_depth = Gauge(
            "tokenweight_queue_depth", "Requests waiting for an engine batch", ["scorer"],
            registry=reg,
        )
        self.engine_batches = Counter(
            "tokenweight_engine_batches", "Engine calls (each coalescing one or more requests)",
            ["scorer"], registry=reg,
        )
        self.batch_requests = Histogram(
            "tokenweight_batch_requests", "Requests coalesced per engine call", ["scorer"],
            buckets=BATCH_BUCKETS, registry=reg,
        )
        self.batch_tokens = Histogram(
            "tokenweight_batch_tokens", "Tokens per engine call", ["scorer"],
            buckets=TOKEN_BUCKETS, registry=reg,
        )
        self.tokens_scored = Counter(
            "tokenweight_tokens_scored", "Tokens scored by the engine", ["scorer"], registry=reg,
        )
        self.dropped = Counter(
            "tokenweight_dropped_requests",
            "Requests cancelled or timed out while queued, dropped before the engine",
            ["scorer"], registry=reg,
        )
        self.cache_lookups = Counter(
            "tokenweight_cache_lookups", "Score cache lookups per sequence", ["result"],
            registry=reg,
        )

    content_type = CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
