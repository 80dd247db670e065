"""A task's status as a typed value: what `Client.status`, `statuses` and `wait` return.

The wire TaskStatus has integer states and nanosecond stamps; this one has enums, datetimes,
the result decoded when it is JSON (`.value`) and `.json()`, the dict the CLI prints. Field
names are the wire's, and the enums are ints, so code written against the wire message (state
comparisons with `wire.SUCCEEDED`, `status.submitted_ns`) keeps working.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json

from mesh import wire

#: results up to this size are shown decoded in `.json()` when they are JSON or UTF-8 text
MAX_SHOWN_RESULT_BYTES = 64 * 1024


class TaskState(enum.IntEnum):
    UNKNOWN = 0
    QUEUED = wire.QUEUED
    DISPATCHED = wire.DISPATCHED
    RUNNING = wire.RUNNING
    SUCCEEDED = wire.SUCCEEDED
    DEAD = wire.DEAD
    CANCELLED = wire.CANCELLED

    @property
    def terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED)


class DeadReason(enum.IntEnum):
    NONE = 0
    ATTEMPTS_EXHAUSTED = wire.ATTEMPTS_EXHAUSTED
    FATAL_ERROR = wire.FATAL_ERROR
    EXPIRED = wire.EXPIRED
    UNKNOWN_KIND = wire.UNKNOWN_KIND
    DELIVERY_LIMIT = wire.DELIVERY_LIMIT
    PAYLOAD_REJECTED = wire.PAYLOAD_REJECTED


def _enum(cls, value: int):  # noqa: ANN001, ANN202 - a newer Helper's value stays an int
    try:
        return cls(value)
    except ValueError:
        return value


def _time(ns: int) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC) if ns else None


def _iso(ns: int) -> str | None:
    moment = _time(ns)
    return moment.isoformat().replace("+00:00", "Z") if moment else None


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One failed attempt or lost delivery (`outcome`: failed, lost, dead)."""

    attempt: int
    node_id: str
    error: str
    at_ns: int
    outcome: str

    def json(self) -> dict:
        return {"attempt": self.attempt, "outcome": self.outcome, "node": self.node_id or None,
                "error": self.error, "at": _iso(self.at_ns)}


@dataclasses.dataclass(frozen=True, slots=True)
class TaskStatus:
    task_id: str
    state: TaskState
    kind: str = ""
    attempts: int = 0
    deliveries: int = 0
    node_id: str = ""
    priority: int = 0
    result: bytes = b""
    error: str = ""
    dead_reason: DeadReason = DeadReason.NONE
    submitted_ns: int = 0
    finished_ns: int = 0
    cancelled_ns: int = 0
    #: dead-letter inspect only: the payload's first bytes and its full size
    payload: bytes = b""
    payload_bytes: int = 0
    history: tuple[AttemptRecord, ...] = ()

    @classmethod
    def of(cls, status) -> TaskStatus:  # noqa: ANN001 - wire.TaskStatus
        return cls(
            task_id=status.task_id, state=_enum(TaskState, status.state), kind=status.kind,
            attempts=status.attempts, deliveries=status.deliveries, node_id=status.node_id,
            priority=status.priority, result=status.result, error=status.error,
            dead_reason=_enum(DeadReason, status.dead_reason), submitted_ns=status.submitted_ns,
            finished_ns=status.finished_ns, cancelled_ns=status.cancelled_ns,
            payload=status.payload, payload_bytes=status.payload_bytes,
            history=tuple(AttemptRecord(a.attempt, a.node_id, a.error, a.at_ns, a.outcome)
                          for a in status.history))

    @property
    def terminal(self) -> bool:
        return self.state in wire.TERMINAL_STATES

    @property
    def submitted_at(self) -> datetime.datetime | None:
        return _time(self.submitted_ns)

    @property
    def finished_at(self) -> datetime.datetime | None:
        return _time(self.finished_ns)

    @property
    def value(self) -> object:
        """The result decoded as JSON; the raw bytes when it is not JSON."""
        try:
            return json.loads(self.result)
        except ValueError:
            return self.result

    def json(self) -> dict:
        """A JSON-ready dict: names for enums, ISO 8601 UTC times, the result as JSON when it
        is JSON, else as text when it is UTF-8, else its size only (`result_bytes`)."""
        out: dict = {"task_id": self.task_id, "state": wire.state_name(self.state),
                     "kind": self.kind, "attempts": self.attempts,
                     "deliveries": self.deliveries, "priority": self.priority,
                     "node": self.node_id or None, "submitted_at": _iso(self.submitted_ns),
                     "finished_at": _iso(self.finished_ns)}
        if self.dead_reason:
            out["dead_reason"] = wire.dead_reason_name(self.dead_reason)
        if self.error:
            out["error"] = self.error
        if self.result:
            out["result_bytes"] = len(self.result)
            shown = _shown(self.result)
            if shown is not None:
                out["result"] = shown
        if self.payload_bytes:
            out["payload_bytes"] = self.payload_bytes
            out["payload_preview"] = self.payload.decode("utf-8", errors="replace")
        if self.history:
            out["history"] = [item.json() for item in self.history]
        return out


def _shown(data: bytes) -> object:
    if len(data) > MAX_SHOWN_RESULT_BYTES:
        return None
    try:
        return json.loads(data)
    except ValueError:
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
