"""Round-robin over several scorer endpoints, skipping ones that were just unreachable."""

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc

from .errors import ScorerError
from .retry import RetryState
from .urls import Endpoint

T = TypeVar("T")


@dataclass
class Member(Generic[T]):
    endpoint: Endpoint
    stub: T
    down_until: float = field(default=0.0)


class EndpointPool(Generic[T]):
    """Hands out endpoints in turn. One marked down (it answered UNAVAILABLE) is skipped for
    `cooldown` seconds; when all are down, the one that comes back first is tried anyway,
    so a call never waits on the pool, only on the retry policy's backoff.

    Thread-safe: the sync client is shared by the prefetcher's worker threads.
    """

    def __init__(
        self,
        members: Sequence[Member[T]],
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.members = list(members)
        self.cooldown = cooldown
        self.clock = clock
        self._next = 0
        self._lock = threading.Lock()

    def pick(self) -> Member[T]:
        with self._lock:
            now = self.clock()
            n = len(self.members)
            order = [self.members[(self._next + i) % n] for i in range(n)]
            member = next((m for m in order if m.down_until <= now), None)
            if member is None:
                member = min(order, key=lambda m: m.down_until)
            self._next = (self.members.index(member) + 1) % n
            return member

    def mark_down(self, member: Member[T]) -> None:
        with self._lock:
            member.down_until = self.clock() + self.cooldown

    def mark_up(self, member: Member[T]) -> None:
        member.down_until = 0.0

    def any_up(self) -> bool:
        now = self.clock()
        return any(m.down_until <= now for m in self.members)

    def failed(self, member: Member[T], error: ScorerError, state: RetryState) -> float | None:
        """After `member` failed: seconds to wait before the next attempt, or None to give up.

        An unreachable endpoint is set aside, and when another one is up the next attempt
        goes there at once instead of backing off.
        """
        unavailable = error.code == grpc.StatusCode.UNAVAILABLE
        if unavailable:
            self.mark_down(member)
        return state.next_delay(error, failover=unavailable and self.any_up())
