"""The AI node service: receives deliveries, runs handlers with a concurrency limit, acks.

Guarantees:
- At most `concurrency` handlers run at once; up to `prefetch` more deliveries wait for a slot.
  A kind with a limit of its own (`@app.task(kind, concurrency=N)`) runs at most N at once: a
  delivery of a kind at its limit waits (it holds a prefetch place, not a slot: other kinds
  start past it) and heartbeats list the kind in `kinds_full`, so the Helper does not take the
  wait for a lost delivery. The Helper does not know per-kind limits: it may send more of a
  full kind than can start soon, up to the node's prefetch.
- Handlers run in an executor (`mesh.executors`): async ones on the loop and sync ones in
  threads (the default), all in threads, or all in child processes (`executor="process"`),
  where a run past its timeout is killed with its child (replaced), and a child that dies
  fails only its own run: acked FAILED with `lost` set, which the Helper counts as a lost
  delivery toward the poison-pill bound, not as an attempt. A handler that raises
  `DependencyDown(name)` is acked FAILED with `dependency` set (the Helper's breakers).
- A delivery addressed to another incarnation of this node is refused (WRONG_INCARNATION), so a
  node restarted at the same address never runs what was meant for its previous life.
- A frame from a Helper group's leader carries its group and epoch; the node keeps the highest
  epoch seen per group (for its life) and refuses every delivery of an older one (REJECTED,
  STALE_EPOCH; counted in `refused["stale_epoch"]`) and ignores its cancellations, so a deposed
  leader's late deliveries never run once the new leader has reached this node.
- A task that is running or waiting here is not started twice; a finished one is answered from
  the de-duplication window with its stored outcome.
- Every ack batch carries a heartbeat: the node's credit, what it holds for that Helper, how
  many deliveries it received from that Helper run, the highest frame number it read from it
  (`dispatch_seq`), and the largest frame it accepts (see `mesh.dispatcher`). A delivery it read
  is, as of any later heartbeat, either in that heartbeat's held list or answered by an ack
  sent with it or before it: the Helper's ledger relies on that.
- A handler past its run timeout (checked every TIMEOUT_SWEEP_S) is reported as a failed
  attempt (TIMEOUT) and its slot freed; a sync handler's thread cannot be killed, so the pool
  has spare threads for that case.
- A result larger than `max_result_bytes` is never sent: the attempt fails (FATAL) with an
  error naming both sizes.

Trust (docs/decisions/006-trust.md): the task PULL is a CURVE server that admits helper-role
keys only, and every frame's User-Id is checked again (`Operation.DELIVERY`) before anything
in it is read. Acks for a delivery go to its `reply_to` over a link pinned to the key of the
Helper that sent it, so a forged reply_to cannot be connected to without that Helper's secret
key. Links are bounded (`max_helpers`), a reply_to that is not a well-formed tcp:// or ipc://
endpoint is refused, and text from the wire is logged through `inert`, rate-limited.

Shutdown (`drain` then `stop`): announce zero credit and `draining`, refuse new deliveries
(DRAINING, so Helpers resend them elsewhere at once), let running handlers finish within the
grace period, hand back what waits, then close.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections import deque

import zmq
import zmq.asyncio

from mesh import sockets, wire
from mesh.app import App, TaskContext, encode_result
from mesh.dedup import DedupWindow
from mesh.errors import ConfigError, FatalError, RetryLater, WireError
from mesh.failure_log import FailureLog, signature_of, signature_of_text
from mesh.executors import (
    ChildDied, ChildStartFailed, DependencyDown, ErrorClass, HandlerFailed, InlineExecutor,
    PoolClosed, ProcessExecutor, RunTimedOut, ThreadExecutor,
)
from mesh.metrics import AINodeMetrics, observe_many
from mesh.settings import AINodeSettings
from mesh.version import __version__
from mesh.trust import (
    Domain, Operation, RateLimitedLog, Role, Trust, TrustError, default_key_dir, inert, key_of,
)

log = logging.getLogger("mesh.ai")


class _HelperLink:
    """This node's channel to one Helper (its ack endpoint), pinned to that Helper's key."""

    __slots__ = ("endpoint", "helper_key", "pinned", "sock", "outbox", "started_at",
                 "helper_incarnation", "received", "seq", "held", "last_used")

    def __init__(self, endpoint: str, helper_key: str, sock: zmq.Socket, *,
                 pinned: bool) -> None:
        self.endpoint = endpoint
        self.helper_key = helper_key  # Z85, "" on a plain link
        #: named by discovery or the command line (kept); else learned from a delivery
        self.pinned = pinned
        self.sock = sock
        self.outbox: list = []
        #: task_id -> index of its unsent STARTED ack in `outbox`: there, until it is sent, a
        #: (task id, delivery, started_ns, attempt) tuple, made an Ack only if it is sent (a
        #: short task's DONE takes its place first; see `_send`)
        self.started_at: dict[str, int] = {}
        self.helper_incarnation = 0
        self.received = 0
        self.seq = 0  # highest DispatchBatch.seq read from that Helper run
        self.held: set[str] = set()
        self.last_used = time.monotonic()


def _is_done(ack) -> bool:  # noqa: ANN001 - wire.Ack; a stored success answers any attempt
    return ack.kind == wire.DONE


class _Job:
    __slots__ = ("dispatch", "link", "task_id", "handler", "runner", "timeout_s", "deadline",
                 "timed_out", "cancel_event", "executor")

    def __init__(self, dispatch, link: _HelperLink, handler, task_id: str) -> None:  # noqa: ANN001
        self.dispatch = dispatch
        self.link = link
        self.task_id = task_id
        self.handler = handler  # looked up once, when the delivery is taken
        self.runner: asyncio.Task | None = None
        self.timeout_s = 0.0
        self.deadline = 0.0  # monotonic; the run timeout's end, set when it starts
        self.timed_out = False
        self.cancel_event: threading.Event | None = None  # made when the Helper cancels it
        self.executor = None  # chosen when it starts


#: How often running jobs are checked against their run timeout: the precision of a timeout.
TIMEOUT_SWEEP_S = 0.05

#: Acks waiting for one Helper link at most (a link that does not connect keeps its acks):
#: beyond it new acks for that link are dropped and counted, and the Helper's redelivery and
#: the de-duplication window recover them.
MAX_OUTBOX = 10_000
#: handler run times kept for the run-time histogram between heartbeats, at most (then observed
#: at once): the histogram takes them in one update per bucket, not one per task
RUN_TIMES_KEPT = 4096

#: The process executor times a run out itself (and kills its child); the node's own sweep
#: cancels such a run only this long after the executor should have (a backstop).
PROCESS_TIMEOUT_BACKSTOP_S = 1.0

#: The wire error class of each `HandlerFailed.error_class`.
_WIRE_ERROR_CLASS = {ErrorClass.RETRYABLE: wire.RETRYABLE, ErrorClass.FATAL: wire.FATAL,
                     ErrorClass.RETRY_LATER: wire.RETRY_LATER}

#: The longest reply_to taken; the rest of a well-formed endpoint fits easily.
MAX_ENDPOINT_CHARS = 256


def endpoint_problem(endpoint: str) -> str:
    """Why `endpoint` cannot be a Helper's ack endpoint ("" when it can): only tcp://HOST:PORT
    (a concrete host, a port 1-65535) and ipc://PATH, of bounded length, printable."""
    if not endpoint:
        return "empty"
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        return f"longer than {MAX_ENDPOINT_CHARS} characters"
    if not endpoint.isprintable() or any(c.isspace() for c in endpoint):
        return "contains spaces or control characters"
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc"):
        return "not a tcp:// or ipc:// endpoint"
    if scheme == "ipc":
        return "" if rest and rest != "*" else "no ipc path"
    host, sep, port = rest.rpartition(":")
    if not sep or not host or host == "*" or ";" in host:
        return "no concrete host"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "no port between 1 and 65535"
    return ""


class AINode:
    def __init__(self, settings: AINodeSettings, app: App, *, helpers: list[str] = (),
                 context: zmq.asyncio.Context | None = None,
                 metrics: AINodeMetrics | None = None, trust: Trust | None = None,
                 app_path: str = "") -> None:
        """`trust`: the node's keys (nodes/ passes `keys.trust_from_args`). None: the local
        key store (`mesh.trust.default_key_dir()`) with a key of this node's own,
        own/ai-node-NODE_ID.key, made on first use; `Trust.plain()` for plain links.
        `app_path`: "module:attribute" of `app`, which the process executor's children import
        (required with `settings.executor == "process"`)."""
        self.settings = settings
        self.app = app
        self.metrics = metrics or AINodeMetrics()
        self.trust = trust
        self._own_trust = trust is None  # then its ZAP handler is ours to release
        #: deliveries (or frames) refused before they were taken, by reason: for tests; the
        #: same counts go to mesh_ai_rejected{reason}
        self.refused: dict[str, int] = {}
        self._warn = RateLimitedLog(log, interval_s=10.0)
        self._failures = FailureLog(log)  # a failure storm repeats no traceback for a minute
        self.incarnation = int.from_bytes(os.urandom(8), "little") | 1
        self.task_endpoint = ""
        self._ctx = context
        self._own_context = context is None
        self._initial_helpers = list(helpers)
        self._links: dict[tuple[str, str], _HelperLink] = {}  # (endpoint, helper key) ->
        self._waiting: deque[_Job] = deque()
        self._running: dict[str, _Job] = {}
        self._dedup = DedupWindow(settings.dedup_window)
        self._inline = InlineExecutor()
        self._threads = ThreadExecutor(settings.concurrency * 2)
        self.processes: ProcessExecutor | None = None
        if settings.executor == "process":
            if not app_path:
                raise ConfigError("the process executor needs the app's import path "
                                  "(module:attribute) to load it in its children")
            self.processes = ProcessExecutor(
                app_path, settings.concurrency, node_id=settings.node_id,
                max_tasks_per_child=settings.max_tasks_per_child,
                max_memory_per_child_bytes=settings.max_memory_per_child_bytes,
                kill_grace_s=settings.child_kill_grace_s,
                start_timeout_s=settings.child_start_timeout_s,
                max_result_bytes=settings.max_result_bytes)
        # Per-kind limits (`@app.task(kind, concurrency=N)`) and runs of those kinds now.
        self._kind_limits = {kind: h.concurrency for kind, h in app.handlers.items()
                             if h.concurrency}
        self._kind_running: dict[str, int] = dict.fromkeys(self._kind_limits, 0)
        self._tasks: list[asyncio.Task] = []
        self._handler_tasks: set[asyncio.Task] = set()
        self._flush_scheduled = False
        self._draining = False
        self._stopped = False
        self._beat = 0
        self._kinds = app.kinds
        self._outcomes: dict[str, int] = {}
        self._run_s: list[float] = []  # handler run times, observed once per heartbeat
        #: the highest epoch seen per Helper group (DispatchBatch.group_epoch): the fence
        self.group_epochs: dict[str, int] = {}

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.processes is not None:
            # Every child loaded the app and ran its on_child_start hooks before the node
            # takes a delivery (raises ChildStartFailed with the child's traceback).
            await self.processes.start()
        if self.trust is None:
            self.trust = Trust.local(default_key_dir(),
                                     identity=f"ai-node-{self.settings.node_id}")
        if self._ctx is None:
            self._ctx = sockets.new_context()
        self._sync_ctx = sockets.sync_view(self._ctx)
        self._pull, self.task_endpoint = sockets.task_pull(
            self._sync_ctx, self.settings.task_endpoint, self.settings.max_message_bytes,
            link=self.trust.server(self._ctx, Role.AI_NODE, Domain.TASKS))
        self._reader = sockets.FrameReader(self._pull, self._on_frame,
                                           on_batch_end=self._schedule_flush,
                                           with_user_id=True)
        for endpoint in self._initial_helpers:
            self.add_helper(endpoint)
        loop = asyncio.get_running_loop()
        self._reader.start(loop)
        self._tasks = [loop.create_task(self._heartbeat_loop(), name="ai-heartbeat"),
                       loop.create_task(self._timeout_loop(), name="ai-run-timeouts")]
        log.info("ai node %s up: tasks %s, incarnation %x, kinds %s, concurrency %d, "
                 "executor %s", self.settings.node_id, self.task_endpoint, self.incarnation,
                 self._kinds, self.settings.concurrency, self.settings.executor)

    def add_helper(self, ack_endpoint: str, helper_key: str | None = None) -> bool:
        """Start heartbeating a Helper named by discovery or the command line. `helper_key` is
        the key it announced (Z85; it must be allowed as helper), or None when the store allows
        exactly one helper key. False (with a warning) when the link cannot be made."""
        problem = endpoint_problem(ack_endpoint)
        if problem:
            self._warn.warning(("helper", "endpoint"), "not linking to Helper ack endpoint %s: "
                               "%s", inert(ack_endpoint, 80), problem)
            return False
        try:
            link = self.trust.client(Role.AI_NODE, Role.HELPER, helper_key or None)
        except TrustError as exc:
            self._warn.warning(("helper", "key"), "not linking to the Helper at %s: %s",
                               inert(ack_endpoint, 80), exc)
            return False
        key = link.server_key.decode("ascii") if link is not None else ""
        existing = self._links.get((ack_endpoint, key))
        if existing is not None:
            existing.pinned = True
            return True
        if len(self._links) >= self.settings.max_helpers and not self._evict_idle_link():
            self._warn.warning(("helper", "full"), "not linking to the Helper at %s: this "
                               "node has max_helpers=%d links already", inert(ack_endpoint, 80),
                               self.settings.max_helpers)
            return False
        self._open_link(ack_endpoint, key, link, pinned=True)
        return True

    def remove_helper(self, ack_endpoint: str) -> None:
        """Discovery says the Helper is gone. Keep a link while it holds work of ours."""
        for key, link in list(self._links.items()):
            if key[0] == ack_endpoint and not link.held and not link.outbox:
                self._close_link(link)

    @property
    def helpers(self) -> list[str]:
        """The ack endpoints this node has a link to."""
        return sorted({endpoint for endpoint, _ in self._links})

    def _open_link(self, endpoint: str, key: str, client_link, *, pinned: bool) -> _HelperLink:  # noqa: ANN001
        link = _HelperLink(endpoint, key, sockets.ack_push(
            self._sync_ctx, endpoint, link=client_link, immediate=not pinned), pinned=pinned)
        self._links[(endpoint, key)] = link
        self.metrics.helper_links.set(len(self._links))
        self._send_heartbeat(link)
        return link

    def _close_link(self, link: _HelperLink) -> None:
        self._links.pop((link.endpoint, link.helper_key), None)
        link.sock.close(linger=0)
        self.metrics.helper_links.set(len(self._links))

    def _evict_idle_link(self) -> bool:
        """Make room by closing the least recently used learned link that holds nothing and
        was idle for helper_link_idle_s; False when there is none."""
        cutoff = time.monotonic() - self.settings.helper_link_idle_s
        idle = [link for link in self._links.values()
                if not link.pinned and not link.held and not link.outbox
                and link.last_used <= cutoff]
        if not idle:
            return False
        self._close_link(min(idle, key=lambda link: link.last_used))
        return True

    def _learn_link(self, endpoint: str, helper_key: str) -> _HelperLink | None:
        """The link for a delivery's reply_to, opened on first use and pinned to the key of
        the Helper that sent it; None (refused, counted) when it cannot be."""
        problem = endpoint_problem(endpoint)
        if problem:
            self._refuse("bad_reply_to", "refused a delivery with reply_to %s: %s",
                         inert(endpoint, 80), problem)
            return None
        if len(self._links) >= self.settings.max_helpers and not self._evict_idle_link():
            self._refuse("too_many_helpers", "refused a delivery with reply_to %s: this node "
                         "has max_helpers=%d Helper links already", inert(endpoint, 80),
                         self.settings.max_helpers)
            return None
        try:
            client_link = self.trust.client(Role.AI_NODE, Role.HELPER, helper_key or None)
        except TrustError as exc:  # e.g. the Helper's key was removed since it connected
            self._refuse("untrusted_sender", "refused a delivery: %s", exc)
            return None
        return self._open_link(endpoint, helper_key, client_link, pinned=False)

    def _refuse(self, reason: str, msg: str, *args: object) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.metrics.rejected.labels(reason).inc()
        self._warn.warning(("refused", reason), msg + " (%d refused for this reason so far)",
                           *args, self.refused[reason])

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop taking work, finish what runs within the grace period, hand back the rest."""
        if self._draining:
            return
        self._draining = True
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        for link in self._links.values():
            self._send_heartbeat(link)
        # Hand back what waits for a slot: the Helper resends it elsewhere at once.
        while self._waiting:
            job = self._waiting.popleft()
            job.link.held.discard(job.task_id)  # handed back: no longer ours to report
            self._reject(job.link, job.dispatch, wire.DRAINING, "node is draining")
        self._schedule_flush()
        if self._handler_tasks:
            done, pending = await asyncio.wait(self._handler_tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d handlers still running after %.1fs grace; handed back",
                            len(pending), grace)
                await asyncio.wait(pending, timeout=1.0)
        self._flush()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._reader.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._handler_tasks):
            task.cancel()
        if self._handler_tasks:
            await asyncio.wait(self._handler_tasks, timeout=1.0)
        self._flush()
        self._update_metrics()
        for link in self._links.values():
            link.sock.close(linger=500)
        self._pull.close(linger=0)
        await self._threads.stop()
        if self.processes is not None:
            await self.processes.stop(0.0)  # runs were answered (handed back) above
        if self._own_context or self._own_trust:
            self.trust.release(self._ctx)  # its ZAP socket would block term()
            await asyncio.sleep(0)  # one loop turn: the handler's cancelled task ends
        if self._own_context:
            self._ctx.term()
        log.info("ai node %s stopped", self.settings.node_id)

    async def __aenter__(self) -> AINode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- receiving ---------------------------------------------------------------------

    def _on_frame(self, frame: bytes, user_id: str = "") -> None:
        # The ZAP handler admitted only helper keys to this socket; checked again per frame, so
        # a change of the table or the domain can never let another role's frame run a task.
        if not self.trust.permits(user_id, Operation.DELIVERY):
            self._refuse("untrusted_sender", "dropped a dispatch frame from %s: not a trusted "
                         "Helper key", inert(user_id or "an unauthenticated peer", 60))
            return
        helper_key = key_of(user_id)
        try:
            batch = wire.decode_dispatch_batch(frame)
        except WireError as exc:
            self.metrics.bad_frames.inc()
            self._warn.warning("malformed", "malformed dispatch batch dropped: %s",
                               inert(str(exc)))
            return
        self.metrics.received.inc(len(batch.dispatches))
        if batch.group and not self._epoch_current(batch.group, batch.group_epoch):
            self._refuse_stale(batch, helper_key)
            return
        link = self._batch_link(batch, helper_key)
        for task_id in batch.cancel_task_ids:
            self._cancel(task_id, helper_key)
        for dispatch in batch.dispatches:
            try:
                self._on_dispatch(dispatch, helper_key)
            except Exception:
                log.exception("failed to take a delivery")
        if link is not None and batch.seq > link.seq:
            # Echoed in the next heartbeat: every earlier frame of this link was read or is
            # lost for good (a link keeps its frames in order), so the Helper can tell which.
            link.seq = batch.seq

    def _epoch_current(self, group: str, epoch: int) -> bool:
        """True for the newest epoch of `group` seen so far (remembered); False for an older
        one: its sender was deposed (decision 009)."""
        seen = self.group_epochs.get(group, 0)
        if epoch < seen:
            return False
        if epoch > seen:
            self.group_epochs[group] = epoch
        return True

    def _refuse_stale(self, batch, helper_key: str) -> None:  # noqa: ANN001
        """A deposed group leader's frame: nothing in it runs or is cancelled. Each delivery is
        answered REJECTED (STALE_EPOCH) where its link is known, else dropped; counted either way."""
        newest = self.group_epochs[batch.group]
        self._refuse("stale_epoch", "refused a frame of %d deliveries from %s: epoch %d of group "
                     "%s, but epoch %d has been seen (a deposed leader)", len(batch.dispatches),
                     inert(batch.reply_to, 80), batch.group_epoch, inert(batch.group, 60), newest)
        for dispatch in batch.dispatches:
            link = self._link_for(dispatch, helper_key)
            if link is None:
                continue
            self._queue_ack(link, wire.Ack(
                task_id=dispatch.task.task_id, delivery=dispatch.delivery, kind=wire.REJECTED,
                error_class=wire.STALE_EPOCH, attempt=dispatch.attempt,
                error=f"epoch {batch.group_epoch} of group {batch.group} is deposed "
                      f"(epoch {newest} seen)"))
        if batch.dispatches:
            self._schedule_flush()

    def _batch_link(self, batch, helper_key: str) -> _HelperLink | None:  # noqa: ANN001
        """The link a frame came on, from its batch fields (an older Helper sends none)."""
        if not batch.reply_to:
            return None
        link = self._links.get((batch.reply_to, helper_key))
        if link is None:
            link = self._learn_link(batch.reply_to, helper_key)
            if link is None:
                return None
        if link.helper_incarnation != batch.helper_incarnation:
            link.helper_incarnation = batch.helper_incarnation
            link.received = 0
            link.seq = 0
        return link

    def _link_for(self, dispatch, helper_key: str) -> _HelperLink | None:  # noqa: ANN001
        link = self._links.get((dispatch.reply_to, helper_key))
        if link is None:
            if not dispatch.reply_to:
                return None
            link = self._learn_link(dispatch.reply_to, helper_key)
            if link is None:
                return None
        if link.helper_incarnation != dispatch.helper_incarnation:
            link.helper_incarnation = dispatch.helper_incarnation
            link.received = 0
            link.seq = 0
        link.received += 1
        link.last_used = time.monotonic()
        return link

    def _on_dispatch(self, dispatch, helper_key: str = "") -> None:  # noqa: ANN001
        link = self._link_for(dispatch, helper_key)
        if link is None:
            if not dispatch.reply_to:
                self.metrics.bad_frames.inc()
            return  # no way to answer: dropped (and counted); its Helper resends it
        task = dispatch.task
        task_id = task.task_id  # each read of a protobuf string field makes a new str
        kind = task.kind
        if not task_id or not kind:
            self.metrics.bad_frames.inc()
            self._warn.warning("no-id", "delivery %d from %s has no task id or kind; rejected "
                               "as malformed", dispatch.delivery, inert(dispatch.reply_to, 80))
            self._reject(link, dispatch, wire.MALFORMED, "delivery has no task id or kind")
            return
        if dispatch.incarnation != self.incarnation:
            self._reject(link, dispatch, wire.WRONG_INCARNATION,
                         f"delivery meant for incarnation {dispatch.incarnation:x}, "
                         f"this is {self.incarnation:x}")
            return
        if self._draining:
            self._reject(link, dispatch, wire.DRAINING, "node is draining")
            return
        if task_id in self._running or task_id in link.held:
            return  # already here; it is in our heartbeat's held list
        stored = self._dedup.lookup(task_id, dispatch.attempt, _is_done, dispatch.replays)
        if stored is not None:
            self.metrics.dedup_hits.inc()
            answer = wire.Ack()
            answer.CopyFrom(stored)
            answer.delivery = dispatch.delivery
            answer.from_dedup = True
            self._queue_ack(link, answer)
            return
        handler = self.app.handlers.get(kind)
        if handler is None:
            self._reject(link, dispatch, wire.UNKNOWN_TASK_KIND,
                         f"no handler for task kind {inert(kind, 100)!r} on node "
                         f"{self.settings.node_id} (kinds: {', '.join(self._kinds) or 'none'})")
            return
        job = _Job(dispatch, link, handler, task_id)
        link.held.add(job.task_id)
        if len(self._running) < self.settings.concurrency and self._kind_has_room(handler.kind):
            self._start(job)
        else:
            self._waiting.append(job)

    def _kind_has_room(self, kind: str) -> bool:
        limit = self._kind_limits.get(kind)
        return limit is None or self._kind_running[kind] < limit

    def _cancel(self, task_id: str, helper_key: str) -> None:
        """The Helper that sent the task cancelled it: stop an async run (CancelledError in
        the handler), set the flag of a sync one (`TaskContext.cancelled`), drop one waiting
        for a slot. The run then answers FAILED with CANCELLED_RUN."""
        job = self._running.get(task_id)
        if job is not None and job.link.helper_key == helper_key:
            if job.cancel_event is None:
                job.cancel_event = threading.Event()
            job.cancel_event.set()
            if (job.handler.is_async or job.executor is self.processes) \
                    and job.runner is not None:
                job.runner.cancel()  # in a child process: the child is killed (and replaced)
            log.info("task %s cancelled by its Helper while running", inert(task_id, 80))
            return
        for job in self._waiting:
            if job.task_id == task_id and job.link.helper_key == helper_key:
                self._waiting.remove(job)
                job.link.held.discard(task_id)
                self._queue_ack(job.link, wire.Ack(
                    task_id=task_id, delivery=job.dispatch.delivery, kind=wire.FAILED,
                    error_class=wire.CANCELLED_RUN, error="cancelled before it started",
                    attempt=job.dispatch.attempt))
                self._schedule_flush()
                return

    def _reject(self, link: _HelperLink, dispatch, error_class: int, message: str) -> None:  # noqa: ANN001
        self.metrics.rejected.labels(wire.error_class_name(error_class).lower()).inc()
        self._queue_ack(link, wire.Ack(task_id=dispatch.task.task_id, delivery=dispatch.delivery,
                                       kind=wire.REJECTED, error=message,
                                       error_class=error_class, attempt=dispatch.attempt))

    def _queue_ack(self, link: _HelperLink, ack) -> None:  # noqa: ANN001
        """Queue an answer that holds no slot (a refusal, a stored outcome): bounded, since a
        Helper can send deliveries faster than a link that does not connect drains."""
        if len(link.outbox) >= MAX_OUTBOX:
            self._refuse("ack_overflow", "dropped an answer for the Helper at %s: %d acks wait "
                         "for it already (its redelivery recovers it)", inert(link.endpoint, 80),
                         MAX_OUTBOX)
            return
        link.outbox.append(ack)

    # ---- running -----------------------------------------------------------------------

    def _start(self, job: _Job) -> None:
        task = job.dispatch.task
        job.timeout_s = (task.run_timeout_ms / 1000.0 if task.run_timeout_ms
                         else job.handler.run_timeout_s
                         or self.settings.run_timeout_s)
        job.executor = executor = self._executor_for(job.handler)
        # Set before the job is in _running: the sweep must never see a job with no deadline.
        job.deadline = time.monotonic() + job.timeout_s
        if executor.kills_on_timeout:
            job.deadline += self.settings.child_kill_grace_s + PROCESS_TIMEOUT_BACKSTOP_S
        self._running[job.task_id] = job
        if job.handler.concurrency:
            self._kind_running[job.handler.kind] += 1
        runner = asyncio.get_running_loop().create_task(self._run(job))
        job.runner = runner
        self._handler_tasks.add(runner)
        runner.add_done_callback(functools.partial(self._runner_done, job))

    def _executor_for(self, handler):  # noqa: ANN001, ANN202
        if self.processes is not None:
            return self.processes
        if handler.is_async and self.settings.executor == "async":
            return self._inline
        return self._threads

    def _runner_done(self, job: _Job, runner: asyncio.Task) -> None:
        self._handler_tasks.discard(runner)
        if self._running.get(job.task_id) is job:
            # Cancelled before its first step (a run timeout shorter than the wait for the
            # loop, or a stop): _run never began, so nothing answered for it. Answer here, or
            # the slot is lost and the delivery is held forever.
            ack = wire.Ack(task_id=job.task_id, delivery=job.dispatch.delivery,
                           attempt=job.dispatch.attempt)
            if job.cancel_event is not None:
                ack.kind, ack.error_class = wire.FAILED, wire.CANCELLED_RUN
                ack.error = "cancelled before it started"
            elif job.timed_out and not self._stopped:
                ack.kind, ack.error_class = wire.FAILED, wire.TIMEOUT
                ack.error = f"run timeout of {job.timeout_s}s passed before it started"
            else:
                ack.kind, ack.error_class, ack.error = wire.REJECTED, wire.DRAINING, "node stopped"
            self._finish(job, ack)

    async def _timeout_loop(self) -> None:
        """Cancel the runs past their timeout. One sweep for all, not a timer per run: arming
        and disarming a timer for each task (asyncio.timeout) costs more than the sweep, on
        the path from delivery to handler start."""
        while True:
            await asyncio.sleep(TIMEOUT_SWEEP_S)
            if not self._running:
                continue
            now = time.monotonic()
            for job in self._running.values():
                if job.deadline <= now and not job.timed_out and job.runner is not None:
                    job.timed_out = True
                    job.runner.cancel()

    async def _run(self, job: _Job) -> None:
        dispatch = job.dispatch
        task = dispatch.task
        handler = job.handler
        started_ns = time.time_ns()
        link = job.link
        link.started_at[job.task_id] = len(link.outbox)
        link.outbox.append((job.task_id, dispatch.delivery, started_ns, dispatch.attempt))
        self._schedule_flush()
        timeout_s = job.timeout_s
        ack = wire.Ack(task_id=job.task_id, delivery=dispatch.delivery, started_ns=started_ns,
                       attempt=dispatch.attempt)
        ctx = None
        if handler.wants_context or job.executor is self.processes:
            if job.cancel_event is None:
                job.cancel_event = threading.Event()
            ctx = TaskContext(
                cancel_event=job.cancel_event,
                task_id=task.task_id, kind=task.kind, attempt=dispatch.attempt,
                delivery=dispatch.delivery, idempotency_key=task.idempotency_key or task.task_id,
                node_id=self.settings.node_id, headers=dict(task.headers),
                submitted_ns=task.submitted_ns)
        try:
            value = await job.executor.execute(handler, task.payload, ctx, timeout_s)
            result = encode_result(value)
            if len(result) > self.settings.max_result_bytes:
                ack.kind, ack.error_class = wire.FAILED, wire.FATAL
                ack.error = (f"ResultTooLarge: the handler of {inert(task.kind, 100)!r} "
                             f"returned {len(result)} bytes, above this node's "
                             f"max_result_bytes of {self.settings.max_result_bytes}; store "
                             "large results elsewhere and return a reference")
                self._warn.warning("result-size", "task %s: %s", inert(task.task_id, 100),
                                   ack.error)
                outcome = "result_too_large"
            else:
                ack.kind = wire.DONE
                ack.result = result
                outcome = "succeeded"
        except asyncio.CancelledError:
            if job.cancel_event is not None and job.cancel_event.is_set():
                ack.kind, ack.error_class = wire.FAILED, wire.CANCELLED_RUN
                ack.error = "CancelledError: the task was cancelled"
                outcome = "cancelled"
            elif job.timed_out and not self._stopped:
                ack.kind, ack.error_class = wire.FAILED, wire.TIMEOUT
                ack.error = f"run timeout of {timeout_s}s passed"
                self.metrics.timeouts.inc()
                outcome = "timeout"
            else:
                # Drain or stop: hand the task back rather than report a handler failure.
                ack.kind, ack.error_class = wire.REJECTED, wire.DRAINING
                ack.error = "node stopped"
                outcome = "handed_back"
        except RunTimedOut as exc:  # the process executor killed the run's child
            ack.kind, ack.error_class, ack.error = wire.FAILED, wire.TIMEOUT, str(exc)
            self.metrics.timeouts.inc()
            outcome = "timeout"
        except ChildDied as exc:
            # Not the handler's failure: its process died (exit, signal, OOM kill). A lost
            # delivery for the Helper's poison-pill bound, not an attempt.
            ack.kind, ack.error_class, ack.error = wire.FAILED, wire.RETRYABLE, str(exc)
            ack.lost = True
            outcome = "child_died"
        except (PoolClosed, ChildStartFailed) as exc:
            # Never ran to an end here (the pool stopped, or no child could start): hand it
            # back so it runs elsewhere.
            ack.kind, ack.error_class, ack.error = wire.REJECTED, wire.DRAINING, str(exc)
            outcome = "handed_back"
        except HandlerFailed as exc:  # raised in a child: class, type name, message, traceback
            ack.kind, ack.error_class = wire.FAILED, _WIRE_ERROR_CLASS[exc.error_class]
            ack.error = str(exc)
            ack.retry_after_ms = int(exc.retry_after_s * 1000)
            ack.dependency = exc.dependency
            outcome = {ErrorClass.RETRYABLE: "failed", ErrorClass.FATAL: "fatal",
                       ErrorClass.RETRY_LATER: "retry_later"}[exc.error_class]
            self._failures.log_failure(
                "task %s (kind %s, attempt %d) failed in a child process: %s%s",
                (inert(task.task_id, 100), inert(task.kind, 100), dispatch.attempt,
                 inert(ack.error, 300),
                 " (not retried)" if exc.error_class == ErrorClass.FATAL else ""),
                signature_of_text(task.kind, exc.type_name, exc.traceback),
                traceback_text=exc.traceback,
                extra={"task_id": task.task_id, "kind": task.kind,
                       "attempt": dispatch.attempt, "node_id": self.settings.node_id})
        except RetryLater as exc:
            ack.kind, ack.error_class = wire.FAILED, wire.RETRY_LATER
            ack.retry_after_ms = int(exc.delay_s * 1000)
            ack.error = f"RetryLater: {exc}"
            outcome = "retry_later"
        except DependencyDown as exc:
            ack.kind, ack.error_class, ack.error = wire.FAILED, wire.RETRYABLE, _describe(exc)
            if exc.retry_after_s is not None:
                ack.error_class = wire.RETRY_LATER
                ack.retry_after_ms = int(exc.retry_after_s * 1000)
            ack.dependency = exc.dependency
            outcome = "failed"
        except FatalError as exc:
            ack.kind, ack.error_class, ack.error = wire.FAILED, wire.FATAL, _describe(exc)
            outcome = "fatal"
            self._log_failure(task, dispatch.attempt, exc, retried=False)
        except Exception as exc:
            retried = handler.retries(exc)  # @app.task(retry_on=, no_retry_on=)
            ack.kind, ack.error = wire.FAILED, _describe(exc)
            ack.error_class = wire.RETRYABLE if retried else wire.FATAL
            outcome = "failed" if retried else "fatal"
            self._log_failure(task, dispatch.attempt, exc, retried=retried)
        if job.cancel_event is not None and job.cancel_event.is_set() \
                and ack.kind != wire.REJECTED:
            # A sync handler that saw the flag (or finished anyway): the Helper recorded
            # CANCELLED; say so rather than report a result nobody wants.
            ack.kind, ack.error_class, ack.result = wire.FAILED, wire.CANCELLED_RUN, b""
            ack.error = ack.error or "the task was cancelled"
            outcome = "cancelled"
        ack.finished_ns = time.time_ns()
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        self._run_s.append((ack.finished_ns - started_ns) / 1e9)
        if len(self._run_s) >= RUN_TIMES_KEPT:
            self._observe_run_times()
        if ack.kind != wire.REJECTED:
            self._dedup.remember(job.task_id, dispatch.attempt, ack, dispatch.replays)
        self._finish(job, ack)

    def _log_failure(self, task, attempt: int, exc: BaseException, *, retried: bool) -> None:  # noqa: ANN001
        """A handler raised: the operator sees which task, kind and attempt, and the traceback
        (with --log-format json: task_id, kind, attempt and node_id as fields). The same
        failure's traceback is not repeated within a minute (mesh/failure_log.py)."""
        self._failures.log_failure(
            "task %s (kind %s, attempt %d) failed: %s%s",
            (inert(task.task_id, 100), inert(task.kind, 100), attempt, _describe(exc),
             "" if retried else " (not retried)"),
            signature_of(task.kind, exc), exc=exc,
            extra={"task_id": task.task_id, "kind": task.kind, "attempt": attempt,
                   "node_id": self.settings.node_id})

    def _finish(self, job: _Job, ack) -> None:  # noqa: ANN001
        if self._running.pop(job.task_id, None) is not None and job.handler.concurrency:
            self._kind_running[job.handler.kind] -= 1
        job.link.held.discard(job.task_id)
        link = job.link
        index = link.started_at.pop(job.task_id, None)
        if index is not None:
            link.outbox[index] = ack  # the STARTED was not sent yet: the DONE says it started
        else:
            link.outbox.append(ack)
        if self._kind_limits:
            self._start_waiting_by_kind()
        else:
            while self._waiting and len(self._running) < self.settings.concurrency:
                self._start(self._waiting.popleft())
        self._schedule_flush()

    def _start_waiting_by_kind(self) -> None:
        """Start waiting deliveries in order, passing over those whose kind is at its limit."""
        if not self._waiting or len(self._running) >= self.settings.concurrency:
            return
        kept: deque[_Job] = deque()
        while self._waiting and len(self._running) < self.settings.concurrency:
            job = self._waiting.popleft()
            if self._kind_has_room(job.handler.kind):
                self._start(job)
            else:
                kept.append(job)
        kept.extend(self._waiting)
        self._waiting = kept

    # ---- acks and heartbeats -----------------------------------------------------------

    def _credit(self) -> int:
        if self._draining:
            return 0
        s = self.settings
        return max(0, s.concurrency + s.prefetch - len(self._running) - len(self._waiting))

    def _heartbeat(self, link: _HelperLink):  # noqa: ANN202
        self._beat += 1
        return wire.Heartbeat(
            node_id=self.settings.node_id, incarnation=self.incarnation,
            task_endpoint=self.task_endpoint, concurrency=self.settings.concurrency,
            credit=self._credit(), running=len(self._running), held_task_ids=link.held,
            sent_ns=time.time_ns(), draining=self._draining, kinds=self._kinds,
            beat=self._beat, helper_incarnation=link.helper_incarnation,
            received=link.received, dispatch_seq=link.seq,
            max_message_bytes=self.settings.max_message_bytes, version=_VERSION,
            kinds_full=[k for k, n in self._kind_running.items()
                        if n >= self._kind_limits[k]])

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for link in self._links.values():
            if link.outbox:
                self._send(link, link.outbox)

    def _send_heartbeat(self, link: _HelperLink) -> None:
        self._send(link, link.outbox)

    def _send(self, link: _HelperLink, acks: list) -> None:
        if link.started_at and acks is link.outbox:
            acks = [wire.Ack(task_id=a[0], delivery=a[1], kind=wire.STARTED, started_ns=a[2],
                             attempt=a[3]) if type(a) is tuple else a for a in acks]
        frame = wire.encode_ack_batch(self._heartbeat(link), acks)
        try:
            link.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return  # the Helper is not reading (or away and our queue is full); keep the acks
        link.outbox = []
        link.started_at.clear()

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            for link in list(self._links.values()):
                self._send_heartbeat(link)
            self._update_metrics()

    def _observe_run_times(self) -> None:
        run_s, self._run_s = self._run_s, []
        observe_many(self.metrics.run_latency, run_s)

    def _update_metrics(self) -> None:
        """Per-task counts go to Prometheus here, once per heartbeat, not once per task."""
        m = self.metrics
        m.helper_links.set(len(self._links))
        m.waiting.set(len(self._waiting))
        m.running.set(len(self._running))
        outcomes, self._outcomes = self._outcomes, {}
        self._observe_run_times()
        for outcome, count in outcomes.items():
            m.completed.labels(outcome).inc(count)
        if self.processes is not None:
            m.observe_pool(self.processes.stats())

    # ---- observability -----------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def draining(self) -> bool:
        return self._draining


#: announced in heartbeats (`mesh nodes`, the live page)
_VERSION = __version__


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
