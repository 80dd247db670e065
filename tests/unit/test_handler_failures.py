"""A handler's failure on an AI node: which exceptions are retried (@app.task(retry_on=,
no_retry_on=)), and the log line an operator gets (task id, kind, attempt, traceback).
Deliveries go straight to the node's frame handler; acks are read from a PULL on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
import zmq
import zmq.asyncio

from mesh import App, FatalError, make_task, wire
from mesh.ai_node import AINode
from mesh.errors import ConfigError
from mesh.executors.errors import ErrorClass, classify
from mesh.settings import AINodeSettings
from mesh.trust import Trust


def _app() -> App:
    app = App("failures")

    @app.task("parse", no_retry_on=json.JSONDecodeError)
    def parse(payload: bytes) -> bytes:
        return json.dumps(json.loads(payload)).encode()

    @app.task("fetch", retry_on=(TimeoutError, ConnectionError))
    async def fetch(payload: bytes) -> bytes:
        raise {b"timeout": TimeoutError("slow"), b"key": KeyError("k")}[payload]

    @app.task("plain")
    async def plain(payload: bytes) -> bytes:
        raise ValueError("bad value")

    return app


def _frame(node: AINode, acks: str, task) -> bytes:  # noqa: ANN001
    return wire.encode_dispatch_batch_raw(
        [(wire.task_bytes(task), 1, 1, 0)], wire.dispatch_suffix(node.incarnation, acks, "h", 1))


def _outcomes(*tasks) -> dict[str, int]:  # noqa: ANN002
    """error_class of the FAILED ack of each task, in one node run."""
    async def main() -> dict[str, int]:
        ctx = zmq.asyncio.Context()
        pull = ctx.socket(zmq.PULL)
        acks = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
        node = AINode(AINodeSettings(node_id="n-fail"), _app(), helpers=[acks],
                      trust=Trust.plain())
        await node.start()
        got: dict[str, int] = {}
        try:
            for task in tasks:
                node._on_frame(_frame(node, acks, task))
            end = time.monotonic() + 10
            while len(got) < len(tasks):
                left = end - time.monotonic()
                assert left > 0, f"acks missing; got {got}"
                if await pull.poll(int(left * 1000)):
                    for ack in wire.decode_ack_batch(await pull.recv()).acks:
                        if ack.kind == wire.FAILED:
                            got[ack.task_id] = ack.error_class
        finally:
            await node.stop()
            pull.close(linger=0)
            ctx.term()
        return got
    return asyncio.run(main())


def test_no_retry_on_and_retry_on_decide_which_failures_are_retried() -> None:
    bad_json = make_task("parse", b"{not json")
    timeout = make_task("fetch", b"timeout")
    key_error = make_task("fetch", b"key")
    plain = make_task("plain", b"")
    got = _outcomes(bad_json, timeout, key_error, plain)
    assert got[bad_json.task_id] == wire.FATAL      # no_retry_on=JSONDecodeError
    assert got[timeout.task_id] == wire.RETRYABLE   # in retry_on
    assert got[key_error.task_id] == wire.FATAL     # not in retry_on
    assert got[plain.task_id] == wire.RETRYABLE     # no lists: every exception is retried


def test_a_failed_handler_is_logged_with_task_id_kind_attempt_and_traceback(caplog) -> None:  # noqa: ANN001
    task = make_task("parse", b"{not json")
    with caplog.at_level(logging.ERROR, logger="mesh.ai"):
        _outcomes(task)
    records = [r for r in caplog.records if getattr(r, "task_id", None) == task.task_id]
    assert len(records) == 1, caplog.text
    record = records[0]
    assert (record.kind, record.attempt, record.node_id) == ("parse", 1, "n-fail")
    assert task.task_id in record.getMessage() and "attempt 1" in record.getMessage()
    assert "not retried" in record.getMessage()
    assert record.exc_info and record.exc_info[0] is json.JSONDecodeError
    assert "json.loads(payload)" in caplog.text  # the traceback's frame in the handler


def test_classify_honours_the_handlers_lists_but_fatal_error_stays_fatal() -> None:
    handler = _app().handlers["fetch"]
    assert classify(TimeoutError(), handler.retries)[0] == ErrorClass.RETRYABLE
    assert classify(KeyError(), handler.retries)[0] == ErrorClass.FATAL
    assert classify(FatalError("x"), handler.retries)[0] == ErrorClass.FATAL
    assert classify(KeyError())[0] == ErrorClass.RETRYABLE  # no handler: the old rule


def test_no_retry_on_wins_over_retry_on_and_takes_only_exception_classes() -> None:
    app = App("lists")

    @app.task("k", retry_on=OSError, no_retry_on=FileNotFoundError)
    def k(payload: bytes) -> None: ...

    assert app.handlers["k"].retries(ConnectionError())
    assert not app.handlers["k"].retries(FileNotFoundError())
    with pytest.raises(ConfigError, match="exception classes"):
        app.task("bad", retry_on=("TimeoutError",))


def test_a_failure_storm_logs_every_task_but_the_same_traceback_once(caplog) -> None:  # noqa: ANN001
    """40 tasks failing the same way (and one more raising the same exception type at the same
    place): a line each, with its task id; one traceback. A failure of another kind shows its
    own. The old code logged 42 tracebacks."""
    same = [make_task("parse", b"{not json") for _ in range(40)]
    other = make_task("parse", b"[1, 2")  # another JSONDecodeError, raised at the same line
    plain = make_task("plain", b"")
    with caplog.at_level(logging.ERROR, logger="mesh.ai"):
        _outcomes(*same, other, plain)
    by_task = {r.task_id: r for r in caplog.records if getattr(r, "task_id", None)}
    assert set(by_task) == {t.task_id for t in [*same, other, plain]}, caplog.text
    parse_records = [by_task[t.task_id] for t in [*same, other]]
    with_traceback = [r for r in parse_records if r.exc_info]
    assert len(with_traceback) == 1, [r.getMessage() for r in parse_records]
    held = [r for r in parse_records if not r.exc_info]
    assert all("traceback as logged at" in r.getMessage() for r in held)
    assert by_task[plain.task_id].exc_info  # another kind, another signature: shown
    assert caplog.text.count("Traceback (most recent call last)") == 2
