"""A hand-driven AI node for attack tests: it heartbeats and acks exactly what the test says,
with the key it is given, and reads what the Helper delivers to it. Not mesh.ai_node: an
attacker does not run our code."""

from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from mesh import sockets, wire
from mesh.trust import ClientLink, Domain, KeyPair, Role, Trust


class FakeNode:
    """`trust` acts as `role` (an ai-node key by default, any role's key for a forgery);
    heartbeats go to `ack_endpoint`, pinned to `helper_key`. `serve=True` binds a task PULL
    (a CURVE server with this key when it is an ai-node key) the Helper may connect to."""

    def __init__(self, trust: Trust, node_id: str, ack_endpoint: str, helper_key: str, *,
                 role: Role = Role.AI_NODE, serve: bool = True,
                 task_endpoint: str | None = None) -> None:
        self.trust = trust
        self.node_id = node_id
        self.incarnation = int(time.time_ns()) | 1
        self.ctx = sockets.new_context()
        self.beat = 0
        self.keypair: KeyPair = trust.keypair(role)
        self.pull = None
        self.task_endpoint = task_endpoint or "tcp://127.0.0.1:1"
        if serve:
            link = (trust.server(self.ctx, Role.AI_NODE, Domain.TASKS)
                    if role is Role.AI_NODE else None)
            self.pull, self.task_endpoint = sockets.task_pull(self.ctx, "tcp://127.0.0.1:0",
                                                              64 * 2**20, link=link)
        self.push = self.ctx.socket(zmq.PUSH)
        self.monitor = self.push.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        sockets.connect(self.push, ack_endpoint,
                        ClientLink(self.keypair, helper_key.encode()))
        self.handshakes: list[int] = []
        self.unsent = 0  # heartbeats that could not even be queued (no pipe: refused)
        self.received: list = []  # Dispatch messages read

    @property
    def key(self) -> str:
        return self.keypair.public_z85

    async def heartbeat(self, *, credit: int = 4, acks: list | tuple = (), kinds=("echo",),
                        node_id: str | None = None, task_endpoint: str | None = None,
                        held: list | tuple = ()) -> None:
        self.beat += 1
        hb = wire.Heartbeat(
            node_id=node_id or self.node_id, incarnation=self.incarnation,
            task_endpoint=task_endpoint or self.task_endpoint, concurrency=max(credit, 1),
            credit=credit, kinds=list(kinds), beat=self.beat, held_task_ids=list(held),
            max_message_bytes=64 * 2**20, sent_ns=time.time_ns())
        try:
            # Never blocks: once the Helper refused the handshake there is no pipe left, and
            # a blocking send would wait forever. What cannot be queued is counted.
            await self.push.send(wire.encode_ack_batch(hb, list(acks)), zmq.NOBLOCK)
        except zmq.Again:
            self.unsent += 1

    async def read_monitor(self) -> list[int]:
        while await self.monitor.poll(0):
            self.handshakes.append(parse_monitor_message(await self.monitor.recv_multipart())
                                   ["event"])
        return self.handshakes

    async def read_deliveries(self) -> list:
        """Every Dispatch read so far (non-blocking drain)."""
        while self.pull is not None and await self.pull.poll(0):
            batch = wire.decode_dispatch_batch(await self.pull.recv())
            self.received.extend(batch.dispatches)
        return self.received

    def close(self) -> None:
        self.push.disable_monitor()
        self.monitor.close(linger=0)
        self.push.close(linger=0)
        if self.pull is not None:
            self.pull.close(linger=0)
        self.trust.release(self.ctx)
        self.ctx.term()


def node_links(ctx: zmq.asyncio.Context, name: str) -> tuple:
    """Links for a hand-made AI node `name` with a key of its own in the session's store:
    (trust, server link for its task PULL, client link for its ack PUSH to the Helper).
    Call `trust.release(ctx)` before `ctx.term()`."""
    from mesh.trust import default_key_dir

    trust = Trust.local(default_key_dir(), identity=f"ai-node-{name}")
    return (trust, trust.server(ctx, Role.AI_NODE, Domain.TASKS),
            trust.client(Role.AI_NODE, Role.HELPER))
