"""Where handlers run on an AI node: three executors behind one interface.

- `inline.InlineExecutor` ("async"): async handlers on the node's own loop.
- `threads.ThreadExecutor` ("thread"): a thread pool; sync handlers never block the loop.
- `processes.ProcessExecutor` ("process"): child processes; a hang is killed, a crash or a
  leak costs one child, payloads and results cross as bytes.

`mesh ai --executor async|thread|process`; the default is "async": async handlers inline, sync
ones in threads (what a node always did). With "thread" every handler runs in a thread, with
"process" every handler runs in a child.

The interface (duck-typed, all three have it):

    name: str                  "async" | "thread" | "process"
    kills_on_timeout: bool     True: the executor ends a run at its timeout itself
                               (RunTimedOut); False: the AI node cancels the awaiting task
    async start()              ready to run (children loaded the app and ran their hooks)
    async execute(handler, payload, ctx, timeout_s) -> object
                               the handler's value (bytes from the process executor), or an
                               exception: in-process executors raise what the handler raised;
                               the process executor raises one of `mesh.executors.errors`
    async stop(grace_s)        idempotent; leaves no thread, child or socket it owns

The AI node (`mesh.ai_node`) decides when a run starts (its concurrency and the per-kind
limits) and answers for every outcome: see the table in `mesh.executors.errors`.
"""

from mesh.executors.errors import (
    ChildDied, ChildStartFailed, DependencyDown, ErrorClass, ExecutorError, HandlerFailed,
    PoolClosed, RunCancelled, RunTimedOut, classify, handler_failed,
)
from mesh.executors.inline import InlineExecutor
from mesh.executors.processes import ChildInfo, PoolStats, ProcessExecutor, Run
from mesh.executors.threads import ThreadExecutor
from mesh.settings import EXECUTORS

__all__ = [
    "InlineExecutor", "ThreadExecutor", "ProcessExecutor", "Run", "PoolStats", "ChildInfo",
    "ExecutorError", "HandlerFailed", "RunTimedOut", "ChildDied", "RunCancelled",
    "ChildStartFailed", "PoolClosed", "ErrorClass", "DependencyDown", "classify",
    "handler_failed", "EXECUTORS",
]

