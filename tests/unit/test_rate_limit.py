"""Token-bucket rate limits per kind, with the clock passed in: no sleeping."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.policies.rate_limit import (
    Rate, RateLimits, TokenBucket, parse_rate, parse_rate_limit, parse_rate_limits,
)


@pytest.mark.parametrize(("text", "per_s", "burst"), [
    ("50/s", 50.0, 50.0), ("600/m", 10.0, 10.0), ("100/h", 100 / 3600, 1.0),
    ("0.5/s", 0.5, 1.0), ("50/s,burst=100", 50.0, 100.0), (" 10/m, burst=3 ", 10 / 60, 3.0),
])
def test_rates_parse_with_a_default_burst_of_one_seconds_worth(text: str, per_s: float,
                                                                burst: float) -> None:
    rate = parse_rate(text)
    assert rate.per_s == pytest.approx(per_s) and rate.burst == burst


@pytest.mark.parametrize(("text", "says"), [
    ("50", "COUNT/UNIT"), ("50/d", "COUNT/UNIT"), ("-5/s", "COUNT/UNIT"), ("0/s", "above 0"),
    ("5/s,burst=0.5", "at least 1"), ("abc/s", "COUNT/UNIT"), ("", "COUNT/UNIT"),
])
def test_bad_rates_are_refused_with_a_message_naming_the_spelling(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_rate(text)


def test_rate_limit_flags_name_a_kind_once_each() -> None:
    assert parse_rate_limit("vision=50/s") == ("vision", Rate(50.0, 50.0))
    with pytest.raises(ConfigError, match="KIND=COUNT/UNIT"):
        parse_rate_limit("50/s")
    with pytest.raises(ConfigError, match="twice"):
        parse_rate_limits(["a=1/s", "b=2/s", "a=3/s"])
    assert set(parse_rate_limits(["a=1/s", "b=2/m"])) == {"a", "b"}


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(Rate(per_s=10.0, burst=5.0), now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.next_ready(0.0) == pytest.approx(0.1)
    assert not bucket.take(0.09)
    assert bucket.take(0.1)
    # over 10 s at most burst + rate * 10 tasks, whatever the pattern of asks
    bucket = TokenBucket(Rate(per_s=10.0, burst=5.0), now=0.0)
    taken = sum(bucket.take(t / 1000) for t in range(10_001))
    assert 5 + 100 - 1 <= taken <= 5 + 100


@pytest.mark.parametrize("start", [0.0, 12_345.678, 987_654.321])
def test_a_token_is_there_at_next_ready_whatever_the_clock_reads(start: float) -> None:
    """On a large clock reading, start + 0.1 - start is a hair under 0.1: the token must still
    be there when next_ready() says (the dispatcher sleeps until then), not a nanosecond later."""
    bucket = TokenBucket(Rate(per_s=10.0, burst=1.0), now=start)
    assert bucket.take(start) and not bucket.take(start)
    ready = bucket.next_ready(start)
    assert ready == pytest.approx(start + 0.1)
    assert bucket.next_ready(ready) == ready
    assert bucket.take(ready)
    assert not bucket.take(ready)  # one token, taken once


def test_an_idle_bucket_fills_only_up_to_its_burst() -> None:
    bucket = TokenBucket(Rate(per_s=1.0, burst=3.0), now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    assert sum(bucket.take(1000.0) for _ in range(10)) == 3


def test_unlimited_kinds_always_pass_and_limited_ones_wait_for_next_ready() -> None:
    limits = RateLimits({"vision": parse_rate("2/s,burst=1")}, now=0.0)
    assert all(limits.take("other", 0.0) for _ in range(1000))
    assert limits.next_ready("other", 5.0) == 5.0
    assert limits.take("vision", 0.0) and not limits.take("vision", 0.0)
    ready = limits.next_ready("vision", 0.0)
    assert ready == pytest.approx(0.5)
    assert not limits.take("vision", ready - 1e-6) and limits.take("vision", ready)


def test_throttled_time_runs_from_the_first_refusal_to_the_next_dispatch() -> None:
    limits = RateLimits({"vision": Rate(per_s=1.0, burst=1.0)}, now=0.0)
    assert limits.take("vision", 0.0)
    assert not limits.take("vision", 0.2)  # throttled from 0.2
    assert not limits.take("vision", 0.5)
    assert limits.throttled() == ["vision"]
    assert limits.drain_throttled_s(0.6) == {"vision": pytest.approx(0.4)}  # still going
    assert limits.take("vision", 1.0)
    assert limits.drain_throttled_s(1.0) == {"vision": pytest.approx(0.4)}  # 0.6 .. 1.0
    assert limits.drain_throttled_s(5.0) == {}
    assert limits.drain_refused() == {"vision": 2}
    assert not limits.take("vision", 1.5)
    limits.idle("vision", 1.7)  # its queue emptied: no longer throttled
    assert limits.throttled() == [] and limits.drain_throttled_s(9.0) == {
        "vision": pytest.approx(0.2)}


def test_with_several_helpers_each_takes_an_equal_share_and_the_sum_stays_within_the_limit(
        ) -> None:
    rate = Rate(per_s=30.0, burst=30.0)
    helpers = [RateLimits({"vision": rate}, now=0.0, helpers=3) for _ in range(3)]
    assert helpers[0].share("vision") == Rate(per_s=10.0, burst=10.0)
    total = sum(h.take("vision", t / 1000) for t in range(10_001) for h in helpers)
    assert 30 + 30 * 10 - 3 <= total <= 30 + 30 * 10  # one global burst + the rate over 10 s
    # discovery sees one Helper left: it takes the whole limit from then on
    one = helpers[0]
    one.set_helpers(1, now=10.0)
    assert one.share("vision") == rate
    assert sum(one.take("vision", 10.0 + t / 1000) for t in range(1000)) <= 30 + 30


def test_a_share_smaller_than_one_token_still_allows_one_task() -> None:
    limits = RateLimits({"rare": parse_rate("2/m")}, now=0.0, helpers=4)
    assert limits.share("rare").burst == 1.0
    assert limits.take("rare", 0.0) and not limits.take("rare", 0.0)
    assert limits.next_ready("rare", 0.0) == pytest.approx(120.0)  # (2/60)/4 per second


def test_limits_can_be_added_changed_and_removed_at_run_time() -> None:
    limits = RateLimits({}, now=0.0)
    limits.set_limit("ocr", Rate(per_s=1.0, burst=2.0), now=0.0)
    assert limits.take("ocr", 0.0) and limits.take("ocr", 0.0) and not limits.take("ocr", 0.0)
    limits.set_limit("ocr", Rate(per_s=100.0, burst=1.0), now=0.0)
    assert limits.take("ocr", 0.01)
    limits.set_limit("ocr", None, now=0.02)
    assert not limits.limited("ocr") and all(limits.take("ocr", 0.02) for _ in range(100))
    with pytest.raises(ConfigError):
        RateLimits({}, now=0.0, helpers=0)
