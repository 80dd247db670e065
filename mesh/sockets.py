"""The ZeroMQ context and every socket's options, in one place.

Only this module creates a context or sets socket options, so each option is chosen once and
its reason is written next to it. Each process has one `zmq.asyncio.Context` (a child process
builds its own); sockets are owned by one task each and closed with an explicit linger.
"""

from __future__ import annotations

import logging

import zmq
import zmq.asyncio

from mesh.errors import AddressInUse
from mesh.trust import ClientLink, KeyPair, ServerLink

log = logging.getLogger("mesh.sockets")

#: what a factory's `link=` takes: a ServerLink for a binding socket, a ClientLink for a
#: connecting one, or None for a plain link (`--insecure`; Trust hands out None then)
Link = ServerLink | ClientLink | None

#: how long a closing socket may try to deliver what it still holds. Tasks never rely on it (the
#: journal is the source of truth), acks and replies get a moment.
CLOSE_LINGER_MS = 200


def new_context() -> zmq.asyncio.Context:
    ctx = zmq.asyncio.Context()
    # A closed socket must never hang term(): pending messages are dropped after linger.
    ctx.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
    return ctx


def new_sync_context() -> zmq.Context:
    """A context for blocking use (SyncClient), with the same linger rule."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
    return ctx


def sync_view(ctx: zmq.asyncio.Context) -> zmq.Context:
    """The same context for sockets that are only ever used with NOBLOCK from the loop
    thread (per-node PUSH): no future per send."""
    return zmq.Context.shadow(ctx.underlying)


def _common(sock: zmq.Socket, max_message_bytes: int | None) -> None:
    if max_message_bytes is not None:
        # A peer sending a larger frame is disconnected by ZeroMQ before we allocate it.
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    # Dead TCP peers (power loss, cable) are noticed by ZMTP pings, not only by the OS after minutes.
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 3000)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    # Reconnect backoff up to 2 s, so a node restarted at the same address is found quickly.
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)


def curve_server(sock: zmq.Socket, keypair: KeyPair, domain: str) -> None:
    """Make a not yet bound socket a CURVE server whose clients the ZAP handler of `domain`
    admits (mesh.trust.Trust.server starts that handler). Set before bind: ZeroMQ reads the
    mechanism when a connection is made."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public_key)
    sock.setsockopt(zmq.ZAP_DOMAIN, str(domain).encode())
    # Fail closed: without this, a context with no ZAP handler lets every CURVE key in.
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def curve_client(sock: zmq.Socket, keypair: KeyPair, server_public_key: bytes | str) -> None:
    """Make a not yet connected socket a CURVE client of the server holding the secret of
    `server_public_key` (Z85): the handshake fails against any other server."""
    if isinstance(server_public_key, str):
        server_public_key = server_public_key.encode("ascii")
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public_key)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret_key)


def secure(sock: zmq.Socket, link: Link) -> None:
    """Apply a link's security before bind/connect; None leaves the link plain."""
    if link is None:
        return
    if isinstance(link, ServerLink):
        curve_server(sock, link.keypair, link.domain)
    elif isinstance(link, ClientLink):
        curve_client(sock, link.keypair, link.server_key)
    else:
        raise TypeError(f"link must be a ServerLink, a ClientLink or None, not {link!r}")


_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _never_has_user_id(sock: zmq.Socket) -> bool:
    """No frame read from `sock` can carry a ZAP User-Id: its mechanism is NULL and it has no
    ZAP domain (libzmq runs ZAP for NULL only with a domain set)."""
    return (sock.getsockopt(zmq.MECHANISM) == zmq.NULL
            and not sock.getsockopt(zmq.ZAP_DOMAIN))


def user_id(frame: zmq.Frame) -> str:
    """The ZAP User-Id ZeroMQ attached to a frame received with copy=False ("" on a plain
    link); mesh.trust.role_of reads the role from it."""
    try:
        return frame.get("User-Id") or ""
    except zmq.ZMQError:  # EINVAL: no ZAP metadata on this connection
        return ""


class EndpointInUse(AddressInUse, zmq.ZMQError):
    """EADDRINUSE on a bind, naming the endpoint. Still a ZMQError: callers that fall back from
    a taken port (the Helper's previous endpoints) catch it as before."""

    def __init__(self, endpoint: str) -> None:
        message = f"{endpoint} is in use by another process; stop it or choose another port"
        Exception.__init__(self, message)
        self.endpoint = endpoint
        self.errno = zmq.EADDRINUSE
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind and return the real endpoint (port 0 -> the port the OS chose). A socket that
    cannot bind is closed at once, not left to the garbage collector. A taken port raises
    `EndpointInUse` (a `mesh.errors.AddressInUse` naming the endpoint)."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        if exc.errno == zmq.EADDRINUSE:
            raise EndpointInUse(endpoint) from exc
        raise
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def intake_router(ctx: zmq.asyncio.Context, endpoint: str, max_message_bytes: int, *,
                  link: Link = None) -> tuple:
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, max_message_bytes)
    # Replies to a client that went away or does not read must never block the intake nor pile
    # up: at 10,000 unread replies per client a send fails at once; MANDATORY makes both cases
    # an error the Helper counts (EAGAIN: not reading; EHOSTUNREACH: gone) instead of a silent
    # drop, and tells it which clients are gone (their long-polls are dropped).
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    secure(sock, link)
    return sock, bind(sock, endpoint)


def ack_pull(ctx: zmq.asyncio.Context, endpoint: str, max_message_bytes: int, *,
             link: Link = None) -> tuple:
    sock = ctx.socket(zmq.PULL)
    _common(sock, max_message_bytes)
    # Acks are small and bounded by credit; a generous HWM keeps nodes from blocking on us.
    sock.setsockopt(zmq.RCVHWM, 100_000)
    secure(sock, link)
    return sock, bind(sock, endpoint)


def task_pull(ctx: zmq.asyncio.Context, endpoint: str, max_message_bytes: int, *,
              link: Link = None) -> tuple:
    sock = ctx.socket(zmq.PULL)
    _common(sock, max_message_bytes)
    # Helpers send only against credit, so this never holds more than concurrency + prefetch.
    sock.setsockopt(zmq.RCVHWM, 10_000)
    secure(sock, link)
    return sock, bind(sock, endpoint)


def dispatch_push(ctx: zmq.Context, endpoint: str, *, link: Link = None) -> zmq.Socket:
    """One PUSH per AI node: the Helper chooses the node, ZeroMQ never round-robins blindly."""
    sock = ctx.socket(zmq.PUSH)
    _common(sock, None)
    # Send only over a completed connection: a delivery never waits in a pipe to a node that is
    # not there (EAGAIN instead; the task goes back to the queue).
    sock.setsockopt(zmq.IMMEDIATE, 1)
    # A memory fuse, not flow control (credit is): beyond this the node is not reading.
    sock.setsockopt(zmq.SNDHWM, 10_000)
    # Closing a dead node's socket must drop what it holds at once: those tasks are re-queued.
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, link)
    sock.connect(endpoint)
    return sock


def ack_push(ctx: zmq.asyncio.Context, endpoint: str, *, link: Link = None,
             immediate: bool = False) -> zmq.Socket:
    """An AI node's channel to one Helper's ack endpoint."""
    sock = ctx.socket(zmq.PUSH)
    _common(sock, None)
    if immediate:
        # A link learned from a delivery's reply_to queues nothing before its handshake
        # completes: an endpoint that never answers costs a socket, not a pile of heartbeats.
        sock.setsockopt(zmq.IMMEDIATE, 1)
    # Acks queue while the Helper restarts and flow when it is back (no IMMEDIATE): a DONE
    # written before the restart is still delivered. Bounded so a long outage cannot eat memory;
    # what does not fit is recovered by redelivery and the node's de-duplication window.
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.LINGER, 1000)
    secure(sock, link)
    sock.connect(endpoint)
    return sock


def client_dealer(ctx: zmq.Context, endpoint: str, *, link: Link = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock, None)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    # Requests queued while the Helper is away go out when it is back; a submit is idempotent.
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, link)
    sock.connect(endpoint)
    return sock


def alert_pub(ctx: zmq.asyncio.Context, endpoint: str, *, link: Link = None) -> tuple:
    sock = ctx.socket(zmq.PUB)
    _common(sock, 1 * 2**20)
    # PUB drops at HWM; the sequence numbers and the replay endpoint recover what a slow
    # subscriber missed, so a large HWM only buys time.
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.LINGER, 500)
    secure(sock, link)
    return sock, bind(sock, endpoint)


def alert_sub(ctx: zmq.asyncio.Context, *, link: Link = None) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    _common(sock, 1 * 2**20)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    secure(sock, link)
    return sock


def replay_router(ctx: zmq.asyncio.Context, endpoint: str, *, link: Link = None) -> tuple:
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, 64 * 1024)
    secure(sock, link)
    return sock, bind(sock, endpoint)


def replay_dealer(ctx: zmq.asyncio.Context, endpoint: str, *, link: Link = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock, 64 * 2**20)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, link)
    sock.connect(endpoint)
    return sock


def repl_router(ctx: zmq.asyncio.Context, endpoint: str, max_message_bytes: int, *,
                link: Link = None) -> tuple:
    """A Helper group member's replication ROUTER (followers connect to the leader's)."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, max_message_bytes)
    # Appends to a follower that stopped reading are refused at the HWM (EAGAIN, with
    # ROUTER_MANDATORY): the leader sends them again on its next tick (mesh/group.py _pump).
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a follower that is gone raises, not a silent drop
    secure(sock, link)
    return sock, bind(sock, endpoint)


def repl_dealer(ctx: zmq.asyncio.Context, endpoint: str, max_message_bytes: int, *,
                link: Link = None) -> zmq.Socket:
    """A follower's link to its leader's replication ROUTER."""
    sock = ctx.socket(zmq.DEALER)
    _common(sock, max_message_bytes)
    sock.setsockopt(zmq.LINGER, 0)  # what a dead leader did not read is re-sent after a Hello
    # No queueing for a leader not yet connected: a Hello goes out once the link is up.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    secure(sock, link)
    sock.connect(endpoint)
    return sock


def connect(sock: zmq.Socket, endpoint: str, link: Link = None) -> None:
    """Connect with this connection's own security: CURVE options are read at connect time,
    so one SUB can pin a different publisher key for each publisher it connects to."""
    secure(sock, link)
    sock.connect(endpoint)


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


class FrameReader:
    """Hands each message of a socket to a callback, straight from the event loop's reader on
    the socket's file descriptor: no future and no task switch per message (what a
    `zmq.asyncio` poll costs on the hot path).

    ZeroMQ's descriptor is edge-triggered: it signals that the socket's state may have
    changed, not that a message waits. So every wake-up drains until EAGAIN (or `batch_max`,
    then yields and comes back), and a caller that *sends* on the same socket calls `wake()`
    afterwards, because a send can consume the edge of a message that arrived meanwhile.
    One owner: the loop thread. `stop()` removes the reader; closing the socket is the
    owner's business.

    With `with_user_id=True` the callback gets `(message, user_id)`: the sender's ZAP
    User-Id ("ROLE:KEY" on a CURVE link, "" on a plain one), read from the frame's metadata
    (frames are received with copy=False for it). Pass it to `Trust.permits`.
    """

    def __init__(self, sock: zmq.Socket, on_message, *, multipart: bool = False,  # noqa: ANN001
                 batch_max: int = 1000, on_batch_end=None,  # noqa: ANN001
                 with_user_id: bool = False) -> None:
        self._sock = sock
        self._on_message = on_message
        self._multipart = multipart
        self._with_user_id = with_user_id
        self._batch_max = batch_max
        self._on_batch_end = on_batch_end
        self._loop = None
        self._scheduled = False
        self._fd = sock.getsockopt(zmq.FD)
        #: a plain link (NULL mechanism, no ZAP domain: ZAP never runs, so no frame carries a
        #: User-Id): "" without asking each frame, which costs a raised ZMQError per frame
        self._plain = _never_has_user_id(sock)

    def start(self, loop) -> None:  # noqa: ANN001
        self._loop = loop
        loop.add_reader(self._fd, self._ready)
        self.wake()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None

    def wake(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._ready)

    def _ready(self) -> None:
        self._scheduled = False
        if self._loop is not None:
            self._drain(self._batch_max)

    def read_now(self, limit: int) -> bool:
        """Handle up to `limit` waiting messages now, in the caller's turn (and the batch end,
        if any came); True when none is left waiting, else the rest are read on a later turn.
        For an owner that would rather take a few messages first than hand work elsewhere."""
        if self._loop is None:
            return False
        return self._drain(limit)

    def _drain(self, limit: int) -> bool:
        sock = self._sock
        recv = sock.recv_multipart if self._multipart else sock.recv
        on_message = self._on_message
        if self._with_user_id:
            recv = self._recv_frames if self._multipart else self._recv_frame

            def on_message(pair: tuple, deliver=self._on_message) -> None:  # noqa: ANN001
                deliver(*pair)
        events = sock.getsockopt
        count = 0
        # Ask before each read rather than read until zmq.Again: raising and catching that
        # exception costs more than the question, on every wake-up. Plain ints: `& zmq.POLLIN`
        # (an enum.Flag) builds an enum member per question.
        while count < limit and events(_EVENTS) & _POLLIN:
            try:
                message = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            count += 1
            try:
                on_message(message)
            except Exception:  # a bug in one handler must not stop the socket's reader
                log.exception("handling a message failed")
        if count and self._on_batch_end is not None:
            try:
                self._on_batch_end()
            except Exception:
                log.exception("handling a batch failed")
        if count >= limit:
            self.wake()  # more may wait: come back after the loop's other work
            return False
        return True

    def _recv_frame(self, flags: int) -> tuple[bytes, str]:
        if self._plain:
            return self._sock.recv(flags), ""
        frame = self._sock.recv(flags, copy=False)
        return frame.bytes, user_id(frame)

    def _recv_frames(self, flags: int) -> tuple[list[bytes], str]:
        if self._plain:
            return self._sock.recv_multipart(flags), ""
        frames = self._sock.recv_multipart(flags, copy=False)
        return [f.bytes for f in frames], user_id(frames[-1])
