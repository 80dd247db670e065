"""The leader's shipping to followers when a follower's queue is full (the ROUTER's send
raises zmq.Again at the HWM): the batch that was not queued is not counted as sent, and goes
again on the leader's next tick, without waiting for the follower's Hello. A fake ROUTER, no
processes."""

from __future__ import annotations

import zmq

from mesh import replica_link
from mesh.group import GroupMember, GroupSettings
from mesh.replication import Ack, Append, FollowerState, LeaderState, Start


class FullRouter:
    """A ROUTER whose queue to the follower is full for its first `full` sends."""

    def __init__(self, full: int) -> None:
        self.full = full
        self.sent: list[object] = []

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        assert flags & zmq.NOBLOCK
        if self.full:
            self.full -= 1
            raise zmq.Again()
        self.sent.append(replica_link.decode(frames[1]))


class Reader:
    def wake(self) -> None:
        pass


def leading_member(tmp_path, router: FullRouter) -> tuple[GroupMember, FollowerState]:  # noqa: ANN001
    """A member leading epoch 5 with follower f1 in its stream (Start sent, at index 0)."""
    member = GroupMember(GroupSettings(group="g", member_id="L", data_dir=str(tmp_path)),
                         lock=None, trust=None, make_helper=lambda hooks: None)
    member.state = LeaderState(group="g", leader_id="L", epoch=5, followers=("f1",), min_replicas=1,
                               max_batch_bytes=150)
    follower = FollowerState("f1")
    start = member.state.on_hello(follower.hello(), 0.0)
    assert isinstance(start, Start)
    follower.on_start(start)
    member._ids["f1"] = b"f1-identity"
    member._router, member._reader = router, Reader()
    return member, follower


def test_a_batch_a_full_follower_queue_did_not_take_goes_again_on_the_next_tick(tmp_path) -> None:  # noqa: ANN001
    router = FullRouter(full=2)  # room for nothing now, then for one batch, then full again
    member, follower = leading_member(tmp_path, router)
    state = member.state
    for n in range(1, 7):
        state.append(1, f"t{n}".encode(), b"p" * 40)  # 66 bytes each: two per 150-byte batch
    state.durable(6)

    member._pump()  # a sync's pump: the first batch is not queued
    assert router.sent == [] and "f1" in member._ids, "a full queue is no departure"
    router.full = 0
    member._pump()  # the next sync's pump leaves the full follower to the tick
    assert router.sent == []

    member._pump(tick=True)
    appends = [msg for msg in router.sent if isinstance(msg, Append)]
    assert [e.index for a in appends for e in a.entries] == [1, 2, 3, 4, 5, 6]
    for append in appends:  # the follower applies them in order: no gap, no Hello
        assert follower.on_append(append).reply is None
    state.on_ack(Ack("f1", 5, 6), 0.1)
    assert state.commit_index == 6 and follower.last_index == 6


def test_an_unqueued_batch_after_queued_ones_goes_again_from_where_they_ended(tmp_path) -> None:  # noqa: ANN001
    router = FullRouter(full=0)
    member, follower = leading_member(tmp_path, router)
    state = member.state
    for n in range(1, 7):
        state.append(1, f"t{n}".encode(), b"p" * 40)
    real_send = router.send_multipart

    def full_after_one(frames: list[bytes], flags: int = 0) -> None:
        if router.sent:
            raise zmq.Again()
        real_send(frames, flags)

    router.send_multipart = full_after_one
    member._pump()
    assert [[e.index for e in a.entries] for a in router.sent] == [[1, 2]]
    router.send_multipart = real_send
    member._pump(tick=True)
    assert [[e.index for e in a.entries] for a in router.sent] == [[1, 2], [3, 4], [5, 6]]
    for append in router.sent:
        assert follower.on_append(append).reply is None
    assert follower.last_index == 6
