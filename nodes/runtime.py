"""Process plumbing shared by every node program: logging, signals, the READY line.

Only nodes/ touches signals and the environment. A node prints one line
`READY {"role": ..., endpoints...}` on stdout when it serves, so launchers (the demo, tests)
wait on readiness instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("MESH_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


def announce_ready(role: str, **endpoints: object) -> None:
    print("READY " + json.dumps({"role": role, "pid": os.getpid(), **endpoints}), flush=True)


async def until_signalled(on_term: Callable[[], Awaitable[None]] | None = None) -> str:
    """Wait for SIGTERM or SIGINT; returns the signal's name."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[str] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: got.done() or got.set_result(s.name))
    name = await got
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return name


def run(main: Awaitable[int | None]) -> int:
    """Run a node's main coroutine on a fresh loop (uvloop when installed)."""
    # The journal's flusher thread hands each fdatasync's result back to the loop: a short GIL
    # switch interval keeps that hand-over from waiting behind a busy loop for 5 ms.
    sys.setswitchinterval(0.0005)
    try:
        import uvloop  # a faster event loop, when the machine has it
    except ImportError:
        return asyncio.run(main) or 0
    return uvloop.run(main) or 0
