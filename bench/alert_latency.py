"""Alert latency, publish to handler: p50/p99 idle and with a load process running.

    python bench/alert_latency.py                       # idle, then a PUSH/PULL hammer
    python bench/alert_latency.py --load tasklane       # idle, then the task lane at full load
    python bench/alert_latency.py --load cpu --count 5000 --rate 2000 --json out.json

A publisher process (`AlertPublisher`, journal on) sends `--count` alerts at `--rate` per
second; this process runs the notifier's receiving path (`AlertSubscriber` + `HandlerSet`) with
an async handler that takes `time.time_ns() - alert.time_ns` (both ends on this host's clock;
`time_ns` is stamped in `publish()` before the send). The first `--warmup` alerts are not counted.
Loads: `pushpull` (two processes moving 256-byte messages over loopback as fast as they can),
`cpu` (one busy process per core), `tasklane` (`mesh demo`: a Helper, AI nodes and submitters).
The `floor:` row is a bare pyzmq PUB->SUB pair under the same load: what the machine allows.
`--lane-rt PRIO` runs the lane SCHED_FIFO (the notifier's `--rt-priority`).
Target (issue 5): p99 below 5 ms under load on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mesh import wire  # noqa: E402
from mesh.alert_handlers import HandlerSet  # noqa: E402
from mesh.alert_subscriber import AlertSubscriber, AlertSubscriberSettings  # noqa: E402
from nodes.launch import kill_tree  # noqa: E402


# ---- the publisher process ---------------------------------------------------------------


async def _publisher(args: argparse.Namespace) -> int:
    from mesh.alerts import AlertPublisher, AlertPublisherSettings

    endpoints = {}
    if args.transport == "ipc":
        endpoints = {"pub_endpoint": f"ipc://{args.data_dir}/pub",
                     "replay_endpoint": f"ipc://{args.data_dir}/replay"}
    async with AlertPublisher(AlertPublisherSettings(
            publisher_id="bench-pub", data_dir=None if args.no_journal else args.data_dir,
            **endpoints)) as pub:
        print("READY " + json.dumps({"pub": pub.pub_endpoint, "replay": pub.replay_endpoint}),
              flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # "go"
        interval_s = 1.0 / args.rate
        start = time.monotonic()
        for i in range(args.count):
            # paced on an absolute schedule, so a late wake-up does not slow the rate down
            delay = start + i * interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pub.publish("bench.latency", wire.CRITICAL, "bench", b"x" * 64)
        print(f"PUBLISHED {pub.last_seq}", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    return 0


def _raw_publisher(args: argparse.Namespace) -> int:
    """The floor: a bare pyzmq PUB sending its clock, no mesh code at all."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"READY {json.dumps({'pub': f'tcp://127.0.0.1:{port}'})}", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    for i in range(args.count):
        delay = start + i / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.send(str(time.time_ns()).encode())
    sys.stdin.readline()
    sock.close(linger=0)
    ctx.term()
    return 0


def measure_floor(args: argparse.Namespace) -> list[float]:
    import zmq
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pub = subprocess.Popen(
        [sys.executable, __file__, "--role", "raw-publisher", "--count", str(args.count),
         "--rate", str(args.rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=env, cwd=REPO)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        info = json.loads(pub.stdout.readline()[len("READY "):])
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(info["pub"])
        time.sleep(0.5)  # slow joiner: the floor has no replay, so let the subscription land
        pub.stdin.write("go\n")
        pub.stdin.flush()
        out = []
        while len(out) < args.count and sub.poll(10_000):
            out.append((time.time_ns() - int(sub.recv())) / 1e6)
        pub.stdin.write("stop\n")
        pub.stdin.flush()
        pub.wait(10)
        return out[args.warmup:]
    finally:
        sub.close(linger=0)
        ctx.term()
        if pub.poll() is None:
            pub.kill()
            pub.wait(5)


# ---- loads -------------------------------------------------------------------------------


def _cpu_burn() -> None:
    x = 0
    while True:
        x = (x * 31 + 7) % 1_000_003


def start_load(kind: str, work: Path, nice: int = 0) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MESH_LOG_LEVEL": "WARNING"}
    if kind == "none":
        return []
    if kind == "pushpull":
        argv = [[sys.executable, "-m", "tests.integration.alert_procs", "load", "--seconds", "600"]]
    elif kind == "cpu":
        argv = [[sys.executable, "-c", "import bench.alert_latency as b; b._cpu_burn()"]
                for _ in range(os.cpu_count() or 1)]
    elif kind == "tasklane":
        argv = [[sys.executable, "-m", "nodes.cli", "demo", "--tasks", "2000000"]]
    else:
        raise SystemExit(f"unknown load {kind!r}")
    if nice:
        argv = [["nice", "-n", str(nice), *a] for a in argv]
    procs = [subprocess.Popen(a, cwd=work if kind == "tasklane" else REPO, env=env,
                              stdout=subprocess.PIPE if kind == "tasklane" else subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True, preexec_fn=_normal_priority)
             for a in argv]
    if kind == "tasklane":  # "mesh demo: work dir /tmp/mesh-demo-x (seed n)": removed at the end
        line = procs[0].stdout.readline()
        if "work dir " in line:
            _cleanup.append(line.split("work dir ", 1)[1].split(" (seed")[0].strip())
    time.sleep(3.0 if kind == "tasklane" else 1.0)  # let the load reach its steady state
    for p in procs:
        if p.poll() is not None:
            raise SystemExit(f"load {kind} exited early with {p.returncode}")
    return procs


def _normal_priority() -> None:
    """The load never inherits the lane's real-time priority (--lane-rt)."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


_cleanup: list[str] = []


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        kill_tree(p.pid)  # `mesh demo` starts its nodes in sessions of their own
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()
    while _cleanup:
        shutil.rmtree(_cleanup.pop(), ignore_errors=True)


# ---- one measured phase ------------------------------------------------------------------


async def measure(args: argparse.Namespace, work: Path) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MESH_LOG_LEVEL": "WARNING"}
    data_dir = tempfile.mkdtemp(prefix="alert-bench-", dir=work)
    pub = subprocess.Popen(
        [sys.executable, __file__, "--role", "publisher", "--count", str(args.count),
         "--rate", str(args.rate), "--data-dir", data_dir, "--transport", args.transport,
         *(["--no-journal"] if args.no_journal else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    loop = asyncio.get_running_loop()
    try:
        line = await loop.run_in_executor(None, pub.stdout.readline)
        if not line.startswith("READY "):
            raise SystemExit(f"publisher did not start: {line!r}")
        info = json.loads(line[len("READY "):])
        latencies_ms: list[float] = []
        done = asyncio.Event()

        async def record(alert: wire.Alert) -> None:
            latencies_ms.append((time.time_ns() - alert.time_ns) / 1e6)
            if alert.seq >= args.count:
                done.set()

        sub = AlertSubscriber(AlertSubscriberSettings(), HandlerSet([("record", record)]))
        await sub.start()
        sub.add_publisher("bench-pub", info["pub"], info["replay"])
        link = sub._links["bench-pub"]
        deadline = time.monotonic() + 10
        while (link.inflight is not None or link.epoch == 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)   # first contact (subscribe + replay) done
        await asyncio.sleep(0.2)
        pub.stdin.write("go\n")
        pub.stdin.flush()
        await asyncio.wait_for(done.wait(), args.count / args.rate + 30)
        stats = sub.stats
        await sub.stop()
        if stats.lost or stats.delivered != args.count:
            raise SystemExit(f"alerts lost: delivered {stats.delivered} of {args.count}")
        pub.stdin.write("stop\n")
        pub.stdin.flush()
        pub.wait(10)
        return latencies_ms[args.warmup:]
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.wait(5)


def summary(name: str, values: list[float]) -> dict:
    values = sorted(values)
    n = len(values)

    def pct(p: float) -> float:
        return values[min(n - 1, int(p / 100 * n))]

    return {"phase": name, "n": n, "p50_ms": round(pct(50), 3), "p90_ms": round(pct(90), 3),
            "p99_ms": round(pct(99), 3), "max_ms": round(values[-1], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", default="bench", choices=("bench", "publisher", "raw-publisher"))
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0, help="alerts per second")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--load", default="pushpull", choices=("none", "pushpull", "cpu", "tasklane"))
    parser.add_argument("--load-nice", type=int, default=0,
                        help="run the load at this nice value (default 0: same as the lane)")
    parser.add_argument("--transport", default="tcp", choices=("tcp", "ipc"),
                        help="tcp on loopback (default) or ipc (Unix sockets, one host)")
    parser.add_argument("--no-journal", action="store_true",
                        help="publisher keeps its history in memory only")
    parser.add_argument("--lane-rt", type=int, default=0, metavar="PRIO",
                        help="run the alert lane (this process and the publisher) SCHED_FIFO at "
                             "this priority; the load stays SCHED_OTHER (needs CAP_SYS_NICE)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the floor row (bare pyzmq PUB->SUB under the same load)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.role == "publisher":
        return asyncio.run(_publisher(args))
    if args.role == "raw-publisher":
        return _raw_publisher(args)
    if args.lane_rt:
        # this process (the subscriber side) and the publisher it starts, with their ZeroMQ I/O
        # threads (created later, they inherit it), run SCHED_FIFO: see docs/decisions/003
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.lane_rt))

    rows = []
    with tempfile.TemporaryDirectory(prefix="alert-bench-") as tmp:
        work = Path(tmp)
        rows.append(summary("idle", asyncio.run(measure(args, work))))
        print(json.dumps(rows[-1]), flush=True)
        if args.load != "none":
            load = start_load(args.load, work, args.load_nice)
            try:
                rows.append(summary(f"load:{args.load}", asyncio.run(measure(args, work))))
                print(json.dumps(rows[-1]), flush=True)
                if not args.no_floor:
                    rows.append(summary(f"floor:{args.load}", measure_floor(args)))
                alive = all(p.poll() is None for p in load)
            finally:
                stop_load(load)
            rows[-1]["load_alive_throughout"] = alive
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nalert latency publish->handler, {args.count} alerts at {args.rate:g}/s, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, lane "
          f"{'SCHED_FIFO %d' % args.lane_rt if args.lane_rt else 'SCHED_OTHER'}, "
          f"transport {args.transport}, journal {'off' if args.no_journal else 'on'}")
    print(f"{'phase':<16}{'n':>7}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for r in rows:
        print(f"{r['phase']:<16}{r['n']:>7}{r['p50_ms']:>10.3f}{r['p90_ms']:>10.3f}"
              f"{r['p99_ms']:>10.3f}{r['max_ms']:>10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "count": args.count,
                                               "rate": args.rate}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
