"""The Helper service: journal, intake, ack channel, timers, and their lifecycle.

Guarantees:
- A submit is answered "accepted" only after its journal record is durable (per the fsync
  policy; the default group-commits many submits into one fdatasync).
- On start the journal is replayed; every task not SUCCEEDED or DEAD is queued again and
  finished. Nodes that still hold tasks from before the restart report them in their
  heartbeats and keep them (`Dispatcher._adopt`); a reconcile window gives them time to.
- The intake and ack sockets bind the ports the Helper had before a restart, so nodes and
  clients reconnect on their own.

Shutdown order (`stop`): stop intake (new submits get SHUTTING_DOWN) -> last journal sync ->
close sockets -> close the journal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio

from mesh import sockets, wire
from mesh.dispatcher import ACCEPTING, Dispatcher, TaskEntry
from mesh.errors import (
    InvalidTask, JournalError, MeshError, NotFound, PayloadTooLarge, QueueFull, ShuttingDown,
    WireError, error_from_code,
)
from mesh.journal import FsyncPolicy, Journal
from mesh.metrics import HelperMetrics
from mesh.settings import HelperSettings
from mesh.task import make_task

log = logging.getLogger("mesh.helper")

MAX_TASK_ID_CHARS = 200
_DRAIN_MAX = 2000  # frames taken off a socket before yielding to the loop
# A journal round runs on the loop thread only while fdatasyncs take less than this: on a
# slow or busy disk, stalling the loop for each lone submit costs more than the hand-over.
INLINE_SYNC_MAX_S = 0.002
RESULT_SYNC_DELAY_S = 0.01  # how long result records may wait for a sync (see _flush_background)


class Helper:
    def __init__(self, settings: HelperSettings, *, context: zmq.asyncio.Context | None = None,
                 metrics: HelperMetrics | None = None, alerts=None) -> None:  # noqa: ANN001
        self.settings = settings
        self.metrics = metrics or HelperMetrics()
        self._own_context = context is None
        self._ctx = context
        self._alerts = alerts  # an AlertPublisher, or None
        self.incarnation = int.from_bytes(os.urandom(8), "little") | 1
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

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        data_dir = Path(s.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        if self._ctx is None:
            self._ctx = sockets.new_context()
        self._sync_ctx = sockets.sync_view(self._ctx)
        self.journal = Journal(
            data_dir / "journal", policy=FsyncPolicy(s.fsync_policy),
            segment_size_bytes=s.journal_segment_bytes, interval_ms=s.fsync_interval_ms,
            max_record_bytes=s.max_payload_bytes + 64 * 1024, rewrite=self._rewrite)
        self.journal.on_fsync = self._on_fsync
        previous = self._load_state(data_dir)
        self._intake, self.intake_endpoint = self._bind(
            sockets.intake_router, s.intake_endpoint, previous.get("intake_endpoint"),
            s.max_payload_bytes * 64 + 2**20,
            self._sync_ctx)
        self._ack, self.ack_endpoint = self._bind(
            sockets.ack_pull, s.ack_endpoint, previous.get("ack_endpoint"), 64 * 2**20,
            self._sync_ctx)
        self._intake_reader = sockets.FrameReader(self._intake, self._on_client_frames,
                                                  multipart=True, batch_max=_DRAIN_MAX,
                                                  on_batch_end=self._sync_submits)
        self._ack_reader = sockets.FrameReader(self._ack, self._on_ack_frame,
                                               batch_max=_DRAIN_MAX,
                                               on_batch_end=self._after_acks)
        self.dispatcher = Dispatcher(
            s, helper_incarnation=self.incarnation, reply_to=self.ack_endpoint,
            journal_append=self.journal.append, journal_release=self.journal.release,
            connect=self._connect_node, send=_send_noblock, close=_close_now,
            metrics=self.metrics, on_event=self._on_event)
        replayed = 0
        for record in self.journal.recover():
            self.dispatcher.replay(record)
            replayed += 1
        self.recovered = self.dispatcher.finish_replay()
        self.recovered["records"] = replayed
        self.journal.start(loop)
        self._save_state(data_dir)
        self._accepting = True
        self._ack_reader.start(loop)
        self._intake_reader.start(loop)
        self._tasks = [
            loop.create_task(self._timer_loop(), name="helper-timers"),
        ]
        log.info("helper %s up: intake %s, acks %s, recovered %s", s.helper_id,
                 self.intake_endpoint, self.ack_endpoint, self.recovered)

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
        for sock in (self._intake, self._ack):
            if sock is not None:
                sock.close(linger=0)
        if self._own_context and self._ctx is not None:
            self._ctx.term()
        log.info("helper %s stopped", self.settings.helper_id)

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
        entry = self.dispatcher.tasks.get(task_id)
        if entry is None:
            raise NotFound(task_id)
        return entry.status()

    async def wait(self, task_id: str, timeout_s: float):  # noqa: ANN201 - wire.TaskStatus
        """Wait until the task is terminal (or the timeout passes) and return its status."""
        entry = self.dispatcher.tasks.get(task_id)
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

    def _validate(self, task) -> None:  # noqa: ANN001
        if not task.task_id or len(task.task_id) > MAX_TASK_ID_CHARS:
            raise InvalidTask(f"task_id must be 1..{MAX_TASK_ID_CHARS} characters, "
                              f"got {len(task.task_id)}")
        if not task.kind:
            raise InvalidTask(f"task {task.task_id} has no kind")
        if len(task.payload) > self.settings.max_payload_bytes:
            raise PayloadTooLarge(len(task.payload), self.settings.max_payload_bytes)

    def _admit(self, tasks, results: list, new: list, dupes: list) -> list:  # noqa: ANN001
        """Validate and journal what fits; returns the tasks refused for lack of room."""
        d = self.dispatcher
        no_room = []
        for task in tasks:
            if not self._accepting:
                err = ShuttingDown()
                results.append(wire.SubmitResult(task_id=task.task_id, code=err.code,
                                                 message=str(err)))
                continue
            try:
                self._validate(task)
            except MeshError as exc:
                self.metrics.rejected.labels(type(exc).__name__).inc()
                results.append(wire.SubmitResult(task_id=task.task_id, code=exc.code,
                                                 message=str(exc)))
                continue
            known = d.tasks.get(task.task_id)
            if known is not None:
                result = wire.SubmitResult(task_id=task.task_id, code=wire.OK, duplicate=True)
                results.append(result)
                dupes.append((result, known))
                continue
            if not d.has_room(1, len(task.payload)):
                no_room.append(task)
                continue
            entry = d.admit(task)
            results.append(wire.SubmitResult(task_id=task.task_id, code=wire.OK))
            new.append(entry)
        return no_room

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
            except JournalError as exc:
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
                err = QueueFull(d.pending.size_bytes + len(task.payload),
                                self.settings.max_pending_bytes, "payload bytes")
            else:
                err = QueueFull(depth, self.settings.max_pending_tasks)
            self.metrics.rejected.labels("QueueFull").inc()
            results.append(wire.SubmitResult(task_id=task.task_id, code=err.code,
                                             message=str(err)))

    def _settle_submit(self, results: list, new: list, dupes: list,
                       error: JournalError | None, started: float, kick: bool = True) -> None:
        """The journal sync of a submit ended: the tasks are accepted, or they never were."""
        if error is not None:
            self.metrics.journal_errors.inc()
            log.error("journal sync failed, %d submits refused: %s", len(new), error)
            self._on_event("journal_error", {"error": str(error)})
            failed = set()
            for entry in new:
                self.dispatcher.abandon(entry)
                failed.add(entry.task_id)
            for result in results:
                if result.task_id in failed or (result.duplicate and any(
                        e.task_id == result.task_id and e.state == ACCEPTING
                        for _, e in dupes)):
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

    def _connect_node(self, endpoint: str):  # noqa: ANN202
        return sockets.dispatch_push(self._sync_ctx, endpoint)

    def _reply(self, identity: bytes, reply) -> None:  # noqa: ANN001
        try:
            self._intake.send_multipart([identity, wire.encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("reply to a departed client dropped: %s", exc)
        self._intake_reader.wake()  # a send can take the edge of a request that just arrived

    def _on_client_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.metrics.bad_frames.labels("intake").inc()
            return
        identity, body = frames
        try:
            request = wire.decode_client_request(body)
        except WireError as exc:
            self.metrics.bad_frames.labels("intake").inc()
            log.warning("malformed client request dropped: %s", exc)
            self._reply(identity, wire.ClientReply(
                version=wire.PROTOCOL_VERSION, code=exc.code, message=str(exc)))
            return
        which = request.WhichOneof("body")
        rid = request.request_id
        if which == "submit":
            self._on_submit(identity, rid, request.submit)
        elif which == "status":
            reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.OK)
            for task_id in request.status.task_ids:
                entry = self.dispatcher.tasks.get(task_id)
                reply.status.statuses.append(
                    entry.status() if entry else wire.TaskStatus(task_id=task_id))
            self._reply(identity, reply)
        elif which == "result":
            self._answer_result(identity, rid, request.result.task_id, request.result.wait_ms)
        elif which == "dead_letter":
            from mesh.deadletter import answer  # small module, loaded on first use
            self._reply(identity, answer(self.dispatcher, request.dead_letter, rid))
            self._kick()
        elif which == "stats":
            reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.OK)
            reply.stats.values.update(self.stats())
            self._reply(identity, reply)
        else:
            self.metrics.bad_frames.labels("intake").inc()
            self._reply(identity, wire.ClientReply(
                version=wire.PROTOCOL_VERSION, request_id=rid, code=wire.MALFORMED_REQUEST,
                message="request has no body this Helper understands"))

    def _on_submit(self, identity: bytes, rid: int, submit) -> None:  # noqa: ANN001
        """Admit at once; reply from the journal sync's callback (no task, no extra loop turn).
        Only a submit that must wait for room takes the slower path through a task."""
        tasks = submit.tasks
        wait_s = submit.wait_ms / 1000.0
        results: list = []
        new: list[TaskEntry] = []
        dupes: list = []
        no_room = self._admit(tasks, results, new, dupes)
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

        When the loop has nothing else to do (no ack batch waiting, the flusher idle), the
        sync runs right here (`Journal.sync_here`): a lone submit skips two thread hand-overs.
        Otherwise the flusher thread syncs while the loop goes on with acks and dispatch."""
        answers, self._unsynced = self._unsynced, []
        if not answers:
            return
        if self._ack.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            # Acks wait: keep the loop free for them. Asking took the edge of the socket's
            # descriptor, so the reader must be told.
            self._ack_reader.wake()
        elif self.journal.last_fsync_s < INLINE_SYNC_MAX_S and self.journal.sync_here():
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

    def _answer_result(self, identity: bytes, rid: int, task_id: str, wait_ms: int) -> None:
        def send(entry: TaskEntry | None) -> None:
            reply = wire.ClientReply(version=wire.PROTOCOL_VERSION, request_id=rid,
                                     code=wire.OK)
            reply.status.statuses.append(
                entry.status() if entry else wire.TaskStatus(task_id=task_id))
            self._reply(identity, reply)

        entry = self.dispatcher.tasks.get(task_id)
        if entry is None or entry.terminal or wait_ms == 0:
            send(entry)
            return
        loop = asyncio.get_running_loop()
        timer = None

        def finished(e: TaskEntry) -> None:
            if timer is not None:
                timer.cancel()
            send(e)

        def expired() -> None:
            self.dispatcher.remove_waiter(task_id, finished)
            send(self.dispatcher.tasks.get(task_id))

        self.dispatcher.add_waiter(task_id, finished)
        timer = loop.call_later(wait_ms / 1000.0, expired)

    def _on_ack_frame(self, frame: bytes) -> None:
        try:
            batch = wire.decode_ack_batch(frame)
        except WireError as exc:
            self.metrics.bad_frames.labels("ack").inc()
            log.warning("malformed ack batch dropped: %s", exc)
            return
        self.dispatcher.on_ack_batch(batch)

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

    async def _timer_loop(self) -> None:
        d = self.dispatcher
        last_compact = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            try:
                d.tick()
                self._dispatch()
                # Every tick: one segment is compacted at a time, and under full load several
                # fill per second.
                if self.journal.compact():
                    self._flush_background()
                now = time.monotonic()
                if now - last_compact >= 1.0:
                    last_compact = now
                    d.update_gauges()
                    self._check_queue_level()
                    self.metrics.journal_bytes.set(self.journal.size_bytes)
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

    def _on_fsync(self, seconds: float, records: int) -> None:
        # Called from the journal's flusher thread; prometheus_client objects are thread-safe.
        self.metrics.fsync_latency.observe(seconds)
        self.metrics.fsync_batch.observe(records)

    def _on_event(self, kind: str, info: dict) -> None:
        if self._alerts is None:
            return
        severity = {"node_down": "error", "node_up": "info", "task_dead": "warning",
                    "journal_error": "critical", "queue_high": "warning"}.get(kind, "info")
        source = info.get("node_id") or info.get("task_id") or self.settings.helper_id
        try:
            self._alerts.publish(f"mesh.{kind.replace('_', '.')}", severity, source,
                                 json.dumps(info).encode())
        except Exception:
            log.exception("could not publish the %s alert", kind)

    def stats(self) -> dict[str, float]:
        d = self.dispatcher
        return {
            "tasks": float(len(d.tasks)),
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
            "dead": float(d.stats["dead"]),
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
        return self.dispatcher.rewrite(key)


def _send_noblock(sock: zmq.Socket, frame: bytes) -> bool:
    try:
        sock.send(frame, zmq.NOBLOCK)  # copying small frames is cheaper than zero-copy tracking
        return True
    except zmq.Again:
        return False


def _close_now(sock: zmq.Socket) -> None:
    sock.close(linger=0)
