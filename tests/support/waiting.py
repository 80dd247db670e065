"""Wait on conditions with a deadline: tests never sleep for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0,
               interval_s: float = 0.02, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s}s")
        time.sleep(interval_s)


async def async_wait_until(predicate: Callable[[], Awaitable[object]], timeout_s: float = 10.0,
                           interval_s: float = 0.02, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s}s")
        await asyncio.sleep(interval_s)
