"""The durable task lane end to end: real Helper and AI node processes on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request

import pytest
import zmq

from mesh import Client, PayloadTooLarge, RequestTimeout, TaskFailed, make_task, wire
from mesh import sockets
from mesh.trust import Role, Trust
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(180)


async def _nodes_seen(client: Client, count: int, timeout_s: float = 20.0) -> None:
    async def enough() -> bool:
        return (await client.stats())["nodes"] >= count
    await async_wait_until(enough, timeout_s, what=f"{count} AI nodes seen by the Helper")


async def _submit_all(client: Client, count: int, kind: str = "simulate", batch: int = 200,
                      payload: bytes = b"{\"ms\": 1}") -> list[str]:
    ids: list[str] = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        ids += await client.submit_many([make_task(kind, payload) for _ in range(n)])
    return ids


async def _wait_all(client: Client, ids: list[str], timeout_s: float = 90.0) -> list:
    statuses = []
    for i in range(0, len(ids), 1000):
        statuses += await asyncio.gather(*(client.wait(t, timeout=timeout_s)
                                           for t in ids[i:i + 1000]))
    return statuses


def test_three_nodes_run_thousands_of_tasks_each_exactly_once(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    for _ in range(3):
        cluster.start_ai()

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 3)
            ids = await _submit_all(client, 3000)
            statuses = await _wait_all(client, ids)
            assert [s.state for s in statuses] == [wire.SUCCEEDED] * len(ids)
            nodes_used = {s.node_id for s in statuses}
            assert len(nodes_used) == 3, f"work should spread over all nodes, got {nodes_used}"

    asyncio.run(scenario())
    effects = cluster.applied_effects()
    assert len(effects) == 3000
    assert max(effects.values()) == 1


def test_sigkill_of_an_ai_node_under_load_loses_no_task(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    nodes = [cluster.start_ai() for _ in range(3)]

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 3)
            # Slow tasks, so the victim surely holds some when it dies.
            ids = await _submit_all(client, 2000, payload=b"{\"ms\": 20}")
            victim = nodes[0]

            async def victim_busy() -> bool:
                statuses = await client.statuses(ids[:300])
                return any(s.node_id == victim.ready["node_id"] and
                           s.state in (wire.DISPATCHED, wire.RUNNING) for s in statuses)
            await async_wait_until(victim_busy, 20, what="the victim holding tasks")
            victim.kill()
            statuses = await _wait_all(client, ids)
            assert all(s.state == wire.SUCCEEDED for s in statuses), \
                [wire.state_name(s.state) for s in statuses if s.state != wire.SUCCEEDED][:5]
            # Only one result per task reaches the submitter; a duplicate DONE is ignored.
            assert len({s.task_id for s in statuses}) == len(ids)
            stats = await client.stats()
            assert stats["nodes"] == 2

    asyncio.run(scenario())
    effects = cluster.applied_effects()
    assert len(effects) == 2000 and max(effects.values()) == 1


def test_helper_sigkill_during_a_submit_storm_completes_every_accepted_task(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper()
    for _ in range(3):
        cluster.start_ai()
    accepted: list[str] = []
    refused = 0

    async def storm(client: Client, stop: asyncio.Event) -> None:
        nonlocal refused
        while not stop.is_set():
            tasks = [make_task("simulate", b"{\"ms\": 2}") for _ in range(20)]
            try:
                accepted.extend(await client.submit_many(tasks))
            except RequestTimeout:
                refused += 1  # outcome unknown: not counted as accepted

    async def scenario() -> None:
        async with Client(cluster.intake, timeout_s=2.0) as client:
            await _nodes_seen(client, 3)
            stop = asyncio.Event()
            producers = [asyncio.create_task(storm(client, stop)) for _ in range(4)]
            await async_wait_until(lambda: _true_after(len(accepted) >= 2000), 30,
                                   what="2000 accepted")
            helper.kill()  # SIGKILL mid-storm
            killed_at = len(accepted)
            await asyncio.sleep(0)
            stop.set()
            await asyncio.gather(*producers)
        restarted = cluster.start_helper()
        assert restarted.ready["intake"] == helper.ready["intake"], "Helper must keep its port"
        assert restarted.ready["recovered"]["records"] > 0
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 3)
            statuses = await _wait_all(client, accepted)
            missing = [s.task_id for s in statuses if s.state != wire.SUCCEEDED]
            assert not missing, f"{len(missing)} accepted tasks did not complete: {missing[:5]}"
            assert killed_at >= 2000

    asyncio.run(scenario())
    effects = cluster.applied_effects()
    assert all(effects[t] == 1 for t in accepted)


async def _true_after(value: bool) -> bool:
    return value


def test_bad_input_gets_a_clear_error_and_crashes_nothing(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    ai = cluster.start_ai()

    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        # Peers with keys of the right roles (the session's store): a stranger gets nothing in
        # at all (tests/integration/test_trust_helper.py); these must not break anything either.
        trust = Trust.default()
        node_key = Trust.local(trust.store.root, identity="ai-node-ai-1").public_key(
            Role.AI_NODE)
        try:
            # Malformed frames on every socket: intake, ack channel, an AI node's task socket.
            dealer = ctx.socket(zmq.DEALER)
            sockets.connect(dealer, cluster.intake, trust.client(Role.CLIENT, Role.HELPER))
            await dealer.send(b"\xff\x00 this is not protobuf")
            assert await dealer.poll(5000), "the Helper must answer a malformed request"
            reply = wire.decode_client_reply(await dealer.recv())
            assert reply.code == wire.MALFORMED_REQUEST and "malformed" in reply.message
            push = ctx.socket(zmq.PUSH)
            sockets.connect(push, cluster.helper.ready["acks"],
                            Trust.local(trust.store.root, identity="ai-node-ai-1").client(
                                Role.AI_NODE, Role.HELPER))
            await push.send(b"\x08\x96\x01garbage")
            push_ai = ctx.socket(zmq.PUSH)
            sockets.connect(push_ai, ai.ready["tasks"],
                            trust.client(Role.HELPER, Role.AI_NODE, node_key))
            await push_ai.send(b"\x00garbage\xff")
            # Well-formed protobuf, but the task in it is empty (no id, no kind).
            await push_ai.send(wire.encode_dispatch_batch_raw(
                [(b"", 1, 1, 0)], wire.dispatch_suffix(1, cluster.helper.ready["acks"], "x", 1)))
            for sock in (dealer, push, push_ai):
                sock.close(linger=200)
        finally:
            ctx.term()
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            # Unknown task kind: dead-lettered with a message that names the kind.
            unknown = await client.submit("no-such-kind", b"x")
            # Oversized payload: refused at submit, with the size and the limit.
            with pytest.raises(PayloadTooLarge, match="exceeds the limit"):
                await client.submit("echo", b"x" * (2 * 2**20))
            # The mesh still works after all of it.
            ok = await client.submit("echo", b"still alive")
            assert await client.result(ok, timeout=20) == b"still alive"
            with pytest.raises(TaskFailed, match="no-such-kind"):
                await client.result(unknown, timeout=60)
            status = await client.status(unknown)
            assert wire.dead_reason_name(status.dead_reason) == "UNKNOWN_KIND"

    # A short grace so the unknown kind is dead-lettered within the test.
    cluster.helper.stop()
    cluster.start_helper("--unroutable-grace", "1.0")
    asyncio.run(scenario())
    assert cluster.helper.alive() and ai.alive()
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{cluster.helper.ready['metrics_port']}/metrics", timeout=5).read()
    assert b'mesh_bad_frames_total{socket="ack"} 1.0' in metrics
    assert b'mesh_bad_frames_total{socket="intake"} 1.0' in metrics
    assert b'mesh_tasks_dead_total{reason="UNKNOWN_KIND"} 1.0' in metrics
    ai_metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{ai.ready['metrics_port']}/metrics", timeout=5).read()
    assert b"mesh_ai_bad_frames_total 2.0" in ai_metrics


def test_restarted_ai_node_never_runs_what_was_meant_for_its_previous_life(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    first = cluster.start_ai("--bind", "tcp://127.0.0.1:0", node_id="ai-same")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            ids = await _submit_all(client, 300, payload=b"{\"ms\": 5}")
            first.signal(signal.SIGSTOP)
            first.kill()
            # Same node id, same port: a new incarnation.
            port = first.ready["tasks"].rsplit(":", 1)[1]
            cluster.start_ai("--bind", f"tcp://127.0.0.1:{port}", node_id="ai-same")
            statuses = await _wait_all(client, ids)
            assert all(s.state == wire.SUCCEEDED for s in statuses)

    asyncio.run(scenario())
    effects = cluster.applied_effects()
    assert len(effects) == 300 and max(effects.values()) == 1


def test_nodes_serve_prometheus_metrics(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    ai = cluster.start_ai()

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            await _wait_all(client, await _submit_all(client, 50, kind="echo", payload=b"m"))

    asyncio.run(scenario())
    helper_text = urllib.request.urlopen(
        f"http://127.0.0.1:{cluster.helper.ready['metrics_port']}/metrics", timeout=5).read()
    for name in (b"mesh_tasks_submitted_total 50.0", b"mesh_accept_latency_seconds_bucket",
                 b"mesh_journal_fsync_seconds_count", b"mesh_nodes_alive 1.0"):
        assert name in helper_text, name
    def ai_text() -> bytes:
        return urllib.request.urlopen(
            f"http://127.0.0.1:{ai.ready['metrics_port']}/metrics", timeout=5).read()
    # AI nodes publish per-task counts once per heartbeat.
    wait_until(lambda: b'mesh_ai_tasks_completed_total{outcome="succeeded"} 50.0' in ai_text(),
               5, what="the AI node's completed count")


def test_a_node_started_alone_finds_the_helper_with_no_configuration(cluster) -> None:  # noqa: ANN001
    # AI node first, Helper later: the embedded registry introduces them.
    cluster.start_ai()
    cluster.start_helper()

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            task_id = await client.submit("echo", b"hello")
            assert await client.result(task_id, timeout=20) == b"hello"

    asyncio.run(scenario())
    assert os.path.isdir(cluster.registry)
