"""Cancel (issue 12): `Client.cancel` against real Helper and AI node processes. A queued task
becomes CANCELLED at once; a running one too, and its node stops the run (an async handler sees
CancelledError, a sync one its context's `cancelled` flag); a cancelled task is never retried; a
finished one answers ALREADY_FINISHED; a cancel survives a Helper restart (SIGKILL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mesh import AlreadyFinished, Client, NotFound, TaskState
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _settle(client: Client) -> None:
    """A task submitted after the others and run to its end: whatever the node was sent
    before it has been dispatched by then (the queue is FIFO within a kind's priority)."""
    task_id = await client.submit("echo", b"after")
    assert await client.result(task_id, timeout=30) == b"after"


def test_a_queued_task_becomes_cancelled_and_never_runs(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()

    async def run() -> None:
        async with Client(cluster.intake) as client:
            task_id = await client.submit("wait", b"0.01")
            outcome = await client.cancel(task_id)
            assert outcome.state is TaskState.CANCELLED and not outcome.was_running
            status = await client.status(task_id)
            assert status.state is TaskState.CANCELLED and status.terminal
            assert status.json()["state"] == "CANCELLED"
            cluster.start_ai()
            await _settle(client)
            assert (await client.status(task_id)).state is TaskState.CANCELLED
        assert not any(task_id in line for line in _lines(cluster.effects / "started"))
    asyncio.run(run())


@pytest.mark.parametrize("kind, seen", [("wait", "CancelledError"), ("wait_sync", "flag")])
def test_a_running_task_is_stopped_on_its_node_and_ends_cancelled_without_retry(
        cluster, kind: str, seen: str) -> None:  # noqa: ANN001
    cluster.start_helper()
    cluster.start_ai()

    async def run() -> None:
        async with Client(cluster.intake) as client:
            task_id = await client.submit(kind, b"60")

            async def started() -> bool:
                return any(task_id in line for line in _lines(cluster.effects / "started"))
            await async_wait_until(started, 30, 0.05, f"the {kind} handler starting")
            outcome = await client.cancel(task_id)
            assert outcome.state is TaskState.CANCELLED and outcome.was_running

            async def stopped() -> bool:
                return f"{task_id} {seen}" in _lines(cluster.effects / "cancelled")
            await async_wait_until(stopped, 15, 0.05, f"the handler seeing the cancel ({seen})")
            await _settle(client)
            status = await client.status(task_id)
            assert status.state is TaskState.CANCELLED and status.attempts == 1
            with pytest.raises(AlreadyFinished):
                await client.cancel(task_id)
        starts = [line for line in _lines(cluster.effects / "started") if task_id in line]
        assert starts == [f"{task_id} 1"], "a cancelled task is never run again"
    asyncio.run(run())


def test_a_finished_task_answers_already_finished_and_an_unknown_one_not_found(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    cluster.start_ai()

    async def run() -> None:
        async with Client(cluster.intake) as client:
            task_id = await client.submit("echo", b"done")
            assert await client.result(task_id, timeout=30) == b"done"
            with pytest.raises(AlreadyFinished) as finished:
                await client.cancel(task_id)
            assert finished.value.state is TaskState.SUCCEEDED
            assert (await client.status(task_id)).state is TaskState.SUCCEEDED
            with pytest.raises(NotFound):
                await client.cancel("no-such-task")
    asyncio.run(run())


def test_a_cancel_survives_a_helper_restart(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()

    async def cancel() -> str:
        async with Client(cluster.intake) as client:
            task_id = await client.submit("wait", b"0.01")
            await client.cancel(task_id)
            return task_id
    task_id = asyncio.run(cancel())
    cluster.restart_helper()  # SIGKILL: only what was durable is there
    cluster.start_ai()

    async def check() -> None:
        async with Client(cluster.intake) as client:
            status = await client.status(task_id)
            assert status.state is TaskState.CANCELLED and status.finished_ns
            await _settle(client)
            assert (await client.status(task_id)).state is TaskState.CANCELLED
        assert not any(task_id in line for line in _lines(cluster.effects / "started"))
    asyncio.run(check())
