"""Long tasks spread over every AI node by free slots (issue 13, "uneven dispatch").

24 tasks of 500 ms on two nodes of concurrency 4: before, the first node took 20 (its 4 slots
plus 16 prefetched) and the other 4, and the run took five waves instead of three. Each task's
result names its node and when it started, so the split and each node's concurrency are read
from the results; the wall time is measured by bench/fair_dispatch.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from mesh import Client, make_task
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)

TASKS = 24
TASK_MS = 500
CONCURRENCY = 4


def run_long_tasks(cluster) -> list[dict]:  # noqa: ANN001
    async def scenario() -> list[dict]:
        async with Client(cluster.intake) as client:
            async def both_nodes() -> bool:
                return (await client.stats())["nodes"] >= 2
            await async_wait_until(both_nodes, 30, what="both AI nodes seen by the Helper")
            payload = json.dumps({"ms": TASK_MS}).encode()
            ids = await client.submit_many([make_task("simulate", payload)
                                            for _ in range(TASKS)])
            results = await asyncio.gather(*(client.result(t, timeout=60) for t in ids))
            return [json.loads(r) for r in results]
    return asyncio.run(scenario())


def max_overlap(starts_ns: list[int], length_ns: int) -> int:
    """Most runs of `length_ns` that were under way at one instant."""
    events = sorted([(s, 1) for s in starts_ns] + [(s + length_ns, -1) for s in starts_ns])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def check_split(results: list[dict]) -> None:
    per_node = Counter(r["node"] for r in results)
    assert len(results) == TASKS
    assert sorted(per_node) == ["ai-1", "ai-2"], per_node
    assert abs(per_node["ai-1"] - per_node["ai-2"]) <= 2, f"uneven split: {dict(per_node)}"
    for node in per_node:
        starts = [r["started_ns"] for r in results if r["node"] == node]
        # a run lasts at least TASK_MS: counting it as exactly that can only under-count
        assert max_overlap(starts, TASK_MS * 1_000_000 - 1) <= CONCURRENCY


def test_long_tasks_split_evenly_between_two_nodes_with_default_prefetch(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    for _ in range(2):
        cluster.start_ai("--concurrency", str(CONCURRENCY))
    check_split(run_long_tasks(cluster))


def test_long_tasks_split_evenly_even_with_a_large_prefetch(cluster) -> None:  # noqa: ANN001
    """Dispatch by free slots alone: with 16 prefetched per node (40 credit for 24 tasks) the
    queue is shared out by free credit relative to concurrency, not given to the first node."""
    cluster.start_helper()
    for _ in range(2):
        cluster.start_ai("--concurrency", str(CONCURRENCY), "--prefetch", "16")
    check_split(run_long_tasks(cluster))
