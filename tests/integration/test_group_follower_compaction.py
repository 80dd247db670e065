"""A follower's journal (issue 15, decision 009): compacted by the leader's rules while it
follows, so its data dir stays bounded over a long run of completed tasks, as the leader's
does, and still replays to the leader's table; and never acked past a batch it failed to
write. In-process: group members (embedded lock) and one AI node on loopback."""

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
    """Bytes of the files under `path` now. Compaction deletes segments while this walks the
    directory: a file gone between the listing and its stat counts nothing."""
    total = 0
    for p in path.rglob("*") if path.exists() else ():
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


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


def test_a_follower_whose_journal_refuses_a_batch_acks_nothing_past_it_and_resyncs(
        tmp_path, monkeypatch) -> None:  # noqa: ANN001
    # The follower's append fails once, part-way through a stream of submits. It must not ack
    # what its log does not hold: when it leads afterwards, it knows every accepted task.
    from mesh.errors import JournalError
    from mesh.group_log import FollowerLog

    app = App("resync")

    @app.task("noop")
    async def noop(payload: bytes) -> bytes:
        return b"ok"

    trust = Trust.local(tmp_path / "keys")
    calls = {"n": 0}
    real_append_now = FollowerLog.append_now

    def failing_append_now(self, entries, *args):  # noqa: ANN001, ANN002, ANN202
        calls["n"] += 1
        if calls["n"] == 30:
            raise JournalError("injected: the follower's journal refused the batch")
        return real_append_now(self, entries, *args)

    monkeypatch.setattr(FollowerLog, "append_now", failing_append_now)

    def member(name: str) -> GroupMember:
        hs = HelperSettings(helper_id=name, data_dir=str(tmp_path / name))
        gs = GroupSettings(group="g", member_id=name, data_dir=hs.data_dir, group_size=2)
        return GroupMember(gs, FileLock(tmp_path / "groups", "g"), trust=trust,
                           make_helper=lambda hooks: Helper(hs, trust=trust, group=hooks))

    async def scenario() -> None:
        leader, follower = member("m1"), member("m2")
        runs = [asyncio.create_task(leader.run())]
        accepted: list[str] = []
        try:
            await async_wait_until(_now(lambda: leader.role == "leader" and leader.helper is not None),
                                   20, what="m1 leads")
            runs.append(asyncio.create_task(follower.run()))
            for n in range(60):
                task = make_task("noop", b"x", task_id=f"t-{n}")
                deadline = time.monotonic() + 20
                while True:
                    try:
                        await leader.helper.submit_many([task])
                        accepted.append(task.task_id)
                        break
                    except Exception:  # noqa: BLE001 - refused while the follower resyncs
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)
            assert calls["n"] > 30, "the failure was not injected"
            await leader.stop()
            await runs.pop(0)
            await async_wait_until(_now(lambda: follower.role == "leader" and follower.helper is not None),
                                   20, what="m2 leads")
            known = set(follower.helper.dispatcher.tasks)
            assert set(accepted) <= known, f"accepted but not in m2's log: {sorted(set(accepted) - known)}"
        finally:
            for m in (follower, leader):
                await m.stop()
            await asyncio.gather(*runs, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        trust.close()
