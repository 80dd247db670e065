"""Wall time of long tasks on several AI nodes: how close dispatch comes to the ideal.

    python bench/fair_dispatch.py [--nodes 2] [--concurrency 4] [--tasks 24] [--ms 500]
                                  [--prefetch N] [--runs 3]

Starts a Helper and N AI nodes (the sample app's `simulate` handler, which waits `--ms`) as
separate processes, waits until the Helper sees every node, submits all tasks at once and
waits for every result. Prints per run the wall time (submit to last result), the ideal
(tasks * ms / (nodes * concurrency), rounded up to whole waves) and the split between nodes.
The case of issue 13: 24 tasks of 500 ms on 2 nodes of concurrency 4, ideal 1.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh import Client, make_task  # noqa: E402
from nodes.launch import NodeProcess  # noqa: E402


async def one_run(intake: str, nodes: int, tasks: int, ms: int) -> tuple[float, Counter]:
    async with Client(intake) as client:
        deadline = time.monotonic() + 30
        while (await client.stats())["nodes"] < nodes:
            if time.monotonic() > deadline:
                raise SystemExit("the Helper did not see every AI node within 30 s")
            await asyncio.sleep(0.05)
        payload = json.dumps({"ms": ms}).encode()
        t0 = time.perf_counter()
        ids = await client.submit_many([make_task("simulate", payload) for _ in range(tasks)])
        results = await asyncio.gather(*(client.result(t, timeout=120) for t in ids))
        wall = time.perf_counter() - t0
    return wall, Counter(json.loads(r)["node"] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--ms", type=int, default=500)
    parser.add_argument("--prefetch", type=int, default=None, help="default: the node's default")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mesh-fair-"))
    disc = f"embedded://{work / 'registry'}"
    extra = [] if args.prefetch is None else ["--prefetch", str(args.prefetch)]
    helper = NodeProcess(["helper", "--data-dir", str(work / "helper"), "--discovery", disc],
                         log_path=work / "helper.log", name="helper")
    nodes = [NodeProcess(["ai", "--node-id", f"ai-{i}", "--discovery", disc,
                          "--concurrency", str(args.concurrency), *extra],
                         log_path=work / f"ai-{i}.log", name=f"ai-{i}")
             for i in range(1, args.nodes + 1)]
    slots = args.nodes * args.concurrency
    ideal = math.ceil(args.tasks / slots) * args.ms / 1000
    try:
        helper.start()
        for node in nodes:
            node.start()
        print(f"{args.tasks} tasks of {args.ms} ms on {args.nodes} nodes x concurrency "
              f"{args.concurrency}, prefetch {args.prefetch if extra else 'default'}: "
              f"ideal {ideal:.2f} s")
        for i in range(args.runs):
            wall, split = asyncio.run(one_run(helper.ready["intake"], args.nodes, args.tasks,
                                              args.ms))
            print(f"run {i + 1}: wall {wall:.3f} s ({wall / ideal:.2f}x ideal), split "
                  f"{dict(sorted(split.items()))}")
    finally:
        for node in nodes:
            node.stop()
        helper.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
