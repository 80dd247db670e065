"""Run handlers in a thread pool: sync handlers never block the AI node's loop.

Async handlers given to this executor (`mesh ai --executor thread`) run in their thread's own
event loop, one per thread, made on first use and kept.

A thread cannot be killed: a run past its timeout is reported by the AI node (its awaiting
task is cancelled) while the thread may keep running the handler. So the pool has
`max_workers` threads, twice the node's concurrency by default: up to `concurrency` hung
handlers leave the other half serving. A node stopping does not wait for hung threads
(`nodes/ai.py` exits past them). For hangs that must end, use the process executor.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor as _Pool

from mesh.app import Handler, TaskContext

#: thread names start with this (nodes/ai.py looks for hung ones at exit)
THREAD_PREFIX = "mesh-handler"


class ThreadExecutor:
    name = "thread"
    kills_on_timeout = False

    def __init__(self, max_workers: int) -> None:
        self._pool = _Pool(max_workers=max_workers, thread_name_prefix=THREAD_PREFIX)
        self._local = threading.local()

    async def start(self) -> None:
        return None

    async def execute(self, handler: Handler, payload: bytes, ctx: TaskContext,
                      timeout_s: float) -> object:
        args = (payload, ctx) if handler.wants_context else (payload,)
        loop = asyncio.get_running_loop()
        if handler.is_async:
            return await loop.run_in_executor(self._pool, self._run_coroutine, handler.fn, args)
        return await loop.run_in_executor(self._pool, handler.fn, *args)

    def _run_coroutine(self, fn, args: tuple) -> object:  # noqa: ANN001
        loop = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
        return loop.run_until_complete(fn(*args))

    async def stop(self, grace_s: float = 0.0) -> None:
        """Queued runs are dropped; running threads are not waited for (see the docstring)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
