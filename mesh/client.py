"""Submit tasks to a Helper from another process, and ask for their status and results.

    async with Client("tcp://127.0.0.1:7001") as client:
        task_id = await client.submit("vision", b"...")
        result = await client.result(task_id, timeout=30)

Guarantees: `submit` returns only when the Helper has the task on disk. If it raises
`RequestTimeout` the outcome is unknown; submitting again with the same `task_id` is safe (the
Helper answers a known id as a duplicate and stores nothing new).

Trust: the link is CURVE with this user's local key store unless told otherwise (`trust=`,
see mesh/trust.py): the Client acts as `role` (client; operator for dead letters and stats)
and pins the Helper's key from its allowed/helper/ list (the one the Helper announced, if
given). A Helper that refuses the key ends the handshake without a word: the Client watches
its socket's handshake events and raises `HelperRefusedKey` naming the key file to allow,
instead of waiting for a timeout. A request the role may not make raises `PermissionDenied`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from mesh import sockets, wire
from mesh.errors import (
    HelperRefusedKey, MeshError, NotFound, RequestTimeout, TaskFailed, WireError,
    error_from_code,
)
from mesh.task import make_task
from mesh.trust import ClientLink, Role, Trust

log = logging.getLogger("mesh.client")

#: task ids per status request; the Helper's bound (max_status_ids) is at least this by default
STATUS_IDS_PER_REQUEST = 1000


def _wait_request(task_id: str, timeout: float):  # noqa: ANN202 - wire.ClientRequest
    """A long-poll for the task's terminal status (the Helper answers within `timeout`)."""
    request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
    request.result.task_id = task_id
    request.result.wait_ms = int(timeout * 1000)
    return request


def _terminal(status, task_id: str, timeout: float):  # noqa: ANN001, ANN202
    """The long-poll's answer: the terminal status, or NotFound / RequestTimeout."""
    if not status.state:
        raise NotFound(task_id)
    if status.state not in wire.TERMINAL_STATES:
        raise RequestTimeout(f"task {task_id} is still {wire.state_name(status.state)} "
                             f"after {timeout}s")
    return status


#: handshake outcomes the Client watches on its socket
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
_HANDSHAKE_EVENTS = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED


def _client_link(trust: Trust | None, role: Role, server_key: str | bytes | None):  # noqa: ANN202
    trust = trust if trust is not None else Trust.default()
    return trust, trust.client(role, Role.HELPER, server_key or None)


def _refusal(event: int, endpoint: str, role: Role, link: ClientLink | None) -> HelperRefusedKey:
    """The error for a failed handshake with the Helper, saying what to do about it."""
    if link is None:
        return HelperRefusedKey(
            f"the Helper at {endpoint} refused the handshake of this plain (--insecure) "
            "client: it expects CURVE; drop --insecure (or run the Helper with --insecure)")
    own = link.keypair
    public_file = (str(own.path).removesuffix("_secret") if own.path is not None
                   else f"the {role.value} public key")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return HelperRefusedKey(
            f"the Helper at {endpoint} refused this client's key ({role.value} key "
            f"{own.public_z85}): add {public_file} to the Helper's allowed/{role.value}/ "
            f"(on the Helper's host: mesh keys allow --role {role.value} {public_file})")
    return HelperRefusedKey(
        f"the handshake with the Helper at {endpoint} failed: the server there does not hold "
        f"the Helper key this client pinned ({link.server_key.decode()}), or it does not use "
        "CURVE (--insecure); copy the Helper's public key into this store's allowed/helper/ "
        "(mesh keys allow --role helper FILE)")


def _result_of(status, task_id: str) -> bytes:  # noqa: ANN001
    if status.state == wire.DEAD:
        raise TaskFailed(task_id, wire.dead_reason_name(status.dead_reason), status.error)
    return status.result


class _Channel:
    """One DEALER to the Helper acting as one role, with its handshake monitor."""

    def __init__(self, client: Client, role: Role, link: ClientLink | None) -> None:
        self.role = role
        self.link = link
        ctx = sockets.sync_view(client._ctx)
        self.sock = sockets.client_dealer(ctx, client.endpoint, link=link)
        self.monitor = self.sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        loop = asyncio.get_running_loop()
        self.monitor_reader = sockets.FrameReader(
            self.monitor, lambda frames: client._on_monitor(self, frames), multipart=True)
        self.monitor_reader.start(loop)
        self.reader = sockets.FrameReader(self.sock, client._on_reply)
        self.reader.start(loop)
        #: set when the Helper refused the handshake; cleared by a later successful one
        self.refused: HelperRefusedKey | None = None

    def close(self) -> None:
        self.reader.stop()
        self.monitor_reader.stop()
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


#: requests that need the operator role; everything else is a client's
_OPERATOR_REQUESTS = frozenset({"dead_letter", "stats"})


class Client:
    """`trust`: the key store (default `Trust.default()`, the local one; `Trust.plain()` for an
    --insecure Helper). `role`: None (default) sends submits, statuses and results with the
    client key and dead-letter and stats requests with the operator key (a second link, made
    on first use); Role.CLIENT or Role.OPERATOR sends everything with that key. `server_key`:
    the Helper's key as announced in discovery (`curve_key`), pinned only if it is in
    allowed/helper/."""

    def __init__(self, intake_endpoint: str, *, context: zmq.asyncio.Context | None = None,
                 timeout_s: float = 30.0, trust: Trust | None = None, role: Role | None = None,
                 server_key: str | bytes | None = None) -> None:
        self.endpoint = intake_endpoint
        self.timeout_s = timeout_s
        self.trust = trust
        self.role = role
        self.server_key = server_key
        self._ctx = context
        self._own_context = context is None
        self._channels: dict[Role, _Channel] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future, _Channel]] = {}
        self._closed = False
        self._started = False

    @property
    def refused(self) -> HelperRefusedKey | None:
        """The refusal of the first channel the Helper refused (None if none was)."""
        return next((c.refused for c in self._channels.values() if c.refused), None)

    async def start(self) -> None:
        if self.trust is None:
            self.trust = Trust.default()
        if self._ctx is None:
            self._ctx = sockets.new_context()
        self._started = True
        self._channel(self.role or Role.CLIENT)

    def _channel(self, role: Role) -> _Channel:
        channel = self._channels.get(role)
        if channel is None:
            link = self.trust.client(role, Role.HELPER, self.server_key or None)
            channel = self._channels[role] = _Channel(self, role, link)
        return channel

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_exception(MeshError("client closed"))
        self._waiting.clear()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self._own_context and self._ctx is not None:
            self._ctx.term()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- API ---------------------------------------------------------------------------

    async def submit(self, kind: str, payload: bytes = b"", *, wait_s: float = 0.0,
                     **options) -> str:  # noqa: ANN003
        """Submit one task; returns its id once durable. Options: see `mesh.helper.make_task`."""
        return (await self.submit_many([make_task(kind, payload, **options)], wait_s=wait_s))[0]

    async def submit_many(self, tasks: list, *, wait_s: float = 0.0) -> list[str]:
        """Submit wire Tasks (from `mesh.make_task`) in one request; raises the first rejection."""
        results = await self.submit_results(tasks, wait_s=wait_s)
        for result in results:
            if result.code != wire.OK:
                raise error_from_code(result.code, result.message)
        return [r.task_id for r in results]

    async def submit_results(self, tasks: list, *, wait_s: float = 0.0) -> list:
        """Like submit_many, but returns each task's SubmitResult (code, message, duplicate)."""
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.submit.tasks.extend(tasks)
        request.submit.wait_ms = int(wait_s * 1000)
        reply = await self._call(request, self.timeout_s + wait_s)
        return list(reply.submit.results)

    async def status(self, task_id: str):  # noqa: ANN201 - wire.TaskStatus
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.status.task_ids.append(task_id)
        reply = await self._call(request, self.timeout_s)
        status = reply.status.statuses[0]
        if not status.state:
            raise NotFound(task_id)
        return status

    async def statuses(self, task_ids: list[str]) -> list:
        """One status per id given, in that order (an unknown id has state 0). Asks for each
        distinct id once, in requests of at most STATUS_IDS_PER_REQUEST ids, and again for the
        ids a reply left out (the Helper bounds each reply's bytes)."""
        distinct = list(dict.fromkeys(task_ids))
        found: dict[str, object] = {}
        while len(found) < len(distinct):
            ask = [t for t in distinct if t not in found][:STATUS_IDS_PER_REQUEST]
            request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
            request.status.task_ids.extend(ask)
            reply = await self._call(request, self.timeout_s)
            before = len(found)
            asked = set(ask)
            for status in reply.status.statuses:
                if status.task_id in asked:
                    found[status.task_id] = status
            if len(found) == before:
                raise MeshError(f"the Helper answered a status request of {len(ask)} ids with "
                                f"none of them: {reply.message or 'no reason given'}")
        return [found[t] for t in task_ids]

    async def wait(self, task_id: str, timeout: float = 60.0):  # noqa: ANN201
        """The task's status once terminal; RequestTimeout if it is not by then."""
        reply = await self._call(_wait_request(task_id, timeout), timeout + self.timeout_s)
        return _terminal(reply.status.statuses[0], task_id, timeout)

    async def result(self, task_id: str, timeout: float = 60.0) -> bytes:
        """The task's result; raises TaskFailed if it ended DEAD."""
        return _result_of(await self.wait(task_id, timeout), task_id)

    async def dead_letters(self, op: str = "list", task_ids: list[str] = (), limit: int = 100):  # noqa: ANN201
        """List, inspect, replay or purge dead tasks. Returns the DeadLetterReply."""
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        ops = {"list": wire.LIST, "inspect": wire.INSPECT, "replay": wire.REPLAY,
               "purge": wire.PURGE}
        if op not in ops:
            raise ValueError(f"unknown dead-letter operation {op!r}; use one of {sorted(ops)}")
        request.dead_letter.op = ops[op]
        request.dead_letter.task_ids.extend(task_ids)
        request.dead_letter.limit = limit
        reply = await self._call(request, self.timeout_s)
        return reply.dead_letter

    async def stats(self) -> dict[str, float]:
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.stats.SetInParent()
        reply = await self._call(request, self.timeout_s)
        return dict(reply.stats.values)

    # ---- plumbing ----------------------------------------------------------------------

    async def _call(self, request, timeout_s: float):  # noqa: ANN001, ANN202
        if not self._started:
            await self.start()
        if self._closed:
            raise MeshError("client closed")
        role = self.role or (Role.OPERATOR if request.WhichOneof("body") in _OPERATOR_REQUESTS
                             else Role.CLIENT)
        channel = self._channel(role)
        if channel.refused is not None:
            raise channel.refused
        rid = next(self._ids)
        request.request_id = rid
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (fut, channel)
        try:
            channel.sock.send(wire.encode(request), zmq.NOBLOCK)
        except zmq.Again:
            del self._waiting[rid]
            raise RequestTimeout(f"cannot queue a request to {self.endpoint} "
                                 "(send queue full)") from None
        finally:
            channel.reader.wake()  # a send can take the edge of a reply that just arrived
        try:
            reply = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"no reply from the Helper at {self.endpoint} within "
                                 f"{timeout_s}s") from None
        finally:
            self._waiting.pop(rid, None)
        if reply.code not in (wire.OK, 0):
            raise error_from_code(reply.code, reply.message)
        return reply

    def _on_monitor(self, channel: _Channel, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            channel.refused = None
            return
        if not event & _HANDSHAKE_FAILED:
            return
        channel.refused = _refusal(event, self.endpoint, channel.role, channel.link)
        log.error("%s", channel.refused)
        # Nothing sent on it will be read: its waiting requests fail now, not at their timeout.
        for fut, on in self._waiting.values():
            if on is channel and not fut.done():
                fut.set_exception(channel.refused)

    def _on_reply(self, frame: bytes) -> None:
        if not frame:
            return  # the Helper's probe: is this client still there?
        try:
            reply = wire.decode_client_reply(frame)
        except WireError as exc:
            log.warning("malformed reply dropped: %s", exc)
            return
        waiting = self._waiting.get(reply.request_id)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(reply)


class SyncClient:
    """The same API as `Client`, blocking, for code without an event loop (a web handler, a
    script). One per thread: a ZeroMQ socket must not be shared between threads.

        with SyncClient("tcp://127.0.0.1:7001") as client:
            task_id = client.submit("vision", b"...")
            result = client.result(task_id, timeout=30)
    """

    def __init__(self, intake_endpoint: str, *, timeout_s: float = 30.0,
                 trust: Trust | None = None, role: Role = Role.CLIENT,
                 server_key: str | bytes | None = None) -> None:
        # One link, one role: SyncClient has no dead-letter or stats calls.
        self.endpoint = intake_endpoint
        self.timeout_s = timeout_s
        self.role = role
        self.trust, self._link = _client_link(trust, role, server_key)
        self._ctx = sockets.new_sync_context()
        self._sock = sockets.client_dealer(self._ctx, intake_endpoint, link=self._link)
        self._monitor = self._sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.refused: HelperRefusedKey | None = None
        self._ids = itertools.count(1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._sock = None
            self._ctx.term()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, kind: str, payload: bytes = b"", *, wait_s: float = 0.0,
               **options) -> str:  # noqa: ANN003
        return self.submit_many([make_task(kind, payload, **options)], wait_s=wait_s)[0]

    def submit_many(self, tasks: list, *, wait_s: float = 0.0) -> list[str]:
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.submit.tasks.extend(tasks)
        request.submit.wait_ms = int(wait_s * 1000)
        reply = self._call(request, self.timeout_s + wait_s)
        for result in reply.submit.results:
            if result.code != wire.OK:
                raise error_from_code(result.code, result.message)
        return [r.task_id for r in reply.submit.results]

    def status(self, task_id: str):  # noqa: ANN201
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.status.task_ids.append(task_id)
        status = self._call(request, self.timeout_s).status.statuses[0]
        if not status.state:
            raise NotFound(task_id)
        return status

    def wait(self, task_id: str, timeout: float = 60.0):  # noqa: ANN201
        reply = self._call(_wait_request(task_id, timeout), timeout + self.timeout_s)
        return _terminal(reply.status.statuses[0], task_id, timeout)

    def result(self, task_id: str, timeout: float = 60.0) -> bytes:
        return _result_of(self.wait(task_id, timeout), task_id)

    def _call(self, request, timeout_s: float):  # noqa: ANN001, ANN202
        if self._sock is None:
            raise MeshError("client closed")
        self._read_monitor()
        if self.refused is not None:
            raise self.refused
        rid = next(self._ids)
        request.request_id = rid
        self._sock.send(wire.encode(request))
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            ready = dict(self._poller.poll(remaining_ms)) if remaining_ms > 0 else {}
            if self._monitor in ready:
                self._read_monitor()
                if self.refused is not None:
                    raise self.refused
            if self._sock not in ready:
                if not ready:
                    raise RequestTimeout(f"no reply from the Helper at {self.endpoint} within "
                                         f"{timeout_s}s")
                continue
            frame = self._sock.recv()
            if not frame:
                continue  # the Helper's probe: is this client still there?
            try:
                reply = wire.decode_client_reply(frame)
            except WireError as exc:
                log.warning("malformed reply dropped: %s", exc)
                continue
            if reply.request_id != rid:
                continue  # the answer to an earlier request that timed out
            if reply.code not in (wire.OK, 0):
                raise error_from_code(reply.code, reply.message)
            return reply

    def _read_monitor(self) -> None:
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.refused = None
            elif event & _HANDSHAKE_FAILED:
                self.refused = _refusal(event, self.endpoint, self.role, self._link)
