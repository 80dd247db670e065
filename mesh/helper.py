"""The Helper service: journal, intake, ack channel, timers, and their lifecycle.

Guarantees:
- A submit is answered "accepted" only after its journal record is durable (per the fsync
  policy; the default group-commits many submits into one fdatasync).
- On start the journal is replayed; every task not SUCCEEDED or DEAD is queued again and
  finished. Nodes that still hold tasks from before the restart report them in their
  heartbeats and keep them (`Dispatcher._adopt`); a reconcile window gives them time to.
- The intake and ack sockets bind the ports the Helper had before a restart, so nodes and
  clients reconnect on their own.

Bounds (docs in mesh/settings.py): a task is checked field by field before anything of it is
stored (mesh/admission.py); dead letters by count and bytes (mesh/deadletter.py); result
long-polls in all and per client (mesh/longpoll.py); task ids per status request and bytes per
reply; large replies a client leaves unread; the intake's send queue per client (SNDHWM).

Health (`health()`): not ok while the journal is failed or the Helper is stopping; the journal's
failure and its recovery are published as alerts (mesh.journal.failed / mesh.journal.recovered).

Shutdown order (`stop`): stop intake (new submits get SHUTTING_DOWN) -> last journal sync ->
close sockets -> close the journal.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio

from mesh import sockets, wire
from mesh.admission import MAX_TASK_ID_CHARS, TaskLimits, check_task, journal_record_limit
from mesh.dispatcher import ACCEPTING, Dispatcher, TaskEntry
from mesh.errors import (
    JournalError, KindNotServed, MeshError, NotFound, QueueFull, ShuttingDown, StoppedLeading,
    TaskRejected, WireError, error_from_code,
)
from mesh.journal import FsyncPolicy, Journal
from mesh.longpoll import ResultWaiters
from mesh.metrics import HelperMetrics
from mesh.retained import RetainedStore
from mesh.settings import HelperSettings
from mesh.task import make_task
from mesh.trust import (
    Domain, Operation, RateLimitedLog, Role, Trust, inert, key_of, refusal, role_of,
)

log = logging.getLogger("mesh.helper")

__all__ = ["MAX_TASK_ID_CHARS", "Helper"]
_DRAIN_MAX = 2000  # frames taken off a socket before yielding to the loop
# A journal round runs on the loop thread only while fdatasyncs take less than this: on a
# slow or busy disk, stalling the loop for each lone submit costs more than the hand-over.
INLINE_SYNC_MAX_S = 0.002
#: at most this many waiting ack frames are read before an intake batch's sync (see _sync_submits)
INLINE_ACK_FRAMES = 16
RESULT_SYNC_DELAY_S = 0.01  # how long result records may wait for a sync (see _flush_background)
#: replies of at least this size are tracked until ZeroMQ has sent them (max_unread_reply_bytes)
LARGE_REPLY_BYTES = 64 * 2**10
#: how long, and for how many clients, a vanished route is remembered (see _client_gone)
GONE_FOR_S = 5.0
GONE_MEMORY = 1024
#: how often clients holding long-polls are probed (an empty frame) to learn whether they left
PROBE_INTERVAL_S = 2.0
#: the timer loop's period: liveness, retries, and a dispatch pass
TIMER_TICK_S = 0.05
#: what each intake request asks to do (mesh.trust.ALLOWED says which roles may)
_DEAD_LETTER_OPERATIONS = {
    wire.LIST: Operation.DEAD_LETTER_LIST, wire.INSPECT: Operation.DEAD_LETTER_INSPECT,
    wire.REPLAY: Operation.DEAD_LETTER_REPLAY, wire.PURGE: Operation.DEAD_LETTER_PURGE,
}
_REQUEST_OPERATIONS = {"submit": Operation.SUBMIT, "status": Operation.STATUS,
                       "result": Operation.RESULT, "stats": Operation.STATS,
                       "cancel": Operation.CANCEL, "nodes": Operation.NODES}


class Helper:
    """The Helper service (see the module docstring).

    `trust` secures its sockets (mesh/trust.py): the intake ROUTER admits client and operator
    keys and checks each request against the sender's role (PERMISSION_DENIED otherwise); the
    ack PULL admits ai-node keys only, binds each node id to its key and pins that key on the
    PUSH to the node. Default: the local key store (`Trust.default()`); `Trust.plain()` for
    unauthenticated links (`--insecure`)."""

    def __init__(self, settings: HelperSettings, *, context: zmq.asyncio.Context | None = None,
                 metrics: HelperMetrics | None = None, alerts=None,  # noqa: ANN001
                 trust: Trust | None = None, group=None) -> None:  # noqa: ANN001
        self.settings = settings
        # A Helper group's leader hooks (mesh/group.py `LeaderHooks`): the journal wrapper that
        # answers syncs once followers have the records, and the intake's refusal while too few
        # followers are in sync, and its `name` and `epoch`, which every dispatch frame carries
        # (nodes refuse a deposed leader's). None for a Helper of its own.
        self._group = group
        self.trust = trust
        self._own_trust = trust is None
        self._warn = RateLimitedLog(log, interval_s=10.0)
        self.metrics = metrics or HelperMetrics()
        self._own_context = context is None
        self._ctx = context
        self._alerts = alerts  # an AlertPublisher, or None
        self.incarnation = int.from_bytes(os.urandom(8), "little") | 1
        #: refuse_unknown_kinds: until then (monotonic), nodes may not all have announced
        #: their kinds to this run yet (set at start)
        self._kinds_learned_at = float("inf")
        self.intake_endpoint = ""
        self.ack_endpoint = ""
        self.journal: Journal | None = None
        self.dispatcher: Dispatcher | None = None
        self._intake = self._ack = None
        self._ack_reader = self._intake_reader = None
        self._tasks: list[asyncio.Task] = []
        self._accepting = False
        self._stopped = False
        self._room = asyncio.Event()
        self._kick_scheduled = False
        self._bg_sync: asyncio.Task | None = None
        self._bg_sync_again = False
        self.recovered: dict[str, int] = {}
        self._queue_high = False
        # Answers of the submits read in this intake batch, waiting for one journal sync.
        self._unsynced: list[Callable[[BaseException | None], None]] = []
        self._limits = TaskLimits.of(settings)
        self._long_polls = ResultWaiters(settings.max_result_waiters,
                                         settings.max_result_waiters_per_client)
        # identity -> large replies ZeroMQ may still hold: (tracker, bytes)
        self._unread: dict[bytes, deque] = {}
        #: clients whose route vanished lately -> until when we know (requests they queued
        #: before leaving are still read; status and result requests of theirs are not worked)
        self._gone: OrderedDict[bytes, float] = OrderedDict()
        self._journal_failed = False
        self._dead_evicted_told = 0
        self._wake_handle: asyncio.TimerHandle | None = None
        self._helper_count = 1

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        # Every live node is heard from within node_dead_after_s (else it is declared dead):
        # only after that does "no node announced this kind" mean what it says.
        self._kinds_learned_at = time.monotonic() + s.node_dead_after_s
        data_dir = Path(s.data_dir)
        # Payloads and results are private: the data dir is 0700 (the journal makes its files 0600).
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        if self._ctx is None:
            self._ctx = sockets.new_context()
        self._sync_ctx = sockets.sync_view(self._ctx)
        if self.trust is None:
            self.trust = Trust.default()
        # Starts the ZAP handler of this context (before any bind).
        intake_link = self.trust.server(self._ctx, Role.HELPER, Domain.INTAKE)
        ack_link = self.trust.server(self._ctx, Role.HELPER, Domain.ACKS)
        self.journal = Journal(
            data_dir / "journal", policy=FsyncPolicy(s.fsync_policy),
            segment_size_bytes=s.journal_segment_bytes, interval_ms=s.fsync_interval_ms,
            max_record_bytes=journal_record_limit(s), rewrite=self._rewrite)
        self.journal.on_fsync = self._on_fsync
        # Called on the loop thread when the journal fails or recovers (see health()).
        self.journal.on_health = self._on_journal_health
        if self._group is not None:
            self.journal = self._group.wrap_journal(self.journal)
        self._limits = TaskLimits.of(s, self.journal.max_record_bytes)
        previous = self._load_state(data_dir)
        self._intake, self.intake_endpoint = self._bind(
            functools.partial(sockets.intake_router, link=intake_link), s.intake_endpoint,
            previous.get("intake_endpoint"), s.max_payload_bytes * 64 + 2**20,
            self._sync_ctx)
        self._ack, self.ack_endpoint = self._bind(
            functools.partial(sockets.ack_pull, link=ack_link), s.ack_endpoint,
            previous.get("ack_endpoint"), 64 * 2**20, self._sync_ctx)
        self._intake_reader = sockets.FrameReader(self._intake, self._on_client_frames,
                                                  multipart=True, batch_max=_DRAIN_MAX,
                                                  on_batch_end=self._sync_submits,
                                                  with_user_id=True)
        self._ack_reader = sockets.FrameReader(self._ack, self._on_ack_frame,
                                               batch_max=_DRAIN_MAX,
                                               on_batch_end=self._after_acks,
                                               with_user_id=True)
        self.dispatcher = Dispatcher(
            s, helper_incarnation=self.incarnation, reply_to=self.ack_endpoint,
            journal_append=self.journal.append, journal_release=self.journal.release,
            connect=self._connect_node, send=_send_noblock, close=_close_now,
            metrics=self.metrics, on_event=self._on_event,
            record_limit_bytes=self.journal.max_record_bytes,
            group=self._group.name if self._group is not None else "",
            group_epoch=self._group.epoch if self._group is not None else 0,
            retained=RetainedStore(data_dir / "retained"), dead=RetainedStore(data_dir / "dead"),
            journal_segment=lambda: self.journal.segment, journal_keep_from=self.journal.keep_from)
        replayed = 0
        for record in self.journal.recover():
            self.dispatcher.replay(record)
            replayed += 1
        self.recovered = self.dispatcher.finish_replay()
        self.recovered["records"] = replayed
        self._report_damage(self.journal.recovery_report)
        self.journal.start(loop)
        self._save_state(data_dir)
        self._accepting = True
        self._ack_reader.start(loop)
        self._intake_reader.start(loop)
        self._tasks = [
            loop.create_task(self._timer_loop(), name="helper-timers"),
        ]
        log.info("helper %s up: intake %s, acks %s, recovered %s, key %s", s.helper_id,
                 self.intake_endpoint, self.ack_endpoint, self.recovered,
                 self.public_key or "none (--insecure: plain links)")

    async def stop(self) -> None:
        """Stop intake, make the journal durable, close everything. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._accepting = False
        for reader in (self._ack_reader, self._intake_reader):
            if reader is not None:
                reader.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        self._long_polls.clear()
        self._unread.clear()
        self._gone.clear()
        if self._bg_sync is not None:
            await asyncio.gather(self._bg_sync, return_exceptions=True)
        if self.journal is not None:
            try:
                await self.journal.close()
            except JournalError as exc:
                log.error("journal close failed: %s", exc)
        if self.dispatcher is not None:
            for node in list(self.dispatcher.nodes.values()):
                _close_now(node.sock)
            self.dispatcher.retained.close()
            self.dispatcher.dead.close()
        for sock in (self._intake, self._ack):
            if sock is not None:
                sock.close(linger=0)
        if self.trust is not None and self._ctx is not None:
            self.trust.release(self._ctx)  # its ZAP socket would block term()
        if self._own_context and self._ctx is not None:
            self._ctx.term()
        log.info("helper %s stopped", self.settings.helper_id)

    @property
    def public_key(self) -> str:
        """The Helper's CURVE public key (Z85) that clients and AI nodes pin; "" on plain
        links. Announced in discovery as `curve_key`."""
        return self.trust.public_key(Role.HELPER) if self.trust is not None else ""

    def health(self) -> tuple[bool, str]:
        """(ok, reason) for a discovery health check: not ok before start, while stopping, and
        while the journal is failed (no submit can be accepted then)."""
        if self._stopped:
            return False, "stopping"
        if self.journal is None or not self._accepting:
            return False, "not started"
        if getattr(self.journal, "failed", False):
            failure = getattr(self.journal, "failure", None) or "unknown failure"
            return False, f"journal failed: {failure}"
        return True, "serving"

    def _report_damage(self, report) -> None:  # noqa: ANN001 - journal RecoveryReport | None
        """Damage found by recovery (beyond a torn tail, which a crash leaves): log it, set the
        metrics and publish `mesh.journal.damaged`, so a disk that rots is never silent."""
        if report is None:
            return
        self.metrics.journal_damaged_bytes.set(report.damaged_bytes)
        self.metrics.journal_damaged_records.set(report.skipped_records)
        self.recovered["damaged_bytes"] = report.damaged_bytes
        if report.clean or report.only_torn_tail:
            return
        ranges = [{"segment": r.segment, "offset": r.offset, "length": r.length,
                   "reason": r.reason, "aside": str(r.aside_path) if r.aside_path else ""}
                  for r in report.ranges if not r.torn_tail]
        log.error("journal damage found at recovery: %d bytes in %d ranges skipped, about %d "
                  "records lost; the damaged bytes were copied aside (%s)",
                  report.damaged_bytes, len(ranges), report.skipped_records,
                  ", ".join(r["aside"] or f"segment {r['segment']}@{r['offset']}" for r in ranges[:5]))
        self._on_event("journal_damaged", {"damaged_bytes": report.damaged_bytes,
                                           "skipped_records": report.skipped_records,
                                           "ranges": ranges[:20]})

    def _on_journal_health(self, failed: bool, message: str | None) -> None:
        """The journal failed or recovered (loop thread): one alert per transition."""
        if failed == self._journal_failed:
            return
        self._journal_failed = failed
        self.metrics.journal_failed.set(1 if failed else 0)
        if failed:
            log.error("journal failed: %s; submits are refused until it recovers", message)
            self._on_event("journal_failed", {"error": message or ""})
        else:
            log.warning("journal recovered; submits are accepted again")
            self._on_event("journal_recovered", {})

    async def __aenter__(self) -> Helper:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- in-process API ----------------------------------------------------------------

    async def submit(self, kind: str, payload: bytes = b"", **options) -> str:  # noqa: ANN003
        """Accept one task; returns its id once the task is durable. See `make_task`."""
        return (await self.submit_many([make_task(kind, payload, **options)]))[0]

    async def submit_many(self, tasks: list, wait_s: float = 0.0) -> list[str]:
        """Accept wire Tasks (from `make_task`) together; raises the first rejection."""
        results = await self._submit(tasks, wait_s)
        for result in results:
            if result.code != wire.OK:
                raise error_from_code(result.code, result.message)
        return [r.task_id for r in results]

    def status(self, task_id: str):  # noqa: ANN201 - wire.TaskStatus
        entry = self.dispatcher.find(task_id)
        if entry is None:
            raise NotFound(task_id)
        return entry.status()

    async def wait(self, task_id: str, timeout_s: float):  # noqa: ANN201 - wire.TaskStatus
        """Wait until the task is terminal (or the timeout passes) and return its status."""
        entry = self.dispatcher.find(task_id)
        if entry is None:
            raise NotFound(task_id)
        if entry.terminal:
            return entry.status()
        fut = asyncio.get_running_loop().create_future()

        def done(e: TaskEntry) -> None:
            if not fut.done():
                fut.set_result(None)

        self.dispatcher.add_waiter(task_id, done)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            self.dispatcher.remove_waiter(task_id, done)
        return entry.status()

    # ---- admission ---------------------------------------------------------------------

    def _admit(self, tasks, results: list, new: list, dupes: list) -> list:  # noqa: ANN001
        """Validate and journal what fits; returns the tasks refused for lack of room.

        Every task gets exactly one result. A task refused here (invalid, too large, or its
        journal append failed) leaves nothing behind: no table entry, no queue entry, no
        record. The check runs before the duplicate lookup, so an id that can never be stored
        is refused every time, never answered as a duplicate."""
        d = self.dispatcher
        no_room = []
        for task in tasks:
            if not self._accepting:
                err = ShuttingDown()
                results.append(wire.SubmitResult(task_id=task.task_id, code=err.code,
                                                 message=str(err)))
                continue
            refused = self._group.refusal() if self._group is not None else None
            if refused is not None:
                self._refuse(task, refused, results)
                continue
            try:
                encoded = check_task(task, self._limits)
            except MeshError as exc:
                self._refuse(task, exc, results)
                continue
            known = d.find(task.task_id)
            if known is not None:
                result = wire.SubmitResult(task_id=task.task_id, code=wire.OK, duplicate=True)
                results.append(result)
                dupes.append((result, known))
                continue
            if self.settings.refuse_unknown_kinds and task.kind not in d.kinds_announced \
                    and time.monotonic() >= self._kinds_learned_at:
                # (before that, just after a start, a kind that a node serves but has not
                # announced yet to this run is accepted: a typo then waits unroutable_grace_s
                # and goes DEAD, rather than real work being refused as invalid)
                self._refuse(task, KindNotServed(task.kind, d.kinds_announced), results)
                continue
            if not d.has_room(1, len(encoded)):
                no_room.append(task)
                continue
            try:
                entry = d.admit(task, encoded)
            except Exception as exc:  # the journal refused the record: nothing was stored
                if not isinstance(exc, JournalError):
                    log.exception("journal append of task %r failed", task.task_id[:64])
                    exc = JournalError(f"the journal could not take the task's record "
                                       f"({type(exc).__name__}: {exc}); nothing was stored, "
                                       "submit again")
                self._refuse(task, exc, results)
                continue
            results.append(wire.SubmitResult(task_id=task.task_id, code=wire.OK))
            new.append(entry)
        return no_room

    def _refuse(self, task, exc: MeshError, results: list) -> None:  # noqa: ANN001
        self.metrics.rejected.labels(type(exc).__name__).inc()
        results.append(wire.SubmitResult(task_id=task.task_id, code=exc.code or wire.INVALID_TASK,
                                         message=str(exc)))

    def _admission_failed(self, tasks, new: list, exc: BaseException) -> list:  # noqa: ANN001
        """A bug broke admission half-way: take back what was admitted (a FORGET record keeps
        it gone after a restart) and answer every task of the request with the error."""
        log.exception("admission of a submit of %d tasks failed", len(tasks))
        for entry in new:
            if self.dispatcher.tasks.get(entry.task_id) is entry:
                self.dispatcher.abandon(entry)
                try:
                    self.dispatcher.forget(entry.task_id)
                except Exception:  # noqa: BLE001 - the journal is failing too; nothing to add
                    log.exception("could not journal the withdrawal of task %r", entry.task_id)
        err = JournalError(f"the Helper failed to admit the request ({type(exc).__name__}: "
                           f"{exc}); nothing of it was accepted, submit again")
        self.metrics.rejected.labels("AdmissionFailed").inc(len(tasks))
        return [wire.SubmitResult(task_id=t.task_id, code=err.code, message=str(err))
                for t in tasks]

    async def _submit(self, tasks, wait_s: float, admitted: tuple | None = None) -> list:  # noqa: ANN001
        """Admit, wait for room up to wait_s if asked, make durable. `admitted` carries the
        state of an admission already done by the intake."""
        if admitted is None:
            results: list = []
            new: list[TaskEntry] = []
            dupes: list = []
            no_room = self._admit(tasks, results, new, dupes)
        else:
            results, new, dupes, no_room = admitted
        deadline = time.monotonic() + wait_s
        while no_room and wait_s > 0 and time.monotonic() < deadline and self._accepting:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
            no_room = self._admit(no_room, results, new, dupes)
        self._refuse_no_room(no_room, results)
        if new or dupes:
            started = time.monotonic()
            error = None
            try:
                await self.journal.sync_future()
            except (JournalError, TaskRejected) as exc:  # TaskRejected: a group's refusal
                error = exc
            self._settle_submit(results, new, dupes, error, started)
        if no_room:
            order = {t.task_id: i for i, t in enumerate(tasks)}
            results.sort(key=lambda r: order.get(r.task_id, 0))
        return results

    def _refuse_no_room(self, no_room: list, results: list) -> None:
        d = self.dispatcher
        for task in no_room:
            depth = len(d.pending) + len(d.retry_waiting)
            if depth < self.settings.max_pending_tasks:  # the bytes bound is the one hit
                err = QueueFull(d.pending.size_bytes + task.ByteSize(),
                                self.settings.max_pending_bytes, "task bytes")
            else:
                err = QueueFull(depth, self.settings.max_pending_tasks)
            self.metrics.rejected.labels("QueueFull").inc()
            results.append(wire.SubmitResult(task_id=task.task_id, code=err.code,
                                             message=str(err)))

    def _settle_submit(self, results: list, new: list, dupes: list,
                       error: MeshError | None, started: float, kick: bool = True) -> None:
        """The journal sync of a submit ended: the tasks are accepted, or they never were.

        `error` is a JournalError when the disk failed, or a group's refusal (a TaskRejected:
        NotEnoughReplicas when the followers went away before they had the records,
        StoppedLeading when the term ended): those are no journal failure, and are logged and
        counted as what they are (the group alerts mesh.group.degraded itself)."""
        if error is not None:
            if isinstance(error, TaskRejected):
                self.metrics.rejected.labels(type(error).__name__).inc(len(new))
            self._note_sync_failed(error, len(new), "submits")
            failed = set()
            for entry in new:
                self.dispatcher.abandon(entry)
                failed.add(entry.task_id)
            # A group's refusal fails every duplicate too: on a leader, a task of the table is
            # not yet accepted by the group until the commit covers it (one replayed from the
            # log at the term's start commits with the term's first record, which may not
            # have committed). Only a single Helper's own sync makes a known task durable.
            group_refusal = isinstance(error, TaskRejected)
            for result in results:
                if result.task_id in failed or (result.duplicate and (group_refusal or any(
                        e.task_id == result.task_id and e.state == ACCEPTING
                        for _, e in dupes))):
                    result.code = error.code
                    result.message = str(error)
                    result.duplicate = False
            return
        for entry in new:
            self.dispatcher.durable(entry)
        self.metrics.submitted.inc(len(new))
        if dupes:
            self.metrics.duplicates.inc(len(dupes))
        self.metrics.accept_latency.observe(time.monotonic() - started)
        if kick:
            self._kick()

    def _note_sync_failed(self, error: BaseException, count: int, what: str) -> None:
        """A journal sync that answers requests (submits, cancels) failed. A group's refusal (a
        TaskRejected: StoppedLeading, NotEnoughReplicas) is no journal failure: logged once per
        kind and interval as what it is (the group alerts mesh.group.degraded itself). Only a
        failed disk is logged, counted and alerted as a journal error."""
        if isinstance(error, TaskRejected):
            self._warn.warning(("not_accepted", what, type(error).__name__),
                               "%d %s not accepted (nothing failed on disk): %s", count, what,
                               error)
        else:
            self.metrics.journal_errors.inc()
            log.error("journal sync failed, %d %s refused: %s", count, what, error)
            self._on_event("journal_error", {"error": str(error)})

    # ---- sockets -----------------------------------------------------------------------

    def _bind(self, factory, endpoint: str, previous: str | None, max_bytes: int,  # noqa: ANN001, ANN202
              ctx=None):  # noqa: ANN001
        ctx = ctx or self._ctx
        if previous and sockets.port_of(endpoint) == 0 and previous.rsplit(":", 1)[0] == \
                endpoint.rsplit(":", 1)[0]:
            try:
                return factory(ctx, previous, max_bytes)
            except zmq.ZMQError as exc:
                log.warning("could not bind previous endpoint %s (%s); choosing a new one",
                            previous, exc)
        return factory(ctx, endpoint, max_bytes)

    def _connect_node(self, endpoint: str, key: str):  # noqa: ANN202
        """The PUSH to a node, pinned to `key`, the key its heartbeats were authenticated with:
        a heartbeat naming someone else's endpoint gets no payload out of us (the handshake
        fails unless the server there holds that key's secret). TrustError if the key is not
        (any longer) allowed as ai-node."""
        link = self.trust.client(Role.HELPER, Role.AI_NODE, key or None)
        return sockets.dispatch_push(self._sync_ctx, endpoint, link=link)

    def _reply(self, identity: bytes, reply) -> bool:  # noqa: ANN001
        """Send one reply; never blocks. A client that is gone, or not reading (its queue is at
        the SNDHWM), loses the reply (counted). A large reply is refused, with a small error
        reply instead, while the client leaves max_unread_reply_bytes of earlier ones unread.
        Returns whether the reply was queued."""
        frame = wire.encode(reply)
        large = len(frame) >= LARGE_REPLY_BYTES
        if large:
            unread = self._unread_bytes(identity)
            if unread + len(frame) > self.settings.max_unread_reply_bytes:
                frame = wire.encode(self._unread_refusal(
                    reply.request_id, f"reply of {len(frame)} bytes", unread))
                large = False
        try:
            if large:
                tracker = self._intake.send_multipart([identity, frame], zmq.NOBLOCK,
                                                      copy=False, track=True)
                self._unread.setdefault(identity, deque()).append((tracker, len(frame)))
            else:
                self._intake.send_multipart([identity, frame], zmq.NOBLOCK)
            sent = True
        except zmq.ZMQError as exc:
            sent = False
            self._reply_failed(identity, exc)
        self._intake_reader.wake()  # a send can take the edge of a request that just arrived
        return sent

    def _unread_refusal(self, rid: int, what: str, unread: int):  # noqa: ANN202
        limit = self.settings.max_unread_reply_bytes
        self.metrics.intake_refused.labels("unread_reply_bytes").inc()
        return wire.ClientReply(
            version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.QUEUE_FULL,
            message=f"{what} not sent: {unread} bytes of earlier replies to this client are "
                    f"still unread (limit max_unread_reply_bytes={limit}); read them, then "
                    "ask again")

    def _refuse_unread(self, identity: bytes, rid: int) -> None:
        self._reply(identity, self._unread_refusal(rid, "status reply",
                                                   self._unread_bytes(identity)))

    def _reply_failed(self, identity: bytes, exc: zmq.ZMQError) -> None:
        if exc.errno == zmq.EAGAIN:
            self.metrics.replies_dropped.labels("not_reading").inc()
            return
        self.metrics.replies_dropped.labels("gone").inc()
        self._client_gone(identity)

    def _client_gone(self, identity: bytes) -> None:
        """No route to this client any more: its long-polls and reply trackers go, and the
        requests it queued before it left are not worked for a while (GONE_FOR_S: the Helper
        reads a backlog in far less; a client that reconnects under a routing id it set
        itself, and so looks gone, is answered again after that)."""
        self._gone[identity] = time.monotonic() + GONE_FOR_S
        self._gone.move_to_end(identity)
        while len(self._gone) > GONE_MEMORY:
            self._gone.popitem(last=False)
        self._unread.pop(identity, None)
        for waiter in self._long_polls.drop_client(identity):
            if not self._long_polls.has_task(waiter.task_id):
                self.dispatcher.remove_waiter(waiter.task_id, self._long_poll_done)
        self.metrics.result_waiters.set(len(self._long_polls))

    def _known_gone(self, identity: bytes) -> bool:
        until = self._gone.get(identity)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._gone[identity]
        return False

    def _unread_bytes(self, identity: bytes) -> int:
        pending = self._unread.get(identity)
        if not pending:
            return 0
        while pending and pending[0][0].done:
            pending.popleft()
        if not pending:
            del self._unread[identity]
            return 0
        return sum(size for tracker, size in pending if not tracker.done)

    def _probe_clients(self) -> None:
        """Send an empty frame to each client holding long-polls (clients skip it): a client
        that is gone has no route any more, and its long-polls are dropped."""
        for identity in self._long_polls.clients():
            try:
                self._intake.send_multipart([identity, b""], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EAGAIN:
                    self._client_gone(identity)
        for identity in list(self._unread):
            self._unread_bytes(identity)  # forgets what was sent
        self._intake_reader.wake()

    def _on_client_frames(self, frames: list[bytes], user_id: str = "") -> None:
        if len(frames) != 2:
            self.metrics.bad_frames.labels("intake").inc()
            return
        identity, body = frames
        try:
            request = wire.decode_client_request(body)
        except WireError as exc:
            self.metrics.bad_frames.labels("intake").inc()
            self._warn.warning("bad_request", "malformed client request dropped: %s",
                               inert(str(exc), 300))
            self._reply(identity, _error_reply(0, exc))  # its request id is unread
            return
        which = request.WhichOneof("body")
        rid = request.request_id
        operation = (_DEAD_LETTER_OPERATIONS.get(request.dead_letter.op)
                     if which == "dead_letter" else _REQUEST_OPERATIONS.get(which))
        if operation is not None and not self.trust.permits(user_id, operation):
            self._deny(identity, rid, user_id, operation)
            return
        if which in ("status", "result") and self._known_gone(identity):
            # nobody to answer: a status can mean 16 MiB read from disk, a long-poll a slot
            self.metrics.replies_dropped.labels("gone").inc()
            return
        if which == "submit":
            self._on_submit(identity, rid, request.submit)
        elif which == "status":
            if self._unread_bytes(identity) >= self.settings.max_unread_reply_bytes:
                # refused before reading results from disk and building a reply of up to
                # max_reply_bytes that could not be sent anyway
                self._refuse_unread(identity, rid)
            else:
                self._reply(identity, self._answer_status(rid, request.status.task_ids))
        elif which == "result":
            self._answer_result(identity, rid, request.result.task_id, request.result.wait_ms)
        elif which == "dead_letter":
            self._on_dead_letter(identity, rid, request.dead_letter)
        elif which == "stats":
            reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.OK)
            reply.stats.values.update(self.stats())
            self._reply(identity, reply)
        elif which == "cancel":
            self._on_cancel(identity, rid, request.cancel.task_ids)
        elif which == "nodes":
            reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.OK)
            reply.nodes.CopyFrom(self.dispatcher.nodes_view())
            self._reply(identity, reply)
        else:
            self.metrics.bad_frames.labels("intake").inc()
            self._reply(identity, wire.ClientReply(
                version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.MALFORMED_REQUEST,
                message="request has no body this Helper understands"))

    def _on_cancel(self, identity: bytes, rid: int, task_ids) -> None:  # noqa: ANN001
        """Cancel each task (see `Dispatcher.cancel`); answered once the CANCELLED records are
        durable, so a cancel answered OK survives a restart."""
        reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.OK)
        ids = list(dict.fromkeys(task_ids))
        if len(ids) > self.settings.max_status_ids:
            reply.code = wire.MALFORMED_REQUEST
            reply.message = (f"cancel request names {len(ids)} task ids; at most "
                             f"{self.settings.max_status_ids} per request")
            self._reply(identity, reply)
            return
        changed = False
        try:
            for task_id in ids:
                result = self.dispatcher.cancel(task_id)
                changed = changed or result.code == wire.OK
                reply.cancel.results.append(result)
        except JournalError as exc:
            self._reply(identity, _error_reply(rid, exc))
            return
        if not changed:
            self._reply(identity, reply)
            return
        self._room.set()
        self._reply_when_durable(identity, rid, reply, len(ids), "cancel")

    def _on_dead_letter(self, identity: bytes, rid: int, request) -> None:  # noqa: ANN001
        """List and inspect answer at once; a replay or purge that changed something is
        answered once its records are durable, as a cancel is: an operator told "replayed" or
        "purged" does not see the dead letter back after a crash."""
        from mesh.deadletter import answer  # small module, loaded on first use
        try:
            reply = answer(self.dispatcher, request, rid, self.settings.max_reply_bytes)
        except JournalError as exc:
            self._reply(identity, _error_reply(rid, exc))
            return
        self._kick()
        if request.op in (wire.REPLAY, wire.PURGE) and reply.dead_letter.affected:
            action = "replay" if request.op == wire.REPLAY else "purge"
            self._reply_when_durable(identity, rid, reply, reply.dead_letter.affected, action)
        else:
            self._reply(identity, reply)

    def _reply_when_durable(self, identity: bytes, rid: int, reply, count: int,  # noqa: ANN001
                            action: str) -> None:
        """Send `reply` once the journal has synced what the request wrote; if the sync fails,
        answer with why instead (`_not_durable`)."""
        def synced(future: asyncio.Future) -> None:
            error = future.exception() if not future.cancelled() else JournalError("cancelled")
            if error is None:
                self._reply(identity, reply)
                return
            self._note_sync_failed(error, count, f"{action}s")
            self._reply(identity, _not_durable(rid, error, action))

        try:
            self.journal.sync_future().add_done_callback(synced)
        except JournalError as exc:
            self._reply(identity, _error_reply(rid, exc))

    def _deny(self, identity: bytes, rid: int, user_id: str, operation: Operation) -> None:
        """A request the sender's role may not make: a PERMISSION_DENIED reply, counted."""
        self.metrics.requests_denied.labels(operation.value).inc()
        role = role_of(user_id)
        self._warn.warning(("denied", operation), "%s refused for %s key %s", operation.value,
                           role.value if role else "an unknown", inert(key_of(user_id), 40))
        self._reply(identity, wire.ClientReply(
            version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.PERMISSION_DENIED,
            message=refusal(role, operation)))

    def _on_submit(self, identity: bytes, rid: int, submit) -> None:  # noqa: ANN001
        """Admit at once; reply from the journal sync's callback (no task, no extra loop turn).
        Only a submit that must wait for room takes the slower path through a task."""
        tasks = submit.tasks
        wait_s = submit.wait_ms / 1000.0
        results: list = []
        new: list[TaskEntry] = []
        dupes: list = []
        try:
            no_room = self._admit(tasks, results, new, dupes)
        except Exception as exc:  # a bug: still answer every task, and leave no trace
            message = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid,
                                       code=wire.OK)
            message.submit.results.extend(self._admission_failed(tasks, new, exc))
            self._reply(identity, message)
            return
        if no_room and wait_s > 0:
            asyncio.get_running_loop().create_task(
                self._answer_submit(identity, rid, list(tasks), wait_s, results, new, dupes,
                                    no_room))
            return
        self._refuse_no_room(no_room, results)
        if no_room:
            order = {t.task_id: i for i, t in enumerate(tasks)}
            results.sort(key=lambda r: order.get(r.task_id, 0))

        def reply() -> None:
            message = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid,
                                       code=wire.OK)
            message.submit.results.extend(results)
            self._reply(identity, message)

        if not (new or dupes):
            reply()
            return
        if new and self.settings.dispatch_before_sync:
            self._dispatch()  # queued at admission: send now, while the record is being synced
        started = time.monotonic()

        def synced(error: BaseException | None) -> None:
            self._settle_submit(results, new, dupes, error, started, kick=False)
            reply()

        self._unsynced.append(synced)

    def _sync_submits(self) -> None:
        """End of an intake batch: one journal sync answers every submit read in it.

        When the loop has nothing else to do (at most a few ack batches waiting, taken
        first, outside a group; the flusher idle), the sync runs right here
        (`Journal.sync_here`): a lone submit skips two thread hand-overs. Otherwise the flusher
        thread syncs while the loop goes on with acks and dispatch."""
        answers, self._unsynced = self._unsynced, []
        if not answers:
            return
        # Acks waiting (the results of the submits before, in a closed loop) are taken first
        # when they are few: their records ride on this sync, which then runs right here.
        # Handing the sync to the flusher so that the loop could take them cost two thread
        # wake-ups and a second fdatasync soon after (~35 us on accept p50, bench/http_bench).
        # Not in a group: its sync ships the records to the followers first, and their part
        # of the way is longer than ours, so the acks go on the loop while the flusher syncs.
        # Asking took the edge of the socket's descriptor: read_now or wake tell the reader.
        if self._ack.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            inline = self._group is None and self._ack_reader.read_now(INLINE_ACK_FRAMES)
            if not inline:
                self._ack_reader.wake()
        else:
            inline = True
        if inline and self.journal.last_fsync_s < INLINE_SYNC_MAX_S and self.journal.sync_here():
            self._answer_synced(answers, None)
            return

        def synced(future: asyncio.Future) -> None:
            error = future.exception() if not future.cancelled() else JournalError("cancelled")
            self._answer_synced(answers, error)

        try:
            self.journal.sync_future().add_done_callback(synced)
        except JournalError as exc:
            self._answer_synced(answers, exc)

    def _answer_synced(self, answers: list, error: BaseException | None) -> None:
        for answer in answers:
            answer(error)
        self._dispatch()  # after the answers, in the same turn: no loop turn in between

    async def _answer_submit(self, identity: bytes, rid: int, tasks: list, wait_s: float,
                             results: list, new: list, dupes: list, no_room: list) -> None:
        results = await self._submit(tasks, wait_s, (results, new, dupes, no_room))
        reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.OK)
        reply.submit.results.extend(results)
        self._reply(identity, reply)

    def _answer_status(self, rid: int, task_ids) -> object:  # noqa: ANN001
        """Statuses of distinct task ids, at most max_status_ids of them. The reply stops
        adding statuses before it passes max_reply_bytes (the first is always in) and says so
        in its message; the caller asks again for the rest (Client.statuses does)."""
        s = self.settings
        reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.OK)
        ids = list(dict.fromkeys(task_ids))
        if len(ids) > s.max_status_ids:
            self.metrics.intake_refused.labels("status_ids").inc()
            reply.code = wire.MALFORMED_REQUEST
            reply.message = (f"status request names {len(ids)} distinct task ids; at most "
                             f"{s.max_status_ids} per request (max_status_ids): ask in "
                             "smaller requests")
            return reply
        find = self.dispatcher.find
        statuses = reply.status.statuses
        size = 0
        for n, task_id in enumerate(ids):
            entry = find(task_id)
            status = entry.status() if entry else wire.TaskStatus(task_id=task_id)
            size += status.ByteSize() + 8
            if size > s.max_reply_bytes and n:
                self.metrics.intake_refused.labels("reply_bytes").inc()
                reply.message = (f"statuses of {n} of {len(ids)} tasks: the reply reached its "
                                 f"limit of {s.max_reply_bytes} bytes (max_reply_bytes); ask "
                                 f"again for the other {len(ids) - n}")
                break
            statuses.append(status)
        return reply

    def _answer_result(self, identity: bytes, rid: int, task_id: str, wait_ms: int) -> None:
        """A long-poll: answered now if the task is unknown or terminal (or wait_ms is 0),
        else when it ends or when the wait (cut to max_result_wait_s) passes."""
        entry = self.dispatcher.find(task_id)
        if entry is None or entry.terminal or wait_ms == 0:
            self._send_status(identity, rid, task_id, entry)
            return
        refusal = self._long_polls.refusal(identity)
        if refusal is not None:
            self.metrics.intake_refused.labels("result_waiters").inc()
            self._reply(identity, wire.ClientReply(
                version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.QUEUE_FULL,
                message=refusal))
            return
        wait_s = min(wait_ms / 1000.0, self.settings.max_result_wait_s)
        if self._long_polls.add(identity, rid, task_id, time.monotonic() + wait_s):
            self.dispatcher.add_waiter(task_id, self._long_poll_done)

    def _long_poll_done(self, entry: TaskEntry) -> None:
        for waiter in self._long_polls.take_task(entry.task_id):
            self._send_status(waiter.identity, waiter.request_id, entry.task_id, entry)

    def _expire_long_polls(self) -> None:
        for waiter in self._long_polls.expired(time.monotonic()):
            task_id = waiter.task_id
            if not self._long_polls.has_task(task_id):
                self.dispatcher.remove_waiter(task_id, self._long_poll_done)
            self._send_status(waiter.identity, waiter.request_id, task_id,
                              self.dispatcher.find(task_id))

    def _send_status(self, identity: bytes, rid: int, task_id: str,
                     entry: TaskEntry | None) -> None:
        reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.OK)
        reply.status.statuses.append(entry.status() if entry else wire.TaskStatus(task_id=task_id))
        self._reply(identity, reply)

    def _on_ack_frame(self, frame: bytes, user_id: str = "") -> None:
        """One ack batch. Only an ai-node key gets through the ack PULL's handshake; the
        check here is the second lock (and what an operator sees counted). The batch is
        applied for the sender's key (`Dispatcher.on_ack_batch`); nothing raises out of here."""
        if not self.trust.permits(user_id, Operation.HEARTBEAT):
            self.metrics.acks_refused.labels("role").inc()
            self._warn.warning("ack_role", "ack batch from a %s key dropped: only ai-node keys "
                               "may send acks", inert(user_id.partition(":")[0], 20) or "unknown")
            return
        try:
            batch = wire.decode_ack_batch(frame)
        except WireError as exc:
            self.metrics.bad_frames.labels("ack").inc()
            self._warn.warning("bad_ack", "malformed ack batch dropped: %s",
                               inert(str(exc), 300))
            return
        try:
            self.dispatcher.on_ack_batch(batch, key_of(user_id))
        except JournalError as exc:
            # The journal failed under this batch: what it could not record is redone after
            # recovery (the tasks are not terminal in the journal). Never out of the reader.
            self.metrics.journal_errors.inc()
            self._warn.warning("ack_journal", "ack batch not fully recorded: %s", exc)

    def _after_acks(self) -> None:
        self._flush_background()
        self._dispatch()

    def _flush_background(self) -> None:
        """Make ack-path records (results, retries, compaction rewrites) durable soon.

        Not at once: an immediate fdatasync per ack batch would sit in front of the next
        submit's sync and double its latency. These records promise nothing to a submitter
        (a result lost with a crash means the task runs again, and the node's de-duplication
        window usually answers it), so they ride along with the next submit's sync, or with
        one background sync at most RESULT_SYNC_DELAY_S later when no submit comes.
        """
        if self._bg_sync is not None and not self._bg_sync.done():
            self._bg_sync_again = True
            return
        self._bg_sync = asyncio.get_running_loop().create_task(self._background_sync())

    async def _background_sync(self) -> None:
        while True:
            self._bg_sync_again = False
            await asyncio.sleep(RESULT_SYNC_DELAY_S)
            try:
                await self.journal.sync()
            except JournalError as exc:
                self.metrics.journal_errors.inc()
                log.error("journal sync of results failed: %s", exc)
                self._on_event("journal_error", {"error": str(exc)})
                return
            if not self._bg_sync_again:
                return

    def _kick(self) -> None:
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._kick_scheduled = False
        if self.dispatcher.dispatch_pass():
            self._room.set()
        wake_at = self.dispatcher.wake_at
        if wake_at:
            self._wake_at(wake_at)

    def _wake_at(self, at: float) -> None:
        """A kind is held back (rate limit, breaker) until `at` (monotonic): run a pass then,
        when that comes before the next timer tick."""
        delay = max(0.0, at - time.monotonic())
        if delay >= TIMER_TICK_S or self._stopped:
            return
        loop = asyncio.get_running_loop()
        if self._wake_handle is not None:
            if self._wake_handle.when() <= loop.time() + delay:
                return  # an earlier wake-up is set
            self._wake_handle.cancel()
        self._wake_handle = loop.call_later(delay, self._on_wake)

    def _on_wake(self) -> None:
        self._wake_handle = None
        self._dispatch()

    def set_helper_count(self, helpers: int) -> None:
        """Discovery lists `helpers` dispatching Helpers (this one included): each enforces
        1/helpers of every rate limit (mesh.policies.rate_limit, the split rule)."""
        helpers = max(1, helpers)
        limits = self.dispatcher.rate_limits
        if helpers == self._helper_count:
            return
        self._helper_count = helpers
        limits.set_helpers(helpers, time.monotonic())
        if limits.kinds:
            log.info("%d Helpers dispatch: this one takes 1/%d of each rate limit (%s)",
                     helpers, helpers,
                     ", ".join(f"{k}={limits.share(k).per_s:g}/s" for k in limits.kinds))

    async def _timer_loop(self) -> None:
        d = self.dispatcher
        last_compact = time.monotonic()
        last_probe = last_compact
        while True:
            await asyncio.sleep(TIMER_TICK_S)
            try:
                depth = len(d.pending) + len(d.retry_waiting)
                d.tick()
                if len(d.pending) + len(d.retry_waiting) < depth:
                    self._room.set()  # dead-lettered or expired: room for a waiting submit
                self._dispatch()
                if self._long_polls:
                    self._expire_long_polls()
                # Every tick: one segment is compacted at a time, and under full load several
                # fill per second.
                if self.journal.compact():
                    self._flush_background()
                now = time.monotonic()
                if now - last_compact >= 1.0:
                    last_compact = now
                    d.update_gauges()
                    self._check_queue_level()
                    self._check_dead_letter_evictions()
                    self._on_journal_health(getattr(self.journal, "failed", False),
                                            getattr(self.journal, "failure", None))
                    self.metrics.journal_bytes.set(self.journal.size_bytes)
                    self.metrics.result_waiters.set(len(self._long_polls))
                if now - last_probe >= PROBE_INTERVAL_S:
                    last_probe = now
                    self._probe_clients()
            except Exception:
                log.exception("helper timer step failed")

    # ---- observability -----------------------------------------------------------------

    def _check_queue_level(self) -> None:
        """Alert once when the queue crosses its threshold, and once when it is back under
        half of it (hysteresis: no alert storm while it hovers at the line)."""
        depth = len(self.dispatcher.pending) + len(self.dispatcher.retry_waiting)
        threshold = self.settings.queue_alert_fraction * self.settings.max_pending_tasks
        if not self._queue_high and depth >= threshold:
            self._queue_high = True
            self._on_event("queue_high", {"depth": depth, "limit": self.settings.max_pending_tasks})
        elif self._queue_high and depth < threshold / 2:
            self._queue_high = False
            self._on_event("queue_normal", {"depth": depth})

    def _check_dead_letter_evictions(self) -> None:
        """One alert per second at most while dead letters are being evicted, with the count."""
        evicted = self.dispatcher.stats["dead_evicted"]
        if evicted > self._dead_evicted_told:
            self._on_event("deadletter_evicted", {
                "evicted": evicted - self._dead_evicted_told, "evicted_total": evicted,
                "kept": len(self.dispatcher.dead_letters),
                "max_dead_letters": self.settings.max_dead_letters,
                "max_dead_letter_bytes": self.settings.max_dead_letter_bytes})
            self._dead_evicted_told = evicted

    def _on_fsync(self, seconds: float, records: int) -> None:
        # Called from the journal's flusher thread; prometheus_client objects are thread-safe.
        self.metrics.fsync_latency.observe(seconds)
        self.metrics.fsync_batch.observe(records)

    def _on_event(self, kind: str, info: dict) -> None:
        if self._alerts is None:
            return
        severity = {"node_down": "error", "node_up": "info", "node_left": "info",
                    "task_dead": "warning",
                    "journal_error": "critical", "queue_high": "warning",
                    "journal_failed": "critical", "journal_recovered": "info",
                    "deadletter_evicted": "warning", "journal_damaged": "critical",
                    "circuit_open": "warning", "circuit_closed": "info"}.get(kind, "info")
        source = inert(info.get("node_id") or info.get("task_id") or info.get("breaker")
                       or self.settings.helper_id, 120)
        try:
            self._alerts.publish(f"mesh.{kind.replace('_', '.')}", severity, source,
                                 json.dumps(info).encode())
        except Exception:
            log.exception("could not publish the %s alert", kind)

    def stats(self) -> dict[str, float]:
        d = self.dispatcher
        return {
            "tasks": float(len(d.tasks) + len(d.retained) + len(d.dead)),
            "retained_results": float(len(d.retained)),
            "queued": float(len(d.pending)),
            "retry_waiting": float(len(d.retry_waiting)),
            "inflight": float(sum(len(n.inflight) for n in d.nodes.values())),
            "nodes": float(len(d.nodes)),
            "journal_bytes": float(self.journal.size_bytes),
            "journal_segments": float(self.journal.segment_count),
            "fsyncs": float(self.journal.fsync_count),
            "acks": float(d.stats["acks"]),
            "duplicate_done": float(d.stats["duplicate_done"]),
            "late_acks": float(d.stats["late_acks"]),
            "succeeded": float(d.stats["succeeded"]),
            "cancelled": float(d.stats["cancelled"]),
            "dead": float(d.stats["dead"]),
            "dead_letters": float(len(d.dead_letters)),
            "dead_letter_bytes": float(d.dead_letters.size_bytes),
            "dead_letters_evicted": float(d.stats["dead_evicted"]),
            "result_waiters": float(len(self._long_polls)),
            **d.policy_stats(),
        }

    # ---- state file --------------------------------------------------------------------

    def _load_state(self, data_dir: Path) -> dict:
        path = data_dir / "helper-state.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return {}

    def _save_state(self, data_dir: Path) -> None:
        path = data_dir / "helper-state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"intake_endpoint": self.intake_endpoint,
                                   "ack_endpoint": self.ack_endpoint,
                                   "helper_id": self.settings.helper_id}))
        os.replace(tmp, path)

    def _rewrite(self, key: bytes) -> list[tuple[int, bytes]]:
        if self._group is not None and key.startswith(b"\x00"):
            return self._group.rewrite(key)
        return self.dispatcher.rewrite(key)


def _error_reply(rid: int, exc: MeshError):  # noqa: ANN202 - wire.ClientReply
    """A request refused as a whole, with the error's own code and message."""
    return wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=exc.code,
                            message=str(exc))


def _not_durable(rid: int, error: BaseException, action: str):  # noqa: ANN202 - wire.ClientReply
    """The answer to a request (a cancel, a dead-letter replay or purge) whose records did not
    become durable. A group's refusal keeps its own code: SHUTTING_DOWN when the term ended (ask
    again, at the group's next leader), NOT_ENOUGH_REPLICAS when the followers went;
    JOURNAL_FAILED only when a disk failed."""
    if isinstance(error, StoppedLeading):
        code, message = error.code, (
            f"the {action} was not recorded: this Helper stopped leading its group "
            f"({error.reason}); {action} again with the same task id (the group's leader "
            "answers)")
    elif isinstance(error, TaskRejected):
        # it may have taken effect here (a cancel, a replay is applied before its commit), but
        # the group does not hold it: a failover can undo it
        code, message = error.code, (f"the {action} is not known to be durable in the group "
                                     f"({error}); {action} again with the same task id")
    else:
        code, message = wire.JOURNAL_FAILED, f"the {action} is recorded but not yet durable: {error}"
    return wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=code,
                            message=message)


def _send_noblock(sock: zmq.Socket, frame: bytes) -> bool:
    try:
        sock.send(frame, zmq.NOBLOCK)  # copying small frames is cheaper than zero-copy tracking
        return True
    except zmq.Again:
        return False


def _close_now(sock: zmq.Socket) -> None:
    sock.close(linger=0)
