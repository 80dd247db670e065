"""What a run in an executor can end with, besides its result, and the handler-side signal
`DependencyDown`.

An executor that runs handlers out of process cannot hand back the handler's exception object
(user classes are never pickled across): it hands back a `HandlerFailed` carrying the error
class that steers the retry policy, the exception's type name, message and formatted
traceback. The other errors say what happened to the run itself, so the AI node can answer
for it:

| error            | the run...                                    | the AI node acks          |
| ---------------- | --------------------------------------------- | ------------------------- |
| `HandlerFailed`  | raised (class RETRYABLE / FATAL / RETRY_LATER) | FAILED with that class   |
| `RunTimedOut`    | passed its run timeout; its child was killed   | FAILED, TIMEOUT          |
| `ChildDied`      | lost its child (os._exit, a signal, OOM kill)  | FAILED, counted as a lost delivery (poison-pill bound) |
| `RunCancelled`   | was cancelled (`ProcessExecutor.cancel`)       | as the cancel asks        |
| `ChildStartFailed` | never started: no child could be started     | REJECTED, so it runs elsewhere |
| `PoolClosed`     | was submitted to, or still ran in, a stopped pool | REJECTED DRAINING (handed back) |
"""

from __future__ import annotations

import enum
import traceback as _traceback
from collections.abc import Callable

from mesh.errors import FatalError, MeshError, RetryLater


class ErrorClass(enum.IntEnum):
    """How a handler's failure steers the retry policy (maps one to one onto the wire's
    RETRYABLE / FATAL / RETRY_LATER error classes)."""

    RETRYABLE = 0
    FATAL = 1
    RETRY_LATER = 2


class DependencyDown(Exception):
    """Raise from a handler when a dependency it calls is down (`DependencyDown("ocr-api")`).

    The attempt fails as retryable (or after `retry_after_s`, like `RetryLater`, when given),
    and the failure is charged to the circuit breaker named `dependency`
    (`mesh.policies.circuit`) instead of the task kind's own: while that breaker is open, the
    kinds seen to depend on it are not dispatched.
    """

    def __init__(self, dependency: str, message: str = "", *,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message or f"dependency {dependency!r} is down")
        self.dependency = dependency
        self.retry_after_s = retry_after_s


class ExecutorError(MeshError):
    """Base of what an executor raises for a run instead of its result."""


class HandlerFailed(ExecutorError):
    """The handler raised. `type_name` is its exception's class name (qualified by module
    unless a builtin), `traceback` the formatted traceback from the process that ran it,
    `retry_after_s` the delay a `RetryLater` (or `DependencyDown(retry_after_s=)`) asked for,
    `dependency` the name a `DependencyDown` gave ("" otherwise)."""

    def __init__(self, error_class: ErrorClass, type_name: str, message: str, traceback: str,
                 *, retry_after_s: float = 0.0, dependency: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.error_class = ErrorClass(error_class)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.retry_after_s = retry_after_s
        self.dependency = dependency


class RunTimedOut(ExecutorError):
    """The run passed `timeout_s`. If it had started, its child was killed (SIGTERM, then
    SIGKILL after the pool's kill grace) and is being replaced; `started` is False when the
    run spent the whole time waiting for a free child."""

    def __init__(self, timeout_s: float, *, pid: int = 0, started: bool = True) -> None:
        where = f"in child {pid}; the child was killed" if started else (
            "waiting for a free child (none was free: children were busy or being replaced)")
        super().__init__(f"run timeout of {timeout_s}s passed {where}")
        self.timeout_s = timeout_s
        self.pid = pid
        self.started = started


class ChildDied(ExecutorError):
    """The child running this run exited under it: `exit_code` >= 0 for an exit (os._exit),
    `signal` > 0 when a signal ended it (SIGSEGV in native code, SIGKILL from the OOM killer).
    Only this run fails; the child is replaced. `rss_bytes` is the child's last reported RSS
    (0 if unknown)."""

    def __init__(self, pid: int, *, exit_code: int | None, signal: int = 0, kind: str = "",
                 rss_bytes: int = 0) -> None:
        import signal as _signal
        if signal:
            try:
                how = f"was killed by {_signal.Signals(signal).name}"
            except ValueError:
                how = f"was killed by signal {signal}"
            if signal == _signal.SIGKILL:
                how += " (the OOM killer does this when memory runs out)"
        else:
            how = f"exited with code {exit_code}"
        what = f" while running a {kind!r} task" if kind else ""
        super().__init__(f"child process {pid} {how}{what}; it is replaced, only this run "
                         "failed")
        self.pid = pid
        self.exit_code = exit_code
        self.signal = signal
        self.kind = kind
        self.rss_bytes = rss_bytes


class RunCancelled(ExecutorError):
    """The run was cancelled through the executor; its child (if it had one) was killed."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(f"run cancelled: {reason}")
        self.reason = reason


class ChildStartFailed(ExecutorError):
    """A child could not load the app or its on_child_start hook raised. `traceback` is the
    child's. Raised by `start()`; later, runs waiting for a child fail with it when a
    replacement fails to start."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


class PoolClosed(ExecutorError):
    def __init__(self, what: str = "the process pool is stopped") -> None:
        super().__init__(f"{what}; hand the task back so it runs elsewhere")


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


#: The longest traceback kept (the tail: the frames nearest the raise).
MAX_TRACEBACK_CHARS = 16_000


def classify(exc: BaseException, retries: Callable[[BaseException], bool] | None = None,
             ) -> tuple[ErrorClass, float, str]:
    """(error class, retry_after_s, dependency) for an exception a handler raised: the one rule
    every executor follows. `RetryLater` keeps its delay; `FatalError` is never retried;
    `DependencyDown` names its dependency; anything else is retryable unless `retries` (the
    handler's `Handler.retries`, from @app.task(retry_on=, no_retry_on=)) says no."""
    if isinstance(exc, RetryLater):
        return ErrorClass.RETRY_LATER, float(exc.delay_s), ""
    if isinstance(exc, FatalError):
        return ErrorClass.FATAL, 0.0, ""
    if isinstance(exc, DependencyDown):
        if exc.retry_after_s is not None:
            return ErrorClass.RETRY_LATER, float(exc.retry_after_s), exc.dependency
        return ErrorClass.RETRYABLE, 0.0, exc.dependency
    if retries is not None and not retries(exc):
        return ErrorClass.FATAL, 0.0, ""
    return ErrorClass.RETRYABLE, 0.0, ""


def handler_failed(exc: BaseException,
                   retries: Callable[[BaseException], bool] | None = None) -> HandlerFailed:
    """The `HandlerFailed` an executor raises for a handler's exception (in-process executors
    use it too, so the AI node answers every executor's failures the same way)."""
    error_class, retry_after_s, dependency = classify(exc, retries)
    return HandlerFailed(error_class, type_name(exc), str(exc), format_traceback(exc),
                         retry_after_s=retry_after_s, dependency=dependency)


def format_traceback(exc: BaseException) -> str:
    text = "".join(_traceback.format_exception(exc))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    return text
