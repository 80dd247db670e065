"""Attacks on the Helper's links (issue 10), one per test: a real Helper process, attackers
and genuine AI nodes driven by hand from the test (tests/support/fake_node.py) with keys of
the session's store (tests/support/keys.py).

Keys an attack needs are made before the Helper starts: a Helper re-reads its allow-lists for an
unknown key at most once a second, and a refused ZeroMQ client does not retry."""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request

import pytest
import zmq

from mesh import Client, HelperRefusedKey, PermissionDenied, make_task, wire
from mesh.trust import Role, Trust
from tests.support.fake_node import FakeNode
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)


def _store() -> str:
    return os.environ["MESH_KEY_DIR"]


def _node_trust(name: str) -> Trust:
    return Trust.local(_store(), identity=f"ai-node-{name}")


def _metric(helper, name: str, **labels: str) -> float:  # noqa: ANN001
    port = helper.ready["metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.asynccontextmanager
async def _alive(node: FakeNode, **beat):  # noqa: ANN003
    """Keep a fake node alive with a heartbeat every 0.2 s (the Helper declares a node dead
    after 2 s of silence)."""
    async def beating() -> None:
        while True:
            await node.heartbeat(**beat)
            await asyncio.sleep(0.2)

    task = asyncio.get_running_loop().create_task(beating())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _delivered(node: FakeNode, count: int = 1, timeout_s: float = 15.0) -> list:
    async def enough() -> list | None:
        got = await node.read_deliveries()
        return got if len(got) >= count else None
    return await async_wait_until(enough, timeout_s, what=f"{count} deliveries to {node.node_id}")


async def _nodes(client: Client, count: int) -> None:
    async def seen() -> bool:
        return (await client.stats())["nodes"] == count
    await async_wait_until(seen, 15.0, what=f"the Helper tracking {count} nodes")


def _done(dispatch, result: bytes) -> wire.Ack:  # noqa: ANN001
    return wire.Ack(task_id=dispatch.task.task_id, delivery=dispatch.delivery, kind=wire.DONE,
                    result=result)


def test_a_peer_with_no_key_cannot_submit_and_is_told_which_key_to_allow(cluster,  # noqa: ANN001
                                                                         tmp_path) -> None:
    cluster.start_helper()
    helper_key = cluster.helper.ready["curve_key"]
    stranger = Trust.local(tmp_path / "stranger-keys")  # keys the Helper never heard of
    stranger.store.allow(Role.HELPER, os.path.join(_store(), "own", "helper.key"), "the-helper")

    async def scenario() -> None:
        async with Client(cluster.intake, trust=stranger, server_key=helper_key,
                          timeout_s=20) as client:
            with pytest.raises(HelperRefusedKey, match="allowed/client/") as refused:
                await client.submit("echo", b"x")
            assert str(tmp_path / "stranger-keys" / "own" / "client.key") in str(refused.value)
        async with Client(cluster.intake, trust=Trust.plain(), timeout_s=20) as client:
            with pytest.raises(HelperRefusedKey, match="expects CURVE"):
                await client.submit("echo", b"x")
        async with Client(cluster.intake) as client:  # the local store's key: nothing stored
            assert (await client.stats())["tasks"] == 0

    asyncio.run(scenario())


def test_a_client_key_cannot_purge_dead_letters_nor_read_stats(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()

    async def scenario() -> None:
        async with Client(cluster.intake, role=Role.CLIENT) as client:
            task_id = await client.submit("echo", b"x")  # what a client may do still works
            assert (await client.status(task_id)).state == wire.QUEUED
            with pytest.raises(PermissionDenied, match="dead-letter-purge .*operator"):
                await client.dead_letters("purge", [task_id])
            with pytest.raises(PermissionDenied, match="stats"):
                await client.stats()
        async with Client(cluster.intake, role=Role.OPERATOR) as operator:
            assert (await operator.dead_letters("list")).affected == 0
            assert (await operator.stats())["tasks"] == 1
            await operator.submit("echo", b"y")  # an operator may do what a client may

    asyncio.run(scenario())
    assert _metric(cluster.helper, "mesh_intake_requests_denied_total",
                   operation="dead-letter-purge") == 1
    assert _metric(cluster.helper, "mesh_intake_requests_denied_total", operation="stats") == 1


def test_a_client_key_cannot_send_acks(cluster) -> None:  # noqa: ANN001
    genuine_trust = _node_trust("genuine")
    cluster.start_helper()
    ready = cluster.helper.ready

    async def scenario() -> None:
        genuine = FakeNode(genuine_trust, "genuine", ready["acks"], ready["curve_key"])
        forger = FakeNode(Trust.default(), "genuine", ready["acks"], ready["curve_key"],
                          role=Role.CLIENT, serve=False)
        try:
            async with Client(cluster.intake) as client, _alive(genuine, credit=1):
                task_id = await client.submit("echo", b"x")
                (dispatch,) = await _delivered(genuine)
                await forger.heartbeat(credit=1, acks=[_done(dispatch, b"forged")],
                                       task_endpoint=genuine.task_endpoint)
                await async_wait_until(
                    lambda: _async(forger.read_monitor()), 10.0,
                    what="the forger's handshake to be refused")
                assert forger.handshakes == [zmq.EVENT_HANDSHAKE_FAILED_AUTH]
                assert (await client.status(task_id)).state == wire.DISPATCHED
                await genuine.heartbeat(credit=1, acks=[_done(dispatch, b"real")])
                status = await client.wait(task_id, timeout=10)
                assert status.state == wire.SUCCEEDED and status.result == b"real"
        finally:
            genuine.close()
            forger.close()

    asyncio.run(scenario())


async def _async(coro):  # noqa: ANN001, ANN202
    return await coro


def test_an_ai_node_key_cannot_complete_another_nodes_task(cluster) -> None:  # noqa: ANN001
    genuine_trust, attacker_trust = _node_trust("a"), _node_trust("b")
    cluster.start_helper()
    ready = cluster.helper.ready

    async def scenario() -> None:
        genuine = FakeNode(genuine_trust, "a", ready["acks"], ready["curve_key"])
        attacker = FakeNode(attacker_trust, "b", ready["acks"], ready["curve_key"])
        try:
            async with Client(cluster.intake) as client, _alive(genuine, credit=1):
                task_id = await client.submit("echo", b"x")
                (dispatch,) = await _delivered(genuine)
                # The attacker is a valid AI node of its own, with a DONE for a's task.
                await attacker.heartbeat(credit=0, acks=[
                    _done(dispatch, b"forged"),
                    wire.Ack(task_id=task_id, delivery=dispatch.delivery, kind=wire.FAILED,
                             error="forged", error_class=wire.FATAL)])
                await _nodes(client, 2)
                await async_wait_until(
                    lambda: _async_value(_metric(cluster.helper, "mesh_acks_not_holder_total")
                                         >= 2), 10.0, what="the forged acks to be counted")
                status = await client.status(task_id)
                assert status.state == wire.DISPATCHED and status.node_id == "a"
                await genuine.heartbeat(credit=1, acks=[_done(dispatch, b"real")])
                status = await client.wait(task_id, timeout=10)
                assert status.state == wire.SUCCEEDED and status.result == b"real"
        finally:
            genuine.close()
            attacker.close()

    asyncio.run(scenario())


async def _async_value(value):  # noqa: ANN001, ANN202
    return value


def test_an_ai_node_key_cannot_take_over_another_nodes_id(cluster) -> None:  # noqa: ANN001
    genuine_trust, attacker_trust = _node_trust("a"), _node_trust("b")
    cluster.start_helper()
    ready = cluster.helper.ready

    async def scenario() -> None:
        genuine = FakeNode(genuine_trust, "a", ready["acks"], ready["curve_key"])
        attacker = FakeNode(attacker_trust, "b", ready["acks"], ready["curve_key"])
        try:
            async with Client(cluster.intake) as client, _alive(genuine, credit=8):
                await _nodes(client, 1)
                # Heartbeats naming node "a", with the attacker's endpoint and huge credit.
                async with _alive(attacker, node_id="a", credit=1_000_000):
                    ids = await client.submit_many([make_task("echo", b"x") for _ in range(5)])
                    got = await _delivered(genuine, 5)
                    assert {d.task.task_id for d in got} == set(ids)
                    assert await attacker.read_deliveries() == []
                    assert (await client.stats())["nodes"] == 1
            assert _metric(cluster.helper, "mesh_ack_frames_refused_total",
                           reason="node_id_bound") >= 1
        finally:
            genuine.close()
            attacker.close()

    asyncio.run(scenario())


def test_a_forged_node_id_flood_does_not_starve_a_genuine_node(cluster) -> None:  # noqa: ANN001
    genuine_trust, attacker_trust = _node_trust("a"), _node_trust("b")
    cluster.start_helper()
    ready = cluster.helper.ready

    async def scenario() -> None:
        genuine = FakeNode(genuine_trust, "a", ready["acks"], ready["curve_key"])
        attacker = FakeNode(attacker_trust, "b", ready["acks"], ready["curve_key"], serve=False)
        try:
            async with Client(cluster.intake) as client, _alive(genuine, credit=50):
                await _nodes(client, 1)
                for i in range(500):  # 500 node ids from one key, endpoints nobody serves
                    await attacker.heartbeat(node_id=f"forged-{i}", credit=1_000_000,
                                             task_endpoint=f"tcp://127.0.0.1:{1 + i}")
                ids = await client.submit_many([make_task("echo", b"x") for _ in range(20)])
                got = await _delivered(genuine, 20, timeout_s=30)
                assert {d.task.task_id for d in got} == set(ids)
                await genuine.heartbeat(credit=50, acks=[_done(d, b"ok") for d in got])
                for task_id in ids:
                    assert (await client.wait(task_id, timeout=10)).state == wire.SUCCEEDED
                assert (await client.stats())["nodes"] <= 2  # a, and the first forged id
            assert _metric(cluster.helper, "mesh_ack_frames_refused_total",
                           reason="ids_per_key") >= 499
        finally:
            genuine.close()
            attacker.close()

    asyncio.run(scenario())


def test_a_huge_credit_heartbeat_from_an_operator_key_gets_nothing(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    ready = cluster.helper.ready

    async def scenario() -> None:
        forger = FakeNode(Trust.default(), "x", ready["acks"], ready["curve_key"],
                          role=Role.OPERATOR)
        try:
            async with Client(cluster.intake) as client:
                task_id = await client.submit("echo", b"x")
                async with _alive(forger, credit=1_000_000):
                    await async_wait_until(lambda: _async(forger.read_monitor()), 10.0,
                                           what="the forger's handshake to be refused")
                    assert forger.handshakes == [zmq.EVENT_HANDSHAKE_FAILED_AUTH]
                    assert (await client.stats())["nodes"] == 0
                    assert (await client.status(task_id)).state == wire.QUEUED
                    assert await forger.read_deliveries() == []
        finally:
            forger.close()

    asyncio.run(scenario())


def test_a_result_larger_than_a_journal_record_makes_the_task_dead_and_the_helper_goes_on(
        cluster) -> None:  # noqa: ANN001
    node_trust = _node_trust("a")
    cluster.start_helper()
    ready = cluster.helper.ready

    async def scenario() -> None:
        node = FakeNode(node_trust, "a", ready["acks"], ready["curve_key"])
        try:
            async with Client(cluster.intake) as client, _alive(node, credit=4):
                big = await client.submit("echo", b"x")
                (dispatch,) = await _delivered(node)
                await node.heartbeat(credit=4, acks=[_done(dispatch, b"r" * (3 * 2**20))])
                status = await client.wait(big, timeout=10)
                assert status.state == wire.DEAD
                assert status.dead_reason == wire.PAYLOAD_REJECTED
                assert f"{3 * 2**20} bytes" in status.error and "journal" in status.error
                small = await client.submit("echo", b"y")  # the ack reader still runs
                got = await _delivered(node, 2)
                await node.heartbeat(credit=4, acks=[_done(got[1], b"fine")])
                assert (await client.wait(small, timeout=10)).result == b"fine"
        finally:
            node.close()

    asyncio.run(scenario())
