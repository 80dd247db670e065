"""Process plumbing shared by every node program: logging, signals, the READY line.

Only nodes/ touches signals and the environment. A node prints one line
`READY {"role": ..., endpoints...}` on stdout when it serves, so launchers (the demo, tests)
wait on readiness instead of sleeping.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from nodes import logs


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Text or JSON lines on stderr (nodes/logs.py). The first call of a process wins: `mesh`
    calls it with the resolved --log-level/--log-format before the command runs."""
    logs.setup((level or os.environ.get("MESH_LOG_LEVEL") or "INFO").upper(),
               fmt or os.environ.get("MESH_LOG_FORMAT") or "text")


def announce_ready(role: str, **endpoints: object) -> None:
    """Print the READY line, with SIGTERM/SIGINT already handled: a launcher may signal the
    node the moment it reads the line."""
    _signal_future()
    print("READY " + json.dumps({"role": role, "pid": os.getpid(), **endpoints}), flush=True)


_SIGNALLED: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}


def _signal_future() -> asyncio.Future:
    """Install SIGTERM/SIGINT handlers once per loop. They stay installed: a repeated signal
    during the drain is logged and ignored instead of killing the node half-way."""
    loop = asyncio.get_running_loop()
    got = _SIGNALLED.get(loop)
    if got is not None:
        return got
    got = _SIGNALLED[loop] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if got.done():
            logging.getLogger("mesh.node").warning("%s again: already stopping", sig.name)
        else:
            got.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return got


async def until_signalled(on_term: Callable[[], Awaitable[None]] | None = None) -> str:
    """Wait for SIGTERM or SIGINT; returns the signal's name."""
    return await _signal_future()


def run(main: Awaitable[int | None]) -> int:
    """Run a node's main coroutine on a fresh loop (uvloop when installed)."""
    # The journal's flusher thread hands each fdatasync's result back to the loop: a short GIL
    # switch interval keeps that hand-over from waiting behind a busy loop for 5 ms.
    sys.setswitchinterval(0.0005)
    try:
        import uvloop  # a faster event loop, when the machine has it
    except ImportError:
        uvloop = None
    # Everything imported so far lives as long as the process: out of the cycle collector's
    # full collections, which otherwise walk these ~30,000 objects while the loop waits.
    gc.freeze()
    if uvloop is None:
        return asyncio.run(main) or 0
    return uvloop.run(main) or 0
