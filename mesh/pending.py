"""The Helper's queue of tasks waiting for a node: by kind, then priority, FIFO within.

Ordering rule (documented for users in the README):
- A higher priority is picked before a lower one; equal priorities keep submission order.
- No starvation: every `aging_every`-th pick for a kind goes to the lane whose head has waited
  longest, whatever its priority. With the default 8, a flood of high-priority work still lets
  1 in 8 deliveries go to the oldest waiting lower-priority task.
- A task put back after a lost delivery goes to the front of its lane (it waited already).

Bounds (count and task bytes: the whole encoded task, not only its payload) are checked by the caller through `has_room` at admission;
tasks put back after a delivery are never refused (they were accepted already).
Removal is lazy: `discard` marks the entry and `pop` skips it, so removal is O(1).
A kind whose lanes are all empty is dropped once more than 1,024 kinds are known, so a stream
of one-off kinds leaves a bounded trace (below that, an empty kind keeps its aging pick count).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class Queueable(Protocol):
    kind: str
    priority: int
    size_bytes: int
    seq: int
    queued_at: float
    in_queue: bool


#: kinds kept while empty (their aging pick count survives a moment with nothing queued)
_KEEP_EMPTY_KINDS = 1024


class _KindQueue:
    __slots__ = ("name", "lanes", "priorities", "picks")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lanes: dict[int, deque] = {}
        self.priorities: list[int] = []  # descending
        self.picks = 0


class PendingQueue:
    def __init__(self, max_tasks: int, max_bytes: int, aging_every: int = 8) -> None:
        self.max_tasks = max_tasks
        self.max_bytes = max_bytes
        self.aging_every = aging_every
        self._kinds: dict[str, _KindQueue] = {}
        self._count = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def has_room(self, extra_count: int, extra_bytes: int, others: int = 0) -> bool:
        return (self._count + others + extra_count <= self.max_tasks
                and self._bytes + extra_bytes <= self.max_bytes)

    def kinds(self) -> list[str]:
        """Kinds with at least one task queued."""
        return [k for k, q in self._kinds.items() if q.priorities]

    def push(self, entry: Queueable, *, front: bool = False) -> None:
        kq = self._kinds.get(entry.kind)
        if kq is None:
            kq = self._kinds[entry.kind] = _KindQueue(entry.kind)
        lane = kq.lanes.get(entry.priority)
        if lane is None:
            lane = kq.lanes[entry.priority] = deque()
            kq.priorities.append(entry.priority)
            kq.priorities.sort(reverse=True)
        if front:
            lane.appendleft(entry)
        else:
            lane.append(entry)
        entry.in_queue = True
        self._count += 1
        self._bytes += entry.size_bytes

    def put_back(self, entry: Queueable) -> None:
        """Return an entry `pop` just gave out and that was not sent (frame full, node not
        connected, kind held back): to the front of its lane, and its pick is not counted, so
        the aging rule ("every Nth pick") counts deliveries, not attempts to make one."""
        self.push(entry, front=True)
        kq = self._kinds.get(entry.kind)
        if kq is not None and kq.picks > 0:
            kq.picks -= 1

    def discard(self, entry: Queueable) -> None:
        """Take an entry out (dead-lettered, adopted, expired); O(1), the slot is skipped later."""
        if entry.in_queue:
            entry.in_queue = False
            self._count -= 1
            self._bytes -= entry.size_bytes

    def pop(self, kinds: frozenset[str] | None) -> Queueable | None:
        """The next task for a node serving `kinds` (None = every kind), or None."""
        best_kq = None
        best_lane = None
        best_head = None
        names = list(self._kinds) if kinds is None else kinds  # _head may drop empty kinds
        for name in names:
            kq = self._kinds.get(name)
            if kq is None or not kq.priorities:
                continue
            lane, head = self._head(kq)
            if head is None:
                continue
            if best_head is None or _before(head, best_head):
                best_kq, best_lane, best_head = kq, lane, head
        if best_head is None:
            return None
        best_lane.popleft()
        best_kq.picks += 1
        best_head.in_queue = False
        self._count -= 1
        self._bytes -= best_head.size_bytes
        self._prune(best_kq, best_head.priority)
        return best_head

    def _head(self, kq: _KindQueue) -> tuple:
        """The lane and head this kind would give next (priority, or aging on every Nth pick)."""
        aging = (kq.picks + 1) % self.aging_every == 0
        chosen_lane = chosen = None
        for priority in list(kq.priorities):
            lane = kq.lanes[priority]
            while lane and not lane[0].in_queue:
                lane.popleft()  # lazily discarded
            if not lane:
                self._prune(kq, priority)
                continue
            if not aging:
                return lane, lane[0]
            if chosen is None or lane[0].queued_at < chosen.queued_at:
                chosen_lane, chosen = lane, lane[0]
        return chosen_lane, chosen

    def _prune(self, kq: _KindQueue, priority: int) -> None:
        lane = kq.lanes.get(priority)
        if lane is not None and not lane:
            del kq.lanes[priority]
            kq.priorities.remove(priority)
            # An empty kind keeps its pick count (the aging rule counts picks per kind) unless
            # kinds pile up: past _KEEP_EMPTY_KINDS an emptied kind is dropped at once.
            if (not kq.priorities and len(self._kinds) > _KEEP_EMPTY_KINDS
                    and self._kinds.get(kq.name) is kq):
                del self._kinds[kq.name]

    def oldest_queued_at(self) -> float | None:
        oldest = None
        for kq in self._kinds.values():
            for lane in kq.lanes.values():
                for entry in lane:
                    if entry.in_queue:
                        if oldest is None or entry.queued_at < oldest:
                            oldest = entry.queued_at
                        break
        return oldest

    def depth_by_kind(self) -> dict[str, tuple[int, float]]:
        """kind -> (tasks queued, the oldest one's queued_at): an O(n) sweep, for operators'
        queries (`mesh nodes`, the live page), never the dispatch path."""
        out: dict[str, tuple[int, float]] = {}
        for kind, kq in self._kinds.items():
            count, oldest = 0, None
            for lane in kq.lanes.values():
                for entry in lane:
                    if entry.in_queue:
                        count += 1
                        if oldest is None or entry.queued_at < oldest:
                            oldest = entry.queued_at
            if count:
                out[kind] = (count, oldest)
        return out

    def take(self, predicate) -> list:  # noqa: ANN001 - Callable[[Queueable], bool]
        """Remove and return every queued entry the predicate selects (an O(n) sweep, for rare
        housekeeping such as expiring deadlines while no node takes work)."""
        out = []
        for kq in self._kinds.values():
            for lane in kq.lanes.values():
                for entry in lane:
                    if entry.in_queue and predicate(entry):
                        self.discard(entry)
                        out.append(entry)
        return out

    def drain_kind(self, kind: str) -> list:
        """Remove and return every queued task of one kind (dead-lettering an unroutable kind)."""
        kq = self._kinds.pop(kind, None)
        out = []
        if kq is None:
            return out
        for lane in kq.lanes.values():
            for entry in lane:
                if entry.in_queue:
                    entry.in_queue = False
                    self._count -= 1
                    self._bytes -= entry.size_bytes
                    out.append(entry)
        return out


def _before(a: Queueable, b: Queueable) -> bool:
    if a.priority != b.priority:
        return a.priority > b.priority
    return a.seq < b.seq
