"""Where handlers run on an AI node. Today: in child processes (`processes.ProcessExecutor`);
the node runs async handlers on its loop and sync ones in a thread pool itself.

Every executor ends a run with its result bytes or one of the errors of
`mesh.executors.errors`, so the AI node answers for runs the same way whatever ran them.
"""

from mesh.executors.errors import (
    ChildDied, ChildStartFailed, DependencyDown, ErrorClass, ExecutorError, HandlerFailed,
    PoolClosed, RunCancelled, RunTimedOut, classify, handler_failed,
)
from mesh.executors.processes import ChildInfo, PoolStats, ProcessExecutor, Run

__all__ = [
    "ProcessExecutor", "Run", "PoolStats", "ChildInfo",
    "ExecutorError", "HandlerFailed", "RunTimedOut", "ChildDied", "RunCancelled",
    "ChildStartFailed", "PoolClosed", "ErrorClass", "DependencyDown", "classify",
    "handler_failed",
]
