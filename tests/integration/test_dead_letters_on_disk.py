"""Dead letters live on disk, not in the Helper's heap: a dead task leaves the task table for the
dead-letter store (its full record, the task as submitted included; mesh/deadletter.py), and from
there it answers status, cancel, a duplicate submit, list, inspect, replay and purge, before and
after a restart and across journal compaction."""

from __future__ import annotations

import asyncio

import pytest

from mesh import HelperSettings, wire
from mesh.deadletter import answer
from mesh.dispatcher import Dispatcher
from mesh.helper import Helper

pytestmark = pytest.mark.timeout(120)


def _dlq(helper: Helper, op: int, task_ids: list[str] = (), limit: int = 100):  # noqa: ANN202
    request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
    request.dead_letter.op = op
    request.dead_letter.task_ids.extend(task_ids)
    request.dead_letter.limit = limit
    return answer(helper.dispatcher, request.dead_letter, 1).dead_letter


def _on_disk_only(helper: Helper, ids: list[str]) -> None:
    d = helper.dispatcher
    assert not any(t in d.tasks for t in ids)  # not in the heap's table
    assert sorted(d.dead.task_ids()) == sorted(ids)
    assert sorted(d.dead_letters) == sorted(ids)
    # a store in the data dir (not the in-memory fallback of a Dispatcher built bare)
    assert d.dead._memory is None and any(d.dead._dir.glob("*.spill"))


def test_dead_letters_are_out_of_the_table_and_answer_every_operation_across_restarts(
        tmp_path, monkeypatch) -> None:  # noqa: ANN001
    # small segments: the journal compacts while dead letters are live, rewriting them from disk
    settings = HelperSettings(helper_id="dlq", data_dir=str(tmp_path / "h"),
                              journal_segment_bytes=64 * 2**10)

    rewritten: list[str] = []
    rewrite = Dispatcher.rewrite

    def counting_rewrite(self: Dispatcher, key: bytes) -> list:
        rewritten.append(key.decode())
        return rewrite(self, key)

    monkeypatch.setattr(Dispatcher, "rewrite", counting_rewrite)

    async def scenario() -> None:
        helper = Helper(settings)
        await helper.start()
        try:
            ids = [await helper.submit("k", f"payload-{i}".encode()) for i in range(20)]
            d = helper.dispatcher
            for task_id in ids:
                d._dead(d.tasks[task_id], wire.FATAL_ERROR, f"boom {task_id}")
            _on_disk_only(helper, ids)
            status = helper.status(ids[3])
            assert status.state == wire.DEAD and status.error == f"boom {ids[3]}"
            assert d.cancel(ids[3]).code == wire.ALREADY_FINISHED
            assert d.cancel(ids[3]).state == wire.DEAD
            # segments fill with tasks that die and are purged: compaction rewrites the live
            # dead letters forward, from their store
            for _ in range(3):
                filler = [await helper.submit("filler", b"f" * 400) for _ in range(200)]
                for task_id in filler:
                    d._dead(d.tasks[task_id], wire.FATAL_ERROR, "filler")
                assert _dlq(helper, wire.PURGE, filler).affected == 200
                await helper.journal.sync()
                helper.journal.compact()  # as the Helper's timer does (or it did already)
                await helper.journal.sync()
            assert set(ids) <= set(rewritten)
            await helper.journal.sync()
        finally:
            await helper.stop()

        again = Helper(settings)
        await again.start()
        try:
            _on_disk_only(again, ids)
            listed = _dlq(again, wire.LIST, limit=5)
            assert listed.affected == 20
            assert [s.task_id for s in listed.tasks] == ids[:5]  # oldest first
            inspected = _dlq(again, wire.INSPECT, [ids[7]])
            (one,) = inspected.tasks
            assert one.payload == b"payload-7"
            assert one.state == wire.DEAD and one.error == f"boom {ids[7]}"
            assert _dlq(again, wire.REPLAY, [ids[0]]).affected == 1
            assert _dlq(again, wire.PURGE, [ids[1]]).affected == 1
            d = again.dispatcher
            assert d.tasks[ids[0]].state == wire.QUEUED and d.tasks[ids[0]].attempt == 1
            assert d.tasks[ids[0]].task.payload == b"payload-0"
            assert d.find(ids[1]) is None
            _on_disk_only(again, ids[2:])
            await again.journal.sync()
        finally:
            await again.stop()

        third = Helper(settings)
        await third.start()
        try:
            _on_disk_only(third, ids[2:])
            assert third.dispatcher.find(ids[0]).state == wire.QUEUED
            assert third.dispatcher.find(ids[1]) is None
            assert _dlq(third, wire.PURGE, []).affected == 18
            assert len(third.dispatcher.dead) == 0 and not third.dispatcher.dead_letters
        finally:
            await third.stop()

    asyncio.run(scenario())
