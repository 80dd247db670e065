"""Run async handlers on the AI node's own event loop: no hop, no copy.

The cheapest executor and the least isolated: a handler that blocks the loop (a sync call
inside an async handler) stalls the whole node, and a run past its timeout is cancelled, not
killed (a handler that swallows `CancelledError` keeps running). The AI node's timeout sweep
cancels the task awaiting `execute`. Exceptions come out as the handler raised them.
"""

from __future__ import annotations

from mesh.app import Handler, TaskContext


class InlineExecutor:
    name = "async"
    #: False: the AI node enforces the run timeout by cancelling the task awaiting `execute`
    kills_on_timeout = False

    async def start(self) -> None:
        return None

    async def execute(self, handler: Handler, payload: bytes, ctx: TaskContext,
                      timeout_s: float) -> object:
        if handler.wants_context:
            return await handler.fn(payload, ctx)
        return await handler.fn(payload)

    async def stop(self, grace_s: float = 0.0) -> None:
        return None
