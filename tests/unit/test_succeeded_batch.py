"""The SUCCEEDED records of one ack batch go to the journal as one TASKS record; a replay of it
rebuilds the same retained results, and each task's key is released only after its record."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from mesh import make_task, records, wire
from mesh.dispatcher import Dispatcher
from mesh.errors import WireError
from mesh.journal.record import RECORD_OVERHEAD
from mesh.metrics import HelperMetrics
from mesh.settings import HelperSettings

HELPER_INCARNATION = 0x1234


def _dispatcher(journal: list, released: list, *, limit: int = 1 << 20) -> Dispatcher:
    def append(record_type: int, key: bytes, payload: bytes) -> None:
        journal.append((record_type, key, payload))

    def release(key: bytes) -> None:
        released.append((key, len(journal)))  # how many records were appended by then

    return Dispatcher(
        HelperSettings(helper_id="h", data_dir="/nonexistent", reconcile_window_s=0.0),
        helper_incarnation=HELPER_INCARNATION, reply_to="tcp://127.0.0.1:1",
        journal_append=append, journal_release=release,
        connect=lambda endpoint, key: object(), send=lambda sock, frame: True,
        close=lambda sock: None, metrics=HelperMetrics(), rng=random.Random(1),
        record_limit_bytes=limit)


def _batch(acks: list, credit: int = 8, beat: int = 1):  # noqa: ANN202
    hb = wire.Heartbeat(node_id="n1", incarnation=7, task_endpoint="tcp://127.0.0.1:2",
                        concurrency=8, credit=credit, kinds=["k"], beat=beat,
                        helper_incarnation=HELPER_INCARNATION, max_message_bytes=2**24)
    return wire.decode_ack_batch(wire.encode_ack_batch(hb, acks))


def _run(d: Dispatcher, count: int) -> list[str]:
    d.on_ack_batch(_batch([]))
    ids = []
    for _ in range(count):
        entry = d.admit(make_task("k", b"x"))
        d.durable(entry)
        ids.append(entry.task_id)
    assert d.dispatch_pass() == count
    d.on_ack_batch(_batch([wire.Ack(task_id=t, delivery=1, kind=wire.DONE, attempt=1,
                                    result=t.encode()) for t in ids], beat=2))
    return ids


def test_one_ack_batch_appends_one_record_for_its_successes_and_releases_keys_after_it() -> None:
    journal, released = [], []
    d = _dispatcher(journal, released)
    ids = _run(d, 5)
    tasks_records = [r for r in journal if r[0] == records.TASKS]
    assert len(tasks_records) == 1 and tasks_records[0][1] == b""
    position = journal.index(tasks_records[0]) + 1
    assert sorted(key for key, _ in released) == sorted(t.encode() for t in ids)
    assert all(appended >= position for _, appended in released)
    assert d.stats["succeeded"] == 5

    again = _dispatcher([], [])
    for record_type, key, payload in journal:
        again.replay(SimpleNamespace(type=record_type, key=key, payload=payload))
    again.finish_replay()
    for task_id in ids:
        found = again.find(task_id)
        assert found.state == wire.SUCCEEDED and found.result == task_id.encode()
    assert not again.tasks


def test_records_that_do_not_fit_one_record_are_split_and_a_lone_one_is_a_task_record() -> None:
    journal, released = [], []
    d = _dispatcher(journal, released, limit=400)  # room for about two records of ~150 bytes
    ids = _run(d, 5)
    appended = [r for r in journal if r[0] in (records.TASK, records.TASKS)][5:]  # after admits
    assert len(appended) >= 2
    assert all(RECORD_OVERHEAD + len(key) + len(payload) <= 400 for _, key, payload in appended)
    stored = [p for t, _, p in appended if t == records.TASK]
    for t, _, payload in appended:
        if t == records.TASKS:
            stored.extend(wire.split_records(payload))
    assert sorted(wire.decode_task_record(p).task.task_id for p in stored) == sorted(ids)


def test_split_records_returns_what_join_records_joined_and_refuses_a_cut_payload() -> None:
    items = [b"", b"a", b"x" * 200, b"y" * 20000]
    assert wire.split_records(wire.join_records(items)) == items
    with pytest.raises(WireError):
        wire.split_records(wire.join_records(items)[:-1])
    with pytest.raises(WireError):
        wire.split_records(b"\x80")
