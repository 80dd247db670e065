"""A single Helper vs a replicated Helper group of 2 (decision 009), in one run, same host.

    python bench/group_bench.py [--quick] [--nodes 2] [--tasks 20000]

For each setup (a Helper alone; a group of 2 in embedded mode, the follower on this host,
--min-replicas 1 so "accepted" means durable on both members), with the same AI nodes (the
sample app's `noop`):
- accept: submit -> "accepted", one task at a time (a blocking client), p50/p99;
- throughput: batched submits from several submitters, counted until every task SUCCEEDED.
Printed as a table with the group / single ratios and the load average (both on this host:
the leader, its follower and the nodes share the same cores and disk).
Targets (issue 15): accept p50 at most 1.5x the single Helper's, throughput at least 0.7x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mesh_bench import accept_latency, pct, throughput  # noqa: E402

from mesh import Client, SyncClient, make_task  # noqa: E402
from mesh.trust import Role, Trust  # noqa: E402
from nodes.launch import NodeProcess  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until_accepting(intake: str, trust: Trust, deadline_s: float = 60.0) -> None:
    """A group's leader refuses (NOT_ENOUGH_REPLICAS) until its follower is in sync."""
    end = time.monotonic() + deadline_s
    async with Client(intake, trust=trust, timeout_s=2.0) as client:
        while True:
            try:
                results = await client.submit_results([make_task("noop", b"warm")])
                if results and results[0].code == 1:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"{intake} did not accept within {deadline_s}s")
            await asyncio.sleep(0.1)


async def measure(work: Path, group: bool, args: argparse.Namespace, env: dict,
                  trust: Trust) -> dict:
    disc = f"embedded://{work / 'registry'}"
    plain = ["--insecure"] if args.insecure else []
    procs: list[NodeProcess] = []
    work.mkdir(parents=True)
    intake = f"tcp://127.0.0.1:{_free_port()}"

    def start(argv: list[str], name: str) -> NodeProcess:
        proc = NodeProcess(argv, env=env, log_path=work / f"{name}.log", name=name)
        procs.append(proc)
        return proc.start()

    try:
        if group:
            lock_dir = work / "groups"
            members = {"g1": intake, "g2": f"tcp://127.0.0.1:{_free_port()}"}
            for member, ep in members.items():
                start(["helper", "--helper-id", member, "--data-dir", str(work / member),
                       "--discovery", disc, "--intake", ep, "--group", "g", "--group-size", "2",
                       "--group-lock-dir", str(lock_dir), *plain], member)
                if member == "g1":  # g1 leads: wait for it before its follower starts
                    deadline = time.monotonic() + 30
                    while not (lock_dir / "g.leader").exists():
                        if time.monotonic() > deadline:
                            raise TimeoutError("g1 did not lead")
                        await asyncio.sleep(0.05)
        else:
            start(["helper", "--helper-id", "solo", "--data-dir", str(work / "solo"),
                   "--discovery", disc, "--intake", intake, *plain], "solo")
        for i in range(args.nodes):
            start(["ai", "--app", "nodes.sample_app:app", "--node-id", f"ai-{i}",
                   "--discovery", disc, *plain], f"ai-{i}")
        await _until_accepting(intake, trust)
        async with Client(intake, trust=trust, role=Role.OPERATOR) as client:
            while (await client.stats())["nodes"] < args.nodes:
                await asyncio.sleep(0.05)
            with SyncClient(intake, trust=trust) as blocking:
                accept_latency(blocking, 200)  # warm up
                accept = accept_latency(blocking, args.samples)
            tput = await throughput(client, args.tasks, args.submitters, args.batch)
        return {"accept_s": accept, "throughput": tput}
    finally:
        for proc in reversed(procs):
            proc.stop()


async def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mesh-group-bench-"))
    env = {"MESH_LOG_LEVEL": "WARNING", "MESH_KEY_DIR": str(work / "keys")}
    trust = Trust.plain() if args.insecure else Trust.local(work / "keys")
    try:
        single = await measure(work / "single", False, args, env, trust)
        grouped = await measure(work / "group", True, args, env, trust)
        return {"single": single, "group": grouped, "loadavg": os.getloadavg()}
    finally:
        trust.close()
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict, args: argparse.Namespace) -> None:
    us = 1e6
    s, g = r["single"], r["group"]
    s50, s99 = pct(s["accept_s"], 50) * us, pct(s["accept_s"], 99) * us
    g50, g99 = pct(g["accept_s"], 50) * us, pct(g["accept_s"], 99) * us
    load = " ".join(f"{x:.2f}" for x in r["loadavg"])
    print(f"group bench: {args.nodes} AI nodes, "
          f"{'plain links' if args.insecure else 'CURVE on every link'}, {os.cpu_count()} cores, "
          f"load average {load}, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| figure | single Helper | group of 2 | group / single |")
    print("|---|---:|---:|---:|")
    print(f"| accept p50, one at a time | {s50:.0f} us | {g50:.0f} us | {g50 / s50:.2f}x |")
    print(f"| accept p99, one at a time | {s99:.0f} us | {g99:.0f} us | {g99 / s99:.2f}x |")
    print(f"| throughput ({args.submitters} submitters x {args.batch}/batch) | "
          f"{s['throughput']:,.0f} tasks/s | {g['throughput']:,.0f} tasks/s | "
          f"{g['throughput'] / s['throughput']:.2f}x |")
    print(f"\ntargets: accept p50 <= 1.5x ({'met' if g50 / s50 <= 1.5 else 'MISSED'}), "
          f"throughput >= 0.7x ({'met' if g['throughput'] / s['throughput'] >= 0.7 else 'MISSED'})")
    if args.json:
        Path(args.json).write_text(json.dumps(r, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--insecure", action="store_true", help="plain links (no CURVE)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and tasks")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.tasks = 300, 5_000
    report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
