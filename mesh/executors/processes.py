"""Run handlers in child processes: a hang is killed, a crash or a leak costs one child.

    pool = ProcessExecutor("myapp:app", size=16, max_tasks_per_child=1000,
                           max_memory_per_child_bytes=2 * 2**30)
    await pool.start()                       # every child loaded the app and ran its hooks
    result = await pool.run("vision", payload, timeout_s=30, task_id=..., attempt=1)
    await pool.stop(grace_s=10)

Guarantees:
- At most `size` runs at once, one per child; more wait (FIFO) for a free child. A run's
  `timeout_s` counts from `submit`, the wait for a child included.
- A run past its timeout fails with `RunTimedOut` at once; its child gets SIGTERM, then SIGKILL
  after `kill_grace_s`, and a replacement is started at once.
- A child that dies under a run (os._exit, SIGSEGV in native code, an OOM kill) fails that run
  only, with `ChildDied` (exit code or signal); it is replaced. Other runs go on.
- A child is retired between tasks (end of file on its socket: it exits 0) after
  `max_tasks_per_child` tasks, or when its RSS after a task (it reads /proc/self/statm) is
  above `max_memory_per_child_bytes`; a replacement starts at once.
- Each child loads the app once and runs its on_child_start hooks once, before it takes a task.
- Payloads and results cross as bytes (`mesh.executors.pipe`); a handler's exception comes
  back as `HandlerFailed` with its error class (a `RetryLater` keeps its delay), type name,
  message and traceback.
- Cancelling a run (`cancel(run)`, or cancelling the task that awaits it) kills its child.
- `stop(grace_s)` is idempotent and leaves no child, socket, pid fd, timer or task behind.

Why spawn, not fork: the parent is an AI node with a running ZeroMQ context (its I/O threads)
and an event loop; a fork copies locks held by those threads mid-operation into the child. So
children are spawned: `python -m mesh.executors.child FD` through subprocess (vfork + exec,
safe in a threaded parent), given one end of a socketpair. We measured the alternative,
multiprocessing's forkserver (bench/executor_cost.py prints both): it starts a child faster,
but it re-imports the parent's `__main__` in each child, pickles the target's arguments and
keeps a process-wide server with process-wide preloads; a start costs us about one interpreter
start plus the app's imports, paid only when a child is replaced, never per task.

Per-kind concurrency limits are left to the caller (the AI node decides when a job starts,
for every executor alike): a run waiting here for a kind's permit would hold a node slot
unseen and spend its timeout. Every child can run every kind.

Linux only: pid file descriptors (os.pidfd_open) tell the loop when a child exits, and RSS is
read from /proc.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from mesh.errors import ConfigError
from mesh.executors import pipe
from mesh.executors.errors import (
    ChildDied, ChildStartFailed, ErrorClass, HandlerFailed, PoolClosed, RunCancelled,
    RunTimedOut,
)

log = logging.getLogger("mesh.executors.processes")

#: Delay before starting a child again after one failed to start, doubled per failure in a row.
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_CAP_S = 30.0
#: How long a retired child (idle, told to exit) may take to exit before it is killed.
RETIRE_GRACE_S = 5.0


class ChildState(enum.Enum):
    STARTING = "starting"  # spawned; loading the app, running hooks
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"  # told to exit between tasks (recycled or pool stopping)
    KILLING = "killing"  # SIGTERM sent (a timeout, a cancel, a stop), SIGKILL after the grace
    LOST = "lost"  # closed its socket unasked: dying


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One child, as `ProcessExecutor.children()` shows it (for `mesh nodes` / stats)."""

    pid: int
    state: str
    tasks: int
    rss_bytes: int
    kind: str  # the kind it runs now, "" when not busy
    age_s: float


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counts since the pool started; gauges as of now. Read once per heartbeat for metrics."""

    size: int
    idle: int
    busy: int
    starting: int
    waiting: int  # runs waiting for a free child
    children_started: int
    recycled_tasks: int  # retired at max_tasks_per_child
    recycled_memory: int  # retired above max_memory_per_child_bytes
    killed_timeout: int
    killed_cancel: int
    died: int  # died under a run or while idle (not at our request)
    start_failures: int


class Run:
    """One submitted run. `await run` gives the result bytes or raises (see
    `mesh.executors.errors`). `pid` is the child running it (0 while it waits)."""

    __slots__ = ("run_id", "kind", "task_id", "timeout_s", "future", "child", "_frame",
                 "_timer", "_end")

    def __init__(self, run_id: int, kind: str, task_id: str, timeout_s: float | None,
                 future: asyncio.Future, frame: bytes) -> None:
        self.run_id = run_id
        self.kind = kind
        self.task_id = task_id
        self.timeout_s = timeout_s
        self.future = future
        self.child: _Child | None = None
        self._frame: bytes | None = frame
        self._timer: asyncio.TimerHandle | None = None
        self._end = ""  # why it ended early: "timeout", "cancel", "stop"

    @property
    def pid(self) -> int:
        return self.child.pid if self.child is not None else 0

    def done(self) -> bool:
        return self.future.done()

    def __await__(self):  # noqa: ANN204
        return self.future.__await__()


class _Child:
    __slots__ = ("proc", "pid", "sock", "transport", "state", "run", "tasks", "rss_bytes", "pidfd",
                 "ready", "kill_timer", "start_error", "started_at", "buffer", "poll_timer")

    def __init__(self, proc: subprocess.Popen, sock: socket.socket,
                 ready: asyncio.Future) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.sock = sock  # owned by `transport` once there is one
        self.transport: asyncio.Transport | None = None
        self.state = ChildState.STARTING
        self.run: Run | None = None
        self.tasks = 0
        self.rss_bytes = 0
        self.pidfd = -1
        self.ready = ready
        self.kill_timer: asyncio.TimerHandle | None = None
        self.start_error: pipe.StartFailed | None = None
        self.started_at = time.monotonic()
        self.buffer = bytearray()
        self.poll_timer: asyncio.TimerHandle | None = None


class _ChildProtocol(asyncio.Protocol):
    """The parent's reader for one child: frames in, messages to the pool."""

    def __init__(self, pool: ProcessExecutor, child: _Child) -> None:
        self.pool = pool
        self.child = child

    def data_received(self, data: bytes) -> None:
        child = self.child
        buf = child.buffer
        if not buf and len(data) >= 4:
            (size,) = pipe.HEADER.unpack_from(data)
            if len(data) == 4 + size:  # the common case: exactly one whole frame
                self.pool._on_frame(child, memoryview(data)[4:])
                return
        buf += data
        while len(buf) >= 4:
            (size,) = pipe.HEADER.unpack_from(buf)
            if size > self.pool._max_frame_bytes:
                self.pool._on_protocol_error(child, f"announced a frame of {size} bytes")
                return
            if len(buf) < 4 + size:
                return
            body = bytes(buf[4:4 + size])
            del buf[:4 + size]
            self.pool._on_frame(child, body)
            if child.state in (ChildState.KILLING, ChildState.LOST):
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._on_eof(self.child)


class ProcessExecutor:
    """A pool of `size` child processes running the handlers of the App at `app_path`."""

    name = "process"
    #: True: a run past its timeout ends here (RunTimedOut, its child killed); the AI node's
    #: own sweep is only a backstop
    kills_on_timeout = True

    def __init__(self, app_path: str, size: int, *, max_tasks_per_child: int = 0,
                 max_memory_per_child_bytes: int = 0, kill_grace_s: float = 1.0,
                 start_timeout_s: float = 60.0, on_child_start: str = "",
                 node_id: str = "", max_result_bytes: int = 0,
                 python: str = sys.executable, cwd: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """`app_path`: "module:attribute" of a `mesh.App`, imported in each child with the
        current directory (or `cwd`) first on the import path. `on_child_start`:
        "module:function" run once in each child before its first task (after the App's own
        `child_start_hooks`, if it has any); sync or async. 0 for `max_tasks_per_child` or
        `max_memory_per_child_bytes`: no bound. `max_result_bytes` (0: none): a larger result
        fails its run (FATAL) in the child, before it crosses. `env`: the children's
        environment (None: the parent's)."""
        if ":" not in app_path:
            raise ConfigError(f"the app must be module:attribute, got {app_path!r}")
        if size < 1:
            raise ConfigError(f"a process pool needs at least one child, got size={size}")
        for name, value in (("max_tasks_per_child", max_tasks_per_child),
                            ("max_memory_per_child_bytes", max_memory_per_child_bytes),
                            ("max_result_bytes", max_result_bytes)):
            if value < 0:
                raise ConfigError(f"{name} must be 0 (no bound) or positive, got {value}")
        if kill_grace_s < 0 or start_timeout_s <= 0:
            raise ConfigError("kill_grace_s must be >= 0 and start_timeout_s > 0")
        self.app_path = app_path
        self.size = size
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child_bytes = max_memory_per_child_bytes
        self.kill_grace_s = kill_grace_s
        self.start_timeout_s = start_timeout_s
        self._hello = pipe.frame(pipe.Hello(
            app_path=app_path, on_child_start=on_child_start,
            report_rss=max_memory_per_child_bytes > 0, max_result_bytes=max_result_bytes,
            node_id=node_id, parent_pid=os.getpid()))
        self._argv_head = [python, "-m", "mesh.executors.child"]
        self._cwd = cwd
        self._env = dict(env) if env is not None else None
        # A result or an error record: the bound plus room for the record's other fields.
        self._max_frame_bytes = (max_result_bytes + (1 << 20) if max_result_bytes
                                 else pipe.MAX_FRAME_BYTES)
        self._decoder = msgspec.msgpack.Decoder(pipe.ToParent)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: set[_Child] = set()
        self._idle: list[_Child] = []  # a stack: the most recently used child runs next
        self._waiting: deque[Run] = deque()
        self._run_ids = itertools.count(1)
        self._state = "new"  # new -> running -> stopping -> stopped
        self._starting_pool = False
        self._spawn_failures = 0
        self._spawn_after = 0.0  # monotonic: no spawn before it (backoff after a failed start)
        self._spawn_timer: asyncio.TimerHandle | None = None
        self._spawn_tasks: set[asyncio.Task] = set()
        self._all_exited: asyncio.Event | None = None
        self._quiet: asyncio.Event | None = None  # no run busy or waiting (for stop's grace)
        self._stopped: asyncio.Event | None = None
        self._counts = dict.fromkeys(
            ("children_started", "recycled_tasks", "recycled_memory", "killed_timeout",
             "killed_cancel", "died", "start_failures"), 0)

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start `size` children and wait until each has loaded the app and run its hooks.
        Raises `ChildStartFailed` (with the child's traceback) and stops what it started if
        any child fails to start within `start_timeout_s`."""
        if self._state != "new":
            raise ConfigError("a ProcessExecutor starts once")
        self._loop = asyncio.get_running_loop()
        self._all_exited = asyncio.Event()
        self._all_exited.set()
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._stopped = asyncio.Event()
        self._state = "running"
        self._starting_pool = True
        try:
            children = [self._spawn() for _ in range(self.size)]
            results = await asyncio.gather(*(self._bring_up(*c) for c in children),
                                           return_exceptions=True)
        finally:
            self._starting_pool = False
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop(0.0)
            first = failed[0]
            if isinstance(first, ChildStartFailed):
                raise first
            raise ChildStartFailed(f"a child failed to start: {first}") from first
        log.info("process pool up: %d children for %s", self.size, self.app_path)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Take no more runs; give runs already submitted up to `grace_s` to finish; then fail
        what is left with `PoolClosed` (killing its children), retire the idle children and
        wait until every child has exited. Idempotent."""
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        if self._state == "stopping":
            await self._stopped.wait()
            return
        self._state = "stopping"
        if self._spawn_timer is not None:
            self._spawn_timer.cancel()
        self._quiet.clear()
        self._check_quiet()
        if grace_s > 0 and not self._quiet.is_set():
            try:
                await asyncio.wait_for(self._quiet.wait(), grace_s)
            except asyncio.TimeoutError:
                pass
        for task in list(self._spawn_tasks):
            task.cancel()
        if self._spawn_tasks:
            await asyncio.gather(*self._spawn_tasks, return_exceptions=True)
        while self._waiting:
            run = self._waiting.popleft()
            run._end = "stop"
            self._fail(run, PoolClosed("the process pool stopped before a child was free"))
        for child in list(self._children):
            if child.state is ChildState.BUSY:
                run = child.run
                child.run = None
                self._kill(child)
                if run is not None:
                    run._end = "stop"
                    self._fail(run, PoolClosed("the process pool stopped while it ran"))
            elif child.state in (ChildState.IDLE, ChildState.STARTING):
                if child.state is ChildState.IDLE:
                    self._retire(child)
                else:
                    self._kill(child)
        self._idle.clear()
        await self._all_exited.wait()
        self._state = "stopped"
        self._stopped.set()
        log.info("process pool stopped")

    async def __aenter__(self) -> ProcessExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- runs --------------------------------------------------------------------------

    def submit(self, kind: str, payload: bytes, *, timeout_s: float | None = None,
               task_id: str = "", attempt: int = 1, delivery: int = 0,
               idempotency_key: str = "", headers: Mapping[str, str] | None = None,
               submitted_ns: int = 0) -> Run:
        """Start a run (on a free child, or when one frees up) and return its handle at once.
        The other fields build the handler's `TaskContext`. Raises `PoolClosed` once `stop`
        began."""
        if self._state != "running":
            raise PoolClosed()
        run_id = next(self._run_ids)
        frame = pipe.frame(pipe.Request(
            run_id=run_id, kind=kind, payload=payload, task_id=task_id, attempt=attempt,
            delivery=delivery, idempotency_key=idempotency_key,
            headers=dict(headers) if headers else {}, submitted_ns=submitted_ns))
        loop = self._loop
        run = Run(run_id, kind, task_id, timeout_s, loop.create_future(), frame)
        run.future.add_done_callback(lambda _f, run=run: self._on_run_done(run))
        if timeout_s is not None:
            run._timer = loop.call_later(timeout_s, self._on_timeout, run)
        if self._idle:
            self._assign(self._idle.pop(), run)
        else:
            self._waiting.append(run)
        return run

    async def run(self, kind: str, payload: bytes, *, timeout_s: float | None = None,
                  task_id: str = "", attempt: int = 1, delivery: int = 0,
                  idempotency_key: str = "", headers: Mapping[str, str] | None = None,
                  submitted_ns: int = 0) -> bytes:
        """`submit` and wait for the result. Cancelling the awaiting task cancels the run
        (its child is killed and replaced)."""
        return await self.submit(kind, payload, timeout_s=timeout_s, task_id=task_id,
                                 attempt=attempt, delivery=delivery,
                                 idempotency_key=idempotency_key, headers=headers,
                                 submitted_ns=submitted_ns)

    async def execute(self, handler, payload: bytes, ctx, timeout_s: float) -> bytes:  # noqa: ANN001
        """The AI node's executor interface (`mesh.executors`): `handler` (a `mesh.app.Handler`)
        names the kind, `ctx` (a `TaskContext`) the run's context fields."""
        return await self.submit(handler.kind, payload, timeout_s=timeout_s,
                                 task_id=ctx.task_id, attempt=ctx.attempt,
                                 delivery=ctx.delivery, idempotency_key=ctx.idempotency_key,
                                 headers=ctx.headers, submitted_ns=ctx.submitted_ns)

    def cancel(self, run: Run, reason: str = "cancelled") -> bool:
        """Fail `run` with `RunCancelled` and kill its child (replaced at once). False when
        the run had already ended."""
        if run.future.done():
            return False
        run._end = "cancel"
        self._fail(run, RunCancelled(reason))
        return True

    # ---- observability -----------------------------------------------------------------

    def stats(self) -> PoolStats:
        states = [c.state for c in self._children]
        return PoolStats(
            size=self.size, idle=states.count(ChildState.IDLE),
            busy=states.count(ChildState.BUSY), starting=states.count(ChildState.STARTING),
            waiting=len(self._waiting), **self._counts)

    def children(self) -> list[ChildInfo]:
        now = time.monotonic()
        return [ChildInfo(pid=c.pid, state=c.state.value, tasks=c.tasks, rss_bytes=c.rss_bytes,
                          kind=c.run.kind if c.run is not None else "",
                          age_s=now - c.started_at)
                for c in sorted(self._children, key=lambda c: c.started_at)]

    # ---- inside: runs ------------------------------------------------------------------

    def _assign(self, child: _Child, run: Run) -> None:
        child.state = ChildState.BUSY
        child.run = run
        run.child = child
        frame, run._frame = run._frame, None
        child.transport.write(frame)

    def _fail(self, run: Run, exc: BaseException) -> None:
        if not run.future.done():
            run.future.set_exception(exc)

    def _on_timeout(self, run: Run) -> None:
        run._timer = None
        if run.future.done():
            return
        run._end = "timeout"
        started = run.child is not None
        self._fail(run, RunTimedOut(run.timeout_s, pid=run.pid, started=started))

    def _on_run_done(self, run: Run) -> None:
        """Every end of a run passes here. A run that ended early (timeout, cancel, its
        awaiting task cancelled) is still attached to its child or the wait queue: detach it
        and kill its child."""
        if run._timer is not None:
            run._timer.cancel()
            run._timer = None
        child = run.child
        if child is not None and child.run is run:
            child.run = None
            end = run._end or "cancel"
            self._counts["killed_timeout" if end == "timeout" else "killed_cancel"] += 1
            log.warning("killing child %d: its %r run %s", child.pid, run.kind,
                        "passed its timeout" if end == "timeout" else "was cancelled")
            self._kill(child)
            self._fill()
        elif run._frame is not None:  # never sent: it was waiting for a child
            run._frame = None
            try:
                self._waiting.remove(run)
            except ValueError:
                pass
        self._check_quiet()

    def _check_quiet(self) -> None:
        """Only `stop` waits for quiet: nothing to do (per outcome) while running."""
        if self._state != "stopping":
            return
        if not self._waiting and not any(c.state is ChildState.BUSY for c in self._children):
            self._quiet.set()

    def _on_frame(self, child: _Child, body: bytes | memoryview) -> None:
        try:
            message = self._decoder.decode(body)
        except msgspec.DecodeError as exc:
            self._on_protocol_error(child, f"sent an unreadable frame ({exc})")
            return
        if isinstance(message, pipe.Result | pipe.Failure):
            self._on_outcome(child, message)
        elif isinstance(message, pipe.Ready):
            if child.state is ChildState.STARTING:
                child.state = ChildState.IDLE
                child.rss_bytes = message.rss_bytes
                self._counts["children_started"] += 1
                self._spawn_failures = 0
                if not child.ready.done():
                    child.ready.set_result(None)
                if self._state == "running":
                    self._next(child)
                else:
                    self._retire(child)
        elif isinstance(message, pipe.StartFailed):
            child.start_error = message

    def _on_outcome(self, child: _Child, message: pipe.Result | pipe.Failure) -> None:
        run = child.run
        if child.state is not ChildState.BUSY or run is None or run.run_id != message.run_id:
            return  # the run was given up (timeout, cancel): its child is being killed
        child.run = None
        run.child = None
        child.tasks += 1
        child.rss_bytes = message.rss_bytes
        if not run.future.done():
            if isinstance(message, pipe.Result):
                run.future.set_result(message.result)
            else:
                run.future.set_exception(HandlerFailed(
                    ErrorClass(message.error_class), message.type_name, message.message,
                    message.traceback, retry_after_s=message.retry_after_s,
                    dependency=message.dependency))
        if self.max_tasks_per_child and child.tasks >= self.max_tasks_per_child:
            self._counts["recycled_tasks"] += 1
            log.info("recycling child %d after %d tasks", child.pid, child.tasks)
            self._retire(child)
            self._fill()
        elif (self.max_memory_per_child_bytes
              and child.rss_bytes > self.max_memory_per_child_bytes):
            self._counts["recycled_memory"] += 1
            log.info("recycling child %d: RSS %d bytes is above the bound of %d", child.pid,
                     child.rss_bytes, self.max_memory_per_child_bytes)
            self._retire(child)
            self._fill()
        else:
            self._next(child)
        self._check_quiet()

    def _next(self, child: _Child) -> None:
        """A child is free: give it the oldest waiting run, or keep it idle."""
        if self._waiting:
            self._assign(child, self._waiting.popleft())
        elif self._state == "running":
            child.state = ChildState.IDLE
            self._idle.append(child)
        else:
            self._retire(child)

    # ---- inside: children --------------------------------------------------------------

    def _spawn(self) -> tuple[_Child, socket.socket]:
        """Start a child process (on the loop thread: PR_SET_PDEATHSIG follows the thread that
        spawned the child). Its socket is connected to the loop by `_bring_up`."""
        loop = self._loop
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                [*self._argv_head, str(child_sock.fileno())], pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL, cwd=self._cwd, env=self._env)
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        child = _Child(proc, parent_sock, loop.create_future())
        self._children.add(child)
        self._all_exited.clear()
        try:
            child.pidfd = os.pidfd_open(proc.pid)
            loop.add_reader(child.pidfd, self._on_exit, child)
        except (AttributeError, OSError):  # no pid fds: poll for the exit instead
            child.pidfd = -1
            self._poll_exit(child)
        return child, parent_sock

    async def _bring_up(self, child: _Child, sock: socket.socket) -> None:
        """Connect a spawned child's socket, say Hello, wait for Ready."""
        try:
            sock.setblocking(False)
            child.transport, _ = await self._loop.connect_accepted_socket(
                lambda: _ChildProtocol(self, child), sock=sock)
        except BaseException:
            sock.close()
            self._kill(child)
            raise
        child.transport.write(self._hello)
        await self._await_ready(child)

    async def _await_ready(self, child: _Child) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(child.ready), self.start_timeout_s)
        except asyncio.TimeoutError:
            self._kill(child)
            raise ChildStartFailed(
                f"child {child.pid} did not load {self.app_path} and run its on_child_start "
                f"hooks within start_timeout_s={self.start_timeout_s}") from None

    def _fill(self) -> None:
        """Start children until `size` are alive (not retiring or being killed)."""
        if self._state != "running" or self._starting_pool or self._spawn_timer is not None:
            return
        wait_s = self._spawn_after - time.monotonic()
        if wait_s > 0:
            self._spawn_timer = self._loop.call_later(wait_s, self._fill_after_backoff)
            return
        live = sum(1 for c in self._children
                   if c.state in (ChildState.STARTING, ChildState.IDLE, ChildState.BUSY))
        for _ in range(self.size - live):
            try:
                child, sock = self._spawn()
            except OSError as exc:
                self._on_start_failure(ChildStartFailed(f"could not spawn a child: {exc}"))
                return
            task = self._loop.create_task(self._replace(child, sock), name="mesh-child-start")
            self._spawn_tasks.add(task)
            task.add_done_callback(self._spawn_tasks.discard)

    def _fill_after_backoff(self) -> None:
        self._spawn_timer = None
        self._fill()

    async def _replace(self, child: _Child, sock: socket.socket) -> None:
        try:
            await self._bring_up(child, sock)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged, backed off, waiting runs told
            self._on_start_failure(exc)

    def _on_start_failure(self, exc: BaseException) -> None:
        if self._state != "running":
            return
        self._counts["start_failures"] += 1
        self._spawn_failures += 1
        delay = min(RESTART_BACKOFF_CAP_S, RESTART_BACKOFF_S * 2 ** (self._spawn_failures - 1))
        self._spawn_after = time.monotonic() + delay
        tb = getattr(exc, "traceback", "")
        log.error("a replacement child failed to start (trying again in %.1fs): %s%s", delay,
                  exc, f"\n{tb}" if tb else "")
        if not any(c.state in (ChildState.IDLE, ChildState.BUSY) for c in self._children):
            error = exc if isinstance(exc, ChildStartFailed) else ChildStartFailed(str(exc))
            while self._waiting:
                self._fail(self._waiting.popleft(), error)
        self._fill()

    def _retire(self, child: _Child) -> None:
        """Exit between tasks: end of file on its socket; SIGKILL if it lingers."""
        child.state = ChildState.RETIRING
        if child in self._idle:
            self._idle.remove(child)
        if child.transport is not None:
            child.transport.close()
        # One that lingers (a non-daemon thread of the handler's keeps it alive) is killed.
        child.kill_timer = self._loop.call_later(RETIRE_GRACE_S, self._kill_lingering, child)

    def _kill(self, child: _Child) -> None:
        """SIGTERM now, SIGKILL after the grace."""
        child.state = ChildState.KILLING
        if child in self._idle:
            self._idle.remove(child)
        if child.transport is not None:
            child.transport.close()
        _signal(child.pid, signal.SIGTERM)
        if child.kill_timer is not None:
            child.kill_timer.cancel()
        child.kill_timer = self._loop.call_later(self.kill_grace_s, self._sigkill, child)

    def _kill_lingering(self, child: _Child) -> None:
        child.kill_timer = None
        if child in self._children:
            log.warning("retired child %d did not exit within %.0fs; killing it", child.pid,
                        RETIRE_GRACE_S)
            self._kill(child)

    def _sigkill(self, child: _Child) -> None:
        child.kill_timer = None
        if child in self._children:
            _signal(child.pid, signal.SIGKILL)

    def _on_protocol_error(self, child: _Child, what: str) -> None:
        log.error("child %d %s; killing it", child.pid, what)
        run, child.run = child.run, None
        self._kill(child)
        if run is not None:
            run.child = None
            self._fail(run, ChildDied(child.pid, exit_code=None, signal=signal.SIGTERM,
                                      kind=run.kind, rss_bytes=child.rss_bytes))
        self._fill()

    def _on_eof(self, child: _Child) -> None:
        """The child closed its socket. Unasked, that means it is exiting: its run fails when
        the exit is seen (with its code); if it lingers, it is killed after the grace."""
        if child.state in (ChildState.RETIRING, ChildState.KILLING):
            return
        if child in self._idle:
            self._idle.remove(child)
        was_starting = child.state is ChildState.STARTING
        child.state = ChildState.LOST
        if not was_starting:
            self._fill()  # a replacement now, in parallel with the dying one's exit
        child.kill_timer = self._loop.call_later(self.kill_grace_s, self._sigkill, child)

    def _poll_exit(self, child: _Child) -> None:
        child.poll_timer = None
        if child.proc.poll() is not None:
            self._on_exit(child)
        else:
            child.poll_timer = self._loop.call_later(0.05, self._poll_exit, child)

    def _on_exit(self, child: _Child) -> None:
        if child.pidfd >= 0:
            self._loop.remove_reader(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = -1
        if child.poll_timer is not None:
            child.poll_timer.cancel()
        if child.kill_timer is not None:
            child.kill_timer.cancel()
            child.kill_timer = None
        code = child.proc.wait()  # it has exited: this reaps it without blocking
        if child.transport is not None:
            child.transport.close()
        else:  # never connected (its start was cancelled before it began)
            child.sock.close()
        self._children.discard(child)
        if child in self._idle:
            self._idle.remove(child)
        exit_code, signum = (None, -code) if code < 0 else (code, 0)
        state, child.state = child.state, ChildState.LOST
        if state is ChildState.STARTING or not child.ready.done():
            error = child.start_error
            if error is not None:
                exc = ChildStartFailed(f"child {child.pid} could not start: {error.message}",
                                       error.traceback)
            else:
                how = f"signal {signum}" if signum else f"code {exit_code}"
                exc = ChildStartFailed(f"child {child.pid} exited ({how}) before it was ready")
            if not child.ready.done():
                child.ready.set_exception(exc)
                child.ready.exception()  # retrieved: start() or _replace reports it
        elif state not in (ChildState.RETIRING, ChildState.KILLING):
            run, child.run = child.run, None
            self._counts["died"] += 1
            if run is not None:
                run.child = None
                err = ChildDied(child.pid, exit_code=exit_code, signal=signum, kind=run.kind,
                                rss_bytes=child.rss_bytes)
                log.warning("%s (task %s)", err, run.task_id or "-")
                self._fail(run, err)
            else:
                log.warning("idle child %d exited (%s); replacing it", child.pid,
                            f"signal {signum}" if signum else f"code {exit_code}")
            self._fill()
            self._check_quiet()
        if not self._children:
            self._all_exited.set()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # exited already; its exit is (or was) seen through its pid fd
