"""What running a handler in a child process costs, against running it inline (asyncio) and in
a thread pool: the same 1 ms handler, 16 slots, all in one run, through the executor interface
the AI node calls (`mesh.executors`: `execute(handler, payload, ctx, timeout_s)`, with the
TaskContext the node builds per run), so the figures are those of `mesh ai --executor
async|thread|process` minus the node's own path (sockets, acks), which is the same for all.

    .venv/bin/python bench/executor_cost.py [--calls 20000] [--slots 16] [--serial 2000]
    .venv/bin/python bench/executor_cost.py --through-node [--seconds 10] [--slots 16]

Per way of running: p50/p99 latency of one call (from the caller's await to its result) and
throughput, with `slots` callers each keeping one call in flight (a closed loop, as an AI node
with concurrency 16 runs), with the CPU time per call of the parent and (process rows) of
the children together; then p50/p99 with one call in flight (the bare per-call cost).
The parent runs uvloop, as the nodes do. Also: how long a child takes to start (spawn, what
the pool uses) against multiprocessing's forkserver (the alternative we measured), and how
long the pool takes to start `slots` children. Figures are for this machine and its load: the
load average is printed before and after.

`--through-node`: the same handlers through a whole mesh instead: one Helper (journal fsync
`none`, so the disk is not what is measured) and, in turn, `mesh ai --executor async` and
`mesh ai --executor process` with `slots` of concurrency; `slots` callers each submit a task
and wait for its result (Client.submit, then Client.result) for `--seconds`. Per executor:
end-to-end p50/p99, tasks/s, and the AI node's CPU per task (the node and, for `process`, its
children).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from mesh.app import App, TaskContext
from mesh.executors import InlineExecutor, ProcessExecutor, ThreadExecutor

ROOT = Path(__file__).resolve().parents[1]
APP_PATH = "bench.executor_cost:app"
HANDLER_S = 0.001

app = App("executor-cost")


@app.task("sleep_async")
async def sleep_async(payload: bytes) -> bytes:
    await asyncio.sleep(HANDLER_S)
    return payload


@app.task("sleep_sync")
def sleep_sync(payload: bytes) -> bytes:
    time.sleep(HANDLER_S)
    return payload


async def _closed_loop(call, slots: int, calls: int) -> tuple[list[float], float]:  # noqa: ANN001
    latencies: list[float] = []
    per_caller = calls // slots

    async def caller(i: int) -> None:
        payload = b"%d" % i
        for _ in range(per_caller):
            t = time.perf_counter()
            await call(payload)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(slots)))
    return latencies, time.perf_counter() - t0


async def _serial(call, calls: int) -> list[float]:  # noqa: ANN001
    latencies = []
    for _ in range(calls):
        t = time.perf_counter()
        await call(b"x")
        latencies.append(time.perf_counter() - t)
    return latencies


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _forkserver_target(conn) -> None:  # noqa: ANN001
    conn.send_bytes(b"ready")
    conn.close()


def forkserver_start_s(n: int) -> list[float]:
    """Time from Process.start() to the child's first message, forkserver with mesh.app
    preloaded (the first start, which starts the server, is left out)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mesh.app", "mesh.executors.child"])
    times = []
    for i in range(n + 1):
        parent, child = ctx.Pipe(duplex=False)
        t = time.perf_counter()
        p = ctx.Process(target=_forkserver_target, args=(child,))
        p.start()
        parent.recv_bytes()
        elapsed = time.perf_counter() - t
        p.join()
        child.close()
        parent.close()
        if i:
            times.append(elapsed)
    return times


async def spawn_start_s(n: int) -> list[float]:
    """Time for a one-child pool to start: spawn, import the app, Ready."""
    times = []
    for _ in range(n):
        pool = ProcessExecutor(APP_PATH, 1, cwd=str(ROOT))
        t = time.perf_counter()
        await pool.start()
        times.append(time.perf_counter() - t)
        await pool.stop()
    return times


async def main(args: argparse.Namespace) -> None:
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cores, python {sys.version.split()[0]}, uvloop")
    slots, calls, serial = args.slots, args.calls, args.serial
    inline_executor = InlineExecutor()
    threads = ThreadExecutor(slots)
    pool = ProcessExecutor(APP_PATH, slots, cwd=str(ROOT))
    t = time.perf_counter()
    await pool.start()
    pool_start_s = time.perf_counter() - t

    handler_async, handler_sync = app.handlers["sleep_async"], app.handlers["sleep_sync"]

    def ctx(kind: str) -> TaskContext:  # what the AI node builds for each run
        return TaskContext(task_id="t", kind=kind, attempt=1, delivery=1, idempotency_key="t",
                           node_id="bench", headers={}, submitted_ns=0)

    async def inline(payload: bytes) -> bytes:
        return await inline_executor.execute(handler_async, payload, None, 30.0)

    async def in_thread(payload: bytes) -> bytes:
        return await threads.execute(handler_sync, payload, None, 30.0)

    async def process_sync(payload: bytes) -> bytes:
        return await pool.execute(handler_sync, payload, ctx("sleep_sync"), 30.0)

    async def process_async(payload: bytes) -> bytes:
        return await pool.execute(handler_async, payload, ctx("sleep_async"), 30.0)

    ways = [("inline (asyncio)", inline), ("thread pool", in_thread),
            ("process, sync handler", process_sync), ("process, async handler", process_async)]
    rows = []
    for name, call in ways:
        await _closed_loop(call, slots, slots * 20)  # warm up
        pids = [c.pid for c in pool.children()] if name.startswith("process") else []
        children = sum(_proc_cpu_s(p) for p in pids)
        cpu = time.process_time()
        loaded, elapsed = await _closed_loop(call, slots, calls)
        cpu = time.process_time() - cpu
        children = sum(_proc_cpu_s(p) for p in pids) - children
        alone = await _serial(call, serial)
        rows.append((name, _pct(loaded, 0.5), _pct(loaded, 0.99), len(loaded) / elapsed,
                     _pct(alone, 0.5), _pct(alone, 0.99), cpu / len(loaded),
                     children / len(loaded)))
    await pool.stop()
    await threads.stop()

    print(f"\n{calls} calls of a {HANDLER_S * 1000:.0f} ms handler, {slots} in flight; then "
          f"{serial} calls one at a time")
    print(f"{'':24} {'p50 us':>8} {'p99 us':>8} {'calls/s':>9} {'parent cpu us/call':>19} "
          f"{'children':>9} | {'alone p50':>9} {'alone p99':>9} | p50 - inline's: loaded / "
          "alone")
    base = rows[0]
    for name, p50, p99, rate, a50, a99, cpu, kids in rows:
        kids_us = f"{kids * 1e6:9.1f}" if name.startswith("process") else f"{'-':>9}"
        print(f"{name:24} {p50 * 1e6:8.0f} {p99 * 1e6:8.0f} {rate:9.0f} {cpu * 1e6:19.1f} "
              f"{kids_us} | {a50 * 1e6:9.0f} {a99 * 1e6:9.0f} | {(p50 - base[1]) * 1e6:+.0f} / "
              f"{(a50 - base[4]) * 1e6:+.0f} us")
    print("\ntargets (process vs inline): p50 at most +150 us, throughput at least half")
    for row in rows:
        if row[0].startswith("process"):
            print(f"  {row[0]}: p50 {(row[1] - base[1]) * 1e6:+.0f} us loaded, "
                  f"{(row[4] - base[4]) * 1e6:+.0f} us alone; throughput "
                  f"{row[3] / base[3]:.2f}x")

    spawned = await spawn_start_s(args.starts)
    forked = await asyncio.to_thread(forkserver_start_s, args.starts)
    print(f"\nchild start, median of {args.starts}: spawn (the pool's: python -m "
          f"mesh.executors.child, app imported, Ready) {statistics.median(spawned) * 1e3:.0f} "
          f"ms; forkserver with mesh.app preloaded, to a trivial target "
          f"{statistics.median(forked) * 1e3:.0f} ms")
    print(f"pool of {slots} children started in {pool_start_s * 1e3:.0f} ms")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and of its children now alive (/proc)."""
    one = _proc_cpu_s
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return one(pid) + sum(one(k) for k in kids)


async def through_node(args: argparse.Namespace) -> None:
    """`mesh ai --executor async` against `--executor process`, each behind the same Helper."""
    sys.path.insert(0, str(ROOT))
    from mesh import Client
    from nodes.launch import NodeProcess, stop_all

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cores, python {sys.version.split()[0]}")
    work = Path(tempfile.mkdtemp(prefix="mesh-executor-node-"))
    os.environ.setdefault("MESH_KEY_DIR", str(work / "keys"))
    env = {"MESH_LOG_LEVEL": "WARNING", "MESH_KEY_DIR": os.environ["MESH_KEY_DIR"]}
    discovery = f"embedded://{work / 'registry'}"
    helper = NodeProcess(["helper", "--data-dir", str(work / "helper"), "--discovery", discovery,
                          "--no-alerts", "--fsync", "none"], env=env, cwd=ROOT,
                         log_path=work / "helper.log", name="helper").start()
    rows = []
    try:
        async with Client(helper.ready["intake"]) as client:
            async def nodes_seen(count: int) -> None:
                deadline = time.monotonic() + 30
                while (await client.stats())["nodes"] != count:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the Helper does not see {count} AI nodes")
                    await asyncio.sleep(0.1)

            for executor, kinds in (("async", ["sleep_async"]),
                                    ("process", ["sleep_sync", "sleep_async"])):
                node = NodeProcess(["ai", "--app", APP_PATH, "--executor", executor,
                                    "--concurrency", str(args.slots), "--node-id",
                                    f"bench-{executor}", "--discovery", discovery], env=env,
                                   cwd=ROOT, log_path=work / f"ai-{executor}.log",
                                   name=f"ai-{executor}").start(timeout_s=120)
                try:
                    await nodes_seen(1)
                    for kind in kinds:
                        async def one() -> float:
                            t = time.perf_counter()
                            await client.result(await client.submit(kind, b"x"), timeout=30)
                            return time.perf_counter() - t
                        for _ in range(args.slots * 10):  # warm up
                            await one()
                        latencies: list[float] = []
                        stop_at = time.perf_counter() + args.seconds

                        async def caller() -> None:
                            while time.perf_counter() < stop_at:
                                latencies.append(await one())
                        cpu = _cpu_s(node.pid)
                        t0 = time.perf_counter()
                        await asyncio.gather(*(caller() for _ in range(args.slots)))
                        elapsed = time.perf_counter() - t0
                        cpu = _cpu_s(node.pid) - cpu
                        rows.append((f"{executor}, {kind}", _pct(latencies, 0.5),
                                     _pct(latencies, 0.99), len(latencies) / elapsed,
                                     cpu / len(latencies)))
                finally:
                    stop_all([node])
                await nodes_seen(0)
    finally:
        stop_all([helper])
    print(f"\n{args.slots} callers, each: submit a {HANDLER_S * 1000:.0f} ms task, wait for its "
          f"result; {args.seconds:g} s per row, through a Helper (fsync none) and one AI node")
    print(f"{'':24} {'p50 us':>8} {'p99 us':>8} {'tasks/s':>9} {'node cpu us/task':>17} | "
          "p50 - async's")
    base = rows[0]
    for name, p50, p99, rate, cpu in rows:
        print(f"{name:24} {p50 * 1e6:8.0f} {p99 * 1e6:8.0f} {rate:9.0f} {cpu * 1e6:17.1f} | "
              f"{(p50 - base[1]) * 1e6:+.0f} us")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--serial", type=int, default=2_000)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--through-node", action="store_true",
                        help="through a Helper and a whole `mesh ai` per executor (see above)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="--through-node: how long each row runs")
    parsed = parser.parse_args()
    uvloop.run(through_node(parsed) if parsed.through_node else main(parsed))
