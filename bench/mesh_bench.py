"""Latency and throughput of the mesh itself, with the disk's raw fdatasync for scale.

    python bench/mesh_bench.py [--quick] [--nodes 3] [--tasks 100000]

Starts a Helper and N AI nodes (the sample app's `noop` handler) as separate processes on the
embedded discovery, then measures, in one run:
- raw fdatasync: p50/p99 of a 256-byte append + fdatasync on the Helper's data directory;
- accept: submit -> "accepted" (durable), one task at a time, p50/p99;
- end to end: submit -> handler start, one task at a time, p50/p99;
- sustained durable throughput: pipelined batched submits from several submitters, counted
  until every task has SUCCEEDED (tasks/s), with the default fsync policy.
Figures are printed as a table and as ratios to the raw fdatasync measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh import Client, SyncClient, make_task  # noqa: E402
from mesh.trust import Role, Trust  # noqa: E402
from nodes.launch import NodeProcess  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from peers.base import fsync_probe as peers_fsync_probe  # noqa: E402
from peers.base import percentile  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return percentile(values, q)


def fsync_probe(directory: Path, count: int = 500) -> list[float]:
    """The raw 256-byte append + fdatasync of the Helper's disk, in seconds."""
    return [ns / 1e9 for ns in peers_fsync_probe(directory, count)]


def accept_latency(client: SyncClient, count: int) -> list[float]:
    """One task per submit, the next only after the answer (a blocking client, as a web
    handler would use; the peers' one-at-a-time figures use their blocking clients too)."""
    samples = []
    for _ in range(count):
        task = make_task("noop", b"x" * 200)
        t0 = time.perf_counter()
        client.submit_many([task])
        samples.append(time.perf_counter() - t0)
    return samples


def e2e_latency(client: SyncClient, count: int) -> list[float]:
    """Submit one task, read from its result when its handler started, repeat."""
    samples = []
    for _ in range(count):
        task = make_task("noop", b"x" * 200)
        client.submit_many([task])
        result = client.result(task.task_id, timeout=30)
        samples.append((int(result) - task.submitted_ns) / 1e9)
    return samples


async def throughput(client: Client, total: int, submitters: int, batch: int) -> float:
    base = (await client.stats())["succeeded"]
    per = total // submitters

    async def submitter() -> None:
        for start in range(0, per, batch):
            await client.submit_many([make_task("noop", b"x" * 200)
                                      for _ in range(min(batch, per - start))])

    t0 = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(submitters)))
    target = base + per * submitters
    deadline = time.monotonic() + 300
    while (await client.stats())["succeeded"] < target:
        if time.monotonic() > deadline:
            raise TimeoutError("throughput phase did not finish within 300 s")
        await asyncio.sleep(0.01)
    return per * submitters / (time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    env = {"MESH_LOG_LEVEL": "WARNING"}
    disc = f"embedded://{work / 'registry'}"
    extra = ["--dispatch-before-sync"] if args.dispatch_before_sync else []
    # CURVE on every link unless --insecure; the keys live in this run's own store.
    plain = ["--insecure"] if args.insecure else []
    env["MESH_KEY_DIR"] = str(work / "keys")
    trust = Trust.plain() if args.insecure else Trust.local(work / "keys")
    helper = NodeProcess(["helper", "--data-dir", str(work / "helper"), "--discovery", disc,
                          "--fsync", args.fsync, *extra, *plain],
                         env=env, log_path=work / "helper.log", name="helper")
    nodes = [NodeProcess(["ai", "--app", "nodes.sample_app:app", "--node-id", f"ai-{i}",
                          "--discovery", disc, *plain],
                         env=env, log_path=work / f"ai-{i}.log", name=f"ai-{i}")
             for i in range(args.nodes)]
    try:
        helper.start()
        for node in nodes:
            node.start()
        async with Client(helper.ready["intake"], trust=trust, role=Role.OPERATOR) as client:
            while (await client.stats())["nodes"] < len(nodes):
                await asyncio.sleep(0.05)
            with SyncClient(helper.ready["intake"], trust=trust) as blocking:
                accept_latency(blocking, 200)  # warm up
                fsync = fsync_probe(work / "helper")
                accept = accept_latency(blocking, args.samples)
                e2e = e2e_latency(blocking, args.samples)
            tput = await throughput(client, args.tasks, args.submitters, args.batch)
            stats = await client.stats()
        return {"fsync_s": fsync, "accept_s": accept, "e2e_s": e2e, "throughput": tput,
                "stats": stats}
    finally:
        helper.stop()
        for node in nodes:
            node.stop()
        trust.close()
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict, args: argparse.Namespace) -> None:
    us = 1e6
    f50, f99 = pct(r["fsync_s"], 50) * us, pct(r["fsync_s"], 99) * us
    a50, a99 = pct(r["accept_s"], 50) * us, pct(r["accept_s"], 99) * us
    e50, e99 = pct(r["e2e_s"], 50) * us, pct(r["e2e_s"], 99) * us
    print(f"mesh bench: {args.nodes} AI nodes, fsync policy {args.fsync}, "
          f"{'plain links (--insecure)' if args.insecure else 'CURVE on every link'}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| figure | p50 | p99 |")
    print("|---|---:|---:|")
    print(f"| raw 256 B append + fdatasync (same disk) | {f50:.0f} us | {f99:.0f} us |")
    print(f"| accept, one at a time (durable) | {a50:.0f} us | {a99:.0f} us |")
    print(f"| submit -> handler start, one at a time | {e50:.0f} us | {e99:.0f} us |")
    print(f"| sustained durable throughput ({args.submitters} submitters x {args.batch}/batch) "
          f"| {r['throughput']:,.0f} tasks/s | |")
    print(f"\naccept p50 / raw fdatasync p50 = {a50 / f50:.2f}x (target <= 2x)")
    print(f"end-to-end p50 - accept p50 = {e50 - a50:.0f} us (target <= 200 us)")
    print(f"fsyncs during the run: {int(r['stats']['fsyncs'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in r.items()}, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--fsync", default="batch")
    parser.add_argument("--dispatch-before-sync", action="store_true")
    parser.add_argument("--insecure", action="store_true", help="plain links (no CURVE)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and tasks")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.tasks = 300, 20_000
    report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
