"""The child process of the process pool (`mesh.executors.processes`): loads the user's app by
its import path, runs the on_child_start hooks once, then runs one task at a time.

Started as `python -m mesh.executors.child FD` (spawned, not forked: see the pool's docstring),
with FD its end of a socketpair. The current directory goes first on the import path, as for
`mesh ai --app`. Async handlers run in this process's own event loop, sync ones directly.
SIGINT is ignored (the parent decides when its children stop); SIGTERM keeps its default
action, so a hung handler dies of it. The child exits on end of file from its parent, and
with its parent (PR_SET_PDEATHSIG) where Linux offers it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import signal
import socket
import sys
from collections.abc import Callable

import msgspec

from mesh.executors import pipe
from mesh.executors.errors import classify, format_traceback, type_name


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    sock.setblocking(True)
    reader = sock.makefile("rb", buffering=1 << 16)
    decoder = msgspec.msgpack.Decoder(pipe.ToChild)
    hello = _read(reader, decoder)
    if not isinstance(hello, pipe.Hello):
        return 2
    _die_with_parent(hello.parent_pid)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    loop = _new_loop()
    try:
        app = _load_app(hello.app_path)
        for hook in _hooks(app, hello.on_child_start):
            outcome = hook()
            if inspect.isawaitable(outcome):
                loop.run_until_complete(outcome)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        _send(sock, pipe.StartFailed(f"{type_name(exc)}: {exc}", format_traceback(exc)))
        return 1
    _send(sock, pipe.Ready(os.getpid(), sorted(app.handlers),
                           pipe.rss_bytes() if hello.report_rss else 0))
    runner = _Runner(app, loop, hello)
    return loop.run_until_complete(_serve(runner, reader, decoder, sock))


async def _serve(runner: _Runner, reader, decoder, sock: socket.socket) -> int:  # noqa: ANN001
    """Run what the parent sends, one task at a time, until it closes our socket (retire).

    The loop keeps running from task to task: entering it once per async task
    (`run_until_complete`) cost about 25 us of CPU per task here, a third of the child's share
    of a 1 ms async task (bench/executor_cost.py). The wait for the next request blocks the
    process, loop included: nothing of ours has to run between tasks."""
    while True:
        request = _read(reader, decoder)
        if request is None:
            return 0  # the parent closed our socket: retire
        if isinstance(request, pipe.Request):
            _send(sock, await runner.run(request))


class _Runner:
    def __init__(self, app, loop: asyncio.AbstractEventLoop, hello: pipe.Hello) -> None:  # noqa: ANN001
        from mesh.app import TaskContext, encode_result
        self.app = app
        self.loop = loop
        self.hello = hello
        self.context = TaskContext
        self.encode = encode_result

    async def run(self, req: pipe.Request) -> pipe.Result | pipe.Failure:
        handler = self.app.handlers.get(req.kind)
        try:
            if handler is None:
                from mesh.errors import FatalError
                raise FatalError(f"no handler for task kind {req.kind!r} in "
                                 f"{self.hello.app_path} (kinds: {sorted(self.app.handlers)})")
            args: tuple = (req.payload,)
            if handler.wants_context:
                args += (self.context(
                    task_id=req.task_id, kind=req.kind, attempt=req.attempt,
                    delivery=req.delivery, idempotency_key=req.idempotency_key or req.task_id,
                    node_id=self.hello.node_id, headers=req.headers,
                    submitted_ns=req.submitted_ns),)
            if handler.is_async:
                # a task of its own, as before: its own context (contextvars) and
                # current_task, nothing of one run seen by the next
                value = await self.loop.create_task(handler.fn(*args))
            else:
                value = handler.fn(*args)
            result = self.encode(value)
            limit = self.hello.max_result_bytes
            if limit and len(result) > limit:
                from mesh.errors import FatalError
                raise FatalError(f"ResultTooLarge: the handler of {req.kind!r} returned "
                                 f"{len(result)} bytes, above this node's max_result_bytes of "
                                 f"{limit}; store large results elsewhere and return a "
                                 "reference")
        except Exception as exc:  # noqa: BLE001 - the error record carries it to the parent
            error_class, retry_after_s, dependency = classify(
                exc, handler.retries if handler is not None else None)
            return pipe.Failure(req.run_id, int(error_class), type_name(exc), str(exc),
                                format_traceback(exc), retry_after_s, dependency, self._rss())
        return pipe.Result(req.run_id, result, self._rss())

    def _rss(self) -> int:
        return pipe.rss_bytes() if self.hello.report_rss else 0


def _load_app(spec: str):  # noqa: ANN202
    from mesh.app import App
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"the app must be module:attribute, got {spec!r}")
    app = getattr(importlib.import_module(module_name), attr, None)
    if not isinstance(app, App):
        raise TypeError(f"{spec} is not a mesh.App (got {type(app).__name__})")
    return app


def _hooks(app, spec: str) -> list[Callable]:  # noqa: ANN001
    """The App's own hooks (`app.child_start_hooks`, filled by an `@app.on_child_start`
    decorator) first, then the one named on the command line."""
    hooks = list(getattr(app, "child_start_hooks", ()))
    if spec:
        module_name, sep, attr = spec.partition(":")
        if not sep:
            raise ValueError(f"on_child_start must be module:function, got {spec!r}")
        hooks.append(getattr(importlib.import_module(module_name), attr))
    return hooks


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, as the AI node itself runs: an async handler sees the same loop
    (timers included) under `--executor process` as under `--executor async`, and a run costs
    the child less. Measured with bench/executor_cost.py (1 ms async handler, 16 in flight,
    quiet machine, 2026-12-02): children's CPU per call 119 -> 96 us, p50 +354 -> +267 us over
    the async executor. The loop is entered once per child (see `_serve`), so uvloop's dearer
    entry (18 against 9 us) is paid once, not per task."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - an install without it (win32)
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this child when its parent dies, so a hung handler does not
    outlive a SIGKILLed node; elsewhere the end of file on the socket does it between tasks."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if parent_pid and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before the request took effect


def _read(reader, decoder):  # noqa: ANN001, ANN202
    head = reader.read(pipe.HEADER.size)
    if len(head) < pipe.HEADER.size:
        return None
    (size,) = pipe.HEADER.unpack(head)
    body = reader.read(size)
    if len(body) < size:
        return None
    return decoder.decode(body)


def _send(sock: socket.socket, message: pipe.ToParent) -> None:
    sock.sendall(pipe.frame(message))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
