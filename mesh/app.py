"""The handler registry users write AI nodes with.

    app = App("vision-service")

    @app.task("vision", run_timeout_s=30)
    async def vision(payload: bytes, ctx: TaskContext) -> bytes: ...

Handlers take the payload, and optionally a `TaskContext` as second argument. Async handlers
run on the node's event loop; sync ones run in a thread pool so they never block it. A handler
returns bytes (or str, or None, or anything msgspec can encode to JSON). Raise
`mesh.RetryLater(delay_s)` to retry after a delay of your choosing, `mesh.FatalError` to skip
retries; any other exception is retried with the Helper's backoff, unless the kind says
otherwise:

    @app.task("parse", no_retry_on=(json.JSONDecodeError, KeyError))   # these are not retried
    @app.task("fetch", retry_on=(TimeoutError, ConnectionError))        # only these are retried

An exception matching `no_retry_on` is never retried, even if it also matches `retry_on`.
`RetryLater` and `FatalError` keep their meaning whatever the lists say. Raise
`mesh.executors.DependencyDown("ocr-api")` when a service the handler calls is down: the
Helper's circuit breaker for that dependency is charged instead of the kind's.

`concurrency=N` bounds the runs of one kind on a node (a GPU-bound kind next to light ones),
within the node's total `--concurrency`. With `mesh ai --executor process`, handlers run in
child processes, and `@app.on_child_start` functions run once in each child before its first
task (load a model once per child, not per task):

    @app.on_child_start
    def load_model() -> None:
        global MODEL
        MODEL = load("weights.bin")
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from mesh.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TaskContext:
    task_id: str
    kind: str
    attempt: int
    delivery: int
    idempotency_key: str
    node_id: str
    headers: dict[str, str] = field(default_factory=dict)
    submitted_ns: int = 0
    #: set when the Helper cancels the task (`mesh cancel`, DELETE /v1/tasks/{id}): an async
    #: handler sees asyncio.CancelledError instead; a sync one checks `ctx.cancelled` (or waits
    #: on this event) and returns early
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled: a sync handler should stop and return."""
        return self.cancel_event.is_set()


@dataclass(frozen=True, slots=True)
class Handler:
    kind: str
    fn: Callable
    is_async: bool
    wants_context: bool
    run_timeout_s: float | None
    #: runs of this kind at once on a node (0: only the node's own limit)
    concurrency: int = 0
    #: exception types retried (empty: every one) and types never retried (wins over retry_on)
    retry_on: tuple[type[BaseException], ...] = ()
    no_retry_on: tuple[type[BaseException], ...] = ()

    def retries(self, exc: BaseException) -> bool:
        """Whether a failure with `exc` (not RetryLater nor FatalError) is worth another attempt."""
        if self.no_retry_on and isinstance(exc, self.no_retry_on):
            return False
        return not self.retry_on or isinstance(exc, self.retry_on)


def _exception_types(kind: str, name: str, value: object) -> tuple[type[BaseException], ...]:
    types = tuple(value) if isinstance(value, list | tuple | set | frozenset) else (value,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise ConfigError(f"task kind {kind!r}: {name} takes exception classes, got {t!r}")
    return types


class App:
    def __init__(self, name: str = "mesh-app") -> None:
        self.name = name
        self.handlers: dict[str, Handler] = {}
        #: run once per child process by the process executor, in order (sync or async)
        self.child_start_hooks: list[Callable] = []

    def on_child_start(self, fn: Callable) -> Callable:
        """Decorator: run `fn()` once in each child process before its first task (only with
        the process executor; a failure there fails the child's start, with its traceback)."""
        self.child_start_hooks.append(fn)
        return fn

    def task(self, kind: str, *, run_timeout_s: float | None = None,
             retry_on: object = (), no_retry_on: object = (),
             concurrency: int = 0) -> Callable:
        """Register the decorated function as the handler of `kind`. `retry_on` /
        `no_retry_on`: an exception class or a tuple of them; `concurrency`: runs of this
        kind at once on a node (see the module docstring)."""
        if not kind:
            raise ConfigError("a task kind must not be empty")
        if concurrency < 0:
            raise ConfigError(f"concurrency of task kind {kind!r} must be 0 (no limit of its "
                              f"own) or positive, got {concurrency}")
        retry_types = _exception_types(kind, "retry_on", retry_on)
        no_retry_types = _exception_types(kind, "no_retry_on", no_retry_on)

        def register(fn: Callable) -> Callable:
            if kind in self.handlers:
                raise ConfigError(f"task kind {kind!r} is registered twice in app {self.name}")
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            self.handlers[kind] = Handler(
                kind=kind, fn=fn, is_async=inspect.iscoroutinefunction(fn),
                wants_context=len(params) >= 2, run_timeout_s=run_timeout_s,
                retry_on=retry_types, no_retry_on=no_retry_types, concurrency=concurrency)
            return fn

        return register

    @property
    def kinds(self) -> list[str]:
        return sorted(self.handlers)


def encode_result(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return msgspec.json.encode(value)
