"""How node programs write their log: text lines for people, or JSON lines for collectors.

`--log-format json` writes one object per line: ts (UTC, RFC 3339 with milliseconds), level,
logger, msg, pid, and the fields a call passes with `extra=` that collectors index: task_id,
node_id, helper_id, kind, attempt, delivery. A node's own id (`set_node_id`) is added to every
record that names none. An exception adds `exc` (the formatted traceback) and `exc_type`.
"""

from __future__ import annotations

import json
import logging
import sys
import time

#: the `extra=` fields copied into JSON records (when present on the record)
FIELDS = ("task_id", "node_id", "helper_id", "kind", "attempt", "delivery")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are
    escaped by JSON), so a log shipper never splits a record."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if "node_id" not in out and self.node_id:
            out["node_id"] = self.node_id
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    whole = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((created - whole) * 1000):03d}Z"


def setup(level: str = "INFO", fmt: str = "text", stream=None) -> logging.Handler:  # noqa: ANN001
    """Configure the root logger once per process (a second call changes nothing, so the first,
    made with the resolved options, wins). Returns the root's handler."""
    root = logging.getLogger()
    if root.handlers:
        return root.handlers[0]
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def set_node_id(node_id: str) -> None:
    """Name this process's node in every JSON record that names none."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.node_id = node_id
