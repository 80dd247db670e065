"""Submit tasks to a Helper from another process, and ask for their status and results.

    async with Client("tcp://127.0.0.1:7001") as client:
        task_id = await client.submit("vision", b"...")
        result = await client.result(task_id, timeout=30)

Submitting fast: `submit_nowait` returns a future at once (resolved with the task id once the
task is on the Helper's disk, or with the refusal); every task submitted in one turn of the
event loop goes to the Helper in one request, and at most `max_pending` answers are awaited at
a time (`submit_async` waits for room, `submit_nowait` raises `TooManyPending`). `submit`
takes the same path, so many coroutines submitting one task each share requests too.

    futures = [await client.submit_async("vision", p) for p in payloads]
    await client.flush()                      # every future above is resolved
    ids = [f.result() for f in futures]       # or the refusal of that one task

Guarantees: `submit` returns only when the Helper has the task on disk. If it raises
`RequestTimeout` the outcome is unknown; submitting again with the same `task_id` is safe (the
Helper answers a known id as a duplicate and stores nothing new).

Which Helper: `Client("tcp://h:p")` talks to that one. `Client()` (no endpoint) or
`Client(endpoints=source)` follows a set of Helpers: `source()` returns their intake endpoints
now (a list, or a mapping endpoint -> announced key) and is asked again every
REFRESH_INTERVAL_S (in a thread: it may read a registry). Submits spread over them and fail
over with the same task ids (mesh/helper_pool.py); a status or cancel asks every one. With no
source, `default_endpoints()` builds one from the environment (MESH_INTAKE, else discovery:
MESH_DISCOVERY, CONSUL_HTTP_ADDR, or the embedded registry) — see its docstring for why
`mesh` reads the environment there. Every call answers within `timeout_s` (default 3 s):
`Unavailable` when no Helper did. Through a failover (a Helper group's leader gone, the next one
not registered yet) such a Client keeps looking until then: it reads the source again with a
short backoff while none is listed, drops a Helper that left discovery while a submit waited on
it, and sends what no Helper took (no answer, SHUTTING_DOWN) again with the same task ids. (A
status, result or cancel that first waited for a Helper to be listed then asks it with its own
timeout_s.)

Statuses are typed (`mesh.status.TaskStatus`: a state enum, datetimes, `.value`, `.json()`).

Trust: the link is CURVE with this user's local key store unless told otherwise (`trust=`,
see mesh/trust.py): the Client acts as `role` (client; operator for dead letters and stats)
and pins the Helper's key from its allowed/helper/ list (the one the Helper announced, if
given). A Helper that refuses the key ends the handshake without a word: the Client watches
its socket's handshake events and raises `HelperRefusedKey` naming the key file to allow,
instead of waiting for a timeout. A request the role may not make raises `PermissionDenied`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from mesh import sockets, wire
from mesh.errors import (
    AlreadyFinished, ConfigError, HelperRefusedKey, MeshError, NotFound, RequestTimeout,
    TaskCancelled, TaskFailed, TooManyPending, Unavailable, WaitTimedOut, WireError,
    error_from_code,
)
#: how long a Client waits for a Helper's answer unless told otherwise: in mesh.settings, so
#: `mesh helper` builds the client commands' flags without loading this module
from mesh.settings import DEFAULT_TIMEOUT_S
from mesh.status import TaskState, TaskStatus
from mesh.task import make_task
from mesh.trust import ClientLink, Role, Trust

log = logging.getLogger("mesh.client")

#: task ids per status request; the Helper's bound (max_status_ids) is at least this by default
STATUS_IDS_PER_REQUEST = 1000
#: submits awaiting their answer, per Client, by default (nats-py's publish_async_max_pending)
MAX_PENDING = 1000
#: bounds of one coalesced submit request: tasks, and encoded bytes (the Helper takes requests
#: of up to 64 payload limits; a task larger than this goes alone)
BATCH_MAX_TASKS = 1000
BATCH_MAX_BYTES = 1 * 2**20
#: how often a Client that follows Helpers asks its endpoint source again
REFRESH_INTERVAL_S = 2.0
#: a Client following Helpers that finds none to take a request (none listed, mid-failover;
#: none answered; each said SHUTTING_DOWN) reads its source again after this long, doubling up
#: to LOOK_AGAIN_MAX_S, until its timeout_s has passed
LOOK_AGAIN_MIN_S = 0.05
LOOK_AGAIN_MAX_S = 0.5
#: a submit of such a Client that waits this long for its answer reads the source again (and
#: then every LOOK_AGAIN_MAX_S): the Helper it waits on may have left discovery
WATCH_MIN_S = 0.25

#: the intake endpoints now: a list, or a mapping endpoint -> the key it announced ("")
EndpointSource = Callable[[], "Mapping[str, str] | list[str]"]


@dataclasses.dataclass(frozen=True, slots=True)
class CancelOutcome:
    task_id: str
    state: TaskState        # CANCELLED
    was_running: bool       # a node held it: it was told to stop the run


def default_endpoints(environ: Mapping[str, str] | None = None) -> EndpointSource:
    """The Helpers a `Client()` given no endpoint follows. $MESH_INTAKE (comma-separated
    endpoints) if set; else the Helpers in discovery: $MESH_DISCOVERY, else Consul when
    $CONSUL_HTTP_ADDR is set, else the embedded registry (`nodes.client_factory.env_source`).

    The two exceptions to the layering, made here once and on purpose so that `Client()` finds
    the same Helpers as the `mesh` commands: like `mesh.trust.default_key_dir`, this reads the
    environment; and it imports `nodes.client_factory` (which knows discovery) lazily, only
    when no endpoint and no source were given. Code that wires its own pass `endpoints=`."""
    env = os.environ if environ is None else environ
    if env.get("MESH_INTAKE"):
        endpoints = [e.strip() for e in env["MESH_INTAKE"].split(",") if e.strip()]
        return lambda: endpoints
    try:
        from nodes.client_factory import env_source
    except ImportError as exc:
        raise ConfigError("Client() with no endpoint needs $MESH_INTAKE or the discovery "
                          f"backends of the mesh package ({exc}); pass an endpoint") from None
    return env_source(env)


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
        raise WaitTimedOut(task_id, timeout, TaskStatus.of(status))
    return TaskStatus.of(status)


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


def _one_helper_only(timeout_s: float | None) -> None:
    """A per-call `timeout_s` is for a Client of one Helper (a HelperPool gives each member
    its share); a Client that follows Helpers bounds each call by its own timeout_s."""
    if timeout_s is not None:
        raise ValueError("timeout_s is for a Client of one Helper; this one follows "
                         "Helpers and bounds each call by its own timeout_s")


def _result_of(status, task_id: str) -> bytes:  # noqa: ANN001
    if status.state == wire.CANCELLED:
        raise TaskCancelled(task_id)
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
_OPERATOR_REQUESTS = frozenset({"dead_letter", "stats", "nodes"})


def _cancel_outcome(result, task_id: str) -> CancelOutcome:  # noqa: ANN001 - wire.CancelResult
    if result.code == wire.NOT_FOUND:
        raise NotFound(task_id)
    if result.code == wire.ALREADY_FINISHED:
        err = AlreadyFinished(f"task {task_id} is {wire.state_name(result.state)} already: "
                              "nothing to cancel")
        err.state = TaskState(result.state)
        raise err
    if result.code != wire.OK:
        raise error_from_code(result.code, f"cancel of task {task_id} refused")
    return CancelOutcome(task_id, TaskState(result.state), result.was_running)


class Client:
    """`trust`: the key store (default `Trust.default()`, the local one; `Trust.plain()` for an
    --insecure Helper). `role`: None (default) sends submits, statuses and results with the
    client key and dead-letter and stats requests with the operator key (a second link, made
    on first use); Role.CLIENT or Role.OPERATOR sends everything with that key. `server_key`:
    the Helper's key as announced in discovery (`curve_key`), pinned only if it is in
    allowed/helper/."""

    def __init__(self, intake_endpoint: str | None = None, *,
                 endpoints: EndpointSource | None = None,
                 context: zmq.asyncio.Context | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, trust: Trust | None = None,
                 role: Role | None = None, server_key: str | bytes | None = None,
                 max_pending: int = MAX_PENDING, batch_max_tasks: int = BATCH_MAX_TASKS,
                 batch_max_bytes: int = BATCH_MAX_BYTES) -> None:
        if max_pending < 1 or batch_max_tasks < 1 or batch_max_bytes < 1:
            raise ValueError("max_pending, batch_max_tasks and batch_max_bytes must be >= 1, got "
                             f"{max_pending}, {batch_max_tasks}, {batch_max_bytes}")
        self.endpoint = intake_endpoint or ""
        #: following Helpers (no endpoint given): the source, and a HelperPool made at start
        self._source = None if intake_endpoint else (endpoints or default_endpoints())
        self._pool = None
        self._keys: dict[str, str] = {}
        self._refreshed_at = -1e9
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
        # The pipelining path (submit_nowait): the open batch, filled during one loop turn and
        # sent by a callback at the end of it; the batches sent and not answered yet, each
        # with a future resolved once all its tasks' futures are; the submits not answered.
        self.max_pending = max_pending
        self.batch_max_tasks = batch_max_tasks
        self.batch_max_bytes = batch_max_bytes
        self.pending = 0
        self._batch: _Batch | None = None
        self._batches: set[asyncio.Future] = set()
        self._room: collections.deque[asyncio.Future] = collections.deque()

    @property
    def refused(self) -> HelperRefusedKey | None:
        """The refusal of the first channel the Helper refused (None if none was)."""
        return next((c.refused for c in self._channels.values() if c.refused), None)

    async def start(self) -> None:
        if self._source is None:
            self._start_now()
            return
        if self.trust is None:
            self.trust = Trust.default()
        if self._ctx is None:
            self._ctx = sockets.new_context()
        self._started = True
        if self._source is not None:
            from mesh.helper_pool import HelperPool  # it does not import this module
            self._pool = HelperPool([], self._member, timeout_s=self.timeout_s,
                                    allow_empty=True)
            await self._pool.start()
            return
        self._channel(self.role or Role.CLIENT)

    def _start_now(self) -> None:
        """start() of a Client of one Helper (nothing to await)."""
        if self.trust is None:
            self.trust = Trust.default()
        if self._ctx is None:
            self._ctx = sockets.new_context()
        self._started = True
        self._channel(self.role or Role.CLIENT)

    def _member(self, endpoint: str, role: Role) -> Client:
        """The single-Helper Client the pool uses for one Helper and role."""
        return Client(endpoint, context=self._ctx, timeout_s=self.timeout_s, trust=self.trust,
                      role=self.role or role, server_key=self._keys.get(endpoint) or None)

    async def _helpers(self, deadline: float | None = None, *,  # noqa: ANN202 - the HelperPool
                       look: bool = True):
        """The HelperPool, its endpoints refreshed from the source when due. When the source
        lists no Helper (a failover under way: the old leader is gone, the next one has not
        registered yet) it is read again, LOOK_AGAIN_MIN_S apart and backing off, until one is
        listed or `deadline` (monotonic; default timeout_s from now) passes: Unavailable then
        (at once with `look=False`)."""
        if not self._started:
            await self.start()
        if self._closed:
            raise MeshError("client closed")
        if deadline is None:
            deadline = time.monotonic() + self.timeout_s
        if time.monotonic() - self._refreshed_at >= REFRESH_INTERVAL_S or not self._pool.endpoints:
            await self._refresh(deadline)
        pause = LOOK_AGAIN_MIN_S
        while not self._pool.endpoints:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed or not look:
                within = f" within {self.timeout_s:g}s" if look else ""
                raise Unavailable(f"no Helper found{within} (discovery lists none, or "
                                  "$MESH_INTAKE is empty): start one with `mesh helper`, or "
                                  "give an endpoint")
            await asyncio.sleep(min(pause, left))
            now = time.monotonic()
            if now < deadline and now - self._refreshed_at >= pause:  # one read serves all
                await self._refresh(deadline)
            pause = min(pause * 2, LOOK_AGAIN_MAX_S)
        return self._pool

    async def _refresh(self, deadline: float) -> None:
        """Read the source (in a thread: it may ask a registry); a source that fails or does not
        answer by `deadline` (a short read at least) leaves the endpoints as they were."""
        self._refreshed_at = now = time.monotonic()
        try:
            found = await asyncio.wait_for(asyncio.to_thread(self._source),
                                           max(LOOK_AGAIN_MIN_S, deadline - now))
        except Exception as exc:  # noqa: BLE001 - a registry that fails: keep what we had
            log.warning("could not list the Helpers: %s", str(exc) or type(exc).__name__)
            return
        self._keys = dict(found) if isinstance(found, Mapping) else dict.fromkeys(found, "")
        await self._pool.set_endpoints(list(self._keys))

    async def _submit_following(self, tasks: list, wait_s: float) -> list:
        """Submit through the pool (spread, failover with the same ids) until every task is
        answered by a Helper that could take it, or timeout_s (+ wait_s) has passed: the tasks
        no Helper answered, or that were answered SHUTTING_DOWN (nothing stored there: a
        stopping Helper, a leader whose term ended), go again, with the same ids, to the Helpers
        the source lists after a short pause. A list of SubmitOutcome, one per task, in order;
        Unavailable if no Helper was listed at all within the time."""
        deadline = time.monotonic() + self.timeout_s + wait_s
        outcomes: list = [None] * len(tasks)
        todo = list(range(len(tasks)))
        pause = LOOK_AGAIN_MIN_S
        while True:
            try:
                pool = await self._helpers(deadline)
            except Unavailable:
                if any(o is not None for o in outcomes):
                    return outcomes  # looked again in vain: the answers of the last look
                raise
            answers = await self._attempt(pool, [tasks[i] for i in todo], wait_s, deadline)
            again = []
            for i, outcome in zip(todo, answers, strict=True):
                outcomes[i] = outcome
                if outcome.code is None or outcome.code == wire.SHUTTING_DOWN:
                    again.append(i)
            todo = again
            if not todo:
                return outcomes
            self._refreshed_at = -1e9  # the Helpers listed have changed, or are changing
            left = deadline - time.monotonic()
            if left <= 0:
                return outcomes
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, LOOK_AGAIN_MAX_S)

    async def _attempt(self, pool, tasks: list, wait_s: float, deadline: float) -> list:  # noqa: ANN001
        """`pool.submit`, reading the source again while it waits (after WATCH_MIN_S, then
        every LOOK_AGAIN_MAX_S; one read serves every waiting call). A Helper that left
        discovery meanwhile (a leader SIGKILLed: its endpoint stays in our view until the next
        read, and nothing answers there) is dropped from the pool, and the pool goes on to the
        next one at once instead of waiting out the deadline there."""
        attempt = asyncio.ensure_future(pool.submit(tasks, wait_s, deadline=deadline))
        pause = WATCH_MIN_S
        try:
            while True:
                left = deadline - time.monotonic()
                if left > 0:
                    await asyncio.wait({attempt}, timeout=min(pause, left))
                else:
                    await asyncio.wait({attempt})  # it ends at the deadline itself
                if attempt.done():
                    return attempt.result()
                if time.monotonic() - self._refreshed_at >= pause:
                    await self._refresh(deadline)
                pause = min(pause * 2, LOOK_AGAIN_MAX_S)
        finally:
            if not attempt.done():  # cancelled (the caller went, the client closes)
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)

    async def helper_pool(self, *, look: bool = True):  # noqa: ANN201 - mesh.helper_pool.HelperPool
        """The HelperPool of a Client following Helpers, its endpoints refreshed from the
        source when due (for callers that ask each Helper themselves, like the HTTP gateway).
        When the source lists none it keeps looking for up to timeout_s (`look=False`: answers
        at once, for a page or a health check), then Unavailable."""
        if self._source is None:
            raise MeshError(f"this Client talks to one Helper ({self.endpoint}); give it "
                            "endpoints= to follow several")
        return await self._helpers(look=look)

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
        if self._batch is not None:
            batch, self._batch = self._batch, None
            self._settle(batch, None, MeshError("client closed before the submit was sent"))
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_exception(MeshError("client closed"))
        self._waiting.clear()
        for waiter in self._room:
            if not waiter.done():
                waiter.set_exception(MeshError("client closed"))
        self._room.clear()
        if self._pool is not None:
            await self._pool.close()
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
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
        """Submit one task; returns its id once durable. Options: see `mesh.task.make_task`.
        Shares a request with the other submits of the same loop turn (see submit_nowait)."""
        return await (await self.submit_async(kind, payload, wait_s=wait_s, **options))

    def submit_nowait(self, kind: str, payload: bytes = b"", *, wait_s: float = 0.0,
                      **options) -> asyncio.Future:  # noqa: ANN003
        """Queue one task for the request that leaves at the end of this loop turn; returns a
        future resolved with the task id once the task is on the Helper's disk, or with the
        error for this task alone (QueueFull, InvalidTask, ...; RequestTimeout: outcome unknown,
        submit again with the same `task_id`). Raises TooManyPending, sending nothing, while
        `max_pending` submits await their answer. Call it from the loop's thread."""
        return self.submit_task_nowait(make_task(kind, payload, **options), wait_s=wait_s)

    async def submit_async(self, kind: str, payload: bytes = b"", *, wait_s: float = 0.0,
                           **options) -> asyncio.Future:  # noqa: ANN003
        """As submit_nowait, but waits for room in the pending window instead of raising."""
        if not self._started:
            await self.start()
        while self.pending >= self.max_pending:
            await self._wait_room()
        return self.submit_task_nowait(make_task(kind, payload, **options), wait_s=wait_s)

    def submit_task_nowait(self, task, *, wait_s: float = 0.0) -> asyncio.Future:  # noqa: ANN001
        """As submit_nowait, for a wire Task built with `mesh.make_task`."""
        if self.pending >= self.max_pending:
            raise TooManyPending(f"{self.pending} submits await their answer (max_pending "
                                 f"{self.max_pending}); await submit_async() or flush() first")
        if not self._started:
            if self._source is not None:
                raise MeshError("a Client that follows Helpers starts asynchronously: await "
                                "start() (or use `async with`) before submit_nowait")
            self._start_now()
        if self._closed:
            raise MeshError("client closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        size = task.ByteSize()
        wait_ms = int(wait_s * 1000)
        batch = self._batch
        if batch is not None and (batch.wait_ms != wait_ms or len(batch.tasks) >= self.batch_max_tasks
                                  or batch.size_bytes + size > self.batch_max_bytes):
            self._send_batch()
            batch = None
        if batch is None:
            batch = self._batch = _Batch(wait_ms)
            loop.call_soon(self._send_batch, batch)
        batch.tasks.append(task)
        batch.futures.append(fut)
        batch.size_bytes += size
        self.pending += 1
        return fut

    async def flush(self) -> None:
        """Return once every submit made before this call is answered (its future resolved)."""
        if self._batch is not None:
            self._send_batch()
        if self._batches:
            await asyncio.wait(list(self._batches))

    async def submit_many(self, tasks: list, *, wait_s: float = 0.0) -> list[str]:
        """Submit wire Tasks (from `mesh.make_task`) in one request; raises the first rejection."""
        results = await self.submit_results(tasks, wait_s=wait_s)
        for result in results:
            if result.code != wire.OK:
                raise error_from_code(result.code, result.message)
        return [r.task_id for r in results]

    async def submit_results(self, tasks: list, *, wait_s: float = 0.0,
                             timeout_s: float | None = None) -> list:
        """Like submit_many, but returns each task's SubmitResult (code, message, duplicate).
        `timeout_s`: how long this Helper gets to answer (default the Client's `timeout_s` +
        `wait_s`); Unavailable after it. A Client that follows Helpers bounds the whole call by
        its own `timeout_s` + `wait_s`, over every Helper, and takes no `timeout_s` here."""
        if self._source is not None:
            _one_helper_only(timeout_s)
            outcomes = await self._submit_following(tasks, wait_s)
            lost = [o for o in outcomes if o.code is None]
            if lost:
                raise Unavailable(lost[0].message)
            return [wire.SubmitResult(task_id=o.task_id, code=o.code, message=o.message,
                                      duplicate=o.duplicate) for o in outcomes]
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.submit.tasks.extend(tasks)
        request.submit.wait_ms = int(wait_s * 1000)
        reply = await self._call(request, self.timeout_s + wait_s if timeout_s is None
                                 else timeout_s)
        return list(reply.submit.results)

    async def status(self, task_id: str) -> TaskStatus:
        """The task's status; NotFound if no Helper knows it."""
        if self._source is not None:
            return (await (await self._helpers()).find(task_id)).status
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.status.task_ids.append(task_id)
        reply = await self._call(request, self.timeout_s)
        status = reply.status.statuses[0]
        if not status.state:
            raise NotFound(task_id)
        return TaskStatus.of(status)

    async def statuses(self, task_ids: list[str], *,
                       timeout_s: float | None = None) -> list[TaskStatus]:
        """One status per id given, in that order (an unknown id has state UNKNOWN). Asks for
        each distinct id once, in requests of at most STATUS_IDS_PER_REQUEST ids, and again for
        the ids a reply left out (the Helper bounds each reply's bytes). `timeout_s`: how long
        the Helper gets to answer each request (default the Client's); a Client that follows
        Helpers takes none (see submit_results)."""
        if self._source is not None:
            _one_helper_only(timeout_s)
            pool = await self._helpers()

            async def one(task_id: str) -> TaskStatus:
                try:
                    return (await pool.find(task_id)).status
                except NotFound:
                    return TaskStatus(task_id, TaskState.UNKNOWN)
            return list(await asyncio.gather(*(one(t) for t in task_ids)))
        distinct = list(dict.fromkeys(task_ids))
        found: dict[str, object] = {}
        while len(found) < len(distinct):
            ask = [t for t in distinct if t not in found][:STATUS_IDS_PER_REQUEST]
            request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
            request.status.task_ids.extend(ask)
            reply = await self._call(request, self.timeout_s if timeout_s is None else timeout_s)
            before = len(found)
            asked = set(ask)
            for status in reply.status.statuses:
                if status.task_id in asked:
                    found[status.task_id] = status
            if len(found) == before:
                raise MeshError(f"the Helper answered a status request of {len(ask)} ids with "
                                f"none of them: {reply.message or 'no reason given'}")
        return [TaskStatus.of(found[t]) for t in task_ids]

    async def wait(self, task_id: str, timeout: float = 60.0) -> TaskStatus:
        """The task's status once terminal; WaitTimedOut (a RequestTimeout) if it is not by
        then, Unavailable if no Helper answers."""
        if self._source is not None:
            return await (await self._helpers()).wait(task_id, timeout)
        reply = await self._call(_wait_request(task_id, timeout), timeout + self.timeout_s)
        return _terminal(reply.status.statuses[0], task_id, timeout)

    async def result(self, task_id: str, timeout: float = 60.0) -> bytes:
        """The task's result; raises TaskFailed if it ended DEAD (TaskCancelled: cancelled)."""
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
        if self._source is not None:
            merged = wire.DeadLetterReply()
            for reply in await self._each(lambda c: c.dead_letters(op, task_ids, limit)):
                merged.tasks.extend(reply.tasks)
                merged.affected += reply.affected
            return merged
        reply = await self._call(request, self.timeout_s)
        return reply.dead_letter

    async def stats(self) -> dict[str, float]:
        """The Helper's counters (summed over the Helpers followed)."""
        if self._source is not None:
            totals: dict[str, float] = {}
            for values in await self._each(lambda c: c.stats()):
                for name, value in values.items():
                    totals[name] = totals.get(name, 0.0) + value
            return totals
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.stats.SetInParent()
        reply = await self._call(request, self.timeout_s)
        return dict(reply.stats.values)

    async def cancel(self, task_id: str) -> CancelOutcome:
        """Cancel a task: a queued one is CANCELLED at once, a running one too and its node is
        told to stop it. NotFound for an unknown id, AlreadyFinished (with `.state`) for a task
        that ended already. Answered once the cancel is durable on the Helper."""
        if self._source is not None:
            return await (await self._helpers()).cancel(task_id)
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.cancel.task_ids.append(task_id)
        reply = await self._call(request, self.timeout_s)
        return _cancel_outcome(reply.cancel.results[0], task_id)

    async def nodes(self) -> dict[str, object]:
        """Each Helper's view of its AI nodes and queue: intake endpoint -> wire.NodesReply
        (nodes: id, endpoint, state, credit, concurrency, held, running, version, last beat
        age; queues: depth and oldest age by kind). Operator key."""
        if self._source is not None:
            pool = await self._helpers()
            answers = await pool.each(lambda c: c.nodes(), self.role or Role.OPERATOR)
            if all(isinstance(a, BaseException) for a in answers.values()):
                raise next(iter(answers.values()))
            return {e: a[e] for e, a in answers.items() if not isinstance(a, BaseException)}
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.nodes.SetInParent()
        reply = await self._call(request, self.timeout_s)
        return {self.endpoint: reply.nodes}

    async def _each(self, call) -> list:  # noqa: ANN001
        """`call(client)` on every Helper followed; their answers (those that answered).
        Raises the first error when none did."""
        pool = await self._helpers()
        answers = await pool.each(call, self.role or Role.OPERATOR)
        good = [a for a in answers.values() if not isinstance(a, BaseException)]
        if not good:
            error = next(iter(answers.values()))
            raise error if isinstance(error, MeshError) else Unavailable(
                f"no Helper answered within {self.timeout_s:g}s")
        return good

    # ---- plumbing ----------------------------------------------------------------------

    async def _wait_room(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._room.append(waiter)
        await waiter

    def _send_batch(self, batch: _Batch | None = None) -> None:
        """Send the open batch as one submit request (a call_soon callback names the batch it
        was scheduled for: one sent early, because it was full, is not sent again)."""
        if batch is None:
            batch = self._batch
        if batch is None or batch is not self._batch:
            return
        self._batch = None
        loop = asyncio.get_running_loop()
        if self._source is not None:  # through the pool: spread, failover with the same ids
            batch.done = loop.create_task(self._pool_batch(batch))
            self._batches.add(batch.done)
            return
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.submit.tasks.extend(batch.tasks)
        request.submit.wait_ms = batch.wait_ms
        try:
            rid, reply = self._send(request)
        except MeshError as exc:
            self._settle(batch, None, exc)
            return
        timeout_s = self.timeout_s + batch.wait_ms / 1000
        timer = loop.call_later(timeout_s, self._expire, rid, reply, timeout_s)
        batch.done = loop.create_future()
        self._batches.add(batch.done)
        reply.add_done_callback(lambda _: self._answered(rid, batch, reply, timer))

    async def _pool_batch(self, batch: _Batch) -> None:
        """A batch of a Client that follows Helpers: the pool answers each task (a task no
        Helper answered: Unavailable, outcome unknown)."""
        try:
            outcomes = await self._submit_following(batch.tasks, batch.wait_ms / 1000)
        except Exception as exc:  # noqa: BLE001 - every future gets it
            self._settle(batch, None, exc if isinstance(exc, MeshError) else MeshError(str(exc)))
        else:
            self._settle(batch, outcomes, None)  # SubmitOutcome: code None = no Helper answered
        finally:
            self._batches.discard(batch.done)

    def _no_reply(self, reply: asyncio.Future, timeout_s: float) -> None:
        if not reply.done():
            reply.set_exception(Unavailable(
                f"no reply from the Helper at {self.endpoint} within {timeout_s:g}s: is it up? "
                "(mesh nodes / discovery list it)"))

    def _expire(self, rid: int, reply: asyncio.Future, timeout_s: float) -> None:
        self._waiting.pop(rid, None)
        if not reply.done():
            reply.set_exception(Unavailable(
                f"no reply from the Helper at {self.endpoint} within {timeout_s:g}s; the outcome "
                "is unknown: submit again with the same task_id"))

    def _answered(self, rid: int, batch: _Batch, reply: asyncio.Future,
                  timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        self._waiting.pop(rid, None)
        if reply.cancelled():
            self._settle(batch, None, MeshError("client closed"))
        elif reply.exception() is not None:
            self._settle(batch, None, reply.exception())
        else:
            answer = reply.result()
            if answer.code not in (wire.OK, 0):
                self._settle(batch, None, error_from_code(answer.code, answer.message))
            else:
                self._settle(batch, answer.submit.results, None)
        self._batches.discard(batch.done)
        if not batch.done.done():
            batch.done.set_result(None)

    def _settle(self, batch: _Batch, results, error: BaseException | None) -> None:  # noqa: ANN001
        """Resolve each future of a batch with its own result, then let waiters in."""
        ok = wire.OK
        for i, fut in enumerate(batch.futures):
            if fut.done():  # cancelled by its caller
                continue
            if error is not None:
                fut.set_exception(error)
            elif i >= len(results):
                fut.set_exception(MeshError(
                    f"the Helper answered {len(results)} of {len(batch.tasks)} submits; the "
                    "outcome of the others is unknown: submit them again with the same task_id"))
            elif results[i].code == ok:
                fut.set_result(results[i].task_id)
            elif results[i].code is None:  # the pool's: no Helper answered for this task
                fut.set_exception(Unavailable(results[i].message))
            else:
                fut.set_exception(error_from_code(results[i].code, results[i].message))
        self.pending -= len(batch.futures)
        room = self._room
        while room and self.pending < self.max_pending:
            waiter = room.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _send(self, request) -> tuple[int, asyncio.Future]:  # noqa: ANN001
        """Send a request; returns its id and the future of its reply (not timed)."""
        if not self._started:
            self._start_now()
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
        return rid, fut

    async def _call(self, request, timeout_s: float):  # noqa: ANN001, ANN202
        # One timer on the reply future itself, not asyncio.wait_for (a second future, a
        # callback and a timer per request: the HTTP gateway's share of CPU per submit).
        rid, fut = self._send(request)
        timer = asyncio.get_running_loop().call_later(timeout_s, self._no_reply, fut, timeout_s)
        try:
            reply = await fut
        finally:
            timer.cancel()
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


class _Batch:
    """Submits of one loop turn, sent as one request."""

    __slots__ = ("wait_ms", "tasks", "futures", "size_bytes", "done")

    def __init__(self, wait_ms: int) -> None:
        self.wait_ms = wait_ms
        self.tasks: list = []
        self.futures: list[asyncio.Future] = []
        self.size_bytes = 0
        self.done: asyncio.Future | None = None


class _SyncChannel:
    """One blocking DEALER to the Helper acting as one role, with its handshake monitor."""

    def __init__(self, ctx: zmq.Context, endpoint: str, role: Role,
                 link: ClientLink | None) -> None:
        self.role = role
        self.link = link
        self.sock = sockets.client_dealer(ctx, endpoint, link=link)
        self.monitor = self.sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.refused: HelperRefusedKey | None = None

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


class SyncClient:
    """The same API as `Client`, blocking, for code without an event loop (a web handler, a
    script). One per thread: a ZeroMQ socket must not be shared between threads.

        with SyncClient("tcp://127.0.0.1:7001") as client:
            task_id = client.submit("vision", b"...")
            result = client.result(task_id, timeout=30)

    With no endpoint (or `endpoints=`), it follows Helpers as `Client()` does, by running a
    `Client` on an event loop of its own (one per SyncClient, in the calling thread).

    Fast: `submit_results(tasks)` sends many tasks in one request and returns each task's own
    answer (a refusal of one does not hide the others' acceptance). `stats()` goes with the
    operator key, on a second link made on first use (unless `role` is Role.OPERATOR).
    """

    def __init__(self, intake_endpoint: str | None = None, *,
                 endpoints: EndpointSource | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 trust: Trust | None = None, role: Role = Role.CLIENT,
                 server_key: str | bytes | None = None) -> None:
        self.endpoint = intake_endpoint or ""
        self.server_key = server_key
        self._operator: SyncClient | None = None  # stats: a second link, made on first use
        self.timeout_s = timeout_s
        self.role = role
        self._loop = self._async = None
        if not intake_endpoint:
            self._loop = asyncio.new_event_loop()
            self._async = Client(endpoints=endpoints or default_endpoints(),
                                 timeout_s=timeout_s, trust=trust, role=role)
            self.trust, self._sock = trust, None
            return
        self.trust, self._link = _client_link(trust, role, server_key)
        self._ctx = sockets.new_sync_context()
        self._sock = sockets.client_dealer(self._ctx, intake_endpoint, link=self._link)
        self._monitor = self._sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.refused: HelperRefusedKey | None = None
        self._ids = itertools.count(1)

    def _run(self, coro):  # noqa: ANN001, ANN202 - the following Client's call, to its end
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if self._operator is not None:
            self._operator.close()
            self._operator = None
        if self._async is not None:
            if not self._loop.is_closed():
                self._run(self._async.close())
                self._loop.close()
            return
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
        """Submit wire Tasks in one request; raises the first rejection (submit_results does
        not)."""
        if self._async is not None:
            return self._run(self._async.submit_many(tasks, wait_s=wait_s))
        results = self.submit_results(tasks, wait_s=wait_s)
        for result in results:
            if result.code != wire.OK:
                raise error_from_code(result.code, result.message)
        return [r.task_id for r in results]

    def submit_results(self, tasks: list, *, wait_s: float = 0.0) -> list:
        """Submit wire Tasks in one request; returns each task's SubmitResult (task_id, code,
        message, duplicate), in order."""
        if self._async is not None:
            return self._run(self._async.submit_results(tasks, wait_s=wait_s))
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.submit.tasks.extend(tasks)
        request.submit.wait_ms = int(wait_s * 1000)
        return list(self._call(request, self.timeout_s + wait_s).submit.results)

    def stats(self) -> dict[str, float]:
        """The Helper's counters (operator key)."""
        if self._async is not None:
            return self._run(self._async.stats())
        if self.role is not Role.OPERATOR:
            if self._operator is None:
                self._operator = SyncClient(self.endpoint, timeout_s=self.timeout_s,
                                            trust=self.trust, role=Role.OPERATOR,
                                            server_key=self.server_key)
            return self._operator.stats()
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.stats.SetInParent()
        return dict(self._call(request, self.timeout_s).stats.values)

    def status(self, task_id: str) -> TaskStatus:
        if self._async is not None:
            return self._run(self._async.status(task_id))
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.status.task_ids.append(task_id)
        status = self._call(request, self.timeout_s).status.statuses[0]
        if not status.state:
            raise NotFound(task_id)
        return TaskStatus.of(status)

    def cancel(self, task_id: str) -> CancelOutcome:
        """See `Client.cancel`."""
        if self._async is not None:
            return self._run(self._async.cancel(task_id))
        request = wire.ClientRequest(version=wire.PROTOCOL_VERSION)
        request.cancel.task_ids.append(task_id)
        return _cancel_outcome(self._call(request, self.timeout_s).cancel.results[0], task_id)

    def wait(self, task_id: str, timeout: float = 60.0) -> TaskStatus:
        if self._async is not None:
            return self._run(self._async.wait(task_id, timeout))
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
                    raise Unavailable(f"no reply from the Helper at {self.endpoint} within "
                                      f"{timeout_s:g}s: is it up?")
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
