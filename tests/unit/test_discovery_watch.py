"""Watch against a scripted backend: diffing, outages, index resets, no busy loop."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from discovery import DiscoveryUnavailable, Health, Instance, Watch
from discovery.base import _TokenBucket, worst
from tests.support.waiting import wait_until


def inst(n: int, health: Health = Health.PASSING, **meta) -> Instance:
    return Instance("mesh-ai", f"ai-{n}", "127.0.0.1", 6000 + n, meta=meta, health=health)


class Scripted:
    """A Discovery whose answers the test sets; records every query's index."""

    def __init__(self):
        self.lock = threading.Lock()
        self.answer: tuple[int, list[Instance]] | Exception = (5, [])
        self.queries: list[int] = []
        self.changed = threading.Event()

    def set(self, answer):
        with self.lock:
            self.answer = answer
        self.changed.set()

    def instances(self, service, *, index=0, wait_s=0.0, passing_only=True):
        with self.lock:
            self.queries.append(index)
            answer = self.answer
        if isinstance(answer, Exception):
            raise answer
        if index > 0 and wait_s > 0 and index == answer[0]:
            # block like a registry would, until the test changes something
            self.changed.clear()
            self.changed.wait(wait_s)
            with self.lock:
                answer = self.answer
            if isinstance(answer, Exception):
                raise answer
        return answer[0], list(answer[1])


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, found):
        self.calls.append(sorted(i.instance_id for i in found))


@pytest.fixture
def scripted():
    return Scripted()


@pytest.fixture
def watch_factory(scripted):
    watches = []

    def make(rec, **kw):
        kw.setdefault("wait_s", 0.2)
        kw.setdefault("min_backoff_s", 0.01)
        kw.setdefault("max_backoff_s", 0.05)
        w = Watch(scripted, "mesh-ai", rec, **kw)
        watches.append(w)
        w.start()
        return w

    yield make
    for w in watches:
        w.stop()


def test_watch_reports_the_first_answer_even_when_empty(scripted, watch_factory):
    rec = Recorder()
    w = watch_factory(rec)
    assert w.wait_first(5.0)
    assert rec.calls == [[]]


def test_watch_ignores_returns_without_change_and_reports_meta_and_health_changes(scripted, watch_factory):
    rec = Recorder()
    scripted.set((5, [inst(1, concurrency="16")]))
    w = watch_factory(rec)
    wait_until(lambda: len(rec.calls) == 1)
    scripted.set((6, [inst(1, concurrency="16")]))  # index moved, nothing changed (Consul #3890)
    wait_until(lambda: w.index == 6)
    assert len(rec.calls) == 1
    scripted.set((7, [inst(1, concurrency="8")]))
    wait_until(lambda: len(rec.calls) == 2, what="meta change")
    scripted.set((8, [inst(1, Health.WARNING, concurrency="8")]))
    wait_until(lambda: len(rec.calls) == 3, what="health change")


def test_watch_keeps_last_membership_while_unavailable_and_recovers(scripted, watch_factory, caplog):
    rec = Recorder()
    scripted.set((5, [inst(1)]))
    w = watch_factory(rec)
    wait_until(lambda: len(rec.calls) == 1)
    with caplog.at_level(logging.INFO, logger="discovery.base"):
        scripted.set(DiscoveryUnavailable("agent at 127.0.0.1:1 refused the connection"))
        wait_until(lambda: w.failures >= 3, what="several failures")
        assert [i.instance_id for i in w.last_known] == ["ai-1"]
        assert len(rec.calls) == 1
        scripted.set((9, [inst(1), inst(2)]))
        wait_until(lambda: len(rec.calls) == 2, what="report after recovery")
    assert rec.calls[1] == ["ai-1", "ai-2"]
    assert w.failures == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the last known membership (1 instance(s))" in warnings[0].getMessage()
    assert any("is back after" in r.getMessage() for r in caplog.records)


def test_watch_resets_index_when_it_goes_backwards(scripted, watch_factory):
    rec = Recorder()
    scripted.set((100, [inst(1)]))
    w = watch_factory(rec)
    wait_until(lambda: w.index == 100)
    scripted.set((3, [inst(1)]))  # registry restarted
    wait_until(lambda: w.index_resets == 1, what="reset")
    wait_until(lambda: w.index == 3, what="index adopted after the reset")
    assert 0 in scripted.queries[1:]  # a non-blocking query followed the reset
    assert len(rec.calls) == 1


def test_watch_never_busy_loops_on_index_zero(scripted, watch_factory):
    rec = Recorder()
    scripted.set((0, [inst(1)]))  # a registry that answers index 0 and never blocks
    w = watch_factory(rec, wait_s=0.3)
    wait_until(lambda: len(scripted.queries) >= 2)
    time.sleep(0.5)  # a busy loop would make thousands of queries in this time
    assert w.index == 1
    assert 1 in scripted.queries  # 0 is never sent back as a blocking index
    assert len(scripted.queries) < 10  # burst 3, then 5/s


def test_watch_rate_limits_a_flapping_index(scripted, watch_factory):
    counter = {"i": 10}

    def flapping(service, *, index=0, wait_s=0.0, passing_only=True):
        counter["i"] += 1
        scripted.queries.append(index)
        return counter["i"], [inst(1)]

    scripted.instances = flapping
    watch_factory(Recorder(), rate_per_s=10.0, burst=2)
    started = time.monotonic()
    wait_until(lambda: len(scripted.queries) >= 7)
    # 2 at once, then 10/s: the 7th query cannot come before ~0.5 s
    assert time.monotonic() - started >= 0.4


def test_watch_survives_a_raising_callback(scripted, watch_factory):
    calls = []

    def bad(found):
        calls.append(found)
        raise RuntimeError("boom")

    scripted.set((5, [inst(1)]))
    watch_factory(bad)
    wait_until(lambda: len(calls) == 1)
    scripted.set((6, [inst(2)]))
    wait_until(lambda: len(calls) == 2)


def test_watch_stop_is_idempotent_and_joins(scripted):
    never = Watch(scripted, "mesh-ai", Recorder(), wait_s=0.2)
    never.stop()  # before start: fine, and the watch stays stopped
    never.start()
    assert never._thread is None
    w = Watch(scripted, "mesh-ai", Recorder(), wait_s=0.2)
    w.start()
    wait_until(lambda: len(scripted.queries) >= 1)
    w.stop()
    w.stop()
    assert not any(t.name.startswith("discovery-watch") for t in threading.enumerate())


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = _TokenBucket(rate_per_s=2.0, burst=2, clock=lambda: now[0])
    assert bucket.delay_s() == 0.0
    assert bucket.delay_s() == 0.0
    assert bucket.delay_s() == pytest.approx(0.5)
    now[0] += 10.0
    assert bucket.delay_s() == 0.0


def test_worst_health():
    assert worst([]) == Health.PASSING
    assert worst([Health.PASSING, Health.WARNING]) == Health.WARNING
    assert worst([Health.WARNING, Health.CRITICAL, Health.PASSING]) == Health.CRITICAL
