"""How the mesh scales: throughput and p99 with 1, 2, 3 and 6 AI nodes, and with 1 vs 2 Helpers.

    python bench/scaling.py [--quick]

Every configuration runs as real processes on the embedded discovery: Helpers (`mesh helper`)
and AI nodes (`mesh ai`, the sample app's `noop` handler; with 2 Helpers every AI node serves
both). The producer submits batches of 256 from 4 submitters, spread over the Helpers, and
counts until every task has SUCCEEDED. p99 is the submit -> handler start latency of a paced
run at half of that configuration's throughput, so it shows latency under load, not queueing.
On a 2-core machine more processes mostly share the same 2 cores: read the curve as the
cost of coordination, not as what more hardware would give.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh import Client, make_task  # noqa: E402
from nodes.launch import NodeProcess  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


async def _succeeded(clients: list[Client]) -> float:
    return sum([(await c.stats())["succeeded"] for c in clients])


async def throughput(clients: list[Client], total: int, batch: int = 256,
                     submitters: int = 4) -> float:
    base = await _succeeded(clients)
    per = total // submitters

    async def submitter(k: int) -> None:
        client = clients[k % len(clients)]
        for start in range(0, per, batch):
            await client.submit_many([make_task("noop", b"x" * 200)
                                      for _ in range(min(batch, per - start))])

    t0 = time.perf_counter()
    await asyncio.gather(*(submitter(k) for k in range(submitters)))
    deadline = time.monotonic() + 300
    while await _succeeded(clients) < base + per * submitters:
        if time.monotonic() > deadline:
            raise TimeoutError("throughput phase did not finish within 300 s")
        await asyncio.sleep(0.01)
    return per * submitters / (time.perf_counter() - t0)


async def paced_latency(clients: list[Client], rate: float, count: int) -> list[float]:
    """Submit `count` tasks at `rate`/s (open loop, batches of what is due), then read each
    task's handler start time from its result."""
    interval = 1.0 / rate
    t0 = time.perf_counter()
    sent: list[tuple[Client, object]] = []
    i = 0
    while i < count:
        due = min(count, int((time.perf_counter() - t0) / interval) + 1)
        if due <= i:
            await asyncio.sleep(max(0.0, t0 + i * interval - time.perf_counter()))
            continue
        client = clients[i % len(clients)]
        tasks = [make_task("noop", b"x" * 200) for _ in range(i, due)]
        await client.submit_many(tasks)
        sent += [(client, t) for t in tasks]
        i = due
    out = []
    for client, task in sent:
        started_ns = int(await client.result(task.task_id, timeout=60))
        out.append((started_ns - task.submitted_ns) / 1e9)
    return out


async def measure(helpers: int, nodes: int, tasks: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mesh-scaling-"))
    disc = f"embedded://{work / 'registry'}"
    env = {"MESH_LOG_LEVEL": "WARNING"}
    procs = []
    try:
        hs = [NodeProcess(["helper", "--helper-id", f"h{i}", "--data-dir", str(work / f"h{i}"),
                           "--discovery", disc], env=env, name=f"h{i}").start()
              for i in range(helpers)]
        procs += hs
        procs += [NodeProcess(["ai", "--node-id", f"ai-{i}", "--discovery", disc], env=env,
                              name=f"ai-{i}").start() for i in range(nodes)]
        clients = [Client(h.ready["intake"]) for h in hs]
        for c in clients:
            await c.start()
        try:
            for c in clients:
                while (await c.stats())["nodes"] < nodes:
                    await asyncio.sleep(0.05)
            await throughput(clients, 2000)  # warm up
            tput = await throughput(clients, tasks)
            lat = await paced_latency(clients, tput / 2, min(tasks // 5, 5000))
        finally:
            for c in clients:
                await c.close()
        return {"helpers": helpers, "nodes": nodes, "throughput": tput,
                "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int, default=60_000)
    args = parser.parse_args()
    tasks = 10_000 if args.quick else args.tasks
    configs = [(1, 1), (1, 2), (1, 3), (1, 6), (2, 3)]
    print(f"mesh scaling, {time.strftime('%Y-%m-%d %H:%M')}, {tasks} tasks per figure")
    print("| Helpers | AI nodes | durable throughput tasks/s | p50 ms @ 50% load | "
          "p99 ms @ 50% load |")
    print("|---:|---:|---:|---:|---:|")
    for helpers, nodes in configs:
        r = asyncio.run(measure(helpers, nodes, tasks))
        print(f"| {helpers} | {nodes} | {r['throughput']:,.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
