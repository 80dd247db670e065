"""What the follower-log tests build and read: task records, the small segment sizes that
spread a log over several segments, and what a member comes up on after recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mesh import make_task, records, wire
from mesh.group_log import FollowerLog
from mesh.journal import Journal

#: several segments for a few dozen records
SIZES = {"segment_size_bytes": 4096, "max_record_bytes": 2048}


def task_record(task_id: str, payload_bytes: int) -> tuple[int, bytes, bytes]:
    """A TASK record (type, key, payload) as a Helper journals a new task."""
    task = make_task("echo", b"p" * payload_bytes, task_id=task_id)
    return records.TASK, task_id.encode(), wire.encode_new_task_record(wire.task_bytes(task))


def recovered(directory: Path) -> tuple[int, list[bytes]]:
    """What a member comes up on: its log's position, and the keys of its task records."""
    async def scenario() -> tuple[int, list[bytes]]:
        flog = FollowerLog(directory, **SIZES)
        position = flog.open()
        await flog.close()
        journal = Journal(directory)
        keys = [r.key for r in journal.recover() if r.type == records.TASK]
        await journal.close()
        return position.last_index, keys
    return asyncio.run(scenario())
