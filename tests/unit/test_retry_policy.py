"""Retry decisions and full-jitter backoff, without sleeping."""

from __future__ import annotations

import random

from mesh import wire
from mesh.policies.retry import RetryPolicy, backoff_s


def test_backoff_is_full_jitter_within_a_doubling_capped_window() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)):
        samples = [backoff_s(attempt, 1.0, 30.0, rng) for _ in range(2000)]
        assert 0.0 <= min(samples) and max(samples) <= ceiling
        assert max(samples) > ceiling * 0.9 and min(samples) < ceiling * 0.1


def test_failures_retry_until_attempts_run_out() -> None:
    policy = RetryPolicy(1.0, 30.0)
    rng = random.Random(1)
    assert policy.decide(1, 3, wire.RETRYABLE, 0, rng).retry
    assert policy.decide(2, 3, wire.TIMEOUT, 0, rng).retry
    last = policy.decide(3, 3, wire.RETRYABLE, 0, rng)
    assert not last.retry and last.dead_reason == wire.ATTEMPTS_EXHAUSTED


def test_fatal_skips_retries_and_retry_later_uses_the_handlers_delay() -> None:
    policy = RetryPolicy(1.0, 30.0)
    rng = random.Random(1)
    fatal = policy.decide(1, 3, wire.FATAL, 0, rng)
    assert not fatal.retry and fatal.dead_reason == wire.FATAL_ERROR
    later = policy.decide(1, 3, wire.RETRY_LATER, 2500, rng)
    assert later.retry and later.delay_s == 2.5
