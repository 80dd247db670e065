"""Retained results live on disk (mesh/retained.py) and in the journal as one record each, with
no live key: they answer status, result and duplicate queries, survive restarts and journal
compaction, and the oldest past `max_retained_results` are forgotten, before and after a
restart alike."""

from __future__ import annotations

import asyncio

import pytest

from mesh import App, AINodeSettings, HelperSettings, NotFound, make_task, wire
from mesh.ai_node import AINode
from mesh.helper import Helper
from mesh.trust import Trust

pytestmark = pytest.mark.timeout(240)

RETAINED = 500
TOTAL = 6000


def test_retained_results_survive_compaction_and_restart_and_the_oldest_are_forgotten(
        tmp_path) -> None:  # noqa: ANN001
    app = App("retained")

    @app.task("echo")
    async def echo(payload: bytes) -> bytes:
        return b"result:" + payload

    settings = HelperSettings(helper_id="retained", data_dir=str(tmp_path / "helper"),
                              journal_segment_bytes=256 * 2**10,
                              max_retained_results=RETAINED)

    async def check(helper: Helper, ids: list[str]) -> None:
        for task_id in ids[-RETAINED:]:
            status = helper.status(task_id)
            assert status.state == wire.SUCCEEDED
            assert status.result == b"result:" + task_id.encode()
            assert status.kind == "echo"
        for task_id in ids[:-RETAINED][-50:]:
            with pytest.raises(NotFound):
                helper.status(task_id)
        again = await helper._submit([make_task("echo", b"", task_id=ids[-1])], 0.0)
        assert again[0].duplicate and again[0].code == wire.OK
        assert len(helper.dispatcher.retained) == RETAINED
        assert not helper.dispatcher.tasks

    async def scenario() -> None:
        ids: list[str] = []
        async with Helper(settings, trust=Trust.plain()) as helper:
            node = AINode(AINodeSettings(node_id="ai", concurrency=64), app,
                          helpers=[helper.ack_endpoint], trust=Trust.plain())
            await node.start()
            try:
                for start in range(0, TOTAL, 200):
                    batch = [make_task("echo", b"") for _ in range(200)]
                    for task in batch:
                        task.payload = task.task_id.encode()
                    ids += await helper.submit_many(batch)
                    while len(ids) - helper.dispatcher.stats["succeeded"] > 800:
                        await asyncio.sleep(0.005)
                while helper.dispatcher.stats["succeeded"] < TOTAL:
                    await asyncio.sleep(0.02)
            finally:
                await node.stop()
            for _ in range(30):  # compaction runs every second
                await asyncio.sleep(0.1)
            # every task's records would be ~2 MB; the floor keeps those of the retained ones
            assert helper.journal.size_bytes < 1.5 * 2**20, helper.journal.size_bytes
            assert helper.journal.live_keys == 0  # no key per retained result
            await check(helper, ids)
        async with Helper(settings, trust=Trust.plain()) as helper:
            assert helper.recovered["succeeded"] == RETAINED
            await check(helper, ids)
        async with Helper(settings, trust=Trust.plain()) as helper:  # and once more
            await check(helper, ids)

    asyncio.run(scenario())
