"""The Helper's credit ledger with real processes: dispatch frames stay below the AI node's max
message size, and a node back from the dead gets no delivery taken for lost while it is still
on the way (issue 9, items 4 and 6). The second test's nodes are raw sockets speaking the wire
protocol, so the order of their heartbeats is the test's to choose."""

from __future__ import annotations

import asyncio
import json

import pytest
import zmq
import zmq.asyncio

from mesh import Client, make_task, sockets, wire
from tests.support.fake_node import node_links
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)


async def _nodes_seen(client: Client, count: int) -> None:
    async def enough() -> bool:
        return (await client.stats())["nodes"] == count
    await async_wait_until(enough, 20, what=f"{count} AI nodes seen by the Helper")


def test_a_batch_larger_than_the_nodes_max_message_size_completes_and_the_node_takes_more(
        cluster) -> None:  # noqa: ANN001
    """40 tasks of 600 KB in one submit: with 32 credits they once became one ~19 MB frame,
    above the node's 16 MiB max message size. ZeroMQ dropped it, the node's credit was spent
    for good, and a small task submitted afterwards stayed QUEUED."""
    cluster.start_helper()
    cluster.start_ai()

    async def scenario() -> None:
        async with Client(cluster.intake, timeout_s=30.0) as client:
            await _nodes_seen(client, 1)
            big = [make_task("simulate", b"p" * 600_000) for _ in range(40)]
            ids = await client.submit_many(big)
            statuses = await asyncio.gather(*(client.wait(t, timeout=60) for t in ids))
            assert [wire.state_name(s.state) for s in statuses] == ["SUCCEEDED"] * 40
            small = await client.submit("simulate", json.dumps({"ms": 1}).encode())
            status = await client.wait(small, timeout=30)
            assert status.state == wire.SUCCEEDED, wire.state_name(status.state)

    asyncio.run(scenario())


class RawNode:
    """An AI node made of two sockets: a PULL for dispatch frames, a PUSH to the Helper's
    acks. It reads frames as they come; what it reports having read is the test's choice.
    While `alive`, it repeats its last heartbeat every 200 ms (repeating a report changes
    nothing); a stopped node sends nothing."""

    def __init__(self, node_id: str, incarnation: int, ack_endpoint: str) -> None:
        self.node_id = node_id
        # Its own context and key (ai-node-<id>), as a real node has: the Helper binds a node
        # id to the key its heartbeats come with, and pins its PUSH to that key.
        self.ctx = sockets.new_context()
        self.trust, server, client = node_links(self.ctx, node_id)
        self.tasks_in, endpoint = sockets.task_pull(self.ctx, "tcp://127.0.0.1:0", 64 * 2**20,
                                                    link=server)
        port = sockets.port_of(endpoint)
        self.acks_out = self.ctx.socket(zmq.PUSH)
        sockets.connect(self.acks_out, ack_endpoint, client)
        self.hb = wire.Heartbeat(
            node_id=node_id, incarnation=incarnation, task_endpoint=f"tcp://127.0.0.1:{port}",
            concurrency=2, kinds=["simulate"], max_message_bytes=16 * 2**20)
        self.alive = False
        self._pump = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if self.alive:
                self.hb.beat += 1
                await self.acks_out.send(wire.encode_ack_batch(self.hb, []))

    async def beat(self, *, credit: int, received: int = 0, seq: int = 0, held: tuple = (),
                   acks: tuple = ()) -> None:
        self.alive = True
        self.hb.beat += 1
        self.hb.credit = credit
        self.hb.received = received
        self.hb.dispatch_seq = seq
        del self.hb.held_task_ids[:]
        self.hb.held_task_ids.extend(held)
        await self.acks_out.send(wire.encode_ack_batch(self.hb, list(acks)))

    async def frame(self, timeout_s: float = 10.0):  # noqa: ANN201 - wire.DispatchBatch
        assert await self.tasks_in.poll(int(timeout_s * 1000)), f"no frame for {self.node_id}"
        batch = wire.decode_dispatch_batch(await self.tasks_in.recv())
        for dispatch in batch.dispatches:  # as a node counts them: per delivery
            self.hb.helper_incarnation = dispatch.helper_incarnation
        return batch

    def close(self) -> None:
        self._pump.cancel()
        self.tasks_in.close(linger=0)
        self.acks_out.close(linger=0)
        self.trust.release(self.ctx)
        self.ctx.term()


def _done(batch) -> list:  # noqa: ANN001
    return [wire.Ack(task_id=d.task.task_id, delivery=d.delivery, kind=wire.DONE,
                     attempt=d.attempt, result=json.dumps({"attempt": d.attempt}).encode())
            for d in batch.dispatches]


def _ids(batch) -> list[str]:  # noqa: ANN001
    return sorted(d.task.task_id for d in batch.dispatches)


def test_a_node_back_from_the_dead_keeps_the_deliveries_still_on_their_way_to_it(
        cluster) -> None:  # noqa: ANN001
    """The heartbeat order of a SIGSTOPped node that resumes: its first heartbeat was built
    before it read the frame sent just before it was declared dead. The old ledger took that
    heartbeat's count as its base; when the node then read the old frame, the count matched
    what the new link had sent while the new link's frame was still on the way, and its tasks
    were queued again and sent to a second healthy node: both ran them."""
    helper = cluster.start_helper("--node-dead-after", "1.0")

    async def scenario() -> None:
        n1 = RawNode("raw-1", 0x71, helper.ready["acks"])
        n2 = RawNode("raw-2", 0x72, helper.ready["acks"])
        try:
            async with Client(cluster.intake) as client:
                await n1.beat(credit=2)
                await _nodes_seen(client, 1)
                early = await client.submit_many(
                    [make_task("simulate", b"{}") for _ in range(2)])
                frame1 = await n1.frame()
                assert _ids(frame1) == sorted(early)
                await n1.beat(credit=2, received=2, seq=frame1.seq, acks=_done(frame1))
                stragglers = await client.submit_many(
                    [make_task("simulate", b"{}") for _ in range(2)])
                frame2 = await n1.frame()  # read by the socket, not yet by the "stopped" node
                assert _ids(frame2) == sorted(stragglers)
                # SIGSTOP: no heartbeat until the Helper declares the node dead.
                n1.alive = False
                await _nodes_seen(client, 0)
                # A second node takes the stragglers again (justified: the first was dead).
                await n2.beat(credit=2)
                to_n2 = await n2.frame()
                assert _ids(to_n2) == sorted(stragglers)
                # SIGCONT: the first heartbeat was built before the node read frame 2.
                await n1.beat(credit=2, received=2, seq=frame1.seq)
                await _nodes_seen(client, 2)
                fresh = await client.submit_many(
                    [make_task("simulate", b"{}") for _ in range(2)])
                frame3 = await n1.frame()  # on its way: the node has not read it yet
                assert _ids(frame3) == sorted(fresh)
                await n2.beat(credit=2, received=2, seq=to_n2.seq, held=tuple(stragglers))
                # The node reads frame 2 (it runs the stragglers) and says so.
                await n1.beat(credit=0, received=4, seq=frame2.seq, held=tuple(stragglers))
                # Behind it on the same channel: the stragglers' DONE. Once they are
                # SUCCEEDED, the heartbeat before them has been applied (and any dispatch
                # it caused has been sent).
                await n1.beat(credit=0, received=4, seq=frame2.seq,
                              acks=_done(frame2))
                for task_id in stragglers:
                    status = await client.wait(task_id, timeout=10)
                    assert status.state == wire.SUCCEEDED, wire.state_name(status.state)
                for status in await client.statuses(fresh):
                    assert status.node_id == "raw-1", (
                        f"{status.task_id} was taken for lost while still on its way to raw-1 "
                        f"and sent to {status.node_id or 'the queue'}")
                assert not await n2.tasks_in.poll(500), "a delivery on its way went elsewhere"
                # The node reads frame 3 and finishes: all is accounted for.
                await n1.beat(credit=2, received=6, seq=frame3.seq, acks=_done(frame3))
                for task_id in fresh:
                    status = await client.wait(task_id, timeout=10)
                    assert status.state == wire.SUCCEEDED, wire.state_name(status.state)
        finally:
            n1.close()
            n2.close()

    asyncio.run(scenario())
