"""The Helper's memory is bounded under floods, and a real client keeps being served meanwhile.

Floods against a real Helper process: unknown kinds (dead letters), result long-polls from a
client that then leaves, status requests for large results from a client that never reads.
The Helper's RSS (/proc/<pid>/status VmRSS) is measured before and after; the bounds asserted
are generous (several times what was measured, see the report figures printed with -s), as these
are not speed or tuning tests. In-process: dead-letter eviction survives a restart and is alerted;
the Helper's health follows its journal.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import pytest
import zmq

from mesh import Client, WireError, make_task, sockets, wire
from mesh.helper import Helper
from mesh.journal import Journal
from mesh.settings import HelperSettings
from mesh.trust import Role, Trust
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(300)

MIB = 2**20


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _metric(proc, name: str, **labels: str) -> float:  # noqa: ANN001
    url = f"http://127.0.0.1:{proc.ready['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _stat(client: Client, name: str) -> float:
    return (await client.stats())[name]


async def _nodes_seen(client: Client, count: int) -> None:
    async def enough() -> bool:
        return await _stat(client, "nodes") >= count
    await async_wait_until(enough, 20, what=f"{count} AI nodes seen by the Helper")


async def _served(client: Client, payload: bytes = b"still served") -> None:
    """A real client's submit and result succeed. It waits for room like any client of a
    bounded queue (during the flood the queue may be full for a moment: QueueFull is the
    backpressure, not a failure to serve)."""
    task_id = await client.submit("echo", payload, wait_s=30)
    assert await client.result(task_id, timeout=30) == payload


def _raw_dealer(endpoint: str, *, replies_pile_at_helper: bool = True,
                ) -> tuple[zmq.Context, zmq.Socket]:
    """A client that sends and never reads. With tiny receive buffers replies pile up at the
    Helper, which is the point of most tests here; but then the link's ZMTP pings are not read
    either, and after the Helper's heartbeat timeout (3 s) it drops the connection, and with it
    the requests still in flight: a flood that takes longer than that on a loaded machine needs
    `replies_pile_at_helper=False` (libzmq's I/O thread takes the replies off the link)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    if replies_pile_at_helper:
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 4096)
    else:
        sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sockets.connect(sock, endpoint, Trust.default().client(Role.CLIENT, Role.HELPER))
    return ctx, sock


def _result_request(rid: int, task_id: str, wait_ms: int) -> bytes:
    request = wire.ClientRequest(version=wire.PROTOCOL_VERSION, request_id=rid)
    request.result.task_id = task_id
    request.result.wait_ms = wait_ms
    return wire.encode(request)


def _status_request(rid: int, task_ids: list[str]) -> bytes:
    request = wire.ClientRequest(version=wire.PROTOCOL_VERSION, request_id=rid)
    request.status.task_ids.extend(task_ids)
    return wire.encode(request)


def test_unknown_kind_flood_keeps_dead_letters_bounded_and_the_client_served(cluster) -> None:  # noqa: ANN001
    args = ("--unroutable-grace", "0.1", "--max-pending", "1000", "--max-dead-letters", "300",
            "--max-dead-letter-bytes", str(4 * MIB))
    helper = cluster.start_helper(*args)
    cluster.start_ai()
    flood, size = 4000, 20_000  # 80 MB of dead letters if kept

    async def scenario() -> None:
        async with Client(cluster.intake, timeout_s=30) as client:
            await _nodes_seen(client, 1)
            await _served(client)
            rss_before = _rss_mib(helper.pid)
            for start in range(0, flood, 100):
                await client.submit_many([make_task(f"unknown-{start + i}", b"u" * size)
                                          for i in range(100)], wait_s=60)
                if start % 1000 == 0:
                    await _served(client)

            async def all_dead() -> bool:
                stats = await client.stats()
                return stats["dead_letters"] + stats["dead_letters_evicted"] >= flood
            await async_wait_until(all_dead, 120, what="every flooded task dead or evicted")
            stats = await client.stats()
            await _served(client)
            rss_after = _rss_mib(helper.pid)
            print(f"\nunknown-kind flood of {flood} x {size} B: RSS {rss_before:.0f} -> "
                  f"{rss_after:.0f} MiB; dead letters kept {stats['dead_letters']:.0f} "
                  f"({stats['dead_letter_bytes'] / MIB:.1f} MiB), evicted "
                  f"{stats['dead_letters_evicted']:.0f}, journal "
                  f"{stats['journal_bytes'] / MIB:.0f} MiB")
            assert stats["dead_letters"] <= 300
            assert stats["dead_letter_bytes"] <= 4 * MIB
            assert stats["dead_letters_evicted"] >= flood - 300
            assert rss_after - rss_before < 120, "dead letters are not bounded in memory"
            listed = await client.dead_letters("list", limit=1000)
            assert len(listed.tasks) == stats["dead_letters"]

    asyncio.run(scenario())
    evicted = _metric(helper, "mesh_dead_letters_evicted_total")
    assert evicted >= flood - 300
    # Evicted dead letters stay gone after a restart (their FORGET records were journaled).
    cluster.restart_helper(*args)

    async def after_restart() -> None:
        async with Client(cluster.intake) as client:
            assert await _stat(client, "dead_letters") <= 300
            assert await _stat(client, "tasks") <= 300 + 4

    asyncio.run(after_restart())


def test_long_poll_flood_from_a_client_that_leaves_is_bounded_and_cleared(cluster) -> None:  # noqa: ANN001
    # The waited-on task's kind has no node: keep it queued however long the flood takes to
    # read on a loaded machine (past the default grace it goes DEAD and every waiter is answered).
    helper = cluster.start_helper("--max-result-waiters-per-client", "1000",
                                  "--unroutable-grace", "3600")
    flood = 100_000

    async def scenario() -> None:
        async with Client(cluster.intake, timeout_s=30) as client:
            waited_on = await client.submit("nosuch-kind", b"")  # no node: stays queued
            rss_before = _rss_mib(helper.pid)
            # Held long-polls are the subject here, not unread replies (other tests): the
            # flood's link must outlive its reading, however long that takes.
            ctx, sock = _raw_dealer(cluster.intake, replies_pile_at_helper=False)
            try:
                for rid in range(flood):
                    sock.send(_result_request(rid, waited_on, 3_600_000))

                async def held() -> bool:
                    return await _stat(client, "result_waiters") >= 1000
                await async_wait_until(held, 60, what="the flood's long-polls held")

                async def read_all() -> bool:  # the Helper has read the whole flood
                    refused = _metric(helper, "mesh_intake_requests_refused_total",
                                      bound="result_waiters")
                    return refused >= flood - 1000
                await async_wait_until(read_all, 60, what="the flood read")
                held_during = await _stat(client, "result_waiters")
                rss_during = _rss_mib(helper.pid)
            finally:
                sock.close(linger=0)
                ctx.term()

            async def cleared() -> bool:
                return await _stat(client, "result_waiters") == 0
            await async_wait_until(cleared, 30, what="the gone client's long-polls dropped")
            cluster.start_ai()
            await _served(client)
            rss_after = _rss_mib(helper.pid)
            print(f"\n{flood} long-polls, client gone: RSS {rss_before:.0f} -> {rss_during:.0f} "
                  f"(held {held_during:.0f}) -> {rss_after:.0f} MiB after it left")
            assert held_during == 1000
            assert rss_during - rss_before < 60
            assert rss_after - rss_before < 60

    asyncio.run(scenario())


def test_status_requests_for_large_results_from_a_reader_that_never_reads_are_bounded(
        cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper()
    cluster.start_ai()
    size = MIB - 4096

    async def scenario() -> None:
        async with Client(cluster.intake, timeout_s=30) as client:
            await _nodes_seen(client, 1)
            ids = [await client.submit("echo", bytes([i]) * size) for i in range(20)]
            for task_id in ids:
                await client.wait(task_id, timeout=30)
            rss_before = _rss_mib(helper.pid)
            # Each request names 20 tasks of ~1 MiB results, each 10 times (200 ids, 7 KB):
            # 200 MiB per reply before; now the ids count once and a reply stops at 16 MiB.
            ctx, sock = _raw_dealer(cluster.intake)
            try:
                for rid in range(300):
                    sock.send(_status_request(rid, ids * 10))

                # Past the unread bound a request is refused at once. On a loaded machine the
                # Helper may instead drop the link (its ZMTP pings go unread for 3 s): then the
                # requests it read before are dropped unworked, as from a client that is gone.
                async def refused() -> bool:
                    return (_metric(helper, "mesh_intake_requests_refused_total",
                                    bound="unread_reply_bytes")
                            + _metric(helper, "mesh_intake_replies_dropped_total",
                                      reason="gone")) >= 250
                await async_wait_until(refused, 60, what="large replies refused past the bound")
                # A real client is served meanwhile, and gets every status (in several replies).
                statuses = await client.statuses(ids + ids)
                assert [s.task_id for s in statuses] == ids + ids
                assert all(s.result == bytes([i]) * size for i, s in enumerate(statuses[:20]))
                await _served(client)
                rss_during = _rss_mib(helper.pid)
            finally:
                sock.close(linger=0)
                ctx.term()
            too_many = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
            too_many.status.task_ids.extend(f"id-{i}" for i in range(1001))
            with pytest.raises(WireError, match="1001 distinct task ids; at most 1000"):
                await client._call(too_many, 10)
            print(f"\n300 status requests x 20 results of 1 MiB, never read: RSS "
                  f"{rss_before:.0f} -> {rss_during:.0f} MiB")
            assert rss_during - rss_before < 250

    asyncio.run(scenario())


class _Alerts:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, str]] = []

    def publish(self, kind: str, severity: str, source: str, payload: bytes) -> int:
        self.published.append((kind, severity, payload.decode()))
        return len(self.published)


def test_dead_letters_past_the_bound_are_evicted_alerted_and_stay_gone_after_restart(
        tmp_path) -> None:  # noqa: ANN001
    settings = HelperSettings(helper_id="h", data_dir=str(tmp_path / "h"), max_dead_letters=10)

    async def scenario() -> None:
        alerts = _Alerts()
        helper = Helper(settings, alerts=alerts)
        await helper.start()
        try:
            ids = [await helper.submit("k", b"x") for _ in range(30)]
            d = helper.dispatcher
            for task_id in ids:
                d._dead(d.tasks[task_id], wire.FATAL_ERROR, "boom")
            assert sorted(d.dead_letters) == sorted(ids[-10:])
            assert sorted(d.dead.task_ids()) == sorted(ids[-10:])  # on disk, not in the table
            assert not d.tasks
            assert helper.metrics.dead_letters_evicted._value.get() == 20
            helper._check_dead_letter_evictions()
            kinds = [k for k, _, _ in alerts.published]
            assert kinds.count("mesh.deadletter.evicted") == 1
            assert '"evicted": 20' in alerts.published[kinds.index("mesh.deadletter.evicted")][2]
            await helper.journal.sync()
        finally:
            await helper.stop()
        again = Helper(settings)
        await again.start()
        try:
            assert sorted(again.dispatcher.dead.task_ids()) == sorted(ids[-10:])
            assert not again.dispatcher.tasks
            assert len(again.dispatcher.dead_letters) == 10
        finally:
            await again.stop()

    asyncio.run(scenario())


def test_helper_health_is_critical_while_the_journal_is_failed_and_alerts_both_ways(
        tmp_path, monkeypatch) -> None:  # noqa: ANN001
    async def scenario() -> None:
        alerts = _Alerts()
        helper = Helper(HelperSettings(helper_id="h", data_dir=str(tmp_path / "h")),
                        alerts=alerts)
        assert helper.health() == (False, "not started")
        await helper.start()
        try:
            assert helper.health() == (True, "serving")
            monkeypatch.setattr(Journal, "failed", property(lambda self: True))
            monkeypatch.setattr(Journal, "failure", property(lambda self: "ENOSPC: disk full"))
            helper.journal.on_health(True, "ENOSPC: disk full")  # as the journal calls it
            ok, reason = helper.health()
            assert not ok and "journal failed: ENOSPC: disk full" in reason
            helper.journal.on_health(True, "ENOSPC: disk full")  # no second alert
            monkeypatch.setattr(Journal, "failed", property(lambda self: False))
            helper.journal.on_health(False, None)
            assert helper.health() == (True, "serving")
            assert [(k, s) for k, s, _ in alerts.published] == [
                ("mesh.journal.failed", "critical"), ("mesh.journal.recovered", "info")]
        finally:
            await helper.stop()
        assert helper.health() == (False, "stopping")

    asyncio.run(scenario())
