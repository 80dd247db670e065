"""The common interface every benchmarked system implements, and the shared measuring kit.

A *system* is one row of the comparison table (RabbitMQ, NATS JetStream, Redis, plain
ZeroMQ, the mesh). `bench/compare.py` drives every system through the same phases; a system
only has to know how to start its servers and consumers, and how to submit tasks durably.

The contract (`System`) is deliberately small so the mesh row plugs in the same way:

    class System(Protocol):
        name: str                       # row label, e.g. "redis"
        durable: bool                   # False only for the no-journal floor row
        def start(self, workdir: Path) -> None      # servers + 3 consumer processes, ready
        def stop(self) -> None                      # idempotent; kills everything start() made
        def durable_latency(self, n: int) -> list[int]   # ns, submit -> durable ack, 1 at a time
        def e2e_latency(self, n: int) -> list[int]       # ns, submit -> consumer receive, 1 at a time
        def throughput(self, n: int) -> float            # tasks/s completed, pipelined durable submits
        def paced(self, rate: float, n: int) -> list[int]  # ns, submit -> receive at fixed offered load
        def server_pids(self) -> list[int]          # broker processes, for peak RSS (VmHWM)

The common workload: 200-byte tasks, 1 producer (the harness process), 3 consumer processes
with 16 tasks in flight each, durability on. The easy way to implement a system is to
subclass `BaseSystem` and provide four things:

    start_servers(workdir)      start broker processes on 127.0.0.1, wait for readiness
    consumer_target / consumer_args()   a module-level function run in 3 spawned processes
    publish_window(payloads)    submit a batch, return when every task in it is durable
    close_producer()/stop_servers()

`BaseSystem` then supplies the four measurements, all built on `publish_window` and on a
`Collector` that consumer processes report to (one 24-byte ZeroMQ message per task, sent
after the task is acked, carrying seq, submit stamp and receive time). Timestamps are
`time.monotonic_ns()`: CLOCK_MONOTONIC is one clock for the whole machine on Linux, so
producer and consumer stamps are comparable across processes (perf_counter_ns is too,
on Linux, but that is not documented).

Every wait is bounded: a phase that overruns its deadline raises `PhaseTimeout`, which the
table shows instead of a number. Every server process is started through `Server`, killed
by `stop()`, and also by an atexit hook if the harness dies first.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import os
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import zmq

TASK_SIZE_BYTES = 200
CONSUMERS = 3
IN_FLIGHT_PER_CONSUMER = 16
WINDOW = 64  # pipelined submits per window of confirms in throughput()
PHASE_TIMEOUT_S = 120.0  # per measurement call; a timeout is reported, not hidden

# Task payload: seq (u64), submit stamp monotonic ns (u64), padding to TASK_SIZE_BYTES.
_HEAD = struct.Struct("<QQ")
# Consumer report: seq, submit stamp, receive stamp. seq 0 = "consumer ready" hello.
_REPORT = struct.Struct("<QQQ")


class PhaseTimeout(Exception):
    """A measurement did not finish within its deadline (reported in the table, not hidden)."""


class NotAvailable(Exception):
    """The system cannot run here (binary missing, server failed to boot, ...); says why."""


@runtime_checkable
class System(Protocol):
    """One row of the table. See the module docstring for the contract of each method.

    Units: latencies are lists of integer nanoseconds, one per task; throughput is tasks
    per second. `start` must leave servers *and* consumers ready (no warm-up sleeps in the
    measurements); `stop` must be idempotent and safe after a failed `start`.
    """

    name: str
    durable: bool

    def start(self, workdir: Path) -> None: ...
    def stop(self) -> None: ...
    def durable_latency(self, n: int) -> list[int]: ...
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


# --------------------------------------------------------------------------- consumer side


class Reporter:
    """Used inside a consumer process: one report per task, after its ack."""

    def __init__(self, addr: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 2000)  # flush the last reports at exit, bounded
        self.sock.connect(addr)

    def hello(self) -> None:
        self.sock.send(_REPORT.pack(0, 0, 0))

    def received(self, payload: bytes, recv_ns: int) -> None:
        seq, stamp = _HEAD.unpack_from(payload)
        self.sock.send(_REPORT.pack(seq, stamp, recv_ns))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class Collector:
    """Harness side: receives consumer reports on a PULL socket in a background thread."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.addr = f"tcp://127.0.0.1:{port}"
        self.cond = threading.Condition()
        self.latency_ns: dict[int, int] = {}
        self.hellos = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            batch = []
            while True:
                try:
                    batch.append(self.sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            with self.cond:
                for raw in batch:
                    seq, stamp, recv = _REPORT.unpack(raw)
                    if seq == 0:
                        self.hellos += 1
                    else:
                        self.latency_ns.setdefault(seq, recv - stamp)
                self.cond.notify_all()

    def wait_hellos(self, n: int, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.hellos >= n, timeout_s)

    def wait_seq(self, seq: int, timeout_s: float) -> int:
        with self.cond:
            if not self.cond.wait_for(lambda: seq in self.latency_ns, timeout_s):
                raise PhaseTimeout(f"task {seq} not received within {timeout_s:.0f}s")
            return self.latency_ns[seq]

    def wait_range(self, first: int, last: int, timeout_s: float) -> list[int]:
        """Wait until every seq in [first, last] is reported; return their latencies."""
        want = last - first + 1

        def done() -> bool:
            # count from the top: reports arrive nearly in order, so this stays cheap
            return sum(1 for s in range(first, last + 1) if s in self.latency_ns) >= want

        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                if last in self.latency_ns and done():
                    return [self.latency_ns[s] for s in range(first, last + 1)]
                left = deadline - time.monotonic()
                if left <= 0:
                    got = sum(1 for s in range(first, last + 1) if s in self.latency_ns)
                    raise PhaseTimeout(f"{got}/{want} tasks received within {timeout_s:.0f}s")
                self.cond.wait(min(left, 0.5))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()
        self.ctx.term()


# --------------------------------------------------------------------------- BaseSystem


class BaseSystem:
    """Implements the four measurements on top of `publish_window`; subclasses start things.

    Subclass hooks (all called from the harness process):
      start_servers(workdir)  -> None    start and wait for servers; raise NotAvailable
      setup_producer()        -> None    connect, declare queues/streams
      consumer_target                    module-level function(index, addr_info, report_addr, stop_event)
      consumer_args()         -> dict    picklable connection info for consumers
      publish_window(payloads)-> None    submit all; return when all are durable
      close_producer(), stop_servers()   idempotent
    """

    name = "base"
    durable = True
    consumer_target: Callable[..., None]

    def __init__(self) -> None:
        self.workdir: Path | None = None
        self.collector: Collector | None = None
        self.consumers: list[mp.process.BaseProcess] = []
        self.stop_event: Any = None
        self.servers: list[Server] = []
        self._seq = 0
        self.notes: list[str] = []  # caveats shown under the table
        self.durability = "fsynced"  # what the submit ack means, in a few words (table column)
        self.server_version = ""  # shown in the table notes and results JSON

    # ---- hooks
    def start_servers(self, workdir: Path) -> None:
        pass

    def setup_producer(self) -> None:
        pass

    def consumer_args(self) -> dict:
        return {}

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
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_servers(workdir)
            self.setup_producer()
            self.collector = Collector()
            ctx = mp.get_context("spawn")
            self.stop_event = ctx.Event()
            args = self.consumer_args()
            for i in range(CONSUMERS):
                p = ctx.Process(target=type(self).consumer_target, args=(i, args, self.collector.addr, self.stop_event),
                                name=f"{self.name}-consumer-{i}", daemon=True)
                p.start()
                self.consumers.append(p)
            deadline = time.monotonic() + 60.0
            while not self.collector.wait_hellos(CONSUMERS, 0.5):
                dead = [p.exitcode for p in self.consumers if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    raise NotAvailable(f"consumers not ready (exit codes of dead ones: {dead}); see stderr")
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
        if self.collector is not None:
            self.collector.close()
            self.collector = None
        self.stop_servers()

    def server_pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.alive()]

    # ---- measurements
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def drain(self, first: int, last: int, timeout_s: float = PHASE_TIMEOUT_S) -> list[int]:
        assert self.collector is not None
        return self.collector.wait_range(first, last, timeout_s)

    def durable_latency(self, n: int) -> list[int]:
        """Submit one task, wait for the durable ack, repeat. Consumers run meanwhile."""
        out = []
        first = self._seq + 1
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        for _ in range(n):
            seq = self._next_seq()
            t0 = time.monotonic_ns()
            self.publish_window([make_task(seq, t0)])
            out.append(time.monotonic_ns() - t0)
            if time.monotonic() > deadline:
                raise PhaseTimeout(f"durable_latency: {len(out)}/{n} done in {PHASE_TIMEOUT_S:.0f}s")
        self.drain(first, self._seq)
        return out

    def e2e_latency(self, n: int) -> list[int]:
        """Submit one task (durably), wait until a consumer has received it, repeat."""
        assert self.collector is not None
        out = []
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        for _ in range(n):
            seq = self._next_seq()
            self.publish_window([make_task(seq, time.monotonic_ns())])
            out.append(self.collector.wait_seq(seq, max(0.1, deadline - time.monotonic())))
        return out

    def throughput(self, n: int) -> float:
        """Pipelined durable submits in windows of WINDOW; tasks/s until the last is received
        and acked by a consumer (reports are sent after the ack)."""
        first = self._seq + 1
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        t0 = time.monotonic_ns()
        left = n
        while left > 0:
            k = min(WINDOW, left)
            now = time.monotonic_ns()
            self.publish_window([make_task(self._next_seq(), now) for _ in range(k)])
            left -= k
            if time.monotonic() > deadline:
                raise PhaseTimeout(f"throughput: {n - left}/{n} submitted in {PHASE_TIMEOUT_S:.0f}s")
        self.drain(first, self._seq, max(1.0, deadline - time.monotonic()))
        return n / ((time.monotonic_ns() - t0) / 1e9)

    def paced(self, rate: float, n: int) -> list[int]:
        """Open-loop offered load: task i is due at t0 + i/rate and is stamped with that due
        time, so a stalled submit shows up as latency (no coordinated omission). Whatever is
        due is submitted as one window; latency = consumer receive - due time."""
        first = self._seq + 1
        interval_ns = int(1e9 / rate)
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        t0 = time.monotonic_ns() + 1_000_000
        i = 0
        while i < n:
            now = time.monotonic_ns()
            due_upto = min(n, (now - t0) // interval_ns + 1)
            if due_upto <= i:
                nxt = t0 + i * interval_ns
                time.sleep(max(0.0, (nxt - now) / 1e9))
                continue
            batch = [make_task(self._next_seq(), t0 + j * interval_ns) for j in range(i, due_upto)]
            self.publish_window(batch)
            i = due_upto
            if time.monotonic() > deadline:
                raise PhaseTimeout(f"paced: {i}/{n} submitted in {PHASE_TIMEOUT_S:.0f}s")
        return self.drain(first, self._seq, max(1.0, deadline - time.monotonic()))
