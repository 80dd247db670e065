"""What a task must satisfy before the Helper stores anything of it.

Every bound is checked against the real limit in bytes (UTF-8, as the wire and the journal
carry them), before the task enters the table, the queue or the journal: a task that fails here
leaves no trace, and its submitter gets an error naming the field, its size and the limit.

The task id is the journal record's key, so it is bounded by the journal's key limit
(`MAX_TASK_ID_BYTES`, 255 UTF-8 bytes) as well as by `MAX_TASK_ID_CHARS`. The whole first
record of a task (framing, key and TaskRecord) must fit the journal's `max_record_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh import wire
from mesh.errors import InvalidTask, PayloadTooLarge
from mesh.journal.record import MAX_KEY_BYTES, RECORD_OVERHEAD
from mesh.settings import HelperSettings

MAX_TASK_ID_CHARS = 200
MAX_TASK_ID_BYTES = MAX_KEY_BYTES
#: what the journal record of a task may hold beyond its payload and the bounded fields: the
#: protobuf framing of the fields, a result or an error written by a rewrite of a dead task
RECORD_SLACK_BYTES = 64 * 2**10


@dataclass(frozen=True, slots=True)
class TaskLimits:
    max_payload_bytes: int
    max_kind_bytes: int
    max_headers: int
    max_header_bytes: int
    max_idempotency_key_bytes: int
    min_priority: int
    max_priority: int
    max_record_bytes: int  # the journal's

    @classmethod
    def of(cls, settings: HelperSettings, max_record_bytes: int | None = None) -> TaskLimits:
        return cls(settings.max_payload_bytes, settings.max_kind_bytes, settings.max_headers,
                   settings.max_header_bytes, settings.max_idempotency_key_bytes,
                   settings.min_priority, settings.max_priority,
                   max_record_bytes or journal_record_limit(settings))


def journal_record_limit(settings: HelperSettings) -> int:
    """The journal's max_record_bytes for these settings: a task at every limit fits."""
    return (RECORD_OVERHEAD + MAX_KEY_BYTES + settings.max_payload_bytes
            + settings.max_kind_bytes + settings.max_header_bytes
            + settings.max_idempotency_key_bytes + RECORD_SLACK_BYTES)


def _utf8_len(text: str) -> int:
    if text.isascii():  # nearly always: no copy to count
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _name(task_id: str, id_bytes: int) -> str:
    """How an error message names the task (only made when one is raised)."""
    return repr(task_id) if id_bytes <= 64 else repr(task_id[:32]) + "..."


def check_task(task, limits: TaskLimits) -> bytes:  # noqa: ANN001 - wire.Task
    """Raise InvalidTask / PayloadTooLarge if the task cannot be accepted as it is; else return
    its encoded bytes (what the journal record and every dispatch splice in)."""
    task_id = task.task_id
    id_bytes = _utf8_len(task_id)
    if not task_id:
        raise InvalidTask("task_id is empty; give every task a unique id (or let "
                          "make_task draw one)")
    if len(task_id) > MAX_TASK_ID_CHARS or id_bytes > MAX_TASK_ID_BYTES:
        raise InvalidTask(f"task_id of {len(task_id)} characters ({id_bytes} UTF-8 bytes) "
                          f"exceeds the limit of {MAX_TASK_ID_CHARS} characters and "
                          f"{MAX_TASK_ID_BYTES} bytes; use a shorter id")
    kind_bytes = _utf8_len(task.kind)
    if not kind_bytes:
        name = _name(task_id, id_bytes)
        raise InvalidTask(f"task {name} has an empty kind; name the handler to run")
    if kind_bytes > limits.max_kind_bytes:
        name = _name(task_id, id_bytes)
        raise InvalidTask(f"task {name}: kind of {kind_bytes} UTF-8 bytes exceeds the limit of "
                          f"{limits.max_kind_bytes} bytes (max_kind_bytes)")
    key_bytes = _utf8_len(task.idempotency_key)
    if key_bytes > limits.max_idempotency_key_bytes:
        name = _name(task_id, id_bytes)
        raise InvalidTask(f"task {name}: idempotency_key of {key_bytes} UTF-8 bytes exceeds the "
                          f"limit of {limits.max_idempotency_key_bytes} bytes "
                          "(max_idempotency_key_bytes)")
    if not limits.min_priority <= task.priority <= limits.max_priority:
        name = _name(task_id, id_bytes)
        raise InvalidTask(f"task {name}: priority {task.priority} is outside "
                          f"{limits.min_priority}..{limits.max_priority}")
    headers = task.headers
    if len(headers) > limits.max_headers:
        name = _name(task_id, id_bytes)
        raise InvalidTask(f"task {name}: {len(headers)} headers exceed the limit of "
                          f"{limits.max_headers} (max_headers)")
    if headers:
        header_bytes = sum(_utf8_len(k) + _utf8_len(v) for k, v in headers.items())
        if header_bytes > limits.max_header_bytes:
            name = _name(task_id, id_bytes)
            raise InvalidTask(f"task {name}: headers of {header_bytes} UTF-8 bytes (keys and "
                              f"values) exceed the limit of {limits.max_header_bytes} bytes "
                              "(max_header_bytes)")
    payload_bytes = len(task.payload)
    if payload_bytes > limits.max_payload_bytes:
        raise PayloadTooLarge(payload_bytes, limits.max_payload_bytes)
    encoded = wire.task_bytes(task)
    record_bytes = RECORD_OVERHEAD + id_bytes + wire.new_task_record_size(len(encoded))
    if record_bytes > limits.max_record_bytes:
        name = _name(task_id, id_bytes)
        raise PayloadTooLarge(
            record_bytes, limits.max_record_bytes,
            f"task {name}: its journal record of {record_bytes} bytes (payload "
            f"{payload_bytes}, task {len(encoded)}) exceeds the journal's record limit of "
            f"{limits.max_record_bytes} bytes; send less data in the task")
    return encoded
