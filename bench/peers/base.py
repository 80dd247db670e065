"""The common interface every benchmarked system implements, and the shared measuring kit.

A *system* is one row of the comparison table (RabbitMQ, NATS JetStream, Redis, plain
ZeroMQ, the mesh). `bench/compare.py` drives every system through the same phases, each run
on a freshly started server:

    start(workdir)          servers + the producer's connection; NO consumers yet
    submit_latency(n)       one at a time: submit, wait for the durable ack, repeat (no consumers)
    start_consumers()       3 consumer processes, 16 unacked at most each; the backlog is drained
    throughput(warm-up n)   discarded
    e2e_latency(n)          one task every E2E_INTERVAL_S, alone in the system: submit -> consumer
    throughput(n)           the system's recommended high-throughput client pattern
    paced(rate, n)          open loop at a fixed offered load: due time -> consumer
    stop()                  kills everything start()/start_consumers() made; idempotent

The producer is the harness process and does nothing but submit: no thread, no socket of
the harness runs in it while it measures. Consumers record every task in their own log
(`ConsumerLog`, a memory-mapped file in /dev/shm: a few stores per task, no system call, no
message to anyone); the harness reads the logs after a phase (or polls them while it is
otherwise idle) and merges them. Timestamps are `time.monotonic_ns()`: CLOCK_MONOTONIC is one
clock for the whole machine on Linux, so producer and consumer stamps are comparable.

The easy way to implement a system is to subclass `BaseSystem` (a blocking client) or
`AsyncSystem` (an asyncio client on uvloop) and provide the hooks they list. The consumer
side is a module-level function run in 3 spawned processes:

    def consume(index: int, args: dict, log_path: str, stop_event) -> None

which opens `Reporter(log_path)` (= `ConsumerLog`), calls `hello()` once it can receive,
`received(payload, recv_ns)` for every task once it is acked, and returns when
`stop_event` is set (poll it at least every 0.1 s).

Every wait is bounded: a phase that overruns its deadline raises `PhaseTimeout`, which the
table shows instead of a number. Every server process is started through `Server`, killed
by `stop()`, and also by an atexit hook if the harness dies first.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import mmap
import multiprocessing as mp
import os
import signal
import socket
import statistics
import struct
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

TASK_SIZE_BYTES = 200
CONSUMERS = 3
IN_FLIGHT_PER_CONSUMER = 16
THROUGHPUT_BATCH = 1000  # tasks per call for clients whose fast path is a batch call (mesh, Redis pipeline)
PIPELINE_WINDOW = 1000  # outstanding unconfirmed submits for clients whose fast path is a window of futures
E2E_INTERVAL_S = 0.003  # one task every 3 ms: each task finds the system idle (every p99 here is below)
PHASE_TIMEOUT_S = 120.0  # per measurement call; a timeout is reported, not hidden
EARLY_WAKE_S = 0.0005  # loop timers have 1 ms resolution: wake this much early, stamp min(due, now)

# Task payload: seq (u64), submit stamp monotonic ns (u64), padding to TASK_SIZE_BYTES.
_HEAD = struct.Struct("<QQ")


class PhaseTimeout(Exception):
    """A measurement did not finish within its deadline (reported in the table, not hidden)."""


class NotAvailable(Exception):
    """The system cannot run here (binary missing, server failed to boot, ...); says why."""


@runtime_checkable
class System(Protocol):
    """One row of the table. Latencies are lists of integer nanoseconds, one per task;
    throughput is tasks per second. See the module docstring for the order of the calls."""

    name: str
    durable: bool

    def start(self, workdir: Path) -> None: ...
    def start_consumers(self) -> None: ...
    def stop(self) -> None: ...
    def submit_latency(self, n: int) -> list[int]: ...
    def e2e_latency(self, n: int) -> list[int]: ...
    def throughput(self, n: int) -> float: ...
    def paced(self, rate: float, n: int) -> list[int]: ...
    def server_pids(self) -> list[int]: ...


# --------------------------------------------------------------------------- payloads

_PAD = b"x" * (TASK_SIZE_BYTES - _HEAD.size)


def make_task(seq: int, stamp_ns: int) -> bytes:
    """A 200-byte task carrying its seq and submit stamp."""
    return _HEAD.pack(seq, stamp_ns) + _PAD


def read_task(payload: bytes) -> tuple[int, int]:
    return _HEAD.unpack_from(payload)


# --------------------------------------------------------------------------- stats


def percentile(samples: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no samples."""
    if not samples:
        return float("nan")
    s = sorted(samples)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return float(s[k])


def median(values: list[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def fsync_probe(directory: Path, n: int = 300, size_bytes: int = 256) -> list[int]:
    """Raw append+fdatasync latencies (ns) on the disk holding `directory`, for scale."""
    path = directory / "fsync-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"f" * size_bytes
    out = []
    try:
        for _ in range(n):
            t0 = time.monotonic_ns()
            os.write(fd, block)
            os.fdatasync(fd)
            out.append(time.monotonic_ns() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return out


def peak_rss_kib(pids: list[int]) -> int | None:
    """Sum of VmHWM over `pids` and all their descendants (a broker can be a process tree)."""
    seen: set[int] = set()
    todo = list(pids)
    total = 0
    found = False
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
                    found = True
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total if found else None


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1,
               server: "Server | None" = None) -> None:
    """Poll `cond` until true; raise NotAvailable naming `what` after `timeout_s`, or at once
    (with the end of its log) if `server` has exited."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        if server is not None and not server.alive():
            raise NotAvailable(f"{what} exited with code {server.proc.returncode}; log: {server.log_tail()}")
        try:
            if cond():
                return
        except Exception as exc:  # readiness probes fail in many ways while booting
            last_exc = exc
        time.sleep(interval_s)
    tail = f"; log: {server.log_tail()}" if server is not None else ""
    raise NotAvailable(f"{what} not ready after {timeout_s:.0f}s"
                       + (f" (last error: {last_exc!r})" if last_exc else "") + tail)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


_LIVE_SERVERS: set["Server"] = set()


class Server:
    """One server process in its own session, output to a log file; killed on stop or exit."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
            )
        except OSError as exc:
            self.log.close()
            raise NotAvailable(f"cannot run {argv[0]}: {exc}") from exc
        _LIVE_SERVERS.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n_bytes: int = 800) -> str:
        try:
            data = self.log_path.read_bytes()[-n_bytes:]
        except OSError:
            return ""
        return data.decode(errors="replace").strip().replace("\n", " | ")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group (session we created), then SIGKILL after grace."""
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.discard(self)
            pgid = self.proc.pid  # start_new_session: pgid == pid
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                    # the leader is gone; make sure nothing in its group survives
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.log.close()


@atexit.register
def _kill_leftover_servers() -> None:
    for srv in list(_LIVE_SERVERS):
        srv.stop(grace_s=2.0)




# --------------------------------------------------------------------------- consumer logs

_LOG_HEADER_BYTES = 64  # u64 magic, u64 count, u64 hello, u64 overflowed
_LOG_MAGIC = 0x474F4C5F48534D  # "MSH_LOG"
_REC = struct.Struct("<QQQQ")  # seq, submit stamp, receive stamp, logged (after the ack) stamp
_U64 = struct.Struct("<Q")
LOG_CAPACITY = 1 << 20  # records per consumer per run (a run uses ~30,000)


def log_dir() -> Path:
    """Consumer logs live in memory (tmpfs): no writeback competing with the brokers' fsyncs."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def create_log(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(_LOG_HEADER_BYTES + _REC.size * LOG_CAPACITY)  # sparse: pages appear as written
        f.write(_U64.pack(_LOG_MAGIC))


class ConsumerLog:
    """Used inside a consumer process: one record per task, written into a shared mapping.

    A record costs a struct pack into memory (well under a microsecond): no system call, no
    message, no thread. The count is stored after the record, so a reader never sees a
    half-written record (x86 keeps stores in order; the harness only runs on Linux)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.capacity = (len(self.mm) - _LOG_HEADER_BYTES) // _REC.size
        self.count = 0

    def hello(self) -> None:
        _U64.pack_into(self.mm, 16, 1)

    def received(self, payload: bytes, recv_ns: int) -> None:
        if self.count >= self.capacity:
            _U64.pack_into(self.mm, 24, 1)
            return
        seq, stamp = _HEAD.unpack_from(payload)
        _REC.pack_into(self.mm, _LOG_HEADER_BYTES + _REC.size * self.count, seq, stamp, recv_ns, time.monotonic_ns())
        self.count += 1
        _U64.pack_into(self.mm, 8, self.count)

    def close(self) -> None:
        if not self.mm.closed:
            self.mm.close()


Reporter = ConsumerLog  # the name bench/peers/mesh.py uses


class LogReader:
    """Harness side: reads the consumers' logs; records by seq (first delivery wins)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.maps = []
        for p in paths:
            with open(p, "rb") as f:
                self.maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        self.read = [0] * len(paths)
        self.records: dict[int, tuple[int, int, int]] = {}  # seq -> (stamp, recv, logged)
        self.duplicates = 0

    def hellos(self) -> int:
        return sum(_U64.unpack_from(m, 16)[0] for m in self.maps)

    def overflowed(self) -> bool:
        return any(_U64.unpack_from(m, 24)[0] for m in self.maps)

    def poll(self) -> int:
        """Take in the records written since the last poll; return how many."""
        new = 0
        for i, m in enumerate(self.maps):
            count = _U64.unpack_from(m, 8)[0]
            if count <= self.read[i]:
                continue
            lo, hi = _LOG_HEADER_BYTES + _REC.size * self.read[i], _LOG_HEADER_BYTES + _REC.size * count
            for seq, stamp, recv, logged in _REC.iter_unpack(m[lo:hi]):
                if seq in self.records:
                    self.duplicates += 1
                else:
                    self.records[seq] = (stamp, recv, logged)
            new += count - self.read[i]
            self.read[i] = count
        return new

    def wait_range(self, first: int, last: int, timeout_s: float) -> list[tuple[int, int, int]]:
        """Wait until every seq in [first, last] is logged; return their records in seq order.
        Polls every 5 ms: the wait itself is not measured (stamps are in the records)."""
        deadline = time.monotonic() + timeout_s
        missing = set(range(first, last + 1))
        while True:
            self.poll()
            missing = {s for s in missing if s not in self.records}
            if not missing:
                return [self.records[s] for s in range(first, last + 1)]
            if self.overflowed():
                raise PhaseTimeout("a consumer log is full (LOG_CAPACITY)")
            if time.monotonic() > deadline:
                want = last - first + 1
                raise PhaseTimeout(f"{want - len(missing)}/{want} tasks consumed within {timeout_s:.0f}s")
            time.sleep(0.005)

    def close(self) -> None:
        for m in self.maps:
            m.close()
        for p in self.paths:
            try:
                p.unlink()
            except OSError:
                pass


# --------------------------------------------------------------------------- BaseSystem


class BaseSystem:
    """The lifecycle, the consumer processes and the four measurements for a blocking client.

    Subclass hooks (all called from the harness process, which is the producer):
      start_servers(workdir)  -> None    start and wait for servers; raise NotAvailable
      setup_producer()        -> None    connect, declare queues/streams
      consumer_target                    module-level function(index, args, log_path, stop_event)
      consumer_args()         -> dict    picklable connection info for consumers
      consumers_ready()       -> None    optional: wait until the servers see the consumers
      publish_window(payloads)-> None    submit all; return when all are durable
      close_producer(), stop_servers()   idempotent

    Throughput: `publish_window` in batches of `throughput_batch` (mesh: one submit request
    per batch; Redis: one pipeline per batch). A client whose fast path is one call per task
    returning a future (the mesh's pipelining client, when it lands) defines
    `submit_nowait(payload) -> concurrent.futures.Future` (resolved when the task is durable):
    then throughput and paced keep at most `pipeline_window` of them pending instead.
    """

    name = "base"
    durable = True
    throughput_batch = THROUGHPUT_BATCH
    pipeline_window = PIPELINE_WINDOW
    consumer_target: Callable[..., None]

    def __init__(self) -> None:
        self.workdir: Path | None = None
        self.logs: LogReader | None = None
        self.consumers: list[mp.process.BaseProcess] = []
        self.stop_event: Any = None
        self.servers: list[Server] = []
        self._seq = 0
        self.notes: list[str] = []  # caveats shown under the table
        self.durability = "fsynced"  # what the submit ack means, in a few words (table column)
        self.server_version = ""  # shown in the table notes and results JSON
        self.client = ""  # how the producer submits, in a few words (table notes)

    # ---- hooks
    def start_servers(self, workdir: Path) -> None:
        pass

    def setup_producer(self) -> None:
        pass

    def consumer_args(self) -> dict:
        return {}

    def consumers_ready(self) -> None:
        pass

    def publish_window(self, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def close_producer(self) -> None:
        pass

    def stop_servers(self) -> None:
        for srv in reversed(self.servers):
            srv.stop()
        self.servers.clear()

    # ---- lifecycle
    def start(self, workdir: Path) -> None:
        """Servers and the producer; no consumers (submit latency is measured without them)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_servers(workdir)
            self.setup_producer()
        except BaseException:
            self.stop()
            raise

    def start_consumers(self) -> None:
        """3 consumer processes, each with its own log; returns once every task submitted so
        far (the submit-latency backlog) has been consumed."""
        try:
            paths = []
            for i in range(CONSUMERS):
                p = log_dir() / f"mesh-bench-{os.getpid()}-{self.name}-{i}-{time.monotonic_ns()}.log"
                create_log(p)
                paths.append(p)
            self.logs = LogReader(paths)
            ctx = mp.get_context("spawn")
            self.stop_event = ctx.Event()
            args = self.consumer_args()
            for i in range(CONSUMERS):
                p = ctx.Process(target=type(self).consumer_target, args=(i, args, str(paths[i]), self.stop_event),
                                name=f"{self.name}-consumer-{i}", daemon=True)
                p.start()
                self.consumers.append(p)
            deadline = time.monotonic() + 60.0
            while self.logs.hellos() < CONSUMERS:
                dead = [p.exitcode for p in self.consumers if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    raise NotAvailable(f"consumers not ready (exit codes of dead ones: {dead}); see stderr")
                time.sleep(0.02)
            self.consumers_ready()
            if self._seq:
                self.logs.wait_range(1, self._seq, PHASE_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        for p in self.consumers:
            p.join(5.0)
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
        self.consumers.clear()
        try:
            self.close_producer()
        except Exception:
            pass
        if self.logs is not None:
            self.logs.close()
            self.logs = None
        self.stop_servers()

    def server_pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.alive()]

    # ---- shared by the measurements
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def consumed(self, first: int, last: int, deadline: float) -> list[tuple[int, int, int]]:
        assert self.logs is not None, "start_consumers() first"
        return self.logs.wait_range(first, last, max(1.0, deadline - time.monotonic()))

    @staticmethod
    def _check(deadline: float, what: str, done: int, n: int) -> None:
        if time.monotonic() > deadline:
            raise PhaseTimeout(f"{what}: {done}/{n} submitted in {PHASE_TIMEOUT_S:.0f}s")

    # ---- measurements (blocking client)
    def submit_latency(self, n: int) -> list[int]:
        """Submit one task, wait for the durable ack, repeat."""
        out = []
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        for i in range(n):
            seq = self._next_seq()
            t0 = time.monotonic_ns()
            self.publish_window([make_task(seq, t0)])
            out.append(time.monotonic_ns() - t0)
            self._check(deadline, "submit_latency", i + 1, n)
        return out

    def e2e_latency(self, n: int) -> list[int]:
        """One task every E2E_INTERVAL_S, each submitted durably on its own; latency =
        consumer receive - submit stamp. Open loop: nothing waits for a consumer."""
        first = self._seq + 1
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        interval_ns = int(E2E_INTERVAL_S * 1e9)
        t0 = time.monotonic_ns()
        for i in range(n):
            due = t0 + i * interval_ns
            left = due - time.monotonic_ns()
            if left > 0:
                time.sleep(left / 1e9)
            self.publish_window([make_task(self._next_seq(), time.monotonic_ns())])
            self._check(deadline, "e2e_latency", i + 1, n)
        return [recv - stamp for stamp, recv, _ in self.consumed(first, self._seq, deadline)]

    def throughput(self, n: int) -> float:
        """The recommended high-throughput pattern; tasks/s from the first submit until the
        last task was logged (after its ack) by a consumer."""
        first = self._seq + 1
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        t0 = time.monotonic_ns()
        if hasattr(self, "submit_nowait"):
            self._pipelined((make_task(self._next_seq(), time.monotonic_ns()) for _ in range(n)), deadline)
        else:
            left = n
            while left > 0:
                k = min(self.throughput_batch, left)
                now = time.monotonic_ns()
                self.publish_window([make_task(self._next_seq(), now) for _ in range(k)])
                left -= k
                self._check(deadline, "throughput", n - left, n)
        recs = self.consumed(first, self._seq, deadline)
        return n / ((max(r[2] for r in recs) - t0) / 1e9)

    def _pipelined(self, payloads, deadline: float) -> None:
        """At most `pipeline_window` submits pending; the oldest is waited for first."""
        pending: deque = deque()
        for p in payloads:
            if len(pending) >= self.pipeline_window:
                pending.popleft().result(timeout=max(0.1, deadline - time.monotonic()))
            pending.append(self.submit_nowait(p))  # type: ignore[attr-defined]
        for f in pending:
            f.result(timeout=max(0.1, deadline - time.monotonic()))

    def paced(self, rate: float, n: int) -> list[int]:
        """Open-loop offered load: task i is due at t0 + i/rate and stamped with that due time,
        so a stalled submit shows up as latency (no coordinated omission). Whatever is due is
        submitted as one window; latency = consumer receive - due time."""
        first = self._seq + 1
        interval_ns = int(1e9 / rate)
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        t0 = time.monotonic_ns() + 1_000_000
        futures = []
        i = 0
        while i < n:
            now = time.monotonic_ns()
            due_upto = min(n, (now - t0) // interval_ns + 1)
            if due_upto <= i:
                time.sleep(max(0.0, (t0 + i * interval_ns - now) / 1e9))
                continue
            batch = [make_task(self._next_seq(), t0 + j * interval_ns) for j in range(i, due_upto)]
            if hasattr(self, "submit_nowait"):
                futures.extend(self.submit_nowait(p) for p in batch)  # type: ignore[attr-defined]
            else:
                self.publish_window(batch)
            i = due_upto
            self._check(deadline, "paced", i, n)
        for f in futures:
            f.result(timeout=max(0.1, deadline - time.monotonic()))
        return [recv - stamp for stamp, recv, _ in self.consumed(first, self._seq, deadline)]


# --------------------------------------------------------------------------- AsyncSystem


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (its README: asyncio 2-4x faster), else the default loop."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio default loop"


class AsyncSystem(BaseSystem):
    """The measurements for an asyncio client, each phase one coroutine on one long-lived loop
    (uvloop when installed): no loop started and stopped per window or per task.

    Hooks, besides the BaseSystem ones (start_servers, consumer_target, consumer_args):
      async setup_async()                connect, declare; runs on self.loop
      async publish_wait(payload)        submit one task, return when it is durable
      async publish_nowait(payload)      submit one task without waiting for its ack; may
                                         wait first while the window of pending acks is full
      async flush()                      return when every submitted task is durable
      async close_async()
    """

    def setup_producer(self) -> None:
        self.loop = new_loop()
        self.run(self.setup_async(), 30.0)

    def run(self, coro, timeout_s: float = PHASE_TIMEOUT_S):
        try:
            return self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s))
        except asyncio.TimeoutError:
            raise PhaseTimeout(f"no answer within {timeout_s:.0f}s") from None

    def close_producer(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is None or loop.is_closed():
            return
        try:
            self.run(self.close_async(), 5.0)
        except Exception:
            pass
        finally:
            loop.close()

    async def setup_async(self) -> None:
        raise NotImplementedError

    async def publish_wait(self, payload: bytes) -> None:
        raise NotImplementedError

    async def publish_nowait(self, payload: bytes) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def close_async(self) -> None:
        pass

    @staticmethod
    async def _sleep_until(due_ns: int) -> None:
        left = due_ns - time.monotonic_ns() - EARLY_WAKE_S * 1e9
        if left > 0:
            await asyncio.sleep(left / 1e9)

    def submit_latency(self, n: int) -> list[int]:
        async def body() -> list[int]:
            out = []
            for _ in range(n):
                seq = self._next_seq()
                t0 = time.monotonic_ns()
                await self.publish_wait(make_task(seq, t0))
                out.append(time.monotonic_ns() - t0)
            return out

        return self.run(body())

    def e2e_latency(self, n: int) -> list[int]:
        first = self._seq + 1
        deadline = time.monotonic() + PHASE_TIMEOUT_S

        async def body() -> None:
            interval_ns = int(E2E_INTERVAL_S * 1e9)
            t0 = time.monotonic_ns()
            for i in range(n):
                await self._sleep_until(t0 + i * interval_ns)
                await self.publish_nowait(make_task(self._next_seq(), time.monotonic_ns()))
            await self.flush()

        self.run(body())
        return [recv - stamp for stamp, recv, _ in self.consumed(first, self._seq, deadline)]

    def throughput(self, n: int) -> float:
        first = self._seq + 1
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        t0 = time.monotonic_ns()

        async def body() -> None:
            for _ in range(n):
                await self.publish_nowait(make_task(self._next_seq(), time.monotonic_ns()))
            await self.flush()

        self.run(body())
        recs = self.consumed(first, self._seq, deadline)
        return n / ((max(r[2] for r in recs) - t0) / 1e9)

    def paced(self, rate: float, n: int) -> list[int]:
        """As BaseSystem.paced. Loop timers wake up to 1 ms late, so the loop wakes
        EARLY_WAKE_S early; a task sent before its due time is stamped with its actual send
        time, one sent late with its due time: stamp = min(due, now), so lateness counts and
        earliness does not help."""
        first = self._seq + 1
        deadline = time.monotonic() + PHASE_TIMEOUT_S

        async def body() -> None:
            interval_ns = int(1e9 / rate)
            t0 = time.monotonic_ns() + 1_000_000
            i = 0
            while i < n:
                due = t0 + i * interval_ns
                await self._sleep_until(due)
                now = time.monotonic_ns()
                due_upto = max(i + 1, min(n, (now - t0) // interval_ns + 1))
                for j in range(i, due_upto):
                    await self.publish_nowait(make_task(self._next_seq(), min(t0 + j * interval_ns,
                                                                               time.monotonic_ns())))
                i = due_upto
            await self.flush()

        self.run(body())
        return [recv - stamp for stamp, recv, _ in self.consumed(first, self._seq, deadline)]
