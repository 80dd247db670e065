"""Building tasks: ids and the submitter-side fields, shared by the Client and the Helper."""

from __future__ import annotations

import os
import time

from mesh import wire


def new_task_id() -> str:
    """A random id in the form of `uuid.uuid4().hex` (version 4, RFC 4122 variant), made
    without building a UUID object: every submit makes one, on the HTTP gateway's hot path."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def make_task(kind: str, payload: bytes, *, task_id: str | None = None, priority: int = 0,
              idempotency_key: str = "", max_attempts: int = 0, ttl_s: float | None = None,
              run_timeout_s: float | None = None, headers: dict[str, str] | None = None):  # noqa: ANN201
    """Build a wire Task with the submitter's clock; shared by the Client and the Helper."""
    now = time.time_ns()
    task = wire.Task(
        task_id=task_id or new_task_id(), kind=kind, payload=payload, priority=priority,
        idempotency_key=idempotency_key, max_attempts=max_attempts,
        deadline_ns=now + int(ttl_s * 1e9) if ttl_s else 0,
        run_timeout_ms=int(run_timeout_s * 1000) if run_timeout_s else 0, submitted_ns=now,
        headers=headers)
    return task
