"""`mesh demo`: a Helper and 3 AI nodes as separate processes on the embedded discovery.

It submits tasks to the sample `simulate` handler (a simulated AI call), kills one AI node with
SIGKILL in the middle, waits for every result, and prints what happened: submitted,
succeeded, lost (must be 0), run to completion twice (must be 0), and accept and end-to-end
latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from mesh import wire
from mesh.trust import Role, Trust
from nodes.launch import NodeProcess, stop_all

if TYPE_CHECKING:
    from mesh.client import Client


def register_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a local mesh, kill a node mid-run, print the figures")
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--submitters", type=int, default=8,
                   help="concurrent submitters, each submitting one task at a time")
    p.add_argument("--kill-at", type=float, default=0.5,
                   help="SIGKILL one AI node when this fraction of tasks is submitted")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="key store shared by the demo's processes (default: one in the work "
                        "directory, made for this run)")
    p.add_argument("--insecure", action="store_true",
                   help="plain, unauthenticated links (warns at every start)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    # SIGTERM (a timeout, a CI runner) must still stop the node processes we started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return asyncio.run(run_demo(args))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


async def run_demo(args: argparse.Namespace) -> int:
    from mesh.client import Client  # not at import: `mesh helper` loads this module too
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    effects = work / "effects"
    effects.mkdir()
    discovery = f"embedded://{work / 'registry'}"
    # Every process of the demo shares one local key store: authenticated with no setup.
    key_dir = args.keys or str(work / "keys")
    env = {"MESH_EFFECT_LOG_DIR": str(effects), "MESH_LOG_LEVEL": "WARNING",
           "MESH_KEY_DIR": key_dir}
    insecure = ["--insecure"] if args.insecure else []
    trust = Trust.plain() if args.insecure else Trust.local(key_dir)
    print(f"mesh demo: work dir {work} (seed {seed})")
    helper = NodeProcess(["helper", "--helper-id", "demo-helper", "--data-dir",
                          str(work / "helper"), "--discovery", discovery, *insecure],
                         env=env, log_path=work / "helper.log", name="helper")
    nodes = [NodeProcess(["ai", "--app", "nodes.sample_app:app", "--node-id", f"ai-{i + 1}",
                          "--discovery", discovery, *insecure],
                         env=env, log_path=work / f"ai-{i + 1}.log", name=f"ai-{i + 1}")
             for i in range(args.nodes)]
    try:
        helper.start()
        for node in nodes:
            node.start()
        print(f"started Helper (pid {helper.pid}) and {len(nodes)} AI nodes "
              f"(pids {', '.join(str(n.pid) for n in nodes)}); they found each other through "
              f"the embedded registry")
        # The operator key: the demo reads the Helper's stats (an operator may also submit).
        async with Client(helper.ready["intake"], trust=trust, role=Role.OPERATOR) as client:
            deadline = time.monotonic() + 20
            while (await client.stats())["nodes"] < len(nodes):
                if time.monotonic() > deadline:
                    raise TimeoutError("the Helper did not see every AI node within 20 s")
                await asyncio.sleep(0.05)
            report = await _drive(client, nodes, args, rng)
            stats = await client.stats()
        return _print_report(report, stats, effects, args)
    finally:
        stop_all([helper, *nodes])
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


async def _drive(client: Client, nodes: list[NodeProcess], args: argparse.Namespace,
                 rng: random.Random) -> dict:
    from mesh.task import make_task
    total = args.tasks
    kill_after = int(total * args.kill_at)
    accept_s: list[float] = []
    submitted_ns: dict[str, int] = {}
    ids: list[str] = []
    counter = iter(range(total))
    victim = rng.choice(nodes)
    killed = {}

    async def submitter() -> None:
        for i in counter:
            task = make_task("simulate", b"")
            t0 = time.perf_counter()
            task_id = (await client.submit_many([task]))[0]
            accept_s.append(time.perf_counter() - t0)
            submitted_ns[task_id] = task.submitted_ns
            ids.append(task_id)
            if i == kill_after and not killed:
                os.kill(victim.pid, signal.SIGKILL)
                killed.update(node=victim.name, at=i, t=time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(submitter() for _ in range(args.submitters)))
    submit_done = time.monotonic()
    print(f"submitted {len(ids)} tasks in {submit_done - started:.2f}s "
          f"({len(ids) / (submit_done - started):,.0f}/s, {args.submitters} submitters, "
          f"one task per request); SIGKILLed {killed.get('node')} after task {killed.get('at')}")
    statuses = []
    chunk = 2000
    for i in range(0, len(ids), chunk):
        statuses += await asyncio.gather(
            *(client.wait(t, timeout=120) for t in ids[i:i + chunk]), return_exceptions=True)
    finished = time.monotonic()
    victim.kill()
    e2e_s = []
    succeeded = 0
    lost = []
    for task_id, status in zip(ids, statuses, strict=True):
        if isinstance(status, BaseException) or status.state != wire.SUCCEEDED:
            lost.append((task_id, status))
            continue
        succeeded += 1
        started_ns = msgspec.json.decode(status.result)["started_ns"]
        e2e_s.append((started_ns - submitted_ns[task_id]) / 1e9)
    return {"ids": ids, "accept_s": accept_s, "e2e_s": e2e_s, "succeeded": succeeded,
            "lost": lost, "elapsed_s": finished - started, "killed": killed}


def _count_lines(paths) -> collections.Counter:  # noqa: ANN001
    counts: collections.Counter = collections.Counter()
    for path in paths:
        counts.update(line for line in path.read_text().splitlines() if line)
    return counts


def _print_report(report: dict, stats: dict, effects: Path, args: argparse.Namespace) -> int:
    from nodes.sample_app import applied_effects
    effects_applied = applied_effects(str(effects))
    run_twice = sum(1 for count in effects_applied.values() if count > 1)
    absorbed = _count_lines(effects.glob("*.absorbed"))
    accept, e2e = report["accept_s"], report["e2e_s"]
    lost = report["lost"]
    print()
    print("what happened")
    print(f"  submitted            {len(report['ids'])}")
    print(f"  succeeded            {report['succeeded']}")
    print(f"  lost                 {len(lost)}")
    print(f"  run twice            {run_twice}  (side effects applied twice)")
    print(f"  node killed          {report['killed'].get('node')} (SIGKILL, mid-run)")
    print(f"  re-executions        {sum(absorbed.values())}  (finished on the killed node, ack lost "
          f"with it, run again elsewhere; absorbed by the idempotency key)")
    print(f"  duplicate results    {int(stats.get('duplicate_done', 0))} ignored by the Helper "
          f"(first DONE wins)")
    print(f"  wall time            {report['elapsed_s']:.2f}s "
          f"({len(report['ids']) / report['elapsed_s']:,.0f} tasks/s end to end)")
    print("latency (ms)              p50      p99")
    print(f"  accept (durable)    {percentile(accept, 50) * 1e3:8.3f} "
          f"{percentile(accept, 99) * 1e3:8.3f}")
    print(f"  submit -> handler   {percentile(e2e, 50) * 1e3:8.3f} "
          f"{percentile(e2e, 99) * 1e3:8.3f}")
    for task_id, status in lost[:5]:
        print(f"  NOT SUCCEEDED: {task_id}: {status}")
    missing = sum(1 for t in report["ids"] if effects_applied[t] == 0)
    if missing:
        print(f"  side effect missing  {missing}")
    ok = not lost and run_twice == 0 and not missing and report["succeeded"] == args.tasks
    print("\nresult: " + ("OK - every accepted task succeeded exactly once" if ok
                          else "FAILED - see above"))
    return 0 if ok else 1
