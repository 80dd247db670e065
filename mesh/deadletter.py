"""Operators' view of dead tasks: list, inspect, replay (back to queued, attempts reset), purge;
and the bound on how many of them the Helper keeps.

Dead tasks stay in the journal until purged, replayed or evicted, so they survive restarts;
out of the heap, each one's full record (the task as submitted included) is in a store on disk
of the same kind as the retained results' (`Dispatcher.dead`, mesh/retained.py: 12 bytes a slot
in memory), rebuilt by recovery; `DeadLetterBook` keeps their ids in death order with their
sizes. Replay writes a fresh TASK record (attempt 1, no lost deliveries) before
queuing the task, so a crash right after a replay does not bring the dead state back.

Overflow policy: the Helper keeps at most `max_dead_letters` dead letters and
`max_dead_letter_bytes` of them (the task as submitted plus its error text). Past either bound
the oldest dead letter (by the time it died) is forgotten: a FORGET record is journaled, so it
stays gone after a restart. Evictions are counted (`mesh_dead_letters_evicted_total`) and the
Helper publishes a `mesh.dead.letters.evicted` alert (at most one per second, with the count).
The newest dead letter is always kept, even when it alone is above the byte bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from mesh import records, wire

if TYPE_CHECKING:
    from mesh.dispatcher import Dispatcher

#: what one dead letter costs beyond its task bytes and error text (the entry, the table slot)
ENTRY_OVERHEAD_BYTES = 400


class DeadLetterBook:
    """Dead task ids oldest first, with their sizes; says which to evict. Pure bookkeeping."""

    __slots__ = ("max_count", "max_bytes", "_sizes", "size_bytes")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._sizes: dict[str, int] = {}  # insertion order = death order
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._sizes))

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._sizes

    def add(self, task_id: str, size_bytes: int) -> None:
        self.remove(task_id)
        self._sizes[task_id] = size_bytes
        self.size_bytes += size_bytes

    def remove(self, task_id: str) -> None:
        size = self._sizes.pop(task_id, None)
        if size is not None:
            self.size_bytes -= size

    def overflow(self) -> list[str]:
        """Take out and return the oldest ids past the bounds (never the newest one)."""
        out = []
        sizes = self._sizes
        while len(sizes) > 1 and (len(sizes) > self.max_count
                                  or self.size_bytes > self.max_bytes):
            task_id = next(iter(sizes))
            self.size_bytes -= sizes.pop(task_id)
            out.append(task_id)
        return out


def dead_letter_size(entry) -> int:  # noqa: ANN001 - TaskEntry
    return len(entry.encoded) + len(entry.error) + len(entry.result) + ENTRY_OVERHEAD_BYTES


def dead_entries(dispatcher: Dispatcher, task_ids) -> list:  # noqa: ANN001
    """The dead letters among `task_ids` (every one if empty), read from their store, oldest
    first."""
    ids = dict.fromkeys(task_ids) if task_ids else dispatcher.dead_letters
    found = (dispatcher.dead_letter(t) for t in ids if t in dispatcher.dead_letters)
    entries = [e for e in found if e is not None]
    entries.sort(key=lambda e: e.finished_ns)
    return entries


def replay(dispatcher: Dispatcher, entry) -> None:  # noqa: ANN001
    dispatcher.dead_letters.remove(entry.task_id)
    dispatcher.revive(entry)
    entry.state = wire.QUEUED
    entry.attempt = 1  # attempts count afresh; `replays` tells a node this attempt 1 is new
    entry.replays += 1
    entry.lost_deliveries = 0
    entry.dead_reason = 0
    entry.finished_ns = 0
    entry.node_id = ""
    entry.not_before = 0.0
    dispatcher.journal_record(records.TASK, entry.task_id, entry.record())
    dispatcher.enqueue(entry)


def purge(dispatcher: Dispatcher, entry) -> None:  # noqa: ANN001
    dispatcher.dead_letters.remove(entry.task_id)
    dispatcher.dead.remove(entry.task_id)
    dispatcher.forget(entry.task_id)


def answer(dispatcher: Dispatcher, request, request_id: int,  # noqa: ANN001, ANN201
           max_reply_bytes: int = 16 * 2**20):
    """Serve one DeadLetterRequest from the intake. A list or inspect reply stops adding tasks
    at `max_reply_bytes` (always at least one) and says so in its message."""
    reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=request_id, code=wire.OK)
    op = request.op
    if op in (wire.LIST, wire.INSPECT):
        limit = request.limit or 100
        if request.task_ids:
            entries = dead_entries(dispatcher, list(request.task_ids))
            total = len(entries)
        else:  # the book is in death order: only the `limit` oldest are read from disk
            total = len(dispatcher.dead_letters)
            entries = dead_entries(dispatcher, list(dispatcher.dead_letters)[:limit])
        size = 0
        for entry in entries[:limit]:
            status = entry.status(preview=op == wire.INSPECT)
            if op == wire.LIST:
                status.ClearField("result")
            size += status.ByteSize() + 8
            if size > max_reply_bytes and reply.dead_letter.tasks:
                reply.message = (f"listed {len(reply.dead_letter.tasks)} of "
                                 f"{min(limit, total)} dead letters: the reply reached "
                                 f"its limit of {max_reply_bytes} bytes; ask with a lower limit "
                                 "or by task ids")
                break
            reply.dead_letter.tasks.append(status)
        reply.dead_letter.affected = total
    elif op == wire.REPLAY:
        entries = dead_entries(dispatcher, list(request.task_ids))
        for entry in entries:
            replay(dispatcher, entry)
        reply.dead_letter.affected = len(entries)
    elif op == wire.PURGE:
        entries = dead_entries(dispatcher, list(request.task_ids))
        for entry in entries:
            purge(dispatcher, entry)
        reply.dead_letter.affected = len(entries)
    else:
        reply.code = wire.MALFORMED_REQUEST
        reply.message = f"unknown dead-letter operation {op}"
    return reply
