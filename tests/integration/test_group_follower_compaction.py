"""A follower's journal is compacted by the leader's rules while it follows (issue 15,
decision 009): its data dir stays bounded over a long run of completed tasks, as the leader's
does, and it still replays to the leader's table. In-process: two group members (embedded
lock) and one AI node on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh import App, AINodeSettings, HelperSettings, make_task
from mesh.ai_node import AINode
from mesh.group import GroupMember, GroupSettings
from mesh.helper import Helper
from mesh.leadership import FileLock
from mesh.trust import Trust
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(240)

SEGMENT_BYTES = 256 * 2**10
RETAINED = 500


def _now(predicate):  # noqa: ANN001, ANN202 - a plain predicate, for async_wait_until
    async def check() -> object:
        return predicate()
    return check


def _dir_bytes(path) -> int:  # noqa: ANN001
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def test_a_followers_data_dir_stays_bounded_over_a_long_run_of_completed_tasks(tmp_path) -> None:  # noqa: ANN001
    app = App("bounded")

    @app.task("noop")
    async def noop(payload: bytes) -> bytes:
        return b"ok"

    trust = Trust.local(tmp_path / "keys")

    def member(name: str) -> GroupMember:
        helper_settings = HelperSettings(helper_id=name, data_dir=str(tmp_path / name),
                                         journal_segment_bytes=SEGMENT_BYTES,
                                         max_retained_results=RETAINED)
        settings = GroupSettings(group="g", member_id=name, data_dir=helper_settings.data_dir,
                                 group_size=2, segment_size_bytes=SEGMENT_BYTES,
                                 max_retained_results=RETAINED, compact_interval_s=0.2)
        return GroupMember(settings, FileLock(tmp_path / "groups", "g"), trust=trust,
                           make_helper=lambda hooks: Helper(helper_settings, trust=trust, group=hooks))

    async def scenario() -> None:
        leader, follower = member("m1"), member("m2")
        runs = [asyncio.create_task(leader.run())]
        node = None
        try:
            await async_wait_until(_now(lambda: leader.role == "leader" and leader.helper is not None),
                                   20, what="m1 leads")
            runs.append(asyncio.create_task(follower.run()))
            await async_wait_until(_now(
                lambda: leader.state is not None and leader.state.alive_followers(time.monotonic())),
                20, what="m2 follows in sync")
            helper = leader.helper
            node = AINode(AINodeSettings(node_id="ai", concurrency=64, prefetch=64), app,
                          helpers=[helper.ack_endpoint], trust=trust)
            await node.start()
            total, batch = 20_000, 250
            sizes = []
            for start in range(0, total, batch):
                await helper.submit_many([make_task("noop", b"x" * 200) for _ in range(batch)])
                while start + batch - helper.dispatcher.stats["succeeded"] > 4 * batch:
                    await asyncio.sleep(0.002)
                sizes.append(_dir_bytes(tmp_path / "m2" / "journal"))
            await async_wait_until(_now(lambda: helper.dispatcher.stats["succeeded"] == total), 60,
                                   what="every task succeeded")
            for _ in range(20):  # compaction runs every 0.2 s
                await asyncio.sleep(0.1)
                sizes.append(_dir_bytes(tmp_path / "m2" / "journal"))
            leader_bytes = _dir_bytes(tmp_path / "m1" / "journal")
        finally:
            if node is not None:
                await node.stop()
            for m in (follower, leader):
                await m.stop()
            await asyncio.gather(*runs, return_exceptions=True)
        # 20,000 tasks are ~12 MB of records (submit + result) without compaction.
        print(f"follower journal: max {max(sizes)} B, last {sizes[-1]} B; leader's {leader_bytes} B")
        assert max(sizes) < 5 * 2**20, f"the follower's journal grew to {max(sizes)} bytes"
        assert sizes[-1] < 3 * 2**20, f"the follower's journal is {sizes[-1]} bytes at the end"

        # the compacted follower log replays to the leader's table: it leads, and knows the
        # retained results and nothing else
        again = member("m2")
        run = asyncio.create_task(again.run())
        try:
            await async_wait_until(_now(lambda: again.role == "leader" and again.helper is not None),
                                   20, what="m2 leads alone")
            d = again.helper.dispatcher
            assert len(d.retained) == RETAINED and not d.tasks
        finally:
            await again.stop()
            await asyncio.gather(run, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        trust.close()
