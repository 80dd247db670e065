"""A follower that fell behind catches up after a failover from the new leader's log (the
records it lacks), not from a snapshot (issue 15, decision 009). Real processes, embedded mode.
Which path was taken is read from the new leader's log lines (also counted as
mesh_group_catchups{path})."""

from __future__ import annotations

import asyncio

import pytest

from mesh import make_task
from tests.integration.test_helper_group import Group, _clients, _submit_until_accepted, _wait_done
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


def _log(cluster, member: str) -> str:  # noqa: ANN001
    path = cluster.workdir / f"{member}.log"
    return path.read_text() if path.exists() else ""


def test_a_follower_behind_catches_up_from_the_new_leaders_log_after_a_failover(cluster):  # noqa: ANN001
    group = Group(cluster, 3)
    group.start("h1")
    wait_until(lambda: (group.leader() or ("",))[0] == "h1", 20, what="h1 leads")
    group.start("h2")
    group.start("h3")
    cluster.start_ai()

    async def scenario() -> None:
        clients = await _clients(group)
        try:
            ids = []

            async def submit(n: int) -> None:
                task = make_task("echo", f"{n}".encode(), task_id=f"t-{n}", idempotency_key=f"k-{n}")
                ids.append(task.task_id)
                await _submit_until_accepted(group, clients, task, 30)

            for n in range(20):
                await submit(n)
            group.procs["h3"].stop()  # h3 falls behind: the next records reach h2 only
            for n in range(20, 80):
                await submit(n)
            group.procs["h1"].kill()  # h2 leads next; it needs one more member's log end
            group.start("h3")
            wait_until(lambda: (group.leader() or ("",))[0] == "h2", 30, what="h2 leads")
            wait_until(lambda: "h3 catches up from the log" in _log(cluster, "h2"), 30,
                       what="h3 caught up from h2's log")
            for n in range(80, 100):
                await submit(n)
            await _wait_done(group, clients, ids, 60)
        finally:
            for client in clients.values():
                await client.close()
        h2 = _log(cluster, "h2")
        assert "sent to h3" not in h2, "h3 was sent a snapshot although h2's log had its records"
        effects = cluster.applied_effects()
        assert set(ids) <= set(effects), "an accepted task was lost"

    asyncio.run(scenario())


def _now(predicate):  # noqa: ANN001, ANN202 - a plain predicate, for async_wait_until
    async def check() -> object:
        return predicate()
    return check


@pytest.mark.parametrize("missed, path", [(40, "log"), (6000, "snapshot")])
def test_after_a_failover_a_follower_gets_a_snapshot_only_when_the_leaders_log_no_longer_reaches_it(
        tmp_path, missed: int, path: str) -> None:  # noqa: ANN001
    # In-process group of 3 (min-replicas 1) with small segments and retention, so that a
    # follower's compaction (which its log becomes when it leads) drops old records.
    import time

    from mesh import App, AINodeSettings, HelperSettings
    from mesh.ai_node import AINode
    from mesh.group import GroupMember, GroupSettings
    from mesh.helper import Helper
    from mesh.leadership import FileLock
    from mesh.trust import Trust
    from tests.support.waiting import async_wait_until

    app = App("catchup")

    @app.task("noop")
    async def noop(payload: bytes) -> bytes:
        return b"ok"

    trust = Trust.local(tmp_path / "keys")

    def member(name: str) -> GroupMember:
        hs = HelperSettings(helper_id=name, data_dir=str(tmp_path / name),
                            journal_segment_bytes=128 * 2**10, max_retained_results=200)
        gs = GroupSettings(group="g", member_id=name, data_dir=hs.data_dir, group_size=3,
                           segment_size_bytes=hs.journal_segment_bytes, max_retained_results=200,
                           compact_interval_s=0.2)
        return GroupMember(gs, FileLock(tmp_path / "groups", "g"), trust=trust,
                           make_helper=lambda hooks: Helper(hs, trust=trust, group=hooks))

    async def run_tasks(helper: Helper, count: int) -> None:  # noqa: ANN001
        done = helper.dispatcher.stats["succeeded"] + count
        for start in range(0, count, 200):
            await helper.submit_many([make_task("noop", b"x" * 200)
                                      for _ in range(min(200, count - start))])
        await async_wait_until(_now(lambda: helper.dispatcher.stats["succeeded"] >= done), 60,
                               what="the tasks succeeded")

    async def scenario() -> None:
        members = {name: member(name) for name in ("m1", "m2", "m3")}
        runs = {name: asyncio.create_task(m.run()) for name, m in members.items()}
        nodes = []
        try:
            def leading() -> str | None:
                return next((n for n, m in members.items()
                             if m.role == "leader" and m.helper is not None), None)

            first = await async_wait_until(_now(leading), 30, what="a leader")
            lead = members[first]
            behind, heir = sorted(set(members) - {first})
            await async_wait_until(_now(lambda: len(lead.state.alive_followers(time.monotonic())) == 2),
                                   20, what="both followers in sync")

            async def node_for(helper: Helper) -> None:
                node = AINode(AINodeSettings(node_id=f"ai-{len(nodes)}", concurrency=64), app,
                              helpers=[helper.ack_endpoint], trust=trust)
                await node.start()
                nodes.append(node)

            await node_for(lead.helper)
            await run_tasks(lead.helper, 20)
            await members[behind].stop()  # it falls behind
            await runs.pop(behind)
            await run_tasks(lead.helper, missed)
            await asyncio.sleep(1.0)  # the heir compacts (every 0.2 s) what the results let go
            await lead.stop()  # the heir leads next; it waits to hear one more member's log end
            await runs.pop(first)
            members[behind] = member(behind)
            runs[behind] = asyncio.create_task(members[behind].run())
            new = members[heir]
            await async_wait_until(_now(lambda: new.role == "leader" and new.helper is not None
                                        and new.catchups), 30, what="the heir leads and catches up")
            assert new.catchups == {path: 1}
            await node_for(new.helper)
            await run_tasks(new.helper, 20)  # in sync again: min-replicas 1 is met by it
        finally:
            for node in nodes:
                await node.stop()
            for m in members.values():
                await m.stop()
            await asyncio.gather(*runs.values(), return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        trust.close()
