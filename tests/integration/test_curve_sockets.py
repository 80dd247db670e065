"""CURVE on real sockets over loopback TCP: who gets in, and what their frames say.

Every server here is made the way phase 2 wires the nodes: `trust.server(ctx, ROLE, DOMAIN)`
handed to the factory in `mesh.sockets`, frames read by a `FrameReader(with_user_id=True)`.
A refusal is observed as the server's handshake-failed event (socket monitor), then the test
checks that not one frame got through: no fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from mesh import sockets
from mesh.trust import (
    ClientLink, Domain, KeyPair, KeyStore, Operation, Role, ServerLink, Trust, TrustError,
    load_certificate, load_keypair, role_of, write_keypair,
)
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(60)

LOOPBACK = "tcp://127.0.0.1:0"
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class Inbox:
    """What a FrameReader(with_user_id=True) handed over, and the server's handshake events."""

    def __init__(self, sock: zmq.Socket, *, multipart: bool) -> None:
        self.messages: list[tuple[object, str]] = []
        self.reader = sockets.FrameReader(sock, lambda m, uid: self.messages.append((m, uid)),
                                          multipart=multipart, with_user_id=True)
        self._monitor = sock.get_monitor_socket(HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.failed = 0
        self.succeeded = 0

    def start(self) -> Inbox:
        self.reader.start(asyncio.get_running_loop())
        return self

    def _events(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] & HANDSHAKE_FAILED:
                self.failed += 1
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded += 1

    async def handshake_failed(self) -> None:
        async def failed() -> bool:
            self._events()
            return self.failed > 0
        await async_wait_until(failed, 10.0, what="a failed handshake on the server")

    async def received(self, count: int = 1) -> None:
        async def enough() -> bool:
            return len(self.messages) >= count
        await async_wait_until(enough, 10.0, what=f"{count} messages")

    def close(self) -> None:
        self.reader.stop()
        self._monitor.close(linger=0)


@asynccontextmanager
async def serving(trust: Trust, factory, role: Role, domain: Domain,  # noqa: ANN001
                  *, multipart: bool, **kwargs):  # noqa: ANN003, ANN202
    """A server socket of `factory`, in its own context (its own process, in real life)."""
    ctx = sockets.new_context()
    link = trust.server(ctx, role, domain)
    args = (LOOPBACK,) if factory in (sockets.alert_pub, sockets.replay_router) else \
        (LOOPBACK, 2**20)
    sock, endpoint = factory(sockets.sync_view(ctx), *args, link=link, **kwargs)
    inbox = Inbox(sock, multipart=multipart).start()
    try:
        yield sock, endpoint, inbox
    finally:
        inbox.close()
        sock.close(linger=0)
        trust.release(ctx)
        ctx.term()


@asynccontextmanager
async def client_context():  # noqa: ANN202
    ctx = sockets.new_context()
    opened: list[zmq.Socket] = []
    try:
        yield sockets.sync_view(ctx), opened
    finally:
        for sock in opened:
            sock.close(linger=0)
        ctx.term()


@pytest.fixture
def trust(tmp_path: Path) -> Trust:
    t = Trust.local(tmp_path / "keys")
    yield t
    t.close()


def _stranger(role: Role) -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret, role)


# ---- who gets in ------------------------------------------------------------------------

def test_allowed_client_frames_arrive_with_its_role_and_key(trust: Trust) -> None:
    async def main() -> None:
        async with serving(trust, sockets.intake_router, Role.HELPER, Domain.INTAKE,
                           multipart=True) as (router, endpoint, inbox), \
                client_context() as (ctx, opened):
            dealer = sockets.client_dealer(ctx, endpoint,
                                           link=trust.client(Role.CLIENT, Role.HELPER))
            opened.append(dealer)
            dealer.send(b"submit please")
            await inbox.received()
            (identity, body), user_id = inbox.messages[0]
            client_key = trust.keypair(Role.CLIENT).public_z85
            assert body == b"submit please"
            assert user_id == f"client:{client_key}"
            assert role_of(user_id) is Role.CLIENT
            assert trust.permits(user_id, Operation.SUBMIT)
            assert not trust.permits(user_id, Operation.DEAD_LETTER_PURGE)
            router.send_multipart([identity, b"accepted"])  # and the reply finds its way back
            assert dealer.poll(5000) and dealer.recv() == b"accepted"
            # an operator key is admitted to the same socket, as an operator
            operator = sockets.client_dealer(ctx, endpoint,
                                             link=trust.client(Role.OPERATOR, Role.HELPER))
            opened.append(operator)
            operator.send(b"stats")
            await inbox.received(2)
            assert role_of(inbox.messages[1][1]) is Role.OPERATOR
            assert trust.permits(inbox.messages[1][1], Operation.STATS)
    asyncio.run(main())


def test_client_with_no_key_gets_nothing_through(trust: Trust) -> None:
    async def main() -> None:
        async with serving(trust, sockets.intake_router, Role.HELPER, Domain.INTAKE,
                           multipart=True) as (_, endpoint, inbox), \
                client_context() as (ctx, opened):
            plain = sockets.client_dealer(ctx, endpoint)  # no link: a plain (NULL) client
            opened.append(plain)
            plain.send(b"let me in")
            await inbox.handshake_failed()
            assert inbox.messages == [] and inbox.succeeded == 0
    asyncio.run(main())


@pytest.mark.parametrize("who", ["stranger", "wrong_role", "unknown_role"])
def test_client_key_not_allowed_on_the_socket_is_refused(trust: Trust, tmp_path: Path,
                                                         who: str) -> None:
    """A key the store does not know; a known key of a role the intake does not admit (an AI
    node's); a key filed under a role no one has heard of."""
    if who == "stranger":
        key, reason = _stranger(Role.CLIENT), "unknown key"
    elif who == "wrong_role":
        key, reason = trust.keypair(Role.AI_NODE), "role ai-node not admitted"
    else:
        wizard = trust.store.allowed_dir / "wizard"
        wizard.mkdir(mode=0o700)
        public, secret = zmq.curve_keypair()
        (wizard / "w.key").write_text(f'curve\n    public-key = "{public.decode()}"\n')
        trust.reload()
        key, reason = KeyPair(public, secret), "unknown key"

    async def main() -> None:
        async with serving(trust, sockets.intake_router, Role.HELPER, Domain.INTAKE,
                           multipart=True) as (_, endpoint, inbox), \
                client_context() as (ctx, opened):
            helper_key = trust.store.server_key(Role.HELPER)
            dealer = ctx.socket(zmq.DEALER)
            opened.append(dealer)
            sockets.connect(dealer, endpoint, ClientLink(key, helper_key))
            dealer.send(b"submit")
            await inbox.handshake_failed()
            assert inbox.messages == [] and inbox.succeeded == 0
            assert trust.refused[(Domain.INTAKE.value, reason)] >= 1
    asyncio.run(main())


def test_client_pinning_another_server_key_gets_nothing_through(trust: Trust) -> None:
    async def main() -> None:
        async with serving(trust, sockets.intake_router, Role.HELPER, Domain.INTAKE,
                           multipart=True) as (_, endpoint, inbox), \
                client_context() as (ctx, opened):
            impostor_key = _stranger(Role.HELPER).public_key  # what a fake Helper would hold
            dealer = ctx.socket(zmq.DEALER)
            opened.append(dealer)
            sockets.connect(dealer, endpoint,
                            ClientLink(trust.keypair(Role.CLIENT), impostor_key))
            dealer.send(b"submit")
            await inbox.handshake_failed()
            assert inbox.messages == []
    asyncio.run(main())


def test_curve_server_without_a_zap_handler_admits_nobody(trust: Trust) -> None:
    """Fail closed: a CURVE server whose context has no ZAP handler refuses every key
    (ZeroMQ alone would admit any)."""
    async def main() -> None:
        ctx = sockets.new_context()
        link = ServerLink(trust.keypair(Role.HELPER), Domain.INTAKE)  # no trust.server(): no ZAP
        router, endpoint = sockets.intake_router(sockets.sync_view(ctx), LOOPBACK, 2**20,
                                                 link=link)
        inbox = Inbox(router, multipart=True).start()
        try:
            async with client_context() as (cctx, opened):
                dealer = sockets.client_dealer(cctx, endpoint,
                                               link=trust.client(Role.CLIENT, Role.HELPER))
                opened.append(dealer)
                dealer.send(b"submit")
                await inbox.handshake_failed()
                assert inbox.messages == []
        finally:
            inbox.close()
            router.close(linger=0)
            ctx.term()
    asyncio.run(main())


def test_a_failing_zap_decision_refuses_that_client_and_serves_the_next(
        trust: Trust, monkeypatch: pytest.MonkeyPatch) -> None:
    real = trust.store.role_of_key
    calls = []

    def broken_once(key):  # noqa: ANN001, ANN202
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("bug in a credentials check")
        return real(key)
    monkeypatch.setattr(trust.store, "role_of_key", broken_once)

    async def main() -> None:
        async with serving(trust, sockets.intake_router, Role.HELPER, Domain.INTAKE,
                           multipart=True) as (_, endpoint, inbox), \
                client_context() as (ctx, opened):
            link = trust.client(Role.CLIENT, Role.HELPER)
            first = sockets.client_dealer(ctx, endpoint, link=link)
            opened.append(first)
            first.send(b"submit 1")
            await inbox.handshake_failed()   # the first client met the bug: refused
            # (a refused ZeroMQ client does not reconnect: a new socket is a new attempt)
            second = sockets.client_dealer(ctx, endpoint, link=link)
            opened.append(second)
            second.send(b"submit 2")
            await inbox.received()           # the handler is still serving
            assert inbox.messages[0][0][1] == b"submit 2"
            assert role_of(inbox.messages[0][1]) is Role.CLIENT
    asyncio.run(main())


# ---- every kind of link ------------------------------------------------------------------

def test_acks_come_from_node_keys_and_deliveries_from_helper_keys(trust: Trust) -> None:
    async def main() -> None:
        async with serving(trust, sockets.ack_pull, Role.HELPER, Domain.ACKS,
                           multipart=False) as (_, ack_ep, acks), \
                serving(trust, sockets.task_pull, Role.AI_NODE, Domain.TASKS,
                        multipart=False) as (_, task_ep, tasks), \
                client_context() as (ctx, opened):
            ack = sockets.ack_push(ctx, ack_ep, link=trust.client(Role.AI_NODE, Role.HELPER))
            push = sockets.dispatch_push(ctx, task_ep,
                                         link=trust.client(Role.HELPER, Role.AI_NODE))
            opened += [ack, push]
            ack.send(b"DONE t1")

            async def sent() -> bool:  # IMMEDIATE: the PUSH sends only once the link is up
                try:
                    push.send(b"run t1", zmq.NOBLOCK)
                    return True
                except zmq.Again:
                    return False
            await async_wait_until(sent, 10.0, what="the delivery link")
            await acks.received()
            await tasks.received()
            assert acks.messages[0][0] == b"DONE t1"
            assert role_of(acks.messages[0][1]) is Role.AI_NODE
            assert trust.permits(acks.messages[0][1], Operation.ACK)
            assert tasks.messages[0][0] == b"run t1"
            assert role_of(tasks.messages[0][1]) is Role.HELPER
            assert trust.permits(tasks.messages[0][1], Operation.DELIVERY)
            assert not trust.permits(tasks.messages[0][1], Operation.ACK)
    asyncio.run(main())


def test_alerts_reach_notifier_keys_and_no_other(trust: Trust) -> None:
    async def main() -> None:
        async with serving(trust, sockets.alert_pub, Role.HELPER, Domain.ALERTS,
                           multipart=True) as (pub, pub_ep, pub_inbox), \
                serving(trust, sockets.replay_router, Role.HELPER, Domain.ALERTS,
                        multipart=True) as (_, replay_ep, replays), \
                client_context() as (ctx, opened):
            notifier = sockets.alert_sub(ctx)
            sockets.connect(notifier, pub_ep, trust.client(Role.NOTIFIER, Role.HELPER))
            notifier.subscribe(b"")
            nosy = sockets.alert_sub(ctx)  # a client key, not a notifier's
            sockets.connect(nosy, pub_ep, trust.client(Role.CLIENT, Role.HELPER))
            nosy.subscribe(b"")
            replay = sockets.replay_dealer(ctx, replay_ep,
                                           link=trust.client(Role.NOTIFIER, Role.HELPER))
            opened += [notifier, nosy, replay]

            async def notified() -> bool:  # PUB drops until the subscription arrives
                pub.send_multipart([b"alert", b"fault"])
                return notifier.poll(20) and notifier.recv_multipart() == [b"alert", b"fault"]
            await async_wait_until(notified, 10.0, what="the notifier's first alert")
            await pub_inbox.handshake_failed()  # the client key's SUB was refused
            pub.send_multipart([b"alert", b"again"])
            assert notifier.poll(5000)
            assert nosy.poll(0) == 0
            assert trust.refused[(Domain.ALERTS.value, "role client not admitted")] >= 1
            replay.send(b"from 1")
            await replays.received()
            assert role_of(replays.messages[0][1]) is Role.NOTIFIER
            assert trust.permits(replays.messages[0][1], Operation.ALERT_REPLAY)
    asyncio.run(main())


def test_plain_links_still_work_and_carry_no_role() -> None:
    """--insecure: the same factories with link=None, frames with an empty User-Id."""
    trust = Trust.plain()

    async def main() -> None:
        async with serving(trust, sockets.ack_pull, Role.HELPER, Domain.ACKS,
                           multipart=False) as (_, endpoint, inbox), \
                client_context() as (ctx, opened):
            ack = sockets.ack_push(ctx, endpoint, link=trust.client(Role.AI_NODE, Role.HELPER))
            opened.append(ack)
            ack.send(b"DONE")
            await inbox.received()
            assert inbox.messages[0] == (b"DONE", "")
            assert role_of(inbox.messages[0][1]) is None
            assert trust.permits(inbox.messages[0][1], Operation.ACK)
    asyncio.run(main())


# ---- lifecycle ----------------------------------------------------------------------------

def test_one_zap_handler_per_context_and_release_lets_the_context_end(trust: Trust,
                                                                      tmp_path: Path) -> None:
    async def main() -> None:
        ctx = sockets.new_context()
        trust.server(ctx, Role.HELPER, Domain.INTAKE)
        trust.server(sockets.sync_view(ctx), Role.HELPER, Domain.ACKS)  # same context: reused
        other = Trust(KeyStore(trust.store.root).load())
        with pytest.raises(TrustError, match="one per context"):
            other.server(ctx, Role.HELPER, Domain.INTAKE)
        trust.release(ctx)
        trust.release(ctx)  # idempotent
        ctx.term()  # would block forever with the ZAP socket still open
    asyncio.run(main())


# ---- the CLI -------------------------------------------------------------------------------

def _mesh(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "nodes.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


def test_mesh_keys_new_makes_a_private_role_key_pair(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    done = _mesh("keys", "new", "--role", "client", "--out", str(out))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    public, secret = out / "client.key", out / "client.key_secret"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert zmq.auth.load_certificate(public)[0].decode() == info["public_key"]
    assert zmq.auth.load_certificate(secret)[1] is not None
    assert load_certificate(public).role is Role.CLIENT
    again = _mesh("keys", "new", "--role", "client", "--out", str(out))
    assert again.returncode != 0 and "exists" in again.stderr
    # and the operator's way across hosts: trust that key in a store, then connect with it
    store = tmp_path / "store"
    env = {**os.environ, "MESH_KEY_DIR": str(store)}
    assert _mesh("keys", "local", env=env).returncode == 0
    done = _mesh("keys", "allow", "--role", "client", str(public), "--name", "laptop", env=env)
    assert done.returncode == 0, done.stderr
    assert KeyStore(store).load().role_of_key(info["public_key"]) is Role.CLIENT


def test_write_keypair_and_allow_admit_a_remote_client(trust: Trust, tmp_path: Path) -> None:
    """The cross-host path in-process: a key made elsewhere, its public half allowed."""
    public, secret = write_keypair(tmp_path / "remote", "laptop", Role.CLIENT)
    trust.store.allow(Role.CLIENT, public)
    remote = load_keypair(secret)

    async def main() -> None:
        async with serving(trust, sockets.intake_router, Role.HELPER, Domain.INTAKE,
                           multipart=True) as (_, endpoint, inbox), \
                client_context() as (ctx, opened):
            dealer = ctx.socket(zmq.DEALER)
            opened.append(dealer)
            sockets.connect(dealer, endpoint,
                            ClientLink(remote, trust.store.server_key(Role.HELPER)))
            dealer.send(b"hi")
            await inbox.received()
            assert inbox.messages[0][1] == f"client:{remote.public_z85}"
    asyncio.run(main())
