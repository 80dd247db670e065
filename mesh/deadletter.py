"""Operators' view of dead tasks: list, inspect, replay (back to queued, attempts reset), purge.

Dead tasks stay in the Helper's table and journal until purged, so they survive restarts.
Replay writes a fresh TASK record (attempt 1, no lost deliveries) before queuing the task, so a
crash right after a replay does not bring the dead state back.
"""

from __future__ import annotations

from mesh import records, wire
from mesh.dispatcher import Dispatcher


def dead_entries(dispatcher: Dispatcher, task_ids) -> list:  # noqa: ANN001
    if task_ids:
        found = (dispatcher.tasks.get(t) for t in task_ids)
        return [e for e in found if e is not None and e.state == wire.DEAD]
    return [e for e in dispatcher.tasks.values() if e.state == wire.DEAD]


def replay(dispatcher: Dispatcher, entry) -> None:  # noqa: ANN001
    entry.state = wire.QUEUED
    entry.attempt = 1
    entry.lost_deliveries = 0
    entry.dead_reason = 0
    entry.finished_ns = 0
    entry.node_id = ""
    entry.not_before = 0.0
    dispatcher.journal_record(records.TASK, entry.task_id, entry.record())
    dispatcher.enqueue(entry)


def purge(dispatcher: Dispatcher, entry) -> None:  # noqa: ANN001
    del dispatcher.tasks[entry.task_id]
    dispatcher.forget(entry.task_id)


def answer(dispatcher: Dispatcher, request, request_id: int):  # noqa: ANN001, ANN201
    """Serve one DeadLetterRequest from the intake."""
    reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=request_id, code=wire.OK)
    entries = dead_entries(dispatcher, list(request.task_ids))
    entries.sort(key=lambda e: e.finished_ns)
    op = request.op
    if op in (wire.LIST, wire.INSPECT):
        limit = request.limit or 100
        for entry in entries[:limit]:
            status = entry.status()
            if op == wire.LIST:
                status.ClearField("result")
            reply.dead_letter.tasks.append(status)
        reply.dead_letter.affected = len(entries)
    elif op == wire.REPLAY:
        for entry in entries:
            replay(dispatcher, entry)
        reply.dead_letter.affected = len(entries)
    elif op == wire.PURGE:
        for entry in entries:
            purge(dispatcher, entry)
        reply.dead_letter.affected = len(entries)
    else:
        reply.code = wire.MALFORMED_REQUEST
        reply.message = f"unknown dead-letter operation {op}"
    return reply
