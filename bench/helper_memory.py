"""Helper memory: RSS at idle, and with 100,000 retained results, beside an idle NATS server.

    python bench/helper_memory.py [--tasks 100000] [--result-bytes 100] [--backlog 2000] [--restart]

Starts a Helper (`--insecure`, as the compared peers run) and 2 AI nodes whose handler returns
`--result-bytes` bytes, submits `--tasks` tasks with the pipelining client, waits until every
one has succeeded (each then is a retained result: `max_retained_results` is 100,000 by
default), and reads the Helper's VmRSS and VmHWM from /proc. In the same run, a nats-server
with JetStream on (the `nats` row of bench/compare.py) sits idle and its RSS is read too.
`--restart` restarts the Helper on its data dir and reads its RSS after recovery, with the
same retained results. Issue 11's targets: Helper RSS with 100,000 retained results at most
30 MB; at idle no more than the NATS server's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mesh import App, Client  # noqa: E402
from mesh.trust import Trust  # noqa: E402
from nodes.launch import NodeProcess  # noqa: E402

#: the AI nodes' app (`mesh ai --app helper_memory:app`): the result is RESULT_BYTES bytes
app = App("memory")
RESULT = b"r" * int(os.environ.get("MESH_BENCH_RESULT_BYTES", "100"))


@app.task("echo")
async def echo(payload: bytes) -> bytes:
    return RESULT


def rss_kib(pid: int) -> tuple[int, int, int, int]:
    """(VmRSS, VmHWM, anonymous, file-backed) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"], fields["RssAnon"], fields["RssFile"]


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


async def fill(intake: str, tasks: int, backlog: int) -> float:
    """Submit `tasks` with at most `backlog` of them unfinished in the Helper (0: no bound, a
    burst: the queue then holds most of them at once, and the heap keeps that peak's shape)."""
    t0 = time.monotonic()
    async with Client(intake, trust=Trust.plain()) as client:
        futures = []
        done = 0.0
        for i in range(tasks):
            while backlog and i - done >= backlog:
                done = (await client.stats())["succeeded"]
                if i - done >= backlog:
                    await asyncio.sleep(0.01)
            futures.append(await client.submit_async("echo", b"p" * 100))
        await client.flush()
        for fut in futures:
            fut.result()
        while (await client.stats())["succeeded"] < tasks:
            await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def stats(intake: str) -> dict:
    async with Client(intake, trust=Trust.plain()) as client:
        return await client.stats()


def start_nats(work: Path) -> subprocess.Popen | None:
    from peers.nats_js import find_nats_server
    from peers.base import free_port

    exe = find_nats_server()
    if exe is None:
        return None
    port = free_port()
    proc = subprocess.Popen([exe, "-js", "-sd", str(work / "nats"), "-a", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--result-bytes", type=int, default=100)
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--backlog", type=int, default=2000,
                        help="unfinished tasks in the Helper at most while filling (0: a burst)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mesh-memory-"))
    env = {"MESH_LOG_LEVEL": "WARNING", "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
           "MESH_BENCH_RESULT_BYTES": str(args.result_bytes)}
    helper_args = ["helper", "--insecure", "--data-dir", str(work / "helper"),
                   "--discovery", f"embedded://{work / 'reg'}", "--metrics-port", "0"]
    procs: list[NodeProcess] = []
    nats = start_nats(work)
    rows = []
    try:
        helper = NodeProcess(helper_args, env=env, log_path=work / "helper.log",
                             name="helper").start()
        procs.append(helper)
        time.sleep(2.0)  # let imports and first allocations settle: this is the idle figure
        rows.append(("Helper at idle (no task yet)", *rss_kib(helper.pid)))
        if nats is not None:
            rows.append(("nats-server -js at idle, same run", *rss_kib(nats.pid)))
        for i in range(2):
            procs.append(NodeProcess(["ai", "--insecure", "--node-id", f"mem-ai-{i}", "--app",
                                      "helper_memory:app", "--discovery",
                                      f"embedded://{work / 'reg'}", "--metrics-port", "0"],
                                     env=env, log_path=work / f"ai-{i}.log",
                                     name=f"ai-{i}").start())
        took = asyncio.run(fill(helper.ready["intake"], args.tasks, args.backlog))
        time.sleep(1.0)
        s = asyncio.run(stats(helper.ready["intake"]))
        rows.append((f"Helper with {int(s['tasks']):,} retained results "
                     f"({args.result_bytes} B each)", *rss_kib(helper.pid)))
        if args.restart:
            helper.stop()
            helper = NodeProcess(helper_args, env=env, log_path=work / "helper2.log",
                                 name="helper2").start()
            procs.append(helper)
            time.sleep(1.0)
            s = asyncio.run(stats(helper.ready["intake"]))
            rows.append((f"Helper restarted, {int(s['tasks']):,} retained results recovered",
                         *rss_kib(helper.pid)))
    finally:
        for proc in reversed(procs):
            proc.stop()
        if nats is not None:
            nats.terminate()
            nats.wait(10)
    load = os.getloadavg()[0]
    print(f"helper memory, {time.strftime('%Y-%m-%d %H:%M')}, {args.tasks:,} tasks in "
          f"{took:.1f} s (at most {args.backlog or 'any number'} unfinished), load average "
          f"{load:.2f}")
    print("| process | RSS MiB | peak RSS (VmHWM) MiB | anonymous MiB | file-backed MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, rss, hwm, anon, file in rows:
        print(f"| {name} | {mib(rss)} | {mib(hwm)} | {mib(anon)} | {mib(file)} |")


if __name__ == "__main__":
    main()
