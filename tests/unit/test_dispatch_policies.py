"""The dispatcher's use of rate limits and circuit breakers, without sockets or processes: a
held-back kind stays queued with no attempt or delivery charged, other kinds go past it, the
service is told when to wake, TTL still applies, and acks feed the breakers. The clock is
`time.monotonic`, replaced by a fake one the test moves."""

from __future__ import annotations

import random
import time

import pytest

from mesh import make_task, wire
from mesh.dispatcher import Dispatcher
from mesh.metrics import HelperMetrics
from mesh.policies.circuit import State
from mesh.settings import HelperSettings

HELPER_INCARNATION = 0x1234


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):  # noqa: ANN001, ANN201
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c)
    return c


def _dispatcher(**settings) -> tuple[Dispatcher, list]:  # noqa: ANN003
    events: list = []
    d = Dispatcher(
        HelperSettings(helper_id="h", data_dir="/nonexistent", reconcile_window_s=0.0,
                       **settings),
        helper_incarnation=HELPER_INCARNATION, reply_to="tcp://127.0.0.1:1",
        journal_append=lambda *a: None, journal_release=lambda key: None,
        connect=lambda endpoint, key: object(), send=lambda sock, frame: True,
        close=lambda sock: None, metrics=HelperMetrics(), rng=random.Random(1),
        on_event=lambda kind, info: events.append((kind, info)))
    return d, events


def _beat(d: Dispatcher, *, credit: int = 100, beat: int = 1, acks: tuple = (),
          kinds: tuple = ("vision", "text"), held: tuple = (), kinds_full: tuple = (),
          running: int = 0, concurrency: int = 16) -> None:
    hb = wire.Heartbeat(
        node_id="n1", incarnation=7, task_endpoint="tcp://127.0.0.1:2", concurrency=concurrency,
        running=running, credit=credit, kinds=list(kinds), beat=beat,
        held_task_ids=list(held), kinds_full=list(kinds_full))
    d.on_ack_batch(wire.decode_ack_batch(wire.encode_ack_batch(hb, list(acks))))


def _submit(d: Dispatcher, kind: str, count: int, **options) -> list[str]:  # noqa: ANN003
    ids = []
    for _ in range(count):
        entry = d.admit(make_task(kind, b"x", **options))
        d.durable(entry)
        ids.append(entry.task_id)
    return ids


def _states(d: Dispatcher, ids: list[str]) -> list[int]:
    return [d.find(t).state for t in ids]  # dead letters are out of the table: find them


def test_a_rate_limited_kind_waits_queued_while_other_kinds_go_past_it(clock) -> None:  # noqa: ANN001
    d, _ = _dispatcher(rate_limits={"vision": "10/s,burst=3"})
    _beat(d)
    vision = _submit(d, "vision", 10)
    text = _submit(d, "text", 5)
    assert d.dispatch_pass() == 3 + 5  # the burst, and every unlimited task
    assert _states(d, vision).count(wire.DISPATCHED) == 3
    assert all(s == wire.DISPATCHED for s in _states(d, text))
    waiting = [t for t in vision if d.tasks[t].state == wire.QUEUED]
    # no attempt, no delivery charged to what waits
    assert all(d.tasks[t].attempt == 1 and d.tasks[t].deliveries == 0 for t in waiting)
    assert d.held_back == {"vision"}
    assert d.wake_at == pytest.approx(clock.now + 0.1)  # one token at 10/s
    clock.now += 0.1
    assert d.dispatch_pass() == 1
    clock.now += 0.35
    assert d.dispatch_pass() == 3


def test_the_rate_limit_holds_over_a_long_run_of_passes(clock) -> None:  # noqa: ANN001
    d, _ = _dispatcher(rate_limits={"vision": "50/s,burst=5"})
    _beat(d, credit=100_000)
    _submit(d, "vision", 2000)
    sent = 0
    for _ in range(1000):  # 10 s of passes every 10 ms
        sent += d.dispatch_pass()
        clock.now += 0.01
    assert 5 + 500 - 1 <= sent <= 5 + 500  # the burst, then 50/s


def test_throttled_time_is_counted_in_the_metric(clock) -> None:  # noqa: ANN001
    d, _ = _dispatcher(rate_limits={"vision": "1/s,burst=1"})
    _beat(d)
    _submit(d, "vision", 3)
    d.dispatch_pass()  # one goes; the kind is throttled from here
    d.dispatch_pass()
    clock.now += 0.5
    d.update_gauges()
    assert d.metrics.rate_limited.labels("vision")._value.get() == pytest.approx(0.5)
    assert d.policy_stats()["throttled.vision"] == 1.0


def test_a_throttled_task_past_its_ttl_goes_dead_expired_without_being_sent(clock) -> None:  # noqa: ANN001
    d, _ = _dispatcher(rate_limits={"vision": "1/h,burst=1"})
    _beat(d)
    first, late = _submit(d, "vision", 2, ttl_s=60)
    assert d.dispatch_pass() == 1
    d.tasks[late].task.deadline_ns = time.time_ns() - 1  # the submitter's deadline passed
    clock.now += 1.5
    d.tick()  # the sweep over held-back kinds
    dead = d.find(late)  # out of the table: a dead letter, in its store
    assert dead.state == wire.DEAD
    assert wire.dead_reason_name(dead.dead_reason) == "EXPIRED"
    assert dead.deliveries == 0


def _fail(task_id: str, delivery: int = 1, **fields) -> wire.Ack:  # noqa: ANN003
    return wire.Ack(task_id=task_id, delivery=delivery, kind=wire.FAILED,
                    error_class=fields.pop("error_class", wire.RETRYABLE), error="boom",
                    **fields)


def _done(task_id: str, delivery: int = 1) -> wire.Ack:
    return wire.Ack(task_id=task_id, delivery=delivery, kind=wire.DONE, result=b"ok")


def test_a_breaker_opens_holds_the_kind_queued_probes_and_closes(clock) -> None:  # noqa: ANN001
    d, events = _dispatcher(breakers="all", breaker_min_calls=4, breaker_window_calls=10,
                            breaker_cool_down_s=5.0, retry_base_s=0.001, retry_cap_s=0.001,
                            max_attempts=10)
    _beat(d)
    failing = _submit(d, "vision", 4)
    assert d.dispatch_pass() == 4
    _beat(d, beat=2, acks=tuple(_fail(t) for t in failing))
    assert d.breakers.state("vision") is State.OPEN
    assert events[-1][0] == "circuit_open" and events[-1][1]["name"] == "vision"
    assert d.metrics.circuit_state.labels("vision", "kind")._value.get() == 2
    clock.now += 0.01
    d.tick()  # the retries are due
    queued = failing + _submit(d, "vision", 3)
    text = _submit(d, "text", 2)
    assert d.dispatch_pass() == 2  # only the other kind
    assert all(d.tasks[t].state == wire.QUEUED for t in queued)
    assert all(d.tasks[t].attempt == 2 for t in failing)  # no attempt charged while held
    assert d.wake_at == pytest.approx(clock.now + 5.0, abs=0.02)
    clock.now += 5.0
    assert d.dispatch_pass() == 1  # the probe, and only it
    assert d.breakers.state("vision") is State.HALF_OPEN
    assert d.dispatch_pass() == 0
    (probe,) = [t for t in queued if d.tasks[t].state == wire.DISPATCHED]
    _beat(d, beat=3, acks=(_done(probe, d.tasks[probe].delivery),) + tuple(
        _done(t) for t in text))
    assert d.breakers.state("vision") is State.CLOSED
    assert events[-1][0] == "circuit_closed"
    assert d.dispatch_pass() == len(queued) - 1  # nothing lost: all the rest go


def test_a_dependency_down_charges_its_breaker_and_holds_every_kind_that_names_it(
        clock) -> None:  # noqa: ANN001
    d, events = _dispatcher(breaker_min_calls=2, breaker_window_calls=10,
                            breaker_cool_down_s=5.0)
    _beat(d)
    ids = _submit(d, "vision", 2)
    d.dispatch_pass()
    _beat(d, beat=2, acks=tuple(_fail(t, dependency="ocr-api") for t in ids))
    assert d.breakers.state("ocr-api", "dependency") is State.OPEN
    assert d.breakers.state("vision") is State.CLOSED  # the kind's own is not charged
    assert events[-1][1]["scope"] == "dependency"
    _submit(d, "vision", 2)
    assert d.dispatch_pass() == 0
    assert d.policy_stats()["circuit.dependency.ocr-api"] == 2.0


def test_fatal_and_retry_later_failures_do_not_open_a_breaker(clock) -> None:  # noqa: ANN001
    d, _ = _dispatcher(breakers="all", breaker_min_calls=2)
    _beat(d)
    ids = _submit(d, "vision", 4)
    d.dispatch_pass()
    _beat(d, beat=2, acks=(_fail(ids[0], error_class=wire.FATAL),
                           _fail(ids[1], error_class=wire.FATAL),
                           _fail(ids[2], error_class=wire.RETRY_LATER, retry_after_ms=10),
                           _fail(ids[3], error_class=wire.RETRY_LATER, retry_after_ms=10)))
    assert d.breakers.state("vision") is State.CLOSED


def test_a_child_that_died_is_a_lost_delivery_not_an_attempt(clock) -> None:  # noqa: ANN001
    d, _ = _dispatcher(max_lost_deliveries=2, breakers="off")
    _beat(d)
    (task_id,) = _submit(d, "vision", 1)
    d.dispatch_pass()
    _beat(d, beat=2, acks=(_fail(task_id, lost=True),))
    entry = d.tasks[task_id]
    assert entry.state == wire.QUEUED and entry.attempt == 1 and entry.lost_deliveries == 1
    assert d.dispatch_pass() == 1
    _beat(d, beat=3, acks=(_fail(task_id, delivery=2, lost=True),))
    assert entry.state == wire.DEAD
    assert wire.dead_reason_name(entry.dead_reason) == "DELIVERY_LIMIT"


def test_by_default_only_a_named_dependency_charges_a_breaker(clock) -> None:  # noqa: ANN001
    d, _ = _dispatcher(breaker_min_calls=2)
    _beat(d)
    ids = _submit(d, "vision", 4)
    d.dispatch_pass()
    _beat(d, beat=2, acks=tuple(_fail(t) for t in ids[:2]) + (_fail(ids[2], lost=True),))
    assert d.breakers.state("vision") is State.CLOSED
    assert d.breakers.all_closed


def test_a_held_delivery_of_a_kind_at_its_node_limit_is_not_sent_again_at_the_ack_timeout(
        clock) -> None:  # noqa: ANN001
    d, _ = _dispatcher(ack_timeout_s=1.0)
    _beat(d)
    (task_id,) = _submit(d, "vision", 1)
    d.dispatch_pass()
    clock.now += 5.0
    _beat(d, beat=2, held=(task_id,), kinds_full=("vision",), running=2)
    d.tick()
    assert d.tasks[task_id].state == wire.DISPATCHED
