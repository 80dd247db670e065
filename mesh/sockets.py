"""The ZeroMQ context and every socket's options, in one place.

Only this module creates a context or sets socket options, so each option is chosen once and
its reason is written next to it. Each process has one `zmq.asyncio.Context` (a child process
builds its own); sockets are owned by one task each and closed with an explicit linger.
"""

from __future__ import annotations

import zmq
import zmq.asyncio

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


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind and return the real endpoint (port 0 -> the port the OS chose). A socket that
    cannot bind is closed at once, not left to the garbage collector."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def intake_router(ctx: zmq.asyncio.Context, endpoint: str, max_message_bytes: int) -> tuple:
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, max_message_bytes)
    # Replies to a client that went away must not block the intake; ROUTER drops them (counted
    # by the client's own timeout and idempotent resubmit).
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    return sock, bind(sock, endpoint)


def ack_pull(ctx: zmq.asyncio.Context, endpoint: str, max_message_bytes: int) -> tuple:
    sock = ctx.socket(zmq.PULL)
    _common(sock, max_message_bytes)
    # Acks are small and bounded by credit; a generous HWM keeps nodes from blocking on us.
    sock.setsockopt(zmq.RCVHWM, 100_000)
    return sock, bind(sock, endpoint)


def task_pull(ctx: zmq.asyncio.Context, endpoint: str, max_message_bytes: int) -> tuple:
    sock = ctx.socket(zmq.PULL)
    _common(sock, max_message_bytes)
    # Helpers send only against credit, so this never holds more than concurrency + prefetch.
    sock.setsockopt(zmq.RCVHWM, 10_000)
    return sock, bind(sock, endpoint)


def dispatch_push(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
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
    sock.connect(endpoint)
    return sock


def ack_push(ctx: zmq.asyncio.Context, endpoint: str) -> zmq.Socket:
    """An AI node's channel to one Helper's ack endpoint."""
    sock = ctx.socket(zmq.PUSH)
    _common(sock, None)
    # Acks queue while the Helper restarts and flow when it is back (no IMMEDIATE): a DONE
    # written before the restart is still delivered. Bounded so a long outage cannot eat memory;
    # what does not fit is recovered by redelivery and the node's de-duplication window.
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    return sock


def client_dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock, None)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    # Requests queued while the Helper is away go out when it is back; a submit is idempotent.
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def alert_pub(ctx: zmq.asyncio.Context, endpoint: str) -> tuple:
    sock = ctx.socket(zmq.PUB)
    _common(sock, 1 * 2**20)
    # PUB drops at HWM; the sequence numbers and the replay endpoint recover what a slow
    # subscriber missed, so a large HWM only buys time.
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.LINGER, 500)
    return sock, bind(sock, endpoint)


def alert_sub(ctx: zmq.asyncio.Context) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    _common(sock, 1 * 2**20)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    return sock


def replay_router(ctx: zmq.asyncio.Context, endpoint: str) -> tuple:
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, 64 * 1024)
    return sock, bind(sock, endpoint)


def replay_dealer(ctx: zmq.asyncio.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock, 64 * 2**20)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def send_now(sock: zmq.asyncio.Socket, frames: list) -> bool:
    """Send without waiting on a socket that a reader task also polls.

    Sending through the asyncio socket (not a raw shadow) matters: a send may consume the edge of
    the socket's file descriptor, and pyzmq re-arms its poller only for sends it sees. Returns
    False when the message could not be queued (HWM reached, or no peer for ROUTER).
    """
    future = sock.send_multipart(frames, flags=zmq.NOBLOCK)
    if future.done() and future.exception() is not None:
        return False
    return True


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])
