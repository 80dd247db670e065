"""The Helper's journal stays small while 100,000+ tasks flow through it (compaction works
on the real record mix: submits, results, forgets)."""

from __future__ import annotations

import asyncio

import pytest

from mesh import App, AINodeSettings, HelperSettings, make_task
from mesh.ai_node import AINode
from mesh.helper import Helper

pytestmark = pytest.mark.timeout(240)


def test_journal_size_stays_bounded_while_100k_tasks_flow_through(tmp_path) -> None:  # noqa: ANN001
    app = App("bounded")

    @app.task("noop")
    async def noop(payload: bytes) -> bytes:
        return b"ok"

    async def scenario() -> None:
        settings = HelperSettings(helper_id="bounded", data_dir=str(tmp_path / "helper"),
                                  journal_segment_bytes=1 * 2**20, max_retained_results=2000)
        async with Helper(settings) as helper:
            node = AINode(AINodeSettings(node_id="ai", concurrency=64, prefetch=64), app,
                          helpers=[helper.ack_endpoint])
            await node.start()
            try:
                total, batch = 100_000, 500
                sizes = []
                for start in range(0, total, batch):
                    await helper.submit_many([make_task("noop", b"x" * 200)
                                              for _ in range(batch)])
                    # steady state, not a backlog: at most 4 batches not yet finished
                    while start + batch - helper.dispatcher.stats["succeeded"] > 4 * batch:
                        await asyncio.sleep(0.002)
                    sizes.append(helper.journal.size_bytes)
                while helper.dispatcher.stats["succeeded"] < total:
                    await asyncio.sleep(0.05)
                for _ in range(40):  # let compaction catch up (it runs every second)
                    await asyncio.sleep(0.1)
                    sizes.append(helper.journal.size_bytes)
            finally:
                await node.stop()
            # 100,000 tasks of ~250 B would be >50 MB of records without compaction.
            assert max(sizes) < 12 * 2**20, f"journal grew to {max(sizes)} bytes"
            assert sizes[-1] < 8 * 2**20
            assert helper.dispatcher.stats["succeeded"] == total

    asyncio.run(scenario())
