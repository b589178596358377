"""tokenweight.client: score tokens on a tokenweight server (no torch needed).

    from tokenweight.client import ScorerClient, RetryPolicy, Prefetcher

    client = ScorerClient("grpc://scorer-a:50051,grpc://scorer-b:50051",
                          retry=RetryPolicy.for_duration(600))
    result = client.score([ids_a, ids_b])     # numpy int arrays or lists of ints
    result.results[0].score                   # float32, len(ids_a) - 1
"""

from .async_client import AsyncScorerClient
from .errors import ScorerError
from .grpc_client import ScorerClient
from .http_client import HttpScorerClient, HttpTokenScores
from .prefetch import BatchScoringError, Prefetcher, PrefetchStats
from .retry import NO_RETRY, RetryEvent, RetryPolicy
from .urls import Endpoint, parse_url, parse_urls

__all__ = [
    "AsyncScorerClient",
    "BatchScoringError",
    "Endpoint",
    "HttpScorerClient",
    "HttpTokenScores",
    "NO_RETRY",
    "PrefetchStats",
    "Prefetcher",
    "RetryEvent",
    "RetryPolicy",
    "ScorerClient",
    "ScorerError",
    "parse_url",
    "parse_urls",
]
