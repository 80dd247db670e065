"""Circuit breakers per kind and per named dependency, with the clock passed in: no sleeping."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.policies.circuit import (
    DEPENDENCY, KIND, Breaker, BreakerSettings, Breakers, State, Transition,
)

FAST = BreakerSettings(failure_ratio=0.5, min_calls=4, window_calls=10, window_s=60.0,
                       cool_down_s=10.0, max_cool_down_s=40.0, probe_timeout_s=30.0)


def make(settings: BreakerSettings = FAST) -> tuple[Breakers, list[Transition]]:
    seen: list[Transition] = []
    return Breakers(settings, seen.append), seen


def test_a_breaker_stays_closed_below_the_minimum_number_of_calls() -> None:
    breakers, seen = make()
    for t in range(3):
        breakers.record_failure("ocr", float(t))
    assert breakers.allow("ocr", 3.0) and breakers.state("ocr") is State.CLOSED and not seen


def test_it_opens_when_the_failure_ratio_over_the_window_is_reached_and_says_so() -> None:
    breakers, seen = make()
    for t, ok in enumerate([True, True, False, True, False, True, False]):
        (breakers.record_success if ok else breakers.record_failure)("ocr", float(t))
    assert breakers.state("ocr") is State.CLOSED  # 3 of 7 failed
    breakers.record_failure("ocr", 7.0)  # 4 of 8: the ratio
    assert breakers.state("ocr") is State.OPEN
    [opened] = seen
    assert (opened.name, opened.scope, opened.old, opened.new) == ("ocr", KIND, State.CLOSED,
                                                                  State.OPEN)
    assert (opened.failures, opened.calls, opened.reopen_at) == (4, 8, 17.0)
    assert opened.alert == "mesh.circuit.open"
    assert not breakers.allow("ocr", 16.9)
    assert breakers.next_allowed("ocr", 12.0) == 17.0
    assert breakers.blocked(12.0) == ["ocr"]


def test_successes_before_the_first_failure_count_in_the_window() -> None:
    breakers, _ = make()
    for t in range(8):
        breakers.record_success("ocr", float(t))
    for t in range(4):
        breakers.record_failure("ocr", 8.0 + t)  # 4 of the last 10
    assert breakers.state("ocr") is State.CLOSED


def test_old_outcomes_leave_the_window_by_age_and_by_count() -> None:
    breakers, _ = make()
    for t in range(3):
        breakers.record_failure("ocr", float(t))
    breakers.record_failure("ocr", 100.0)  # the first three are older than 60 s: 1 call
    assert breakers.state("ocr") is State.CLOSED
    for t in range(10):
        breakers.record_success("ocr", 101.0 + t)  # the window holds the last 10 only
    for t in range(4):
        breakers.record_failure("ocr", 111.0 + t)
    assert breakers.state("ocr") is State.CLOSED  # 4 of the last 10
    breakers.record_failure("ocr", 115.0)  # 5 of 10
    assert breakers.state("ocr") is State.OPEN


def _open(breakers: Breakers, kind: str, now: float) -> None:
    for i in range(4):
        breakers.record_failure(kind, now + i * 0.01)
    assert breakers.state(kind) is State.OPEN


def test_after_the_cool_down_exactly_one_probe_goes_and_its_success_closes() -> None:
    breakers, seen = make()
    _open(breakers, "ocr", 0.0)
    assert not breakers.allow("ocr", 9.0)
    assert breakers.allow("ocr", 10.03)  # the probe
    assert breakers.state("ocr") is State.HALF_OPEN
    assert not breakers.allow("ocr", 10.5) and not breakers.allow("ocr", 20.0)
    breakers.record_success("ocr", 21.0)
    assert breakers.state("ocr") is State.CLOSED and breakers.allow("ocr", 21.0)
    assert [(t.old, t.new) for t in seen] == [
        (State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED)]
    assert seen[-1].alert == "mesh.circuit.closed" and seen[1].alert == ""


def test_a_failed_probe_reopens_with_a_doubled_cool_down_up_to_the_cap() -> None:
    breakers, seen = make()
    _open(breakers, "ocr", 0.0)
    now = 0.03
    for cool_down in (20.0, 40.0, 40.0):
        now = breakers.next_allowed("ocr", now)
        assert breakers.allow("ocr", now)
        breakers.record_failure("ocr", now)
        assert breakers.state("ocr") is State.OPEN
        assert seen[-1].reopen_at == pytest.approx(now + cool_down)
    now = breakers.next_allowed("ocr", now)
    assert breakers.allow("ocr", now)
    breakers.record_success("ocr", now)
    _open(breakers, "ocr", now + 1)  # closed again: back to the base cool-down
    assert seen[-1].reopen_at == pytest.approx(now + 1.03 + 10.0)


def test_a_probe_with_no_outcome_lets_another_go_after_the_probe_timeout() -> None:
    breakers, _ = make()
    _open(breakers, "ocr", 0.0)
    assert breakers.allow("ocr", 11.0)
    assert not breakers.allow("ocr", 40.9)
    assert breakers.next_allowed("ocr", 12.0) == 41.0
    assert breakers.allow("ocr", 41.0)


def test_outcomes_of_tasks_sent_before_it_opened_do_not_move_an_open_breaker() -> None:
    breakers, seen = make()
    _open(breakers, "ocr", 0.0)
    for t in range(20):
        breakers.record_success("ocr", 1.0 + t * 0.1)
    assert breakers.state("ocr") is State.OPEN and len(seen) == 1


def test_a_named_dependency_down_blocks_every_kind_that_depends_on_it_and_only_those() -> None:
    breakers, seen = make()
    for i in range(2):
        breakers.record_failure("scan", float(i), dependency="ocr-api")
        breakers.record_failure("invoice", float(i) + 0.5, dependency="ocr-api")
    assert breakers.state("ocr-api", DEPENDENCY) is State.OPEN
    assert breakers.state("scan") is State.CLOSED  # charged to the dependency, not the kind
    assert seen[-1].scope == DEPENDENCY and seen[-1].name == "ocr-api"
    assert not breakers.allow("scan", 2.0) and not breakers.allow("invoice", 2.0)
    assert breakers.allow("resize", 2.0)
    assert breakers.dependencies("scan") == ["ocr-api"]
    assert breakers.blocked(2.0) == ["invoice", "scan"]
    # one probe for the dependency, whichever kind carries it; its success closes it
    assert breakers.allow("invoice", 11.6)
    assert not breakers.allow("scan", 11.7)
    breakers.record_success("invoice", 12.0)
    assert breakers.state("ocr-api", DEPENDENCY) is State.CLOSED
    assert breakers.allow("scan", 12.0)


def test_a_kind_whose_own_breaker_is_open_does_not_take_a_dependencys_probe() -> None:
    breakers, _ = make()
    for i in range(4):
        breakers.record_failure("scan", i * 0.01, dependency="ocr-api")  # open until 10.03
    _open(breakers, "scan", 5.0)  # open until 15.03
    # the dependency's cool-down is over, the kind's is not: no probe taken
    assert not breakers.allow("scan", 10.5)
    assert breakers.state("ocr-api", DEPENDENCY) is State.OPEN
    breakers.record_failure("invoice", 10.6, dependency="ocr-api")  # ignored while open
    assert breakers.allow("invoice", 10.7)  # invoice carries the probe
    assert breakers.state("ocr-api", DEPENDENCY) is State.HALF_OPEN


def test_breakers_are_bounded_and_settings_are_checked() -> None:
    breakers = Breakers(FAST, max_breakers=2)
    for kind in ("a", "b", "c"):
        breakers.record_failure(kind, 0.0)
    assert breakers.untracked == 1 and breakers.allow("c", 0.0)
    assert [i.name for i in breakers.snapshot(0.0)] == ["a", "b"]
    for bad in (dict(failure_ratio=0.0), dict(min_calls=20, window_calls=10),
                dict(cool_down_s=0.0), dict(cool_down_s=10.0, max_cool_down_s=5.0)):
        with pytest.raises(ConfigError):
            BreakerSettings(**bad)


def test_a_single_breaker_can_be_used_on_its_own() -> None:
    breaker = Breaker("ocr-api", DEPENDENCY, BreakerSettings(min_calls=1, window_calls=1))
    change = breaker.record(False, 0.0)
    assert change is not None and change.new is State.OPEN
    assert breaker.allow(29.0) == (False, None)
    allowed, change = breaker.allow(30.0)
    assert allowed and change is not None and change.new is State.HALF_OPEN
