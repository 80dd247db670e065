"""The AI node service: receives deliveries, runs handlers with a concurrency limit, acks.

Guarantees:
- At most `concurrency` handlers run at once; up to `prefetch` more deliveries wait for a slot.
- A delivery addressed to another incarnation of this node is refused (WRONG_INCARNATION), so a
  node restarted at the same address never runs what was meant for its previous life.
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
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import zmq
import zmq.asyncio

from mesh import sockets, wire
from mesh.app import App, TaskContext, encode_result
from mesh.dedup import DedupWindow
from mesh.errors import FatalError, RetryLater, WireError
from mesh.metrics import AINodeMetrics
from mesh.settings import AINodeSettings
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
        self.started_at: dict[str, int] = {}  # task_id -> index of its unsent STARTED ack
        self.helper_incarnation = 0
        self.received = 0
        self.seq = 0  # highest DispatchBatch.seq read from that Helper run
        self.held: set[str] = set()
        self.last_used = time.monotonic()


class _Job:
    __slots__ = ("dispatch", "link", "task_id", "handler", "runner", "timeout_s", "deadline",
                 "timed_out")

    def __init__(self, dispatch, link: _HelperLink, handler) -> None:  # noqa: ANN001
        self.dispatch = dispatch
        self.link = link
        self.task_id = dispatch.task.task_id
        self.handler = handler  # looked up once, when the delivery is taken
        self.runner: asyncio.Task | None = None
        self.timeout_s = 0.0
        self.deadline = 0.0  # monotonic; the run timeout's end, set when it starts
        self.timed_out = False


#: How often running jobs are checked against their run timeout: the precision of a timeout.
TIMEOUT_SWEEP_S = 0.05

#: Acks waiting for one Helper link at most (a link that does not connect keeps its acks):
#: beyond it new acks for that link are dropped and counted, and the Helper's redelivery and
#: the de-duplication window recover them.
MAX_OUTBOX = 10_000

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
                 metrics: AINodeMetrics | None = None, trust: Trust | None = None) -> None:
        """`trust`: the node's keys (nodes/ passes `keys.trust_from_args`). None: the local
        key store (`mesh.trust.default_key_dir()`) with a key of this node's own,
        own/ai-node-NODE_ID.key, made on first use; `Trust.plain()` for plain links."""
        self.settings = settings
        self.app = app
        self.metrics = metrics or AINodeMetrics()
        self.trust = trust
        self._own_trust = trust is None  # then its ZAP handler is ours to release
        #: deliveries (or frames) refused before they were taken, by reason: for tests; the
        #: same counts go to mesh_ai_rejected{reason}
        self.refused: dict[str, int] = {}
        self._warn = RateLimitedLog(log, interval_s=10.0)
        self.incarnation = int.from_bytes(os.urandom(8), "little") | 1
        self.task_endpoint = ""
        self._ctx = context
        self._own_context = context is None
        self._initial_helpers = list(helpers)
        self._links: dict[tuple[str, str], _HelperLink] = {}  # (endpoint, helper key) ->
        self._waiting: deque[_Job] = deque()
        self._running: dict[str, _Job] = {}
        self._dedup = DedupWindow(settings.dedup_window)
        self._pool = ThreadPoolExecutor(max_workers=settings.concurrency * 2,
                                        thread_name_prefix="mesh-handler")
        self._tasks: list[asyncio.Task] = []
        self._handler_tasks: set[asyncio.Task] = set()
        self._flush_scheduled = False
        self._draining = False
        self._stopped = False
        self._beat = 0
        self._kinds = app.kinds
        self._outcomes: dict[str, int] = {}

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
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
        log.info("ai node %s up: tasks %s, incarnation %x, kinds %s, concurrency %d",
                 self.settings.node_id, self.task_endpoint, self.incarnation, self._kinds,
                 self.settings.concurrency)

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
        self._pool.shutdown(wait=False, cancel_futures=True)
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
        link = self._batch_link(batch, helper_key)
        for dispatch in batch.dispatches:
            try:
                self._on_dispatch(dispatch, helper_key)
            except Exception:
                log.exception("failed to take a delivery")
        if link is not None and batch.seq > link.seq:
            # Echoed in the next heartbeat: every earlier frame of this link was read or is
            # lost for good (a link keeps its frames in order), so the Helper can tell which.
            link.seq = batch.seq

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
        if not task.task_id or not task.kind:
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
        if task.task_id in self._running or task.task_id in link.held:
            return  # already here; it is in our heartbeat's held list
        stored = self._dedup.lookup(task.task_id, dispatch.attempt,
                                    lambda ack: ack.kind == wire.DONE)
        if stored is not None:
            self.metrics.dedup_hits.inc()
            answer = wire.Ack()
            answer.CopyFrom(stored)
            answer.delivery = dispatch.delivery
            answer.from_dedup = True
            self._queue_ack(link, answer)
            return
        handler = self.app.handlers.get(task.kind)
        if handler is None:
            self._reject(link, dispatch, wire.UNKNOWN_TASK_KIND,
                         f"no handler for task kind {inert(task.kind, 100)!r} on node "
                         f"{self.settings.node_id} (kinds: {', '.join(self._kinds) or 'none'})")
            return
        job = _Job(dispatch, link, handler)
        link.held.add(job.task_id)
        if len(self._running) < self.settings.concurrency:
            self._start(job)
        else:
            self._waiting.append(job)

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
        # Set before the job is in _running: the sweep must never see a job with no deadline.
        job.deadline = time.monotonic() + job.timeout_s
        self._running[job.task_id] = job
        runner = asyncio.get_running_loop().create_task(self._run(job))
        job.runner = runner
        self._handler_tasks.add(runner)
        runner.add_done_callback(functools.partial(self._runner_done, job))

    def _runner_done(self, job: _Job, runner: asyncio.Task) -> None:
        self._handler_tasks.discard(runner)
        if self._running.get(job.task_id) is job:
            # Cancelled before its first step (a run timeout shorter than the wait for the
            # loop, or a stop): _run never began, so nothing answered for it. Answer here, or
            # the slot is lost and the delivery is held forever.
            ack = wire.Ack(task_id=job.task_id, delivery=job.dispatch.delivery,
                           attempt=job.dispatch.attempt)
            if job.timed_out and not self._stopped:
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
        link.outbox.append(wire.Ack(task_id=job.task_id, delivery=dispatch.delivery,
                                    kind=wire.STARTED, started_ns=started_ns,
                                    attempt=dispatch.attempt))
        self._schedule_flush()
        timeout_s = job.timeout_s
        ack = wire.Ack(task_id=job.task_id, delivery=dispatch.delivery, started_ns=started_ns,
                       attempt=dispatch.attempt)
        args: tuple = (task.payload,)
        if handler.wants_context:
            args += (TaskContext(
                task_id=task.task_id, kind=task.kind, attempt=dispatch.attempt,
                delivery=dispatch.delivery, idempotency_key=task.idempotency_key or task.task_id,
                node_id=self.settings.node_id, headers=dict(task.headers),
                submitted_ns=task.submitted_ns),)
        try:
            if handler.is_async:
                value = await handler.fn(*args)
            else:
                value = await asyncio.get_running_loop().run_in_executor(
                    self._pool, handler.fn, *args)
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
            if job.timed_out and not self._stopped:
                ack.kind, ack.error_class = wire.FAILED, wire.TIMEOUT
                ack.error = f"run timeout of {timeout_s}s passed"
                self.metrics.timeouts.inc()
                outcome = "timeout"
            else:
                # Drain or stop: hand the task back rather than report a handler failure.
                ack.kind, ack.error_class = wire.REJECTED, wire.DRAINING
                ack.error = "node stopped"
                outcome = "handed_back"
        except RetryLater as exc:
            ack.kind, ack.error_class = wire.FAILED, wire.RETRY_LATER
            ack.retry_after_ms = int(exc.delay_s * 1000)
            ack.error = f"RetryLater: {exc}"
            outcome = "retry_later"
        except FatalError as exc:
            ack.kind, ack.error_class, ack.error = wire.FAILED, wire.FATAL, _describe(exc)
            outcome = "fatal"
        except Exception as exc:
            ack.kind, ack.error_class, ack.error = wire.FAILED, wire.RETRYABLE, _describe(exc)
            outcome = "failed"
        ack.finished_ns = time.time_ns()
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        self.metrics.run_latency.observe((ack.finished_ns - started_ns) / 1e9)
        if ack.kind != wire.REJECTED:
            self._dedup.remember(job.task_id, dispatch.attempt, ack)
        self._finish(job, ack)

    def _finish(self, job: _Job, ack) -> None:  # noqa: ANN001
        self._running.pop(job.task_id, None)
        job.link.held.discard(job.task_id)
        link = job.link
        index = link.started_at.pop(job.task_id, None)
        if index is not None:
            link.outbox[index] = ack  # the STARTED was not sent yet: the DONE says it started
        else:
            link.outbox.append(ack)
        while self._waiting and len(self._running) < self.settings.concurrency:
            self._start(self._waiting.popleft())
        self._schedule_flush()

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
            max_message_bytes=self.settings.max_message_bytes)

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

    def _update_metrics(self) -> None:
        """Per-task counts go to Prometheus here, once per heartbeat, not once per task."""
        m = self.metrics
        m.helper_links.set(len(self._links))
        m.waiting.set(len(self._waiting))
        m.running.set(len(self._running))
        outcomes, self._outcomes = self._outcomes, {}
        for outcome, count in outcomes.items():
            m.completed.labels(outcome).inc(count)

    # ---- observability -----------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def draining(self) -> bool:
        return self._draining


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
