"""What a Helper group's leader sends a follower whose log it replaces (a snapshot): records
that replay to every task the leader knows, finished ones included.

The chaos test's group mode lost accepted tasks this way: the killed leader came back with a
log that had to be cut back, was reset by a snapshot built from the dispatcher's table only
(succeeded tasks live in the retained store, dead ones in the dead-letter store), and once it
led again it answered those tasks as unknown."""

from __future__ import annotations

import collections
import random

from mesh import make_task, wire
from mesh.dispatcher import Dispatcher
from mesh.metrics import HelperMetrics
from mesh.settings import HelperSettings

Record = collections.namedtuple("Record", "type key payload")


def _dispatcher() -> Dispatcher:
    return Dispatcher(
        HelperSettings(helper_id="h", data_dir="/nonexistent", reconcile_window_s=0.0),
        helper_incarnation=0x1234, reply_to="tcp://127.0.0.1:1",
        journal_append=lambda *a: None, journal_release=lambda key: None,
        connect=lambda endpoint, key: object(), send=lambda sock, frame: True,
        close=lambda sock: None, metrics=HelperMetrics(), rng=random.Random(1))


def _finish(d: Dispatcher, acks: list) -> None:
    hb = wire.Heartbeat(node_id="n1", incarnation=7, task_endpoint="tcp://127.0.0.1:2",
                        concurrency=4, running=0, credit=4, kinds=["k"], beat=2, received=3,
                        helper_incarnation=0x1234)
    d.on_ack_batch(wire.decode_ack_batch(wire.encode_ack_batch(hb, acks)))


def test_a_snapshot_replays_to_every_task_the_leader_knows_succeeded_and_dead_ones_included() -> None:
    leader = _dispatcher()
    hb = wire.Heartbeat(node_id="n1", incarnation=7, task_endpoint="tcp://127.0.0.1:2",
                        concurrency=4, running=0, credit=4, kinds=["k"], beat=1,
                        helper_incarnation=0)
    leader.on_ack_batch(wire.decode_ack_batch(wire.encode_ack_batch(hb, [])))
    ids = []
    for _ in range(3):
        entry = leader.admit(make_task("k", b"x"))
        leader.durable(entry)
        ids.append(entry.task_id)
    succeeded, dead, running = ids
    assert leader.dispatch_pass() == 3
    _finish(leader, [
        wire.Ack(task_id=succeeded, delivery=1, kind=wire.DONE, result=b"r"),
        wire.Ack(task_id=dead, delivery=1, kind=wire.FAILED, error="no", error_class=wire.FATAL)])
    assert leader.find(succeeded).state == wire.SUCCEEDED
    assert leader.find(dead).state == wire.DEAD
    assert succeeded not in leader.tasks and dead not in leader.tasks  # in their stores

    follower = _dispatcher()  # a follower reset by the snapshot, which then leads
    for type_, key, payload in leader.snapshot_records():
        follower.replay(Record(type_, key, payload))
    follower.finish_replay()

    assert follower.find(succeeded).state == wire.SUCCEEDED
    assert follower.find(succeeded).result == b"r"
    assert follower.find(dead).state == wire.DEAD
    assert follower.find(dead).dead_reason == wire.FATAL_ERROR
    assert follower.dead_letter(dead) is not None
    assert follower.find(running) is not None and not follower.find(running).terminal


def test_a_group_refusal_fails_a_duplicate_of_a_known_task_too() -> None:
    """A leader's table holds tasks replayed from its log; they are accepted by the group only
    once the term's commit covers them. A resent id (a duplicate) whose sync then fails with
    a group refusal must not be answered "accepted" (a single Helper's journal error still
    answers a duplicate of a durable task OK: its own disk has it)."""
    from mesh.errors import JournalError, NotEnoughReplicas, StoppedLeading
    from mesh.helper import Helper
    from mesh.trust import Trust

    helper = Helper(HelperSettings(helper_id="h", data_dir="/nonexistent"), trust=Trust.plain())
    helper.dispatcher = d = _dispatcher()
    entry = d.admit(make_task("k", b"x"))
    d.durable(entry)  # as a replayed task: QUEUED, not ACCEPTING
    for error, code in ((NotEnoughReplicas(0, 1, "g"), NotEnoughReplicas(0, 1, "g").code),
                        (StoppedLeading("the term ended"), StoppedLeading("x").code),
                        (JournalError("disk"), wire.OK)):
        result = wire.SubmitResult(task_id=entry.task_id, code=wire.OK, duplicate=True)
        helper._settle_submit([result], [], [(result, entry)], error, 0.0, kick=False)
        assert result.code == code, error
