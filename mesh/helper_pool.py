"""Many Helpers behind one caller: spread submits over them, fail over on a timeout with the
same task ids, and find a task on whichever Helper holds it. The HTTP gateway's mesh side.

One `Client` per Helper and role (made on first use). A submit goes to the next Helper in turn;
a Helper that does not answer within its share of the deadline is marked suspect and the same
tasks (same ids) go to the next one. Suspects are asked last until a cheap probe (a status
request) answers again. Every call is bounded by `timeout_s` in total, whatever the number of
Helpers, so a caller with every Helper down hears so within that time.

What a resend to another Helper guarantees: the Helpers of this phase do not share journals, so
a task sent to A (which timed out, but had in fact accepted it) and then to B exists on both and
may run on both; its effect is still applied once because handlers guard effects with the
task's idempotency key (the task id unless given). A Helper group (one logical Helper,
replicated journal) will answer the resend as a duplicate instead.

When Client discovery lands (a Client that follows the Helpers in discovery and resends with
the same task id itself), `submit` becomes one call to that Client and `endpoints` its
current view; `find`, `wait`, `dead_letters` and `stats` keep asking every Helper.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable

from mesh import wire
# the bounds of the request `submit_one` makes of one loop turn's tasks (a task larger than the
# byte bound goes alone) are the Client's own coalescing's
from mesh.client import BATCH_MAX_BYTES, BATCH_MAX_TASKS
from mesh.errors import (
    AlreadyFinished, HelperRefusedKey, JournalError, MeshError, NotFound, RequestTimeout,
    ShuttingDown, Unavailable, WaitTimedOut,
)
from mesh.trust import Role

log = logging.getLogger("mesh.helper_pool")

#: per-task codes worth another Helper: nothing was stored where they came from
RETRY_ELSEWHERE = frozenset((wire.QUEUE_FULL, wire.SHUTTING_DOWN, wire.JOURNAL_FAILED))
#: whole-request failures after which the next Helper is tried
_TRY_NEXT = (RequestTimeout, TimeoutError, HelperRefusedKey, ShuttingDown, JournalError)
#: `submit_one` keeps its batch open for up to this many more loop turns while each adds tasks:
#: an HTTP request whose bytes arrive during a turn reaches `submit_one` a turn or two later,
#: so under load a turn's batch missed the requests right behind it (8 HTTP callers: ~3 tasks
#: per Helper request, where 8 native coroutines on one Client travel as one). A lone request
#: waits one turn more (a few us); bench/http_bench.py: +8-12% tasks/s with 8 callers
JOIN_TURNS = 4
#: a task id no Helper holds: a status request for it is the cheapest "are you there?"
PROBE_TASK_ID = "mesh-gateway-probe"
_RANK = {wire.SUCCEEDED: 5, wire.DEAD: 5, wire.CANCELLED: 5, wire.RUNNING: 3,
         wire.DISPATCHED: 2, wire.QUEUED: 1}

__all__ = ["HelperPool", "Unavailable", "WaitTimedOut", "SubmitOutcome", "Found"]


@dataclasses.dataclass(slots=True)
class SubmitOutcome:
    task_id: str
    #: the Helper's wire ErrorCode (wire.OK: durable there); None: no Helper answered
    code: int | None
    message: str = ""
    duplicate: bool = False
    helper: str = ""


@dataclasses.dataclass(slots=True)
class Found:
    status: object            # wire.TaskStatus, the most advanced any Helper reported
    holders: list[str]        # the Helpers that know the task
    unreachable: list[str]    # the Helpers that did not answer


ClientFactory = Callable[[str, Role], object]


class _TurnBatch:
    """The tasks `submit_one` was given in one loop turn, and the futures of all but the
    first (whose caller submits them)."""

    __slots__ = ("tasks", "futures", "size_bytes")

    def __init__(self) -> None:
        self.tasks: list = []
        self.futures: list[asyncio.Future | None] = []
        self.size_bytes = 0


class HelperPool:
    """`make_client(endpoint, role)` builds a (not yet started) `mesh.Client`; the pool owns
    and closes what it makes."""

    def __init__(self, endpoints: list[str], make_client: ClientFactory, *,
                 timeout_s: float = 3.0, probe_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 allow_empty: bool = False) -> None:
        if not endpoints and not allow_empty:
            raise ValueError("a HelperPool needs at least one Helper endpoint")
        self.endpoints = list(dict.fromkeys(endpoints))
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        self._make_client = make_client
        self._clock = clock
        self._clients: dict[tuple[str, Role], object] = {}
        self._suspect: dict[str, str] = {}  # endpoint -> why
        self._turn = itertools.count()
        self._prober: asyncio.Task | None = None
        self.failovers = 0
        #: submit_one: the batch of this loop turn, open for others to join
        self._open_batch: _TurnBatch | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(self._probe_suspects())

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            try:
                await self._prober
            except asyncio.CancelledError:
                pass
            self._prober = None
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def client(self, endpoint: str, role: Role = Role.CLIENT):  # noqa: ANN201
        client = self._clients.get((endpoint, role))
        if client is None:
            client = self._clients[(endpoint, role)] = self._make_client(endpoint, role)
        return client

    async def set_endpoints(self, endpoints: list[str]) -> None:
        """Follow discovery: the Helpers now are `endpoints`; the clients of those that left
        are closed (a Helper that comes back gets a new one)."""
        endpoints = list(dict.fromkeys(endpoints))
        if endpoints == self.endpoints:
            return
        gone = set(self.endpoints) - set(endpoints)
        self.endpoints = endpoints
        for endpoint in gone:
            self._suspect.pop(endpoint, None)
        for key in [k for k in self._clients if k[0] in gone]:
            await self._clients.pop(key).close()

    @property
    def suspects(self) -> dict[str, str]:
        return dict(self._suspect)

    # ---- submit -------------------------------------------------------------------------

    async def submit(self, tasks: list, wait_s: float = 0.0, *,
                     deadline: float | None = None) -> list[SubmitOutcome]:
        """Submit wire Tasks; one outcome per task, in order. A task that no Helper took is
        reported with the last Helper's code (QUEUE_FULL, ...) or None if none answered.
        `wait_s`: each Helper may wait that long for room in its queue (added to the deadline).
        `deadline` (on the pool's clock): the end of the whole call, when the caller has spent
        part of its time already (default: timeout_s + wait_s from now)."""
        if deadline is None:
            deadline = self._clock() + self.timeout_s + wait_s
        outcomes: list[SubmitOutcome | None] = [None] * len(tasks)
        todo = list(range(len(tasks)))
        order = self._order()
        tried: list[str] = []
        for n, endpoint in enumerate(order):
            remaining = deadline - self._clock()
            if not todo or remaining <= 0:
                break
            if endpoint not in self.endpoints:  # it left discovery since the order was made
                tried.append(f"{endpoint}: left discovery")
                continue
            share_s = remaining / (len(order) - n)
            try:
                # the member's own reply timer bounds the call (no second timer around it)
                results = await self.client(endpoint).submit_results(
                    tasks if len(todo) == len(tasks) else [tasks[i] for i in todo],
                    wait_s=wait_s, timeout_s=share_s)
            except _TRY_NEXT as exc:
                why = str(exc) or f"no answer within {share_s:.2f}s"
                self._mark_suspect(endpoint, why)
                tried.append(f"{endpoint}: {why}")
                if n + 1 < len(order):
                    self.failovers += 1
                continue
            except MeshError:
                if endpoint in self.endpoints:
                    raise
                # it left discovery while we waited (`set_endpoints` closed its client): the
                # same tasks go to the next one
                tried.append(f"{endpoint}: left discovery before it answered")
                if n + 1 < len(order):
                    self.failovers += 1
                continue
            self._suspect.pop(endpoint, None)
            again = []
            for i, result in zip(todo, results, strict=True):
                outcomes[i] = SubmitOutcome(result.task_id, result.code, result.message,
                                            result.duplicate, endpoint)
                if result.code in RETRY_ELSEWHERE:
                    again.append(i)
            todo = again
        why = "; ".join(tried) or "no time left"
        return [outcome or SubmitOutcome(tasks[i].task_id, None,
                                         f"no Helper answered within {self.timeout_s:g}s ({why})")
                for i, outcome in enumerate(outcomes)]

    async def submit_one(self, task) -> SubmitOutcome:  # noqa: ANN001 - a wire Task
        """Submit one wire Task together with the others given in this turn of the event loop:
        they leave as one `submit` (one request to a Helper; the same spread, failover and
        per-task codes) at the start of the next turn. Returns this task's outcome.

        Why: an HTTP gateway under load starts many requests in one turn (every connection
        that is readable at once); a request each cost a Helper round trip, a timer and a
        Helper request each. The first caller of a turn submits for all; the others wait for
        its answer (no task of its own). The batch stays open while the turns after it bring
        more (at most JOIN_TURNS): a submit alone waits two loop turns, a few us."""
        size = task.ByteSize()
        batch = self._open_batch
        if batch is not None and len(batch.tasks) < BATCH_MAX_TASKS \
                and batch.size_bytes + size <= BATCH_MAX_BYTES:
            future = asyncio.get_running_loop().create_future()
            batch.tasks.append(task)
            batch.futures.append(future)
            batch.size_bytes += size
            return await future
        batch = self._open_batch = _TurnBatch()
        batch.tasks.append(task)
        batch.futures.append(None)  # the leader's own place
        batch.size_bytes = size
        try:
            try:
                await asyncio.sleep(0)  # the others of this turn join
                joined = 0
                for _ in range(JOIN_TURNS):  # and those that came meanwhile, while they come
                    if len(batch.tasks) == joined:
                        break
                    joined = len(batch.tasks)
                    await asyncio.sleep(0)
            finally:
                if self._open_batch is batch:
                    self._open_batch = None
            outcomes = await self.submit(batch.tasks)
        except BaseException as exc:  # cancelled (the server stops), or a bug: tell the others
            error = exc if isinstance(exc, MeshError) else MeshError(
                f"the submit was not completed ({type(exc).__name__}: {exc}); the outcome is "
                "unknown: submit again with the same task id")
            for future in batch.futures[1:]:
                if not future.done():
                    future.set_exception(error)
            raise
        for future, outcome in zip(batch.futures[1:], outcomes[1:], strict=True):
            if not future.done():  # its caller may have gone
                future.set_result(outcome)
        return outcomes[0]

    def _order(self) -> list[str]:
        """Healthy Helpers in turn (a different first one each call), suspects last."""
        if len(self.endpoints) == 1:
            return self.endpoints
        healthy = [e for e in self.endpoints if e not in self._suspect]
        if healthy:
            k = next(self._turn) % len(healthy)
            healthy = healthy[k:] + healthy[:k]
        return healthy + [e for e in self.endpoints if e in self._suspect]

    def _mark_suspect(self, endpoint: str, why: str) -> None:
        if endpoint not in self._suspect:
            log.warning("Helper %s is suspect (%s): asked last until it answers a probe",
                        endpoint, why)
        self._suspect[endpoint] = why

    async def _probe_suspects(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            for endpoint in list(self._suspect):
                if (await self._probe(endpoint, self.probe_interval_s))[0]:
                    log.info("Helper %s answers again", endpoint)
                    self._suspect.pop(endpoint, None)

    async def _probe(self, endpoint: str, timeout_s: float) -> tuple[bool, float, str]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                await self.client(endpoint).statuses([PROBE_TASK_ID])
        except (MeshError, TimeoutError) as exc:
            return False, time.perf_counter() - started, str(exc) or "no answer in time"
        return True, time.perf_counter() - started, ""

    async def probe(self, timeout_s: float) -> dict[str, tuple[bool, float, str]]:
        """Ask every Helper a cheap question at once: endpoint -> (answered, seconds, why)."""
        answers = await asyncio.gather(*(self._probe(e, timeout_s) for e in self.endpoints))
        for endpoint, (ok, _, why) in zip(self.endpoints, answers, strict=True):
            if ok:
                self._suspect.pop(endpoint, None)
            else:
                self._mark_suspect(endpoint, why)
        return dict(zip(self.endpoints, answers, strict=True))

    # ---- status and results ---------------------------------------------------------------

    async def find(self, task_id: str) -> Found:
        """The task's most advanced status over every Helper. NotFound if every Helper answered
        and none knows it; Unavailable if none knows it and some did not answer."""
        if len(self.endpoints) == 1:  # no gather: a task and a future less per request
            try:
                answers = [await self._status_on(self.endpoints[0], task_id)]
            except Exception as exc:  # noqa: BLE001 - sorted out below, as gather's
                answers = [exc]
        else:
            answers = await asyncio.gather(*(self._status_on(e, task_id)
                                             for e in self.endpoints), return_exceptions=True)
        best, holders, unreachable = None, [], []
        for endpoint, answer in zip(self.endpoints, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, MeshError | TimeoutError):
                    raise answer
                unreachable.append(endpoint)
            elif answer.state:
                holders.append(endpoint)
                if best is None or _RANK.get(answer.state, 0) > _RANK.get(best.state, 0):
                    best = answer
        if best is None:
            if unreachable:
                raise Unavailable(f"task {task_id} is not known to the Helpers that answered; "
                                  f"{len(unreachable)} did not answer within "
                                  f"{self.timeout_s:g}s ({', '.join(unreachable)})")
            raise NotFound(task_id)
        return Found(best, holders, unreachable)

    async def _status_on(self, endpoint: str, task_id: str):  # noqa: ANN202
        # the member's reply timer bounds it, as in submit
        return (await self.client(endpoint).statuses([task_id], timeout_s=self.timeout_s))[0]

    async def wait(self, task_id: str, wait_s: float):  # noqa: ANN201 - wire.TaskStatus
        """The task's status once terminal, waiting up to `wait_s` (a long-poll on every Helper
        that holds it); WaitTimedOut with the last status seen if it is not by then."""
        found = await self.find(task_id)
        if found.status.state in wire.TERMINAL_STATES or wait_s <= 0:
            return found.status
        polls = [asyncio.ensure_future(self._wait_on(e, task_id, wait_s))
                 for e in found.holders]
        try:
            for next_done in asyncio.as_completed(polls, timeout=wait_s + self.timeout_s):
                try:
                    status = await next_done
                except (MeshError, TimeoutError):
                    continue
                if status.state in wire.TERMINAL_STATES:
                    return status
        except TimeoutError:
            pass
        finally:
            for poll in polls:
                poll.cancel()
        raise WaitTimedOut(task_id, wait_s, found.status)

    async def _wait_on(self, endpoint: str, task_id: str, wait_s: float):  # noqa: ANN202
        return await self.client(endpoint).wait(task_id, timeout=wait_s)

    # ---- operator requests ------------------------------------------------------------------

    async def each(self, call: Callable, role: Role = Role.OPERATOR) -> dict[str, object]:
        """`await call(client)` on every Helper at once (bounded by timeout_s): endpoint -> the
        answer, or the MeshError/TimeoutError it raised."""
        async def one(endpoint: str):  # noqa: ANN202
            async with asyncio.timeout(self.timeout_s):
                return await call(self.client(endpoint, role))
        answers = await asyncio.gather(*(one(e) for e in self.endpoints),
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException) and \
                    not isinstance(answer, MeshError | TimeoutError):
                raise answer
        return dict(zip(self.endpoints, answers, strict=True))

    async def cancel(self, task_id: str):  # noqa: ANN201 - mesh.client.CancelOutcome
        """Cancel the task on every Helper that holds it (a failover can leave it on two).
        Returns the outcome of one that cancelled it; AlreadyFinished if every holder that
        answered has it terminal; NotFound / Unavailable as `find`."""
        found = await self.find(task_id)

        async def one(endpoint: str):  # noqa: ANN202
            async with asyncio.timeout(self.timeout_s):
                return await self.client(endpoint).cancel(task_id)
        answers = await asyncio.gather(*(one(e) for e in found.holders), return_exceptions=True)
        errors = []
        for answer in answers:
            if not isinstance(answer, BaseException):
                return answer
            if not isinstance(answer, MeshError | TimeoutError):
                raise answer
            errors.append(answer)
        finished = [e for e in errors if isinstance(e, AlreadyFinished)]
        if finished:
            raise finished[0]
        raise Unavailable(f"no Helper holding task {task_id} answered the cancel within "
                          f"{self.timeout_s:g}s ({'; '.join(str(e) for e in errors)})")
