"""An AI node process (`mesh ai`, secure by default) against a Helper played by the test.

The test holds the same local key store as the node (MESH_KEY_DIR): its "Helper" binds an ack
PULL as the helper key (ZAP domain mesh.acks) and pushes deliveries with the helper key, pinned
to the node's own key. Strangers use freshly generated keys or keys of other roles. Every wait
is on a condition with a deadline; the node is killed and reaped at teardown.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import zmq

from mesh import make_task, sockets, wire
from mesh.trust import ClientLink, Domain, KeyPair, Role, Trust
from nodes.launch import NodeProcess
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(120)

LOOPBACK = "tcp://127.0.0.1:0"


class Node:
    """One `mesh ai` process and what the test knows of it."""

    def __init__(self, tmp: Path, trust: Trust, node_id: str, ack_endpoint: str,
                 *extra: str) -> None:
        self.marks = tmp / "marks"
        self.marks.mkdir(exist_ok=True)
        env = {"MESH_KEY_DIR": str(trust.store.root), "MESH_TEST_MARK_DIR": str(self.marks),
               "MESH_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        self.proc = NodeProcess(
            ["ai", "--app", "tests.integration.trust_app:app", "--node-id", node_id,
             "--discovery", f"embedded://{tmp / 'registry'}", "--helper", ack_endpoint,
             "--metrics-port", "0", "--concurrency", "4", *extra],
            env=env, log_path=tmp / f"{node_id}.log", name=node_id).start()
        self.incarnation = int(self.proc.ready["incarnation"], 16)
        self.tasks = self.proc.ready["tasks"]
        trust.reload()
        # the node made its own key at start (own/ai-node-NODE_ID.key) and allowed it
        self.key = trust.store.keypair(Role.AI_NODE, f"ai-node-{node_id}").public_key

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")

    def ran(self, task_id: str) -> bool:
        return (self.marks / task_id).exists()

    def metric(self, name: str) -> float:
        port = self.proc.ready["metrics_port"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
        return total


class FakeHelper:
    """The Helper side of the links: an ack PULL bound with the helper key, acks collected."""

    def __init__(self, trust: Trust) -> None:
        self.trust = trust
        self.ctx = sockets.new_context()
        self.sync = sockets.sync_view(self.ctx)
        self.pull, self.ack_endpoint = sockets.ack_pull(
            self.sync, LOOPBACK, 64 * 2**20,
            link=trust.server(self.ctx, Role.HELPER, Domain.ACKS))
        self.acks: list = []
        self.reader = sockets.FrameReader(
            self.pull, lambda frame, _uid: self.acks.extend(wire.decode_ack_batch(frame).acks),
            with_user_id=True)
        self.pushes: list[zmq.Socket] = []

    def start(self) -> FakeHelper:
        self.reader.start(asyncio.get_running_loop())
        return self

    def push(self, node: Node, keypair: KeyPair | None = None) -> zmq.Socket:
        """A dispatch PUSH to the node, with the helper key (or `keypair`), pinned to the
        node's key."""
        sock = self.sync.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sockets.connect(sock, node.tasks,
                        ClientLink(keypair or self.trust.keypair(Role.HELPER), node.key))
        self.pushes.append(sock)
        return sock

    def ack(self, task_id: str, kind: int):  # noqa: ANN201
        return next((a for a in self.acks if a.task_id == task_id and a.kind == kind), None)

    async def wait_ack(self, task_id: str, kind: int, timeout_s: float = 20.0):  # noqa: ANN201
        async def arrived() -> bool:
            return self.ack(task_id, kind) is not None
        await async_wait_until(arrived, timeout_s, what=f"ack kind {kind} of {task_id}")
        return self.ack(task_id, kind)

    def close(self) -> None:
        self.reader.stop()
        for sock in self.pushes:
            sock.close(linger=0)
        self.pull.close(linger=0)
        self.trust.release(self.ctx)
        self.ctx.term()


def delivery(node: Node, task, reply_to: str, number: int = 1) -> bytes:  # noqa: ANN001
    return wire.encode_dispatch_batch_raw(
        [(wire.task_bytes(task), 1, number, 0)],
        wire.dispatch_suffix(node.incarnation, reply_to, "fake-helper", 7))


async def send(sock: zmq.Socket, frame: bytes) -> None:
    """A PUSH send, waiting (with a deadline) for the link to take it."""
    async def sent() -> bool:
        try:
            sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
    await async_wait_until(sent, 10.0, what="the dispatch link")


@pytest.fixture
def trust(tmp_path: Path) -> Trust:
    t = Trust.local(tmp_path / "keys")
    yield t
    t.close()


@asynccontextmanager
async def mesh_ai(tmp_path: Path, trust: Trust, node_id: str = "trust-1", *extra: str):  # noqa: ANN202
    helper = FakeHelper(trust).start()
    node = None
    try:
        node = await asyncio.to_thread(Node, tmp_path, trust, node_id, helper.ack_endpoint,
                                       *extra)
        yield node, helper
    finally:
        if node is not None:
            node.proc.kill()
        helper.close()


def test_ai_node_runs_nothing_from_a_key_not_allowed_as_helper(tmp_path: Path,
                                                                 trust: Trust) -> None:
    async def main() -> None:
        async with mesh_ai(tmp_path, trust) as (node, helper):
            stranger_task = make_task("mark", b"")
            public, secret = zmq.curve_keypair()  # a fresh key, in no allow-list
            stranger = helper.push(node, KeyPair(public, secret, Role.HELPER))
            stranger.send(delivery(node, stranger_task, helper.ack_endpoint))  # queued
            client_task = make_task("mark", b"")  # a known key, of a role the node refuses
            client = helper.push(node, trust.keypair(Role.CLIENT))
            client.send(delivery(node, client_task, helper.ack_endpoint))
            wait_until(lambda: "refused a connection to mesh.tasks: unknown key" in node.log(),
                       15, what="the stranger refused")
            wait_until(lambda: "refused a connection to mesh.tasks: role client not admitted"
                       in node.log(), 15, what="the client key refused")
            trusted_task = make_task("mark", b"")
            await send(helper.push(node), delivery(node, trusted_task, helper.ack_endpoint))
            await helper.wait_ack(trusted_task.task_id, wire.DONE)
            assert node.ran(trusted_task.task_id)
            assert not node.ran(stranger_task.task_id) and not node.ran(client_task.task_id)
            assert helper.ack(stranger_task.task_id, wire.STARTED) is None
    asyncio.run(main())


def test_reply_to_flood_from_a_trusted_helper_keeps_links_bounded(tmp_path: Path,
                                                                  trust: Trust) -> None:
    """Today's failure: 1,100 bogus reply_to endpoints grew a node by GBs an hour. From a
    trusted Helper key (an untrusted one cannot connect at all), 600 distinct reply_to values
    and malformed ones: the links stop at --max-helpers, the rest are refused and counted,
    and the node still serves its real Helper."""
    async def main() -> None:
        async with mesh_ai(tmp_path, trust, "flood-1", "--max-helpers", "8") as (node, helper):
            push = helper.push(node)
            bogus = [f"tcp://127.0.0.1:{port}" for port in range(40000, 40600)]
            malformed = ["garbage", "tcp://*:5555", "udp://127.0.0.1:9", "inproc://acks",
                         "tcp://127.0.0.1:0", "tcp://127.0.0.1:99999", "tcp://h:1 x",
                         "tcp://" + "a" * 400 + ":1"]
            rss_before = _rss_kib(node.proc.pid)
            for i, reply_to in enumerate(bogus + malformed):
                await send(push, delivery(node, make_task("mark", b""), reply_to, i + 1))
            real = make_task("mark", b"")
            await send(push, delivery(node, real, helper.ack_endpoint, 10_000))
            await helper.wait_ack(real.task_id, wire.DONE)
            refused = 'mesh_ai_rejected_total{reason="too_many_helpers"}'
            wait_until(lambda: node.metric(refused) >= len(bogus) - 7, 15,
                       what="the refusals counted")
            assert node.metric("mesh_ai_helper_links ") <= 8
            assert node.metric('mesh_ai_rejected_total{reason="bad_reply_to"}') == len(malformed)
            assert node.metric(refused) == len(bogus) - 7  # its --helper link is one of the 8
            log = node.log()
            assert "max_helpers=8" in log and "reply_to" in log
            # rate-limited: one warning per reason per interval, not one per delivery
            assert len(re.findall("max_helpers=8 Helper links already", log)) <= 3
            assert _rss_kib(node.proc.pid) - rss_before < 50 * 1024
    asyncio.run(main())


def test_oversized_result_fails_the_attempt_fatally_naming_both_sizes(tmp_path: Path,
                                                                     trust: Trust) -> None:
    async def main() -> None:
        async with mesh_ai(tmp_path, trust, "big-1", "--max-result-bytes", "1000") as (
                node, helper):
            push = helper.push(node)
            small, large = make_task("big", b"1000"), make_task("big", b"5000")
            await send(push, delivery(node, small, helper.ack_endpoint, 1))
            await send(push, delivery(node, large, helper.ack_endpoint, 2))
            done = await helper.wait_ack(small.task_id, wire.DONE)
            assert len(done.result) == 1000
            failed = await helper.wait_ack(large.task_id, wire.FAILED)
            assert failed.error_class == wire.FATAL
            assert "5000 bytes" in failed.error and "max_result_bytes of 1000" in failed.error
            assert not failed.result
    asyncio.run(main())


def test_a_newline_in_wire_text_cannot_forge_an_ai_node_log_line(tmp_path: Path,
                                                                  trust: Trust) -> None:
    async def main() -> None:
        async with mesh_ai(tmp_path, trust, "inert-1") as (node, helper):
            push = helper.push(node)
            forged = "tcp://127.0.0.1:1\nFORGED-LINE INFO mesh.ai: all is well"
            await send(push, delivery(node, make_task("mark", b""), forged))
            wait_until(lambda: "tcp://127.0.0.1:1\\nFORGED-LINE" in node.log(), 15,
                       what="the escaped reply_to in the log")
            assert not [line for line in node.log().splitlines()
                        if line.startswith("FORGED-LINE")]
    asyncio.run(main())


def test_a_node_id_with_a_newline_is_refused_at_start(tmp_path: Path, trust: Trust) -> None:
    """The node id names the node's key: a newline (or any character that could forge a log
    line or a path) stops `mesh ai` at startup with the reason, before it binds."""
    env = {"MESH_KEY_DIR": str(trust.store.root), "MESH_LOG_LEVEL": "INFO"}
    proc = NodeProcess(["ai", "--app", "tests.integration.trust_app:app", "--node-id",
                        "n1\nFORGED-LINE", "--discovery", f"embedded://{tmp_path / 'r'}"],
                       env=env, log_path=tmp_path / "bad.log", name="bad")
    with pytest.raises(Exception):  # noqa: B017, PT011 - no READY: it exits
        proc.start(timeout_s=20)
    proc.kill()
    text = (tmp_path / "bad.log").read_text(errors="replace")
    assert "key identity" in text and "n1\\nFORGED-LINE" in text
    assert not [line for line in text.splitlines() if line.startswith("FORGED-LINE")]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_acks_never_reach_a_forged_reply_to_without_the_helpers_secret(tmp_path: Path,
                                                                       trust: Trust) -> None:
    """A trusted Helper's delivery names an endpoint someone else listens on (a plain PULL, a
    CURVE PULL with its own key): the node pins the sending Helper's key, so the handshake
    fails and not one ack (results included) leaves for it."""
    from zmq.utils.monitor import recv_monitor_message
    failed_events = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    async def main() -> None:
        async with mesh_ai(tmp_path, trust, "forged-1") as (node, helper):
            ctx = zmq.Context()
            plain = ctx.socket(zmq.PULL)
            plain_ep = f"tcp://127.0.0.1:{plain.bind_to_random_port('tcp://127.0.0.1')}"
            # a CURVE server with a key of its own that admits any client (no ZAP): only the
            # pinned server key can make its handshake fail
            impostor = ctx.socket(zmq.PULL)
            public, secret = zmq.curve_keypair()
            impostor.curve_server = True
            impostor.curve_secretkey = secret
            impostor.curve_publickey = public
            impostor_ep = f"tcp://127.0.0.1:{impostor.bind_to_random_port('tcp://127.0.0.1')}"
            monitors = [s.get_monitor_socket(failed_events) for s in (plain, impostor)]
            try:
                push = helper.push(node)
                tasks = [make_task("mark", b""), make_task("mark", b"")]
                await send(push, delivery(node, tasks[0], plain_ep, 1))
                await send(push, delivery(node, tasks[1], impostor_ep, 2))
                wait_until(lambda: all(node.ran(t.task_id) for t in tasks), 15,
                           what="both deliveries run (they came from a trusted key)")

                def refused(monitor: zmq.Socket) -> bool:
                    while monitor.poll(0):
                        if recv_monitor_message(monitor)["event"] & failed_events:
                            return True
                    return False
                wait_until(lambda: refused(monitors[0]), 15, what="the plain listener refused")
                wait_until(lambda: refused(monitors[1]), 15, what="the impostor refused")
                assert not plain.poll(0) and not impostor.poll(0)
            finally:
                for sock in (*monitors, plain, impostor):
                    sock.close(linger=0)
                ctx.term()
    asyncio.run(main())
