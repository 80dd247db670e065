"""The Helper's queue: priority, FIFO within a priority, aging, bounds, lazy removal."""

from __future__ import annotations

from mesh.pending import PendingQueue


class Entry:
    def __init__(self, seq: int, priority: int = 0, kind: str = "k", size: int = 10) -> None:
        self.seq = seq
        self.priority = priority
        self.kind = kind
        self.size_bytes = size
        self.queued_at = float(seq)
        self.in_queue = False


def drain(q: PendingQueue, kinds=None) -> list[int]:  # noqa: ANN001
    out = []
    while (e := q.pop(kinds)) is not None:
        out.append(e.seq)
    return out


def test_equal_priority_keeps_submission_order() -> None:
    q = PendingQueue(100, 10_000, aging_every=1000)
    for i in range(10):
        q.push(Entry(i))
    assert drain(q) == list(range(10))


def test_higher_priority_overtakes_queued_lower_ones() -> None:
    q = PendingQueue(100, 10_000, aging_every=1000)
    for i in range(5):
        q.push(Entry(i, priority=0))
    q.push(Entry(99, priority=5))
    assert drain(q)[0] == 99


def test_low_priority_is_not_starved_by_a_flood_of_high_priority() -> None:
    q = PendingQueue(10_000, 10**9, aging_every=8)
    q.push(Entry(0, priority=0))
    for i in range(1, 1000):
        q.push(Entry(i, priority=10))
    order = drain(q)
    assert order.index(0) < 8, "the oldest low-priority task must get every 8th pick"


def test_bounds_count_and_bytes() -> None:
    q = PendingQueue(2, 25)
    assert q.has_room(1, 10)
    q.push(Entry(1))
    q.push(Entry(2))
    assert not q.has_room(1, 1)
    q2 = PendingQueue(10, 25)
    q2.push(Entry(1, size=20))
    assert not q2.has_room(1, 10)


def test_discard_is_skipped_and_counts_stay_right() -> None:
    q = PendingQueue(100, 10_000)
    entries = [Entry(i) for i in range(5)]
    for e in entries:
        q.push(e)
    q.discard(entries[0])
    q.discard(entries[3])
    assert len(q) == 3 and q.size_bytes == 30
    assert drain(q) == [1, 2, 4]
    assert len(q) == 0 and q.size_bytes == 0


def test_kinds_route_to_nodes_that_serve_them() -> None:
    q = PendingQueue(100, 10_000)
    q.push(Entry(1, kind="a"))
    q.push(Entry(2, kind="b"))
    assert drain(q, frozenset({"b"})) == [2]
    assert q.kinds() == ["a"]


def test_put_back_goes_to_the_front_of_its_lane() -> None:
    q = PendingQueue(100, 10_000)
    for i in range(3):
        q.push(Entry(i))
    first = q.pop(None)
    q.push(first, front=True)
    assert drain(q) == [0, 1, 2]


def test_aging_counts_picks_across_a_moment_with_nothing_queued() -> None:
    q = PendingQueue(100, 10_000, aging_every=3)
    q.push(Entry(0))
    assert drain(q) == [0]  # pick 1; the kind is empty for a moment
    q.push(Entry(1, priority=0))
    for i in range(2, 6):
        q.push(Entry(i, priority=5))
    # picks 2 and 3: the 3rd pick goes to the lane that waited longest (the low one)
    assert drain(q) == [2, 1, 3, 4, 5]


def test_one_off_kinds_leave_a_bounded_trace() -> None:
    from mesh.pending import _KEEP_EMPTY_KINDS

    q = PendingQueue(100_000, 10**9)
    for i in range(_KEEP_EMPTY_KINDS * 3):
        q.push(Entry(i, kind=f"kind-{i}"))
        assert q.pop(None).seq == i
    assert len(q._kinds) <= _KEEP_EMPTY_KINDS + 1


def test_an_entry_put_back_unsent_does_not_count_as_a_pick() -> None:
    q = PendingQueue(100, 10_000, aging_every=3)
    q.push(Entry(1, priority=0))
    for i in range(2, 6):
        q.push(Entry(i, priority=5))
    first = q.pop(None)  # pick 1
    q.put_back(first)  # not sent (node not connected): not a pick
    # picks 1 and 2 go to the high lane, the 3rd to the lane that waited longest (the low one)
    assert drain(q) == [2, 3, 1, 4, 5]
