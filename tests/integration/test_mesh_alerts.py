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


def test_alert_lane_counters_are_served_as_prometheus_metrics(cluster) -> None:  # noqa: ANN001
    import urllib.request

    cluster.start_helper()
    notifier = cluster._start(["notifier", "--discovery", cluster.discovery,
                               "--metrics-port", "0"], "notifier")
    cluster.start_ai()

    def scrape(port: int) -> bytes:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()

    wait_until(lambda: b"mesh_alert_subscriber_delivered_total 1.0" in
               scrape(notifier.ready["metrics_port"]), 20, what="the node-up alert delivered")
    assert b"mesh_alert_publisher_published_total 1.0" in scrape(
        cluster.helper.ready["metrics_port"])
