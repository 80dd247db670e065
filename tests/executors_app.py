"""The App the process-pool tests load in their children (tests/integration/
test_process_executor.py): one handler per way a run can end."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import msgspec

from mesh import App, FatalError, RetryLater, TaskContext
from mesh.executors import DependencyDown

app = App("executor-tests")

#: on_child_start calls in this process (each child has its own count)
STARTS = {"app_hook": 0, "named_hook": 0, "decorated_hook": 0}
_kept: list[bytes] = []


def _app_hook() -> None:
    STARTS["app_hook"] += 1


async def named_hook() -> None:
    """Given by import path (ProcessExecutor(on_child_start=...)); async, run in the child's
    own loop."""
    await asyncio.sleep(0)
    STARTS["named_hook"] += 1


app.child_start_hooks = [_app_hook]


@app.task("echo")
def echo(payload: bytes) -> bytes:
    return payload


@app.task("aecho")
async def aecho(payload: bytes) -> bytes:
    await asyncio.sleep(0)
    return payload


@app.task("whoami")
def whoami(payload: bytes) -> dict:
    return {"pid": os.getpid(), "starts": STARTS}


@app.task("context")
async def context(payload: bytes, ctx: TaskContext) -> dict:
    return {"task_id": ctx.task_id, "attempt": ctx.attempt, "delivery": ctx.delivery,
            "idempotency_key": ctx.idempotency_key, "headers": ctx.headers,
            "node_id": ctx.node_id, "kind": ctx.kind}


@app.task("hang")
def hang(payload: bytes) -> bytes:
    while True:
        time.sleep(1000)


@app.task("ahang")
async def ahang(payload: bytes) -> bytes:
    await asyncio.Event().wait()
    return b""


@app.task("stubborn")
def stubborn(payload: bytes) -> bytes:
    """Ignores SIGTERM: only the SIGKILL after the grace ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1000)


@app.task("exit")
def exit_(payload: bytes) -> bytes:
    os._exit(int(payload or b"3"))


@app.task("segv")
def segv(payload: bytes) -> bytes:
    import ctypes
    ctypes.string_at(0)  # a read of address 0 in native code: SIGSEGV
    return b"unreachable"


@app.task("leak")
def leak(payload: bytes) -> dict:
    """Keeps `payload` MiB per call, touched, so it counts in RSS."""
    _kept.append(b"\x01" * (int(payload) << 20))
    return {"pid": os.getpid(), "kept_mib": sum(len(b) for b in _kept) >> 20}


@app.task("boom")
def boom(payload: bytes) -> bytes:
    raise ValueError(f"bad input {payload.decode()}")


@app.task("fatal")
async def fatal(payload: bytes) -> bytes:
    raise FatalError("cannot ever work")


@app.task("later")
def later(payload: bytes) -> bytes:
    raise RetryLater(float(payload), "quota exhausted")


@app.task("dependency")
def dependency(payload: bytes) -> bytes:
    raise DependencyDown("ocr-api", "ocr-api answered 503")


@app.task("big")
def big(payload: bytes) -> bytes:
    return b"x" * int(payload)


def decode(result: bytes) -> dict:
    return msgspec.json.decode(result)


@app.task("hang_pid")
def hang_pid(payload: bytes) -> bytes:
    """Writes its pid to the file named by the payload, then hangs."""
    with open(payload.decode(), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(1000)


@app.task("gpu", concurrency=2)
def gpu(payload: bytes) -> dict:
    """A kind limited to 2 runs at once per node: returns when it ran (wall clock)."""
    start = time.time()
    time.sleep(float(payload or b"0.3"))
    return {"start": start, "end": time.time(), "pid": os.getpid()}


@app.on_child_start
def _decorated_hook() -> None:
    STARTS["decorated_hook"] += 1
