"""Mesh values as the gateway's JSON: task statuses, ids from idempotency keys, timestamps.

Pure functions, no I/O: the routes in nodes/http.py call them and tests check them directly.
"""

from __future__ import annotations

import datetime
import hashlib
import json

from mesh import wire

#: results up to this size are inlined in GET /v1/tasks/{id} when they are JSON
MAX_INLINE_RESULT_BYTES = 64 * 1024
#: the longest Idempotency-Key accepted (the Helper bounds the key it journals too)
MAX_IDEMPOTENCY_KEY_CHARS = 200


def task_id_for_key(idempotency_key: str) -> str:
    """The task id an Idempotency-Key stands for: the same key gives the same id on any gateway
    (no state kept), so a retried POST is a duplicate of the first."""
    digest = hashlib.sha256(b"mesh-http-idempotency\0" + idempotency_key.encode()).hexdigest()
    return digest[:32]


def iso(ns: int) -> str | None:
    """ns since the epoch as ISO 8601 UTC with microseconds; None for 0 (not yet)."""
    if not ns:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.replace(microsecond=rest // 1000).isoformat().replace("+00:00", "Z")


#: where a task's status is, before its id
TASKS_PATH = "/v1/tasks/"
#: a str as a JSON string literal, as json.dumps writes it (ASCII, escaped)
_quote = json.encoder.encode_basestring_ascii


def task_location(task_id: str) -> str:
    return TASKS_PATH + task_id


def status_json(status) -> dict:  # noqa: ANN001 - wire.TaskStatus
    """What GET /v1/tasks/{id} answers: state, attempts, timestamps, error, and the result
    inline when it is JSON (else its size and where to fetch the raw bytes)."""
    out: dict = {"id": status.task_id, "kind": status.kind,
                 "state": wire.state_name(status.state), "attempts": status.attempts,
                 "deliveries": status.deliveries, "priority": status.priority,
                 "node": status.node_id or None, "submitted_at": iso(status.submitted_ns),
                 "finished_at": iso(status.finished_ns)}
    if status.error:
        out["error"] = status.error
    if status.dead_reason:
        out["dead_reason"] = wire.dead_reason_name(status.dead_reason)
    if status.state == wire.SUCCEEDED:
        out["result_url"] = task_location(status.task_id) + "/result"
        out["result_bytes"] = len(status.result)
        value = json_value(status.result)
        if value is not _NOT_JSON:
            out["result"] = value
    return out


_NOT_JSON = object()


def json_value(data: bytes) -> object:
    """`data` parsed as JSON if it is small and valid, else _NOT_JSON."""
    if not data or len(data) > MAX_INLINE_RESULT_BYTES or data[:1] not in b'{["-0123456789tfn':
        return _NOT_JSON
    try:
        return json.loads(data)
    except ValueError:
        return _NOT_JSON


def is_json(data: bytes) -> bool:
    return json_value(data) is not _NOT_JSON


def accepted_body(task_id: str, duplicate: bool = False) -> bytes:
    """`json.dumps(accepted_json(task_id, duplicate)).encode()`, byte for byte, without the
    encoder's machinery (the answer to every accepted POST)."""
    quoted = _quote(task_id)
    return (f'{{"id": {quoted}, "state": "QUEUED", "location": "{TASKS_PATH}'
            f'{quoted[1:]}{", " + _DUPLICATE if duplicate else ""}}}').encode()


_DUPLICATE = '"duplicate": true'


def accepted_json(task_id: str, duplicate: bool = False) -> dict:
    out = {"id": task_id, "state": "QUEUED", "location": task_location(task_id)}
    if duplicate:
        out["duplicate"] = True
    return out
