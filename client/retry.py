"""When and how long to wait before trying a failed call again.

Scoring is a pure function of the request, so repeating a call is always safe. Retried by
default: UNAVAILABLE (server starting, draining, restarting, or unreachable),
RESOURCE_EXHAUSTED (its queue is full: back off) and DEADLINE_EXCEEDED. The client's
`timeout` is per attempt, so a deadline that expires usually means a stuck or black-holed
endpoint, which the next attempt (on the next endpoint) gets around; the policy's
`max_attempts` / `max_elapsed` bound the whole call. Never retried: INVALID_ARGUMENT,
NOT_FOUND, UNAUTHENTICATED and every other code, since the same request would fail again;
nor RESOURCE_EXHAUSTED that gRPC itself raises for a message over a size limit (on either
side): it names the size in its details, and the same message would be too large again.

gRPC's built-in retry (service config) is not used: it caps attempts at 5, cannot fail over
between channels, and gives the caller no hook to log an outage.
"""

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from .errors import ScorerError

log = logging.getLogger("tokenweight.client")

DEFAULT_RETRY_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


# gRPC core's details for a message over max_receive/max_send_message_length, e.g.
# "Received message larger than max (4194405 vs. 4194304)".
_MESSAGE_TOO_LARGE = re.compile(r"(Received|Sent) message larger than max")


def is_retryable(error: ScorerError, retry_on: frozenset) -> bool:
    """Whether repeating the call could succeed: a code in `retry_on`, unless it is gRPC's
    RESOURCE_EXHAUSTED for a message too large (no back-off makes it smaller)."""
    if error.code not in retry_on:
        return False
    return not (
        error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and _MESSAGE_TOO_LARGE.search(error.message)
    )


@dataclass(frozen=True)
class RetryEvent:
    """Passed to `RetryPolicy.on_retry` before each wait."""

    attempt: int  # the attempt that just failed, from 1
    error: ScorerError
    delay: float  # seconds until the next attempt
    elapsed: float  # seconds since the first attempt started


def log_retry(event: RetryEvent) -> None:
    log.warning(
        "scorer call failed (attempt %d, %.1f s so far): %s; retrying in %.2f s",
        event.attempt,
        event.elapsed,
        event.error,
        event.delay,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and/or total time.

    The n-th wait is `min(max_backoff, initial_backoff * multiplier**(n-1))`, scaled by a
    random factor in `[1 - jitter, 1 + jitter]` so that many clients that lost the same
    server do not come back in lockstep. `max_attempts=None` or `max_elapsed=None` lifts
    that bound; both None retries until the call succeeds or fails with a code not in
    `retry_on`. A trainer that must outlive a scorer restart uses `RetryPolicy.for_duration`.
    """

    max_attempts: int | None = 5
    max_elapsed: float | None = None
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retry_on: frozenset = DEFAULT_RETRY_CODES
    on_retry: Callable[[RetryEvent], None] | None = log_retry

    def __post_init__(self):
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (1 = no retries)")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    @classmethod
    def for_duration(cls, seconds: float, **kwargs) -> "RetryPolicy":
        """Retry for up to `seconds` in all, however many attempts that takes."""
        return cls(max_attempts=None, max_elapsed=seconds, **kwargs)


NO_RETRY = RetryPolicy(max_attempts=1)


class RetryState:
    """The retry bookkeeping of one logical call (shared by the sync and async clients)."""

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Start over, e.g. after a stream made progress: earlier outages no longer count."""
        self.start = self.clock()
        self.attempts = 0

    def attempt_timeout(self, timeout: float | None) -> float | None:
        """The per-attempt deadline, cut to what is left of `max_elapsed`."""
        if self.policy.max_elapsed is None:
            return timeout
        left = max(self.policy.max_elapsed - (self.clock() - self.start), 0.001)
        return left if timeout is None else min(timeout, left)

    def next_delay(self, error: ScorerError, failover: bool = False) -> float | None:
        """Seconds to wait before the next attempt, or None to give up with `error`.

        `failover`: another endpoint is up, so try it at once instead of backing off (the
        attempt still counts). Records the failed attempt on `error.attempts` and tells
        `on_retry` about the wait.
        """
        policy = self.policy
        self.attempts += 1
        error.attempts = self.attempts
        if not is_retryable(error, policy.retry_on):
            return None
        if policy.max_attempts is not None and self.attempts >= policy.max_attempts:
            return None
        base = min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** (self.attempts - 1))
        delay = 0.0 if failover else base * (1 + policy.jitter * (2 * random.random() - 1))
        elapsed = self.clock() - self.start
        if policy.max_elapsed is not None and elapsed + delay >= policy.max_elapsed:
            return None
        if policy.on_retry is not None:
            policy.on_retry(RetryEvent(self.attempts, error, delay, elapsed))
        return delay
