"""The Helper's dispatcher under failures, without sockets or processes: acks and heartbeats
are fed in as the service would, the clock is moved by editing the recorded times."""

from __future__ import annotations

import random

from mesh import make_task, wire
from mesh.dispatcher import ANY_HOLDER, Dispatcher
from mesh.metrics import HelperMetrics
from mesh.settings import HelperSettings

HELPER_INCARNATION = 0x1234


def _dispatcher(**settings) -> tuple[Dispatcher, list]:  # noqa: ANN003
    sent: list = []
    d = Dispatcher(
        HelperSettings(helper_id="h", data_dir="/nonexistent", reconcile_window_s=0.0,
                       **settings),
        helper_incarnation=HELPER_INCARNATION, reply_to="tcp://127.0.0.1:1",
        journal_append=lambda *a: None, journal_release=lambda key: None,
        connect=lambda endpoint, key: object(), send=lambda sock, frame: sent.append(frame) or True,
        close=lambda sock: None, metrics=HelperMetrics(), rng=random.Random(1))
    return d, sent


def _beat(d: Dispatcher, *, node_id: str = "n1", credit: int = 4, received: int = 0,
          held: tuple = (), beat: int = 1, acks: tuple = (), known: bool = True,
          running: int = 1) -> None:
    hb = wire.Heartbeat(
        node_id=node_id, incarnation=7, task_endpoint="tcp://127.0.0.1:2", concurrency=1,
        running=running,
        credit=credit, kinds=["k"], beat=beat, received=received, held_task_ids=list(held),
        helper_incarnation=HELPER_INCARNATION if known else 0)
    d.on_ack_batch(wire.decode_ack_batch(wire.encode_ack_batch(hb, list(acks))))


def _submit(d: Dispatcher, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        entry = d.admit(make_task("k", b"x"))
        d.durable(entry)
        ids.append(entry.task_id)
    return ids


def test_a_held_delivery_waiting_for_a_slot_is_not_sent_again_at_the_ack_timeout() -> None:
    d, _ = _dispatcher(ack_timeout_s=1.0)
    _beat(d, credit=3, known=False)
    waiting, lost = _submit(d, 2)
    assert d.dispatch_pass() == 2
    for task_id in (waiting, lost):
        d.tasks[task_id].dispatched_at -= 5.0  # long past the ack timeout, never STARTED
    _beat(d, credit=1, received=0, held=(waiting,), beat=2)  # received 0: no reconcile
    d.tick()
    assert d.tasks[waiting].state == wire.DISPATCHED and d.tasks[waiting].node_id == "n1"
    assert d.tasks[lost].state == wire.QUEUED  # not held, not started: sent again
    assert d.metrics.redeliveries.labels("ack_timeout")._value.get() == 1


def test_a_held_delivery_on_a_node_with_free_slots_is_sent_again_at_the_ack_timeout() -> None:
    """Held but not started while slots are free: the node is not making progress with it."""
    d, _ = _dispatcher(ack_timeout_s=1.0)
    _beat(d, credit=3, known=False)
    (stuck,) = _submit(d, 1)
    assert d.dispatch_pass() == 1
    d.tasks[stuck].dispatched_at -= 5.0
    _beat(d, credit=1, received=0, held=(stuck,), beat=2, running=0)
    d.tick()
    assert d.tasks[stuck].state == wire.QUEUED
    assert d.metrics.redeliveries.labels("ack_timeout")._value.get() == 1

def test_a_node_back_from_the_dead_gets_a_fresh_credit_ledger() -> None:
    d, _ = _dispatcher()
    _beat(d, credit=4, known=False)
    ids = _submit(d, 4)
    assert d.dispatch_pass() == 4
    node = d.nodes["n1"]
    d.node_dead(node, "missed_heartbeats")  # SIGSTOP: declared dead, its 4 re-queued
    assert all(d.tasks[t].state == wire.QUEUED for t in ids)
    # SIGCONT: the same incarnation beats again; it had received 4 deliveries from us.
    _beat(d, credit=4, received=4, held=tuple(ids), beat=50)
    back = d.nodes["n1"]
    assert back is not node and back.available == 4  # not 8: old deliveries are not credit
    _submit(d, 2)
    assert d.dispatch_pass() == 4  # the 4 re-queued ones (front of the lane), not 6
    # It has now received 4 + 4 and holds the 4 sent again: nothing is taken for lost.
    _beat(d, credit=0, received=8, held=tuple(ids), beat=51)
    assert all(d.tasks[t].state == wire.DISPATCHED for t in ids)
    assert d.metrics.redeliveries.labels("not_held")._value.get() == 0


def test_a_draining_node_that_leaves_discovery_keeps_its_tasks_until_its_heartbeats_stop() -> None:
    d, _ = _dispatcher()
    _beat(d, credit=2, known=False)
    ids = _submit(d, 2)
    assert d.dispatch_pass() == 2
    started = [wire.Ack(task_id=t, delivery=1, kind=wire.STARTED) for t in ids]
    _beat(d, credit=0, received=2, held=tuple(ids), beat=2, acks=started)
    hb = wire.Heartbeat(node_id="n1", incarnation=7, task_endpoint="tcp://127.0.0.1:2",
                        concurrency=1, credit=0, kinds=["k"], beat=3, received=2,
                        held_task_ids=ids, helper_incarnation=HELPER_INCARNATION, draining=True)
    d.on_ack_batch(wire.decode_ack_batch(wire.encode_ack_batch(hb, [])))
    d.node_gone("n1", "discovery", 7)
    assert "n1" in d.nodes
    assert all(d.tasks[t].state == wire.RUNNING and d.tasks[t].lost_deliveries == 0 for t in ids)
    # A node that is not draining and leaves discovery is dead at once.
    _beat(d, node_id="n2", credit=1, known=False)
    d.node_gone("n2", "discovery")
    assert "n2" not in d.nodes


def test_queued_tasks_past_their_deadline_expire_while_no_node_is_up() -> None:
    d, _ = _dispatcher()
    expired = d.admit(make_task("k", b"x", ttl_s=0.001))
    alive = d.admit(make_task("k", b"y", ttl_s=600))
    forever = d.admit(make_task("k", b"z"))
    for entry in (expired, alive, forever):
        d.durable(entry)
    expired.task.deadline_ns = 1  # long past
    d.tick()
    assert expired.state == wire.DEAD and expired.dead_reason == wire.EXPIRED
    assert alive.state == wire.QUEUED and forever.state == wire.QUEUED
    assert len(d.pending) == 2


def test_a_done_for_a_task_queued_again_after_a_restart_takes_it_out_of_the_queue() -> None:
    """After a Helper restart every unfinished task is queued again; a node that still ran one
    answers DONE before it is adopted. The task is finished: it must never be dispatched again
    (its payload is dropped on success; a CI run once spun on sending the empty shell)."""
    d, sent = _dispatcher()
    (task_id,) = _submit(d, 1)  # queued, as finish_replay leaves it
    d.tasks[task_id].holders = (ANY_HOLDER,)  # as finish_replay marks it: holder unknown
    done = wire.Ack(task_id=task_id, delivery=1, kind=wire.DONE, result=b"r")
    _beat(d, credit=4, known=False, acks=(done,))
    assert d.find(task_id).state == wire.SUCCEEDED
    assert len(d.pending) == 0
    assert d.dispatch_pass() == 0 and not sent
    assert d.find(task_id).state == wire.SUCCEEDED and d.find(task_id).result == b"r"


def test_a_late_done_while_a_retry_waits_finishes_the_task_and_cancels_the_retry() -> None:
    d, sent = _dispatcher(retry_base_s=5.0, retry_cap_s=5.0)
    _beat(d, credit=4, known=False)
    (task_id,) = _submit(d, 1)
    assert d.dispatch_pass() == 1
    failed = wire.Ack(task_id=task_id, delivery=1, kind=wire.FAILED, error="boom",
                      error_class=wire.RETRYABLE)
    _beat(d, credit=4, received=1, beat=2, acks=(failed,))
    entry = d.tasks[task_id]
    assert entry.state == wire.QUEUED and entry in d.retry_waiting
    # A duplicate delivery answered from the node's dedup window, arriving late.
    done = wire.Ack(task_id=task_id, delivery=1, kind=wire.DONE, result=b"r", from_dedup=True)
    _beat(d, credit=4, received=1, beat=3, acks=(done,))
    assert entry.state == wire.SUCCEEDED
    d.tick()  # the retry is not due yet, but it is void: it no longer takes queue room
    assert entry not in d.retry_waiting and len(d.pending) == 0
    sent.clear()
    assert d.dispatch_pass() == 0 and not sent
    assert entry.state == wire.SUCCEEDED


def test_task_entries_stay_out_of_the_cycle_collector_and_drop_the_task_on_success() -> None:
    """100,000 retained results must not make each full collection stall the loop (they did:
    50-75 ms), nor keep their wire Task (half of each entry's memory)."""
    import gc

    d, _ = _dispatcher()
    _beat(d, credit=4, known=False)
    (task_id,) = _submit(d, 1)
    entry = d.tasks[task_id]
    assert not gc.is_tracked(entry)
    assert d.dispatch_pass() == 1
    done = wire.Ack(task_id=task_id, delivery=1, kind=wire.DONE, result=b"r")
    _beat(d, credit=4, received=1, beat=2, acks=(done,))
    assert entry.state == wire.SUCCEEDED and entry.task is None and entry.encoded == b""
    status = entry.status()
    assert status.submitted_ns > 0 and status.kind == "k" and status.result == b"r"
    record = entry.record()  # a journal rewrite of a finished task still says what it was
    assert record.task.task_id == task_id and record.task.kind == "k"
