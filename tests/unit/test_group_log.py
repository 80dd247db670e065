"""A Helper group member's log: which entries a journal can still give their (epoch, index)
for catch-up from the log (LogScan), and a new leader's backlog built from them. No sockets."""

from __future__ import annotations

import asyncio

from mesh import records
from mesh.group_log import NOOP_KEY, POSITION_KEY, LeaderJournal, LogScan, encode_position
from mesh.journal import Journal
from mesh.journal.record import Record
from mesh.replication import Ack, EpochHistory, Hello, LeaderState, SnapshotNeeded, Start


def position(last_index: int, history=((1, 1),)) -> Record:  # noqa: ANN001
    return Record(records.POSITION, POSITION_KEY, encode_position(1, last_index, EpochHistory(history)))


def task(n: int) -> Record:
    return Record(records.TASK, f"t{n}".encode(), b"x" * 10)


def scan(recs: list[Record]) -> LogScan:
    s = LogScan()
    for r in recs:
        s.feed(r)
    s.finish()
    return s


def leader_journal(path, state: LeaderState, send_now=lambda: None):  # noqa: ANN001, ANN201
    """A journal at `path` and the LeaderJournal of `state` over it (this member holds the lock)."""
    journal = Journal(path)
    return journal, LeaderJournal(journal, state, holds=lambda: True, send_now=send_now)


async def first_term_with_three_tasks(path, state: LeaderState):  # noqa: ANN001, ANN201
    """A new log in its first term holding tasks t0..t2, synced; its journal is running."""
    journal, lj = leader_journal(path, state)
    assert list(lj.recover()) == []
    journal.start(asyncio.get_running_loop())
    for n in range(3):
        lj.append(records.TASK, f"t{n}".encode(), b"x")
    await lj.sync()
    return journal, lj


def test_entries_between_positions_get_their_indexes_and_epochs():
    s = scan([task(0), position(3, ((1, 1), (2, 4))),  # before the first POSITION: no index
              task(1), task(2), position(5, ((1, 1), (2, 4))),
              task(3), position(6, ((1, 1), (2, 4)))])
    assert [(e.epoch, e.index, e.key) for e in s.entries] == [(2, 4, b"t1"), (2, 5, b"t2"), (2, 6, b"t3")]
    assert s.position.last_index == 6 and not s.position.dirty


def test_compaction_rewrites_between_equal_positions_are_not_entries():
    s = scan([position(2), task(1), task(2), position(4),
              task(90), task(91), position(4),  # a compaction's rewrites, bracketed
              task(3), position(5)])
    assert [(e.index, e.key) for e in s.entries] == [(3, b"t1"), (4, b"t2"), (5, b"t3")]


def test_a_run_that_does_not_add_up_drops_everything_before_it():
    # a crash between append and sync left a record the next POSITION does not count
    s = scan([position(1), task(1), position(2), task(99), task(2), position(3), task(3), position(4)])
    assert [e.index for e in s.entries] == [4]


def test_a_dirty_tail_gives_no_entries():
    s = scan([position(1), task(1), position(2), task(2)])
    assert s.position.dirty and not s.entries


def test_a_new_leader_catches_a_follower_up_from_its_log_and_snapshots_only_past_it():
    entries = list(scan([position(10), *(task(n) for n in range(5)), position(15)]).entries)
    lead = LeaderState(group="g", leader_id="L", epoch=2, followers=("f1", "f2"), min_replicas=1,
                       last_index=15, history=EpochHistory([(1, 1)]))
    assert lead.restore_backlog(entries) == 5 and lead.backlog_first_index == 11
    lead.append(records.NOOP, NOOP_KEY, b"")
    # behind, but the log still has what it lacks: a Start, then the records it lacks
    start = lead.on_hello(Hello("f1", 1, 12, 1), 0.0)
    assert isinstance(start, Start) and start.truncate_after == 12
    batch = lead.to_send("f1", 0.0)
    assert [e.index for e in batch.entries] == [13, 14, 15, 16]
    assert (batch.prev_index, batch.prev_epoch) == (12, 1)
    lead.durable(16)
    lead.on_ack(Ack("f1", 2, 16), 0.1)
    assert lead.committed(16)
    # behind what the log still holds (compacted past it): a snapshot
    assert isinstance(lead.on_hello(Hello("f2", 1, 9, 1), 0.0), SnapshotNeeded)


def test_restore_backlog_takes_only_entries_that_join_up():
    lead = LeaderState(group="g", leader_id="L", epoch=2, followers=("f1",), min_replicas=1, last_index=15)
    entries = list(scan([position(10), *(task(n) for n in range(4)), position(14)]).entries)
    assert lead.restore_backlog(entries) == 0  # ends at 14, the log at 15
    assert lead.backlog_first_index == 16


def test_the_leader_journal_rebuilds_its_backlog_from_its_journal(tmp_path):  # noqa: ANN001
    async def scenario() -> None:
        first = LeaderState(group="g", leader_id="L", epoch=1, followers=(), min_replicas=0,
                            group_size=2)
        journal, lj = await first_term_with_three_tasks(tmp_path / "j", first)
        lj.compact()  # nothing to rewrite: brackets nothing, breaks nothing
        lj.append(records.TASK, b"t3", b"x")
        await lj.close()

        second = LeaderState(group="g", leader_id="L2", epoch=2, followers=(), min_replicas=0,
                             last_index=4, history=EpochHistory([(1, 1)]), group_size=2)
        journal, lj = leader_journal(tmp_path / "j", second)
        replayed = [r.key for r in lj.recover() if r.type == records.TASK]
        assert replayed == [b"t0", b"t1", b"t2", b"t3"]
        assert [(e.epoch, e.index, e.key) for e in second.backlog] == [
            (1, 1, b"t0"), (1, 2, b"t1"), (1, 3, b"t2"), (1, 4, b"t3")]
        journal.start(asyncio.get_running_loop())
        await lj.close()

    asyncio.run(scenario())


def test_a_dirty_log_reports_its_true_end_to_a_failover_plan_and_still_gets_a_snapshot(tmp_path):  # noqa: ANN001
    """The old leader, SIGKILLed with records appended after its last sync, restarts with a
    dirty log. It must still report what it durably holds to a new leader's FailoverPlan: it
    may be the one member of the recovery quorum with a committed record (here index 3, acked
    by a follower the plan did not hear). It said Hello from index 0 before, and the new
    leader served without that record."""
    import types

    from mesh import replica_link
    from mesh.group import _Follower
    from mesh.group_log import FollowerLog
    from mesh.replication import FailoverPlan

    async def scenario() -> None:
        state = LeaderState(group="g", leader_id="h1", epoch=1, followers=(), min_replicas=1,
                            group_size=3)
        journal, lj = leader_journal(tmp_path / "h1" / "journal", state)
        assert list(lj.recover()) == []
        journal.start(asyncio.get_running_loop())
        for _ in range(3):
            lj.append(records.NOOP, NOOP_KEY, b"")
        await lj.sync()  # index 3 durable here (and, say, acked by h3: committed)
        lj.append(records.TRANSITION, b"t0", b"y")  # written, no POSITION after it
        await journal.sync()
        await journal.close()  # a SIGKILL: no closing POSITION

        flog = FollowerLog(tmp_path / "h1" / "journal", segment_size_bytes=2**20,
                           max_record_bytes=2**20)
        position = flog.open()
        assert position.dirty and position.last_index == 3
        member = types.SimpleNamespace(settings=types.SimpleNamespace(member_id="h1"))
        hello = replica_link.decode(replica_link.encode(_Follower(member, flog, position)._hello()))
        await flog.close()

        # h2 won the lock with a log that ends at 2; it hears h1 (the quorum of 3 - 1 = 2)
        plan = FailoverPlan("h2", 1, 2, group_size=3, min_replicas=1)
        plan.report(hello.member_id, hello.last_epoch, hello.last_index)  # as GroupMember does
        assert plan.ready and plan.source() == "h1"  # h2 yields to the log with index 3
        assert hello.reset and (hello.last_epoch, hello.last_index) == (1, 3)

        # whoever leads starts h1's stream over from nothing (a snapshot): it is acked nothing
        leader = LeaderState(group="g", leader_id="h3", epoch=2, followers=(), min_replicas=1,
                             last_index=3, history=EpochHistory([(1, 1)]), group_size=3)
        answer = leader.on_hello(hello, 0.0)
        assert isinstance(answer, (Start, SnapshotNeeded))
        assert (answer.truncate_after if isinstance(answer, Start) else answer.from_index - 1) == 0
        assert leader.followers["h1"].acked == 0

    asyncio.run(scenario())


def test_a_hello_of_the_previous_replication_version_still_decodes() -> None:
    from mesh import replica_link

    frame = replica_link._encoder.encode(["hello", 1, "h1", 4, 10, 3])
    assert replica_link.decode(frame) == Hello("h1", 4, 10, 3)


def test_a_leader_whose_log_is_dirty_gives_its_tail_indexes_so_followers_get_it(tmp_path):  # noqa: ANN001
    """A SIGKILLed leader's journal can hold records past its last POSITION (the flusher writes
    the whole buffer, so a submit admitted while it ran goes out without the POSITION that
    follows it). The Helper replays them; if this member leads again they must become entries
    of its term, or a client resending such a task's id is answered "accepted" (a duplicate)
    while the record lives on the leader alone."""
    async def scenario() -> None:
        first = LeaderState(group="g", leader_id="h1", epoch=1, followers=(), min_replicas=1,
                            group_size=3)
        journal, lj = await first_term_with_three_tasks(tmp_path / "j", first)
        lj.append(records.TASK, b"t3", b"x")  # admitted, written by the flusher, no POSITION
        await journal.sync()
        await journal.close()  # SIGKILL

        second = LeaderState(group="g", leader_id="h1", epoch=2, followers=(), min_replicas=1,
                             last_index=3, history=EpochHistory([(1, 1)]), group_size=3,
                             ship_on_sync=True)
        journal, lj = leader_journal(tmp_path / "j", second)
        replayed = [r.key for r in lj.recover() if r.type == records.TASK]
        assert replayed == [b"t0", b"t1", b"t2", b"t3"]  # the Helper's table has t3
        journal.start(asyncio.get_running_loop())
        assert second.last_index == 4
        assert [(e.epoch, e.index, e.key) for e in second.backlog][-1] == (2, 4, b"t3")
        # a follower that has 1..3 gets t3 in the stream
        assert second.on_hello(Hello("h2", 1, 3, 1), 0.0) == Start(2, "h1", 3)
        await lj.sync()
        batch = second.to_send("h2", 0.0)
        assert [e.key for e in batch.entries] == [b"t3"]
        await lj.close()

        # and the log indexes it from now on (catch-up from the log)
        third = LeaderState(group="g", leader_id="h2", epoch=3, followers=(), min_replicas=1,
                            last_index=4, history=EpochHistory([(1, 1), (2, 4)]), group_size=3)
        journal, lj = leader_journal(tmp_path / "j", third)
        list(lj.recover())
        assert [(e.index, e.key) for e in third.backlog] == [
            (1, b"t0"), (2, b"t1"), (3, b"t2"), (4, b"t3")]
        journal.start(asyncio.get_running_loop())
        await lj.close()

    asyncio.run(scenario())


def test_a_clean_hello_is_sent_as_version_1_and_a_reset_one_as_version_2() -> None:
    from mesh import replica_link

    assert replica_link._decoder.decode(replica_link.encode(Hello("h1", 4, 10, 3)))[1] == 1
    reset = Hello("h1", 4, 10, 3, reset=True)
    assert replica_link._decoder.decode(replica_link.encode(reset))[1] == 2
    assert replica_link.decode(replica_link.encode(reset)) == reset


def test_a_follower_log_closed_with_a_sync_pending_reports_the_position_its_journal_reached(tmp_path):  # noqa: ANN001
    """A follower that wins its campaign while a batch's sync waits closes its log at once;
    the close makes the batch durable, so the position it leads from must include it."""
    from mesh.group_log import FollowerLog
    from mesh.replication import Entry

    async def scenario() -> None:
        flog = FollowerLog(tmp_path / "journal", segment_size_bytes=2**20, max_record_bytes=2**20)
        flog.open()
        history = EpochHistory([(1, 1)])
        await flog.append([Entry(1, 1, records.NOOP, NOOP_KEY, b"")], 1, 1, history)
        pending = flog.journal.sync_future()  # a sync waits: the next batch cannot sync inline
        entries = [Entry(1, n, records.NOOP, NOOP_KEY, b"") for n in (2, 3)]
        assert not flog.append_now(entries, 1, 3, history)
        assert flog.position.last_index == 1
        await flog.close()  # the campaign won: the stream stops before `synced`
        await asyncio.gather(pending, return_exceptions=True)
        assert flog.position.last_index == 3

        again = FollowerLog(tmp_path / "journal", segment_size_bytes=2**20, max_record_bytes=2**20)
        position = again.open()
        assert position.last_index == 3 and not position.dirty
        await again.close()

    asyncio.run(scenario())



def test_a_leader_ships_a_batch_before_it_appends_the_position_that_closes_it(tmp_path):  # noqa: ANN001
    """Every sync sends the followers what it makes durable first, then appends the POSITION
    record (local to this log) and runs the round: the followers' part of the way, the longer
    one, starts as early as it can. What "accepted" waits for is unchanged: the leader's own
    round and the followers' acks."""
    async def scenario() -> None:
        journal = Journal(tmp_path / "journal")
        state = LeaderState(group="g", leader_id="h1", epoch=1, followers=("h2",), min_replicas=1)
        shipped: list[tuple[int, int]] = []  # (syncing through, journal bytes) at each ship
        lj = LeaderJournal(journal, state, holds=lambda: True,
                           send_now=lambda: shipped.append((state.syncing_through, journal.appended_bytes)))
        assert list(lj.recover()) == []
        journal.start(asyncio.get_running_loop())
        lj.append(records.TASK, b"t1", b"x")
        before = journal.appended_bytes
        waiting = lj.sync_future()
        assert shipped == [(1, before)] and journal.appended_bytes > before  # POSITION after
        await asyncio.sleep(0.05)
        assert not waiting.done() and state.leader_durable == 1  # durable here, not acked
        state.on_ack(Ack("h2", 1, 1), 0.0)
        lj.commit_advanced()
        await asyncio.wait_for(waiting, 1)

        lj.append(records.TASK, b"t2", b"y")
        before = journal.appended_bytes
        while True:  # the round runs on this thread once the flusher is idle (it zero-fills)
            assert not lj.sync_here()  # at best durable here: not acked, so not committed
            if state.leader_durable == 2:
                break
            await asyncio.sleep(0.01)
        assert shipped[1] == (2, before)
        await lj.close()

    asyncio.run(scenario())
