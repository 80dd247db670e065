"""The sample App the demo and the tests run: handlers that behave like a remote AI call.

Side effects: when MESH_EFFECT_LOG_DIR is set, a completing handler applies its side effect the
way a careful handler does, guarded by the task's idempotency key: it claims the key
(a file `<dir>/keys/<key>` holding the task id, created atomically, like a row under a unique
constraint in a database). A run that finds the key claimed (a redelivery after its first node
died between the effect and the ack) appends the task id to `<dir>/<pid>.absorbed` instead.
The demo and the tests count both (`applied_effects`).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import msgspec

from mesh import App, FatalError, RetryLater, TaskContext

app = App("sample")

_effect_fds: dict[str, int] = {}
_keys_made: set[str] = set()


def _append(directory: str, suffix: str, line: str) -> None:
    fd = _effect_fds.get(suffix)
    if fd is None:
        fd = _effect_fds[suffix] = os.open(os.path.join(directory, f"{os.getpid()}.{suffix}"),
                                           os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, (line + "\n").encode())


def _record_effect(ctx: TaskContext) -> None:
    """Apply the side effect once per idempotency key: write the effect to a private file, then
    link it to the key's name. link() fails if the name exists, so claim and effect are one
    atomic step (a SIGKILL between them leaves a private file, never a half-claimed key)."""
    directory = os.environ.get("MESH_EFFECT_LOG_DIR")
    if not directory:
        return
    keys = os.path.join(directory, "keys")
    if keys not in _keys_made:
        os.makedirs(keys, exist_ok=True)
        _keys_made.add(keys)
    private = os.path.join(keys, f".{os.getpid()}.{ctx.task_id}.{ctx.delivery}")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, ctx.task_id.encode())
    finally:
        os.close(fd)
    try:
        os.link(private, os.path.join(keys, ctx.idempotency_key))
    except FileExistsError:
        _append(directory, "absorbed", ctx.task_id)
    finally:
        os.unlink(private)


def applied_effects(directory: str) -> "collections.Counter[str]":
    """Task id -> how many times its side effect was applied (for the demo and the tests)."""
    import collections

    counts: collections.Counter[str] = collections.Counter()
    keys = os.path.join(directory, "keys")
    if os.path.isdir(keys):
        for name in os.listdir(keys):
            if not name.startswith("."):
                with open(os.path.join(keys, name)) as f:
                    counts[f.read()] += 1
    return counts


class Job(msgspec.Struct, omit_defaults=True):
    #: simulated model latency in ms (default: 2..8 ms, like a fast inference call)
    ms: float | None = None
    #: fail this many first attempts, then succeed
    fail_times: int = 0
    fatal: bool = False
    retry_later_s: float | None = None
    sync: bool = False
    #: fail (retryably) while this file exists: a cause an operator can remove, then replay
    fail_while_exists: str | None = None


_decode = msgspec.json.Decoder(Job)


@app.task("simulate")
async def simulate(payload: bytes, ctx: TaskContext) -> bytes:
    """A simulated AI call: waits like a model server would, then answers."""
    started_ns = time.time_ns()
    started_monotonic_ns = time.monotonic_ns()
    job = _decode.decode(payload) if payload[:1] == b"{" else Job()
    if job.fatal:
        raise FatalError("the input can never be processed")
    if ctx.attempt <= job.fail_times:
        if job.retry_later_s is not None:
            raise RetryLater(job.retry_later_s)
        raise RuntimeError(f"simulated failure on attempt {ctx.attempt}")
    if job.fail_while_exists and os.path.exists(job.fail_while_exists):
        raise RuntimeError(f"{job.fail_while_exists} exists (attempt {ctx.attempt})")
    delay_ms = job.ms if job.ms is not None else random.uniform(2.0, 8.0)
    if job.sync:
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, delay_ms / 1000.0)
    else:
        await asyncio.sleep(delay_ms / 1000.0)
    _record_effect(ctx)
    # The run's span on the host's monotonic clock, for tests that check concurrency from
    # results: the wall clock (started_ns, for latency against submitted_ns) may be slewed.
    return msgspec.json.encode({"started_ns": started_ns, "node": ctx.node_id,
                                "attempt": ctx.attempt,
                                "run_monotonic_ns": [started_monotonic_ns, time.monotonic_ns()]})


@app.task("noop")
async def noop(payload: bytes, ctx: TaskContext) -> bytes:
    """Does nothing but say when it started: the benchmarks' handler."""
    return str(time.time_ns()).encode()


@app.task("echo")
async def echo(payload: bytes, ctx: TaskContext) -> bytes:
    _record_effect(ctx)
    return payload


@app.task("block")
def block(payload: bytes) -> bytes:
    """A sync handler that sleeps (in the node's thread pool, never on its loop)."""
    time.sleep(float(payload or b"0.1"))
    return b"slept"


@app.task("crash")
async def crash(payload: bytes, ctx: TaskContext) -> bytes:
    """A poison pill: kills the node process that runs it, after `payload` ms of work (default
    50), like a model that segfaults on this input. (A node that dies within about a
    millisecond of starting a task may die before its STARTED ack leaves; see
    docs/decisions/005-failure-semantics.md.)"""
    await asyncio.sleep(float(payload or b"50") / 1000.0)
    os._exit(17)


def _mark(name: str, line: str) -> None:
    """Append `line` to `<MESH_EFFECT_LOG_DIR>/<name>` (what the cancel tests read)."""
    directory = os.environ.get("MESH_EFFECT_LOG_DIR")
    if directory:
        with open(os.path.join(directory, name), "a") as out:
            out.write(line + "\n")


@app.task("wait")
async def wait(payload: bytes, ctx: TaskContext) -> bytes:
    """Waits `payload` seconds (default 60): a long async run for cancel tests. Notes its start
    (`started`) and, when cancelled, the CancelledError it saw (`cancelled`)."""
    _mark("started", f"{ctx.task_id} {ctx.attempt}")
    try:
        await asyncio.sleep(float(payload or b"60"))
    except asyncio.CancelledError:
        _mark("cancelled", f"{ctx.task_id} CancelledError")
        raise
    return b"waited"


@app.task("wait_sync")
def wait_sync(payload: bytes, ctx: TaskContext) -> bytes:
    """A sync handler that waits up to `payload` seconds (default 60) and stops early when its
    task is cancelled (`ctx.cancelled`), noting which (`started`, `cancelled`)."""
    _mark("started", f"{ctx.task_id} {ctx.attempt}")
    if ctx.cancel_event.wait(float(payload or b"60")):
        _mark("cancelled", f"{ctx.task_id} flag")
        return b"stopped"
    return b"waited"
