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
