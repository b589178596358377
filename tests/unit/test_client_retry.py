"""RetryPolicy / RetryState and EndpointPool arithmetic, with fake clocks (no server)."""

import grpc
import pytest

from tokenweight.client import NO_RETRY, RetryPolicy, ScorerError
from tokenweight.client.endpoints import EndpointPool, Member
from tokenweight.client.retry import RetryState
from tokenweight.client.urls import parse_url


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def unavailable():
    return ScorerError(grpc.StatusCode.UNAVAILABLE, "down")


def test_backoff_grows_is_capped_and_jittered():
    policy = RetryPolicy(max_attempts=None, initial_backoff=0.1, max_backoff=1.0, jitter=0.2, on_retry=None)
    state = RetryState(policy, Clock())
    delays = [state.next_delay(unavailable()) for _ in range(8)]
    bases = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, base in zip(delays, bases):
        assert base * 0.8 <= delay <= base * 1.2


def test_time_budget_and_attempt_timeout():
    clock = Clock()
    policy = RetryPolicy.for_duration(10, initial_backoff=1, multiplier=1, jitter=0, on_retry=None)
    state = RetryState(policy, clock)
    assert state.attempt_timeout(60) == 10  # an attempt never outlives the budget
    clock.now = 8.5
    assert state.next_delay(unavailable()) == 1
    clock.now = 9.5
    assert state.attempt_timeout(None) == pytest.approx(0.5)
    assert state.next_delay(unavailable()) is None  # the wait would end past the budget


def test_only_listed_codes_are_retried():
    state = RetryState(RetryPolicy(on_retry=None))
    error = ScorerError(grpc.StatusCode.PERMISSION_DENIED, "no")
    assert state.next_delay(error) is None and error.attempts == 1
    assert RetryState(NO_RETRY).next_delay(unavailable()) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_pool_skips_down_members_and_probes_the_first_to_return():
    clock = Clock()
    members = [Member(parse_url(f"grpc://h{i}:1"), i) for i in range(3)]
    pool = EndpointPool(members, cooldown=5, clock=clock)
    assert [pool.pick().stub for _ in range(4)] == [0, 1, 2, 0]
    pool.mark_down(members[1])
    assert [pool.pick().stub for _ in range(3)] == [2, 0, 2]
    clock.now = 1
    pool.mark_down(members[0])
    pool.mark_down(members[2])
    assert not pool.any_up() and pool.pick().stub == 1  # down the longest, back the soonest
    clock.now = 5.5
    assert pool.pick().stub == 1 and pool.any_up()
