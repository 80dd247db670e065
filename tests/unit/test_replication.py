"""The leader -> follower record stream as state machines: commit index, min-replicas,
epoch fencing, catch-up and snapshots. No sockets, no sleeping: `now` is a number."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.replication import (
    Ack,
    Append,
    EpochHistory,
    FailoverPlan,
    FollowerState,
    Hello,
    LeaderState,
    NotEnoughReplicas,
    Refuse,
    Snapshot,
    SnapshotNeeded,
    Start,
    StaleEpoch,
    recovery_quorum,
)


def leader(followers=("f1", "f2"), min_replicas=1, epoch=5, **kw) -> LeaderState:
    return LeaderState(group="orders", leader_id="L", epoch=epoch, followers=followers, min_replicas=min_replicas, **kw)


def connect(lead: LeaderState, fol: FollowerState, now: float = 0.0) -> None:
    start = lead.on_hello(fol.hello(), now)
    assert isinstance(start, Start)
    fol.on_start(start)


def pump(lead: LeaderState, fol: FollowerState, now: float) -> Ack | None:
    """Send what the leader has for `fol`, apply it, fsync, ack."""
    msg = lead.to_send(fol.member_id, now)
    if msg is None:
        return None
    step = fol.on_append(msg)
    assert step.reply is None, step.reply
    ack = fol.durable(fol.last_index)
    lead.on_ack(ack, now)
    return ack


def test_commit_waits_for_the_leaders_fsync_and_min_replicas_followers():
    lead = leader(("f1", "f2"), min_replicas=1)
    f1, f2 = FollowerState("f1"), FollowerState("f2")
    connect(lead, f1)
    connect(lead, f2)
    e1 = lead.append(1, b"t1", b"x")
    assert (e1.epoch, e1.index) == (5, 1) and lead.commit_index == 0
    pump(lead, f1, 0.1)
    assert lead.commit_index == 0  # the follower has it, the leader's own fsync is not done
    lead.durable(1)
    assert lead.committed(1)


@pytest.mark.parametrize("min_replicas, acks, expected", [
    (0, {}, 3),                       # the leader alone
    (1, {"f1": 2}, 2),
    (1, {"f1": 2, "f2": 3}, 3),       # the best follower counts
    (2, {"f1": 2, "f2": 3}, 2),       # the second best bounds it
    (2, {"f1": 3}, 0),                # f2 never acked
    (3, {"f1": 3, "f2": 1, "f3": 2}, 1),
])
def test_the_commit_index_with_k_followers(min_replicas, acks, expected):
    lead = leader(("f1", "f2", "f3"), min_replicas=min_replicas)
    for name in ("f1", "f2", "f3"):
        lead.on_hello(Hello(name, 0, 0, 0), 0.0)
    for n in range(3):
        lead.append(1, f"t{n}".encode(), b"")
    lead.durable(3)
    for name, index in acks.items():
        lead.on_ack(Ack(name, 5, index), 0.1)
    assert lead.commit_index == expected


def test_submits_are_refused_with_fewer_live_followers_than_min_replicas():
    lead = leader(("f1", "f2"), min_replicas=2, follower_timeout_s=3.0)
    with pytest.raises(NotEnoughReplicas, match="only 0 follower"):
        lead.check_accepting(0.0)
    lead.on_hello(Hello("f1", 0, 0, 0), 0.0)
    lead.on_hello(Hello("f2", 0, 0, 0), 0.0)
    lead.check_accepting(1.0)
    lead.on_ack(Ack("f1", 5, 0), 2.5)
    with pytest.raises(NotEnoughReplicas) as info:
        lead.check_accepting(3.5)  # f2 silent for 3.5 s
    assert (info.value.alive, info.value.needed) == (1, 2)
    leader(("f1",), min_replicas=0).check_accepting(0.0)  # the operator chose to accept alone


def test_min_replicas_above_the_followers_is_a_config_error():
    with pytest.raises(ConfigError):
        leader(("f1",), min_replicas=2)


def test_a_follower_refuses_an_older_epoch_and_the_leader_is_fenced():
    old = leader(("f1",), epoch=5)
    new = leader(("f1",), epoch=9)
    fol = FollowerState("f1")
    connect(new, fol)
    assert fol.known_epoch == 9
    # The old leader's Hello answer is fenced by the follower's newer epoch:
    hello = fol.hello()
    old.on_hello(hello, 0.0)
    with pytest.raises(StaleEpoch):
        old.append(1, b"t", b"")
    # and a Start or Append of epoch 5 reaching the follower is refused:
    refused = fol.on_start(Start(5, "L", 0)).reply
    assert isinstance(refused, Refuse) and refused.epoch == 9
    refused = fol.on_append(Append(5, "L", 0, 0, (), 0)).reply
    assert isinstance(refused, Refuse)
    other = leader(("f1",), epoch=5)
    other.on_refuse(refused)
    with pytest.raises(StaleEpoch):
        other.check_accepting(0.0)


def test_an_ack_with_a_newer_epoch_stops_the_commit_index():
    lead = leader(("f1",), min_replicas=1)
    lead.on_hello(Hello("f1", 5, 0, 0), 0.0)
    lead.append(1, b"t", b"")
    lead.durable(1)
    assert lead.on_ack(Ack("f1", 6, 1), 0.1) == 0
    with pytest.raises(StaleEpoch):
        lead.check_accepting(0.2)


def test_a_follower_that_fell_behind_catches_up_from_the_backlog_in_batches():
    lead = leader(("f1",), max_batch_bytes=200)
    for n in range(20):
        lead.append(1, f"t{n}".encode(), b"p" * 50)
    lead.durable(20)
    fol = FollowerState("f1", known_epoch=5, last_index=7, last_epoch=5, history=EpochHistory([(5, 1)]))
    connect(lead, fol)
    rounds = 0
    while fol.last_index < 20:
        assert pump(lead, fol, 0.1 * rounds) is not None
        rounds += 1
    assert rounds > 3 and lead.commit_index == 20 and fol.commit_index <= 20


def test_a_follower_behind_the_compacted_backlog_gets_a_snapshot():
    lead = leader(("f1",), backlog_bytes=300)
    for n in range(20):
        lead.append(1, f"t{n}".encode(), b"p" * 50)
    assert lead.backlog_first_index > 1
    fol = FollowerState("f1")
    need = lead.on_hello(fol.hello(), 0.0)
    assert isinstance(need, SnapshotNeeded) and need.from_index == 1
    step = fol.on_snapshot(Snapshot(5, "L", 20, 5, ((1, b"t19", b"live"),)))
    assert step.reset and step.epoch_changed and fol.last_index == 20
    lead.snapshot_sent("f1", 20)
    lead.append(1, b"t20", b"")
    assert pump(lead, fol, 1.0).durable_index == 21


def test_the_backlog_drops_what_every_follower_of_the_group_acked_and_nothing_a_follower_lacks():
    lead = leader(("f1", "f2"), min_replicas=1)
    f1, f2 = FollowerState("f1"), FollowerState("f2")
    connect(lead, f1)
    connect(lead, f2)
    for n in range(1, 21):
        lead.append(1, f"t{n}".encode(), b"p" * 50)
    lead.durable(20)
    pump(lead, f1, 0.1)
    assert lead.backlog_first_index == 1 and len(lead.backlog) == 20  # f2 lacks all of them
    pump(lead, f2, 0.2)
    assert not lead.backlog and lead.backlog_bytes == 0, "records applied everywhere are kept"
    lead.append(1, b"t21", b"q")
    pump(lead, f1, 0.3)
    assert [e.index for e in lead.backlog] == [21]
    assert lead.backlog_bytes == sum(e.size_bytes for e in lead.backlog)
    # f2 comes back where it was: it gets a Start and the entry it lacks, from the backlog
    again = FollowerState("f2", known_epoch=5, last_index=20, last_epoch=5, history=EpochHistory([(5, 1)]))
    connect(lead, again, 0.4)
    assert pump(lead, again, 0.5).durable_index == 21 and not lead.backlog
    # a follower that lost its log needs what no follower lacked: a snapshot
    assert isinstance(lead.on_hello(FollowerState("f1").hello(), 0.6), SnapshotNeeded)


def test_the_backlog_keeps_acked_entries_while_a_member_of_the_group_was_not_heard_from():
    lead = leader((), min_replicas=1, group_size=3)
    f1 = FollowerState("f1")
    connect(lead, f1)
    for n in range(1, 6):
        lead.append(1, f"t{n}".encode(), b"p")
    lead.durable(5)
    pump(lead, f1, 0.1)
    assert [e.index for e in lead.backlog] == [1, 2, 3, 4, 5]  # the third member may be at 0
    f2 = FollowerState("f2")
    connect(lead, f2, 0.2)  # a new member: it catches up from the log, not from a snapshot
    pump(lead, f2, 0.3)
    assert f2.last_index == 5 and not lead.backlog


def test_a_follower_with_entries_of_a_deposed_leader_is_truncated_to_where_logs_agree():
    # f1 followed epoch 5 up to index 6; the new leader (epoch 9) had epoch 5 only up to 4.
    history = EpochHistory([(5, 1)])
    new = leader(("f1",), epoch=9, last_index=4, history=history)
    fol = FollowerState("f1", known_epoch=5, last_index=6, last_epoch=5, history=EpochHistory([(5, 1)]))
    start = new.on_hello(fol.hello(), 0.0)
    assert isinstance(start, Start) and start.truncate_after == 4
    step = fol.on_start(start)
    assert step.truncate_after == 4 and step.epoch_changed and fol.last_index == 4
    new.append(1, b"noop", b"")  # index 5 of epoch 9
    new.durable(5)
    pump(new, fol, 0.1)
    assert (fol.last_index, fol.last_epoch) == (5, 9) and new.commit_index == 5


def test_entries_of_an_earlier_term_commit_only_with_an_entry_of_the_current_term():
    lead = leader(("f1",), epoch=9, last_index=4, history=EpochHistory([(5, 1)]))
    lead.on_hello(Hello("f1", 9, 4, 5), 0.0)
    lead.durable(4)
    assert lead.commit_index == 0  # 1..4 are from epoch 5: not committed by counting copies
    lead.append(1, b"noop", b"")
    lead.durable(5)
    lead.on_ack(Ack("f1", 9, 5), 0.1)
    assert lead.commit_index == 5


def test_a_gap_or_a_new_leader_without_a_start_makes_the_follower_say_hello():
    lead = leader(("f1",))
    fol = FollowerState("f1")
    connect(lead, fol)
    for n in range(3):
        lead.append(1, f"t{n}".encode(), b"")
    first = lead.to_send("f1", 0.0)
    assert isinstance(first, Append) and len(first.entries) == 3
    gap = Append(5, "L", 2, 5, first.entries[2:], 0)
    assert isinstance(fol.on_append(gap).reply, Hello)
    assert isinstance(fol.on_append(Append(7, "L2", 0, 0, (), 0)).reply, Hello)
    assert fol.on_append(first).entries == first.entries
    assert fol.on_append(first).entries == ()  # a resent batch is not written twice


def test_with_ship_on_sync_followers_get_entries_only_as_the_leader_syncs_them():
    # Results appended between submits ride along with the next sync instead of costing the
    # follower an fsync of their own in front of it.
    lead = leader(("f1",), ship_on_sync=True)
    fol = FollowerState("f1")
    connect(lead, fol)
    lead.append(2, b"result", b"")
    lead.append(1, b"t1", b"")
    beat = lead.to_send("f1", 0.0)
    assert isinstance(beat, Append) and beat.entries == ()  # a heartbeat, nothing to sync yet
    lead.syncing(1)
    assert [e.index for e in lead.to_send("f1", 0.0).entries] == [1]
    lead.append(1, b"t2", b"")
    lead.syncing(lead.last_index)
    assert [e.index for e in lead.to_send("f1", 0.0).entries] == [2, 3]
    assert lead.to_send("f1", 0.1) is None


def test_an_idle_leader_sends_heartbeats_with_the_commit_index():
    lead = leader(("f1",), min_replicas=0, heartbeat_interval_s=0.5)
    fol = FollowerState("f1")
    connect(lead, fol)
    lead.append(1, b"t", b"")
    lead.durable(1)
    pump(lead, fol, 0.0)
    assert lead.to_send("f1", 0.2) is None
    beat = lead.to_send("f1", 0.6)
    assert isinstance(beat, Append) and beat.entries == () and beat.commit_index == 1
    fol.on_append(beat)
    assert fol.commit_index == 1


def test_epoch_history_answers_where_an_epoch_ends():
    h = EpochHistory([(1, 1), (3, 10), (4, 10), (7, 25)])  # epoch 3 wrote nothing
    assert h.as_list() == [(1, 1), (4, 10), (7, 25)]
    assert h.end_of(1, 30) == 9 and h.end_of(3, 30) == 9 and h.end_of(4, 30) == 24 and h.end_of(7, 30) == 30
    assert h.epoch_at(0) == 0 and h.epoch_at(9) == 1 and h.epoch_at(24) == 4 and h.epoch_at(26) == 7
    with pytest.raises(ConfigError):
        h.begin(2, 40)


@pytest.mark.parametrize("size, k, quorum", [(2, 1, 1), (3, 1, 2), (3, 2, 1), (3, 0, 3), (5, 2, 3)])
def test_the_recovery_quorum_meets_every_set_that_holds_a_committed_record(size, k, quorum):
    assert recovery_quorum(size, k) == quorum
    assert quorum + (k + 1) > size


def test_a_new_leader_catches_up_from_the_longest_reported_log_first():
    plan = FailoverPlan("f2", last_epoch=5, last_index=7, group_size=3, min_replicas=1)
    assert not plan.ready
    plan.report("f1", 5, 9)
    assert plan.ready and plan.source() == "f1"
    plan2 = FailoverPlan("f2", 5, 9, group_size=3, min_replicas=1)
    plan2.report("f1", 5, 9)
    assert plan2.source() is None
