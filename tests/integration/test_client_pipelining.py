"""The pipelining client (Client.submit_nowait / submit_async / flush) against a real Helper.

Every future resolves (the task id, or the error of that task alone); the pending window is
a hard bound; tasks of one loop turn share a request; a Helper killed and restarted under a
stream of submits leaves no future unresolved and loses no task it accepted. No AI node runs:
accepted tasks stay queued, which is what the checks read.
"""

from __future__ import annotations

import asyncio
import functools
import socket

import pytest

from mesh import Client, InvalidTask, MeshError, SyncClient, TooManyPending, make_task, wire
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)


def _in_loop(scenario):  # noqa: ANN001, ANN202
    """Run an async test body with asyncio.run (the suite has no asyncio plugin)."""
    @functools.wraps(scenario)
    def test(cluster) -> None:  # noqa: ANN001
        asyncio.run(scenario(cluster))
    return test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count_requests(client: Client) -> list[int]:
    """Wraps the client's send to count submit requests and the tasks in each."""
    sizes: list[int] = []
    send = client._send

    def counting(request):  # noqa: ANN001, ANN202
        if request.WhichOneof("body") == "submit":
            sizes.append(len(request.submit.tasks))
        return send(request)

    client._send = counting
    return sizes


@_in_loop
async def test_thousands_of_submit_nowait_futures_all_resolve_in_few_requests(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    n = 5000
    async with Client(cluster.intake) as client:
        sizes = _count_requests(client)
        futures = [await client.submit_async("noop", b"p%d" % i) for i in range(n)]
        await client.flush()
        assert all(f.done() for f in futures)
        ids = [f.result() for f in futures]
        assert len(set(ids)) == n
        assert client.pending == 0
        assert sum(sizes) == n
        assert len(sizes) <= n // 100, f"{len(sizes)} requests for {n} tasks: not coalesced"
        statuses = await client.statuses(ids)
        assert all(s.state == wire.QUEUED for s in statuses)


@_in_loop
async def test_one_at_a_time_submits_of_many_coroutines_share_requests(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    async with Client(cluster.intake) as client:
        sizes = _count_requests(client)
        ids = await asyncio.gather(*(client.submit("noop", b"x") for _ in range(500)))
        assert len(set(ids)) == 500
        assert len(sizes) < 500


@_in_loop
async def test_pending_window_bounds_unanswered_submits(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    async with Client(cluster.intake, max_pending=50) as client:
        futures = [client.submit_nowait("noop", b"x") for _ in range(50)]
        assert client.pending == 50
        with pytest.raises(TooManyPending):
            client.submit_nowait("noop", b"one too many")
        await client.flush()
        assert client.pending == 0 and all(f.result() for f in futures)

        most = 0

        async def producer() -> list:
            nonlocal most
            out = []
            for _ in range(1000):
                out.append(await client.submit_async("noop", b"y"))
                most = max(most, client.pending)
            return out

        more = await producer()
        await client.flush()
        assert most <= 50
        assert all(f.result() for f in more)


@_in_loop
async def test_a_refusal_resolves_only_its_own_future(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    async with Client(cluster.intake) as client:
        sizes = _count_requests(client)
        good_before = [client.submit_nowait("noop", b"a") for _ in range(10)]
        bad = client.submit_nowait("k" * 1000, b"kind too long")
        good_after = [client.submit_nowait("noop", b"b") for _ in range(10)]
        await client.flush()
        assert sizes == [21]  # one request: the refusal came back inside it
        with pytest.raises(InvalidTask):
            bad.result()
        ids = [f.result() for f in good_before + good_after]
        assert all(s.state == wire.QUEUED for s in await client.statuses(ids))


@_in_loop
async def test_helper_restart_mid_stream_resolves_every_future_and_loses_no_accepted_task(
        cluster) -> None:  # noqa: ANN001
    intake = f"tcp://127.0.0.1:{_free_port()}"
    cluster.start_helper("--intake", intake)
    n = 4000
    async with Client(intake, timeout_s=3.0, max_pending=200) as client:
        futures: list[asyncio.Future] = []

        async def producer() -> None:
            for i in range(n):
                futures.append(await client.submit_async("noop", b"t%d" % i))
                if i % 20 == 0:
                    await asyncio.sleep(0.002)  # a stream, not one burst

        async def answered() -> bool:
            return sum(f.done() for f in futures) >= 500

        stream = asyncio.create_task(producer())
        await async_wait_until(answered, 30, what="500 submits answered before the restart")
        await asyncio.to_thread(cluster.restart_helper, "--intake", intake)
        await asyncio.wait_for(stream, 90)
        await client.flush()

        assert len(futures) == n and all(f.done() for f in futures)
        accepted = [f.result() for f in futures if f.exception() is None]
        failed = [f.exception() for f in futures if f.exception() is not None]
        assert all(isinstance(e, MeshError) and str(e) for e in failed)
        assert len(accepted) >= 500
        statuses = await client.statuses(accepted)
        lost = [s.task_id for s in statuses if s.state == 0]
        assert not lost, f"{len(lost)} accepted tasks unknown after the restart"


def test_sync_client_submit_results_and_stats(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    with SyncClient(cluster.intake) as client:
        results = client.submit_results([make_task("noop", b"a"), make_task("k" * 1000, b""),
                                         make_task("noop", b"c")])
        assert [r.code == wire.OK for r in results] == [True, False, True]
        assert "kind" in results[1].message
        with pytest.raises(InvalidTask):
            client.submit_many([make_task("k" * 1000, b"")])
        stats = client.stats()
        assert stats["queued"] >= 2


@_in_loop
async def test_a_client_following_helpers_pipelines_through_its_pool(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    intake = cluster.intake
    async with Client(endpoints=lambda: [intake]) as client:
        futures = [await client.submit_async("noop", b"f%d" % i) for i in range(2000)]
        bad = await client.submit_async("k" * 1000, b"kind too long")
        await client.flush()
        ids = [f.result() for f in futures]
        with pytest.raises(InvalidTask):
            bad.result()
        assert len(set(ids)) == 2000 and client.pending == 0
        assert all(s.state == wire.QUEUED for s in await client.statuses(ids[:50]))
