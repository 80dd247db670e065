"""A Client given no endpoint (issue 12): it finds the Helpers through discovery (here the
test's embedded registry, through $MESH_DISCOVERY), spreads submits over them, fails over with
the same task ids when one is SIGKILLed, and says Unavailable within its 3 s timeout when
every Helper is down."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh import Client, SyncClient, TaskState, Unavailable, make_task
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)


def test_client_with_no_endpoint_finds_a_helper_through_discovery(discovered) -> None:  # noqa: ANN001
    discovered.start_helper()
    discovered.start_ai()

    async def run() -> None:
        async with Client() as client:
            assert client.timeout_s == 3.0
            task_id = await client.submit("echo", b"found")
            assert await client.result(task_id, timeout=30) == b"found"
            status = await client.status(task_id)
            assert status.state is TaskState.SUCCEEDED and status.value == b"found"
    asyncio.run(run())

    with SyncClient() as client:
        task_id = client.submit("echo", b"sync")
        assert client.wait(task_id, timeout=30).result == b"sync"


def test_submits_fail_over_with_the_same_ids_when_one_of_two_helpers_is_killed(
        discovered) -> None:  # noqa: ANN001
    first = discovered.start_helper(helper_id="helper-a")
    discovered.start_helper(helper_id="helper-b")
    discovered.start_ai()

    async def run() -> None:
        async with Client() as client:
            async def both_listed() -> bool:
                return len((await client._helpers()).endpoints) == 2
            await async_wait_until(both_listed, 20, 0.1, "both Helpers in discovery")
            first.kill()  # SIGKILL; its registry entry may still be listed
            tasks = [make_task("echo", f"t{i}".encode(), task_id=f"failover-{i}")
                     for i in range(8)]
            ids = []
            for task in tasks:  # one by one: each starts on the next Helper in turn
                ids += await client.submit_many([task])
            assert ids == [t.task_id for t in tasks], "the same ids, whichever Helper took them"
            for task in tasks:
                assert await client.result(task.task_id, timeout=30) == task.payload
    asyncio.run(run())


def test_every_helper_down_is_a_clear_unavailable_error_within_the_timeout(discovered) -> None:  # noqa: ANN001
    helper = discovered.start_helper()

    async def run() -> None:
        async with Client() as client:
            await client.submit("echo", b"up")  # found and answering
            helper.kill()
            started = time.monotonic()
            with pytest.raises(Unavailable) as unavailable:
                await client.submit("echo", b"down")
            elapsed = time.monotonic() - started
        # the bound is the Client's 3 s timeout; the margin is for a loaded test machine
        assert elapsed < 3.0 + 2.0, f"took {elapsed:.1f}s"
        assert "no Helper answered" in str(unavailable.value)
    asyncio.run(run())
