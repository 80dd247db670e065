"""--log-format json: one JSON object per line, with ts, level, logger, msg, and task_id /
node_id (and kind, attempt) when a call passes them with `extra=`; tracebacks stay in the line."""

from __future__ import annotations

import io
import json
import logging

from nodes.logs import JsonFormatter


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.json.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_each_record_is_one_json_object_with_the_standard_fields() -> None:
    logger, out = _logger(JsonFormatter())
    logger.info("helper %s up", "h1")
    logger.warning("second\nline")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "helper h1 up" and first["level"] == "INFO"
    assert first["logger"] == logger.name and first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["msg"] == "second\nline"
    assert "task_id" not in first and "node_id" not in first


def test_task_and_node_fields_come_from_extra() -> None:
    logger, out = _logger(JsonFormatter())
    logger.error("task failed", extra={"task_id": "t-1", "node_id": "ai-1", "kind": "vision",
                                        "attempt": 2})
    record = json.loads(out.getvalue())
    assert (record["task_id"], record["node_id"], record["kind"], record["attempt"]) == \
        ("t-1", "ai-1", "vision", 2)


def test_the_nodes_own_id_is_added_unless_a_record_names_one() -> None:
    logger, out = _logger(JsonFormatter(node_id="helper-7"))
    logger.info("plain")
    logger.info("other", extra={"node_id": "ai-3"})
    plain, other = (json.loads(line) for line in out.getvalue().splitlines())
    assert plain["node_id"] == "helper-7" and other["node_id"] == "ai-3"


def test_a_traceback_stays_inside_the_one_line() -> None:
    logger, out = _logger(JsonFormatter())
    try:
        json.loads("{not json")
    except ValueError:
        logger.exception("handler failed", extra={"task_id": "t-2"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["exc_type"] == "JSONDecodeError" and "Traceback" in record["exc"]
    assert record["task_id"] == "t-2"
