"""The mesh publishes its own fault alerts, and a Notifier discovers the Helper's publisher."""

from __future__ import annotations

import asyncio

import pytest

from mesh import Client, TaskFailed
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(120)


def test_node_down_node_up_and_task_dead_reach_the_notifier(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    notifier = cluster._start(["notifier", "--discovery", cluster.discovery], "notifier")
    ai = cluster.start_ai()

    def notified(text: str) -> bool:
        return text in notifier.log_path.read_text()

    wait_until(lambda: notified("mesh.node.up"), 20, what="node up alert")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            async def one_node() -> bool:
                return (await client.stats())["nodes"] >= 1
            await async_wait_until(one_node, 20, what="the node seen")
            fatal = await client.submit("simulate", b'{"fatal": true}')
            with pytest.raises(TaskFailed):
                await client.result(fatal, timeout=30)

    asyncio.run(scenario())
    wait_until(lambda: notified("mesh.task.dead"), 20, what="task dead alert")
    ai.kill()
    wait_until(lambda: notified("mesh.node.down"), 20, what="node down alert")
    log = notifier.log_path.read_text()
    assert "publisher=helper-1-alerts" in log
