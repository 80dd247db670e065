"""The Helper's core: the task table, the queue, the nodes, and every state change of a task.

No sockets and no awaits in here: the service (`mesh.helper`) feeds it frames and timer ticks
and gives it two callables, `send(node, frame) -> bool` and `journal_append(type, key, bytes)`.
That keeps every rule of the lifecycle in one place a reader can follow top to bottom:

    admit ─► (journal sync, by the service) ─► enqueue ─► dispatch_pass ─► on_ack_batch
       STARTED ─► RUNNING;  DONE ─► SUCCEEDED (first DONE wins);  FAILED ─► retry policy
       node dead (missed heartbeats, discovery, restart) ─► its deliveries re-queued at the front;
       a RUNNING delivery lost counts toward the delivery limit (poison pill)

Credit: a node announces its free slots; the deliveries we sent it that it had not read when it
said so are subtracted, so credit in flight is never spent twice (`NodeLink.available`). Which
ones those are is known exactly: every frame to a node is numbered, the node echoes the highest
number it read, and frames on one link stay in order. A frame at or below the echo either
arrived (its deliveries are held or answered) or is lost for good (they are queued again); a
frame left unconfirmed too long is followed by a probe that settles it (`_confirm`, `_probe`;
docs/decisions/005-failure-semantics.md, "The credit ledger").

Held back at dispatch (the task stays queued, no attempt charged, its TTL still applies): a kind
whose circuit breaker is open (`mesh.policies.circuit`), or that has no rate-limit token
(`mesh.policies.rate_limit`). The breaker is asked first (it takes no token), then the rate
limit, then a half-open breaker's probe is taken; `wake_at` says when a held-back kind may go
again, for the service to run a pass then. Per picked task the order is: TTL, frame size,
breaker, rate limit (docs/decisions/005-failure-semantics.md, "Order of policies").
"""

from __future__ import annotations

import logging
import random
import struct
import sys
import time
from collections import deque
from collections.abc import Callable

import msgspec

from mesh import records, wire
from mesh.choose import share_credit
from mesh.deadletter import DeadLetterBook, dead_letter_size
from mesh.metrics import HelperMetrics, observe_many
from mesh.pending import PendingQueue
from mesh.policies.circuit import Breakers, State, Transition
from mesh.policies.rate_limit import RateLimits
from mesh.retained import RetainedStore
from mesh.policies.retry import RetryPolicy
from mesh.settings import HelperSettings
from mesh.trust import RateLimitedLog, TrustError, inert

log = logging.getLogger("mesh.dispatcher")

ACCEPTING = -1  # local state: journaled, not yet durable; not dispatchable (unless configured)
#: kept below a node's announced max message size: ZeroMQ's own framing of a message
FRAME_MARGIN_BYTES = 64
#: an older node announces no max message size: a frame may then hold our payload limit plus
#: this, room for a task's other fields (headers are bounded at 64 KiB) and the Dispatch fields
UNKNOWN_LIMIT_OVERHEAD_BYTES = 256 * 2**10
#: error text from a node is cut to this many characters before it is stored (journal records,
#: dead letters, status replies): a node's error must never make a record too large
MAX_ERROR_CHARS = 4096
#: keys of the nodes a task was sent to, remembered per task (the most recent ones): an ack
#: counts only from one of them
MAX_HOLDER_KEYS = 8
#: in `TaskEntry.holders`: recovered unfinished at start, so its holder is unknown
ANY_HOLDER = "*"
#: in front of a retained record in the store: the deliveries sent (the journal's record keeps
#: only the lost ones; after a restart this is 0, as for any task recovered)
_SENT = struct.Struct("<I")
#: failed attempts and lost deliveries remembered per task (the most recent ones), for
#: `mesh dlq inspect`
MAX_HISTORY = 16
#: bytes of the payload a dead-letter inspect shows
PAYLOAD_PREVIEW_BYTES = 256
#: mesh_circuit_state's values
CIRCUIT_STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


class TaskEntry(msgspec.Struct, gc=False, eq=False):
    """One task as the Helper tracks it. `task` is the wire Task exactly as submitted, until
    the task succeeds: then it is dropped (None), as the payload is no longer needed; up to
    `max_retained_results` finished entries stay for status and result queries, and the wire
    message was half of each one's memory.

    Not tracked by Python's cycle collector (`gc=False`): an entry holds plain values and its
    wire Task, never anything that refers back to it. With 100,000 retained results, tracked
    entries made every full collection stall the Helper's loop for 50-75 ms. Equality is
    identity (`eq=False`): entries are looked up, never compared.
    """

    task: object
    task_id: str
    kind: str
    priority: int
    size_bytes: int
    seq: int
    max_attempts: int
    encoded: bytes  # spliced into records and dispatches as is
    submitted_ns: int
    idempotency_key: str
    queued_at: float = 0.0
    in_queue: bool = False
    state: int = ACCEPTING
    attempt: int = 1
    deliveries: int = 0
    lost_deliveries: int = 0
    delivery: int = 0
    node_id: str = ""
    result: bytes = b""
    error: str = ""
    dead_reason: int = 0
    finished_ns: int = 0
    not_before: float = 0.0  # monotonic; a retry's backoff end
    dispatched_at: float = 0.0
    accepted_at: float = 0.0
    #: the keys ("" on plain links) of the nodes this task was sent to or adopted by: only
    #: these may ack it (see `Dispatcher._apply_ack`)
    holders: tuple = ()
    #: failed attempts and lost deliveries, as wire.Attempt (the most recent MAX_HISTORY)
    history: tuple = ()
    #: dead-letter replays so far: sent with each delivery, so that a node runs a replayed
    #: attempt instead of answering it with the failure it stored for the same attempt number
    replays: int = 0

    @classmethod
    def of(cls, task, seq: int, max_attempts: int,  # noqa: ANN001
           encoded: bytes | None = None) -> TaskEntry:
        if encoded is None:
            encoded = wire.task_bytes(task)
        # size_bytes is the whole encoded task (payload, kind, headers, ids): what the queue's
        # bytes bound counts.
        return cls(task=task, task_id=task.task_id,
                   kind=sys.intern(task.kind),  # one string per kind, not one per task
                   priority=task.priority, size_bytes=len(encoded), seq=seq,
                   max_attempts=task.max_attempts or max_attempts,
                   encoded=encoded, submitted_ns=task.submitted_ns,
                   idempotency_key=task.idempotency_key)

    @property
    def terminal(self) -> bool:
        return self.state == wire.SUCCEEDED or self.state == wire.DEAD \
            or self.state == wire.CANCELLED

    def status(self, *, preview: bool = False):  # noqa: ANN201 - wire.TaskStatus
        """The task's status; `preview` adds the payload's first bytes and its size (for a
        dead-letter inspect)."""
        status = wire.TaskStatus(
            task_id=self.task_id, state=max(self.state, 0), attempts=self.attempt,
            deliveries=self.deliveries, node_id=self.node_id, result=self.result,
            error=self.error, dead_reason=self.dead_reason,
            submitted_ns=self.submitted_ns, finished_ns=self.finished_ns,
            kind=self.kind, priority=self.priority, history=self.history,
            cancelled_ns=self.finished_ns if self.state == wire.CANCELLED else 0)
        if preview and self.task is not None:
            status.payload = self.task.payload[:PAYLOAD_PREVIEW_BYTES]
            status.payload_bytes = len(self.task.payload)
        return status

    def remember(self, outcome: str, error: str, node_id: str = "",
                 attempt: int = 0) -> None:
        """Add one failed attempt or lost delivery to the task's history (bounded)."""
        item = wire.Attempt(attempt=attempt or self.attempt, node_id=node_id, error=error,
                            at_ns=time.time_ns(), outcome=outcome)
        self.history = (*self.history[-(MAX_HISTORY - 1):], item)

    def record(self):  # noqa: ANN201 - wire.TaskRecord, the full state for a rewrite
        wall_not_before = 0
        if self.not_before:
            wall_not_before = time.time_ns() + int((self.not_before - time.monotonic()) * 1e9)
        task = self.task
        if task is None:  # succeeded: what a status query and a replay need of it
            task = wire.Task(task_id=self.task_id, kind=self.kind, priority=self.priority,
                             submitted_ns=self.submitted_ns,
                             idempotency_key=self.idempotency_key)
        return wire.TaskRecord(
            task=task, state=max(self.state, wire.QUEUED) if not self.terminal else self.state,
            attempts=self.attempt, deliveries=self.lost_deliveries, result=self.result,
            error=self.error, dead_reason=self.dead_reason, finished_ns=self.finished_ns,
            not_before_ns=max(wall_not_before, 0), node_id=self.node_id, history=self.history,
            replays=self.replays)


#: What one node's heartbeat can make this Helper hold (issue 9's bounds, issue 10's threat
#: model: a holder of an ai-node key may lie about its own node). Credit (and concurrency)
#: above this is taken as this: a node cannot swallow the queue by announcing a huge credit.
MAX_NODE_CREDIT = 4096
#: kinds one node may announce (more are dropped, with a warning), and kinds remembered for
#: --refuse-unknown-kinds over a run (past this, new ones are not added: refused)
MAX_KINDS_PER_NODE = 1024
MAX_KINDS_ANNOUNCED = 10_000

class NodeLink:
    """What the Helper knows of one AI node incarnation, and its PUSH socket."""

    __slots__ = (
        "node_id", "incarnation", "endpoint", "sock", "concurrency", "kinds", "announced",
        "received", "sent", "last_heard", "inflight", "draining", "stalled_until", "beat",
        "suffix", "held", "running", "frames", "outstanding", "echoes", "base_received",
        "confirmed", "frame_budget", "probed_at", "key", "version", "kinds_full",
    )

    def __init__(self, node_id: str, incarnation: int, endpoint: str, sock,  # noqa: ANN001
                 key: str = "") -> None:
        self.node_id = node_id
        #: the CURVE public key (Z85) its heartbeats are authenticated with, "" on a plain
        #: link: the node id is bound to it while this link lives, and the PUSH pins it
        self.key = key
        self.incarnation = incarnation
        self.endpoint = endpoint
        self.sock = sock
        self.concurrency = 0
        self.kinds: frozenset[str] = frozenset()
        self.announced = 0      # credit in the node's last heartbeat
        self.received = 0       # deliveries of ours it had received then (this Helper run)
        self.sent = 0           # deliveries we sent on this link
        # The ledger: frames sent on this link that the node has not been seen to read, oldest
        # first, as SentFrame; `outstanding` counts their deliveries.
        self.frames: deque[SentFrame] = deque()
        self.outstanding = 0
        self.echoes = False     # the node echoes frame numbers (dispatch_seq); older ones do not
        self.base_received = 0  # an older node: its `received` when this link began
        self.confirmed = 0      # an older node: deliveries confirmed by its `received` count
        self.frame_budget = 0   # the largest dispatch frame we send it, in bytes
        self.probed_at = 0.0
        self.last_heard = time.monotonic()
        self.inflight: dict[str, int] = {}  # task_id -> delivery number
        self.draining = False
        self.stalled_until = 0.0
        self.beat = 0
        self.suffix = b""  # the encoded Dispatch fields common to this incarnation
        self.running = 0  # handlers running on the node, as of its last heartbeat
        self.held = ()  # task ids its last heartbeat said it holds (running or waiting)
        self.version = ""  # the mesh version it announces ("" = an older node)
        self.kinds_full = ()  # kinds at their per-kind concurrency limit on the node

    @property
    def available(self) -> int:
        """Credit not yet spent: announced minus what we sent that it had not read then."""
        return self.announced - self.outstanding


class SentFrame:
    """One dispatch frame sent on a link, until the node is seen to have read it."""

    __slots__ = ("seq", "sent_at", "deliveries")

    def __init__(self, seq: int, sent_at: float, deliveries: list[tuple[str, int]]) -> None:
        self.seq = seq
        self.sent_at = sent_at
        self.deliveries = deliveries  # (task id, delivery number); empty for a probe


class Dispatcher:
    def __init__(
        self,
        settings: HelperSettings,
        *,
        helper_incarnation: int,
        reply_to: str,
        journal_append: Callable[[int, bytes, bytes], None],
        journal_release: Callable[[bytes], None],
        connect: Callable[[str, str], object],
        send: Callable[[object, bytes], bool],
        close: Callable[[object], None],
        metrics: HelperMetrics,
        on_event: Callable[[str, dict], None] | None = None,
        rng: random.Random | None = None,
        record_limit_bytes: int = 0,
        group: str = "",
        group_epoch: int = 0,
        retained: RetainedStore | None = None,
        dead: RetainedStore | None = None,
        journal_segment: Callable[[], int] | None = None,
        journal_keep_from: Callable[[int | None], None] | None = None,
    ) -> None:
        self.settings = settings
        #: a Helper group's leader: its group and term epoch, in every frame (nodes fence on it)
        self.group = group
        self.group_epoch = group_epoch
        self.helper_incarnation = helper_incarnation
        self.reply_to = reply_to
        self._append = journal_append
        self._release = journal_release
        self._connect = connect
        self._send = send
        self._close = close
        self.metrics = metrics
        self._on_event = on_event or (lambda kind, info: None)
        self._rng = rng or random.Random()
        self.retry_policy = RetryPolicy(settings.retry_base_s, settings.retry_cap_s)
        self.tasks: dict[str, TaskEntry] = {}
        self.pending = PendingQueue(settings.max_pending_tasks, settings.max_pending_bytes,
                                    settings.priority_aging_every)
        self.retry_waiting: list[TaskEntry] = []  # not a heap: scanned on ticks (bounded)
        self.nodes: dict[str, NodeLink] = {}
        #: succeeded tasks kept for status and result queries, out of `tasks` and of the heap
        #: (see mesh/retained.py); `find` looks in both
        self.retained = retained if retained is not None else RetainedStore()
        #: dead letters: each one's full record (its task as submitted) on disk, in a store of
        #: the same kind; `dead_letters` keeps their order and sizes, `find` looks here too
        self.dead = dead if dead is not None else RetainedStore()
        self.finished: deque[str] = deque()  # cancelled tasks, oldest first (see _evict_cancelled)
        # A succeeded task's record is self-contained (a TASK record in state SUCCEEDED) and its
        # key is released at once, so the journal tracks no key per retained result; instead
        # it keeps every segment from the one holding the oldest retained result's record.
        self._segment = journal_segment or (lambda: 0)
        self._keep_from = journal_keep_from or (lambda seq: None)
        self._floor: int | None = None
        self._migrate: list[str] = []  # replayed from the older format: rewritten at the end
        self.unroutable_since: dict[str, float] = {}
        #: every kind an AI node announced in a heartbeat during this run (refuse_unknown_kinds)
        self.kinds_announced: set[str] = set()
        self.reconcile_until = 0.0
        self._expiry_sweep_at = 0.0
        # Frame numbers: one counter for every link, so a node back after being declared dead
        # (same incarnation, a new link) never sees a number its old link used.
        self._frame_seq = 0
        self._pass_count = 0  # turns the tie order of `share_credit` from pass to pass
        self._tail = wire.dispatch_batch_tail(reply_to, helper_incarnation, group, group_epoch)
        #: a frame unconfirmed this long is followed by a probe (see `_probe`)
        self.unconfirmed_after_s = settings.node_dead_after_s
        self._seq = 0
        self._waiters: dict[str, list[Callable[[TaskEntry], None]]] = {}
        self.dead_letters = DeadLetterBook(settings.max_dead_letters,
                                           settings.max_dead_letter_bytes)
        self.stats = {"acks": 0, "late_acks": 0, "duplicate_done": 0, "succeeded": 0, "dead": 0,
                      "dead_evicted": 0, "cancelled": 0}
        #: the journal's max_record_bytes, for the message when a result does not fit (0: unknown)
        self.record_limit_bytes = record_limit_bytes
        #: key -> node ids it holds among live nodes (max_node_ids_per_key)
        self._ids_of_key: dict[str, set[str]] = {}
        self._warn = RateLimitedLog(log, interval_s=10.0)
        self._succeeded_metric = metrics.outcomes.labels("succeeded")  # looked up once: hot path
        self._e2e_s: list[float] = []  # end-to-end latencies of an ack batch, observed at its end
        now = time.monotonic()
        self.rate_limits = RateLimits(settings.rate_limit_rates(), now)
        self.breakers = (Breakers(settings.breaker_settings(), self._on_breaker)
                         if settings.breakers != "off" else None)
        #: kinds' own breakers are charged only with breakers="all"
        self._kind_breakers = settings.breakers == "all"
        #: kinds held back (breaker or rate limit) in the last dispatch pass
        self.held_back: set[str] = set()
        #: monotonic: when a kind held back in the last pass may go again (0.0: none held)
        self.wake_at = 0.0

    # ---- admission ---------------------------------------------------------------------

    def admit(self, task, encoded: bytes | None = None) -> TaskEntry:  # noqa: ANN001
        """Create and journal a new task (caller validated it, see mesh/admission.py, and
        checked for room). The record is appended first: if the journal refuses it, this
        raises and nothing of the task is in the table, the queue or the journal."""
        entry = TaskEntry.of(task, self._seq + 1, self._kind_attempts(task.kind), encoded)
        self._append(records.TASK, entry.task_id.encode(),
                     wire.encode_new_task_record(entry.encoded))
        self._seq += 1
        entry.accepted_at = time.monotonic()
        self.tasks[entry.task_id] = entry
        if self.settings.dispatch_before_sync:
            self.enqueue(entry)
        return entry

    def _kind_attempts(self, kind: str) -> int:
        """Default attempts for a kind (`kind_max_attempts`, else `max_attempts`); a task's
        own `max_attempts` overrides it (TaskEntry)."""
        return self.settings.kind_max_attempts.get(kind, self.settings.max_attempts)

    def has_room(self, count: int, size_bytes: int) -> bool:
        return self.pending.has_room(count, size_bytes, others=len(self.retry_waiting))

    def enqueue(self, entry: TaskEntry, *, front: bool = False) -> None:
        if entry.terminal or entry.in_queue:
            return
        entry.state = wire.QUEUED
        entry.queued_at = time.monotonic()
        entry.node_id = ""
        self.pending.push(entry, front=front)

    def durable(self, entry: TaskEntry) -> None:
        """The service saw the submit's journal sync complete."""
        if entry.state == ACCEPTING:
            self.enqueue(entry)

    def abandon(self, entry: TaskEntry) -> None:
        """The submit's journal sync failed: the task was never accepted; forget it."""
        if self.tasks.get(entry.task_id) is entry:
            del self.tasks[entry.task_id]
            self.pending.discard(entry)
            node = self.nodes.get(entry.node_id)
            if node is not None:
                node.inflight.pop(entry.task_id, None)

    # ---- dispatch ----------------------------------------------------------------------

    def dispatch_pass(self) -> int:
        """Send queued tasks to nodes with credit, least loaded first. Returns deliveries sent.

        When the queue holds less than the free credit of all nodes, who gets it matters: each
        delivery goes to the node with the most free credit relative to its concurrency, ties
        in turn (`choose.share_credit`), so long tasks spread over every node instead of
        filling the first. Then what is still queued (e.g. kinds the chosen nodes do not
        serve) goes to any node with credit left, most credit first."""
        if not self.pending or not self.nodes:
            return 0
        now = time.monotonic()
        if now < self.reconcile_until:
            return 0
        self.held_back = set()
        self.wake_at = 0.0
        sent_total = 0
        batch_max = self.settings.dispatch_batch_max
        live = [n for n in self.nodes.values() if not n.draining and n.available > 0]
        candidates = [n for n in live if n.stalled_until <= now]
        now_ns = time.time_ns()
        queued = len(self.pending)
        if len(live) > 1 and queued < sum(n.available for n in live):
            # A node stalled for a moment (not connected yet) keeps its share for the next
            # pass: the others must not take it all meanwhile.
            self._pass_count += 1
            shares = share_credit([(n.available, n.concurrency) for n in live], queued,
                                  self._pass_count)
            skipped = False
            for node, share in zip(live, shares):
                if node.stalled_until > now:
                    skipped = skipped or share > 0
                    continue
                while share > 0 and self.pending:
                    sent, full = self._send_frame(node, min(share, batch_max), now, now_ns)
                    sent_total += sent
                    share -= sent
                    if not full:
                        break
            candidates = [] if skipped else [n for n in candidates if n.available > 0]
        candidates.sort(key=lambda n: n.available, reverse=True)
        for node in candidates:
            # One frame per node and pass, or more while frames fill up by bytes first.
            while self.pending and node.available > 0:
                sent, full = self._send_frame(node, min(node.available, batch_max), now,
                                              now_ns)
                sent_total += sent
                if not full:
                    break
        if sent_total:
            self.metrics.dispatched.inc(sent_total)
        return sent_total

    def _send_frame(self, node: NodeLink, room: int, now: float,
                    now_ns: int) -> tuple[int, bool]:
        """One frame to the node of up to `room` deliveries, within its byte budget. Returns
        the deliveries sent, and whether the frame was cut short by its byte budget."""
        if not node.suffix:
            node.suffix = wire.dispatch_suffix(node.incarnation, self.reply_to,
                                               self.settings.helper_id,
                                               self.helper_incarnation)
        # Frames are sized by bytes too: one above the node's max message size is dropped by
        # ZeroMQ (which also disconnects us), and its deliveries with it.
        frame_bytes = wire.DISPATCH_BATCH_HEAD_BYTES + len(self._tail)
        suffix_len = len(node.suffix)
        full = False
        dispatches = []
        entries = []
        gated = self.breakers is not None or self.rate_limits.kinds
        kinds = node.kinds - self.held_back if self.held_back else node.kinds
        while room > 0:
            entry = self.pending.pop(kinds)
            if entry is None:
                break
            if entry.terminal:
                # Never send a finished task (its payload is gone): a bookkeeping bug.
                log.error("finished task %s was still queued; dropped from the queue",
                          inert(entry.task_id, 80))
                continue
            deadline = entry.task.deadline_ns
            if deadline and deadline < now_ns:
                self._dead(entry, wire.EXPIRED,
                           f"deadline passed {(now_ns - deadline) / 1e9:.3f}s before start")
                continue
            size = wire.dispatch_size(len(entry.encoded), suffix_len)
            if frame_bytes + size > node.frame_budget:
                if entries:
                    self.pending.put_back(entry)  # first in the next frame
                    full = True
                    break
                if self._fits_some_node(entry, size):
                    self.pending.put_back(entry)  # for a node that takes it
                    break
                self._dead(entry, wire.PAYLOAD_REJECTED,
                           f"the task's delivery takes {size} bytes, more than any AI node "
                           f"serving {inert(entry.kind, 60)!r} accepts (node "
                           f"{inert(node.node_id, 80)}: "
                           f"{node.frame_budget} bytes); raise the nodes' max message size "
                           "or lower the Helper's max payload")
                continue
            if gated and not self._may_go(entry.kind, now):
                self.pending.put_back(entry)  # stays queued: no attempt, no delivery
                kinds = node.kinds - self.held_back
                continue
            frame_bytes += size
            entry.deliveries += 1
            entry.delivery = entry.deliveries
            dispatches.append((entry.encoded, entry.attempt, entry.delivery, entry.replays))
            entries.append(entry)
            room -= 1
        if not entries:
            return 0, False
        seq = self._frame_seq + 1
        frame = wire.encode_dispatch_batch_raw(dispatches, node.suffix, seq, self._tail)
        if not self._send(node.sock, frame):
            # Not connected yet or not reading: put them back, try this node later.
            for entry in reversed(entries):
                entry.deliveries -= 1
                self.pending.put_back(entry)
            node.stalled_until = now + 0.05
            return 0, False
        self._frame_seq = seq
        node.frames.append(SentFrame(seq, now, [(e.task_id, e.delivery) for e in entries]))
        node.outstanding += len(entries)
        node.sent += len(entries)
        for entry in entries:
            entry.state = wire.DISPATCHED
            entry.node_id = node.node_id
            entry.dispatched_at = now
            _add_holder(entry, node.key)
            node.inflight[entry.task_id] = entry.delivery
        return len(entries), full

    def _may_go(self, kind: str, now: float) -> bool:
        """The breaker, then the rate limit: may a task of `kind` be sent now? No: the kind is
        held back for the rest of this pass, and `wake_at` says when to try again."""
        breakers = self.breakers
        if breakers is not None and breakers.all_closed:
            breakers = None  # the fast path: nothing to ask, no probe to take
        if breakers is not None and not breakers.would_allow(kind, now):
            self._hold_back(kind, breakers.next_allowed(kind, now))
            return False
        if not self.rate_limits.take(kind, now):
            self._hold_back(kind, self.rate_limits.next_ready(kind, now))
            return False
        if breakers is not None:
            breakers.allow(kind, now)  # takes a half-open breaker's probe: this task is it
        return True

    def _hold_back(self, kind: str, until: float) -> None:
        self.held_back.add(kind)
        if not self.wake_at or until < self.wake_at:
            self.wake_at = until

    def _on_breaker(self, change: Transition) -> None:
        """A breaker changed state: metrics, a log line, and the alert (open/closed)."""
        self.metrics.circuit_state.labels(change.name, change.scope).set(
            CIRCUIT_STATE_VALUE[change.new])
        self.metrics.circuit_transitions.labels(change.scope, change.new.value).inc()
        log.warning("circuit breaker %s %s: %s -> %s (%s)", change.scope,
                    inert(change.name, 80), change.old.value, change.new.value, change.reason)
        if change.alert:
            info = {"breaker": f"{change.scope}:{inert(change.name, 80)}",
                    "name": inert(change.name, 80), "scope": change.scope,
                    "state": change.new.value, "reason": change.reason}
            if change.new is State.OPEN:
                info.update(failures=change.failures, calls=change.calls,
                            probe_in_s=round(max(0.0, change.reopen_at - change.at), 3))
            self._on_event("circuit_" + change.new.value, info)

    def _record_outcome(self, entry: TaskEntry, ack) -> None:  # noqa: ANN001 - wire.Ack
        """Charge an attempt's outcome to the breakers (mesh.policies.circuit, "What counts"):
        DONE a success; a failure naming a dependency (DependencyDown) a failure of that
        dependency; with breakers="all", a retryable failure, a run timeout or a child that
        died a failure of the kind; FATAL and the handler's own RetryLater are neither."""
        breakers = self.breakers
        if breakers is None:
            return
        now = time.monotonic()
        if ack.kind == wire.DONE:
            breakers.record_success(entry.kind, now)
        elif ack.dependency:
            breakers.record_failure(entry.kind, now, ack.dependency)
        elif self._kind_breakers and (ack.lost
                                      or ack.error_class in (wire.RETRYABLE, wire.TIMEOUT)):
            breakers.record_failure(entry.kind, now)

    def _fits_some_node(self, entry: TaskEntry, size: int) -> bool:
        """Some live node serving the task's kind takes a frame holding this delivery."""
        need = wire.DISPATCH_BATCH_HEAD_BYTES + len(self._tail) + size
        return any(n.frame_budget >= need and entry.kind in n.kinds
                   for n in self.nodes.values())

    def _bounded_kinds(self, node: NodeLink, kinds) -> frozenset[str]:  # noqa: ANN001
        """The kinds a heartbeat announces, as many and as long as a real app's can be: a
        node (or a holder of its key) cannot grow the Helper's memory with made-up ones."""
        limit = self.settings.max_kind_bytes
        kept = [k for k in kinds[:MAX_KINDS_PER_NODE] if len(k.encode()) <= limit]
        if len(kept) != len(kinds):
            self._warn.warning(("kinds", node.key), "node %s (key %s) announced %d kinds; kept "
                               "%d (at most %d, each at most %d bytes)", inert(node.node_id, 80),
                               node.key or "none", len(kinds), len(kept), MAX_KINDS_PER_NODE,
                               limit)
        return frozenset(kept)

    def _frame_budget(self, hb) -> int:  # noqa: ANN001 - wire.Heartbeat
        """The largest frame we send a node: what it announces, less a margin for ZeroMQ's
        own framing. An older node announces nothing: then frames stay below our own payload
        limit plus room for a task's other fields, which any node that takes our largest
        task accepts (its default limit is 16 MiB)."""
        if hb.max_message_bytes:
            return hb.max_message_bytes - FRAME_MARGIN_BYTES
        return self.settings.max_payload_bytes + UNKNOWN_LIMIT_OVERHEAD_BYTES

    # ---- acks and heartbeats -----------------------------------------------------------

    def on_ack_batch(self, batch, key: str = "") -> None:  # noqa: ANN001 - wire.AckBatch
        """One ack batch from the node whose CURVE key is `key` ("" on a plain link).

        Identity: a node id is bound to the key of its first heartbeat while that node lives
        (until it is declared dead or gone); a batch naming a node id bound to another key is
        dropped. A new node id is refused when the table holds max_nodes, or when its key holds
        max_node_ids_per_key live ids already. Each ack then counts only if the task was given
        to a node with this key (`_apply_ack`)."""
        hb = batch.heartbeat
        node = self.nodes.get(hb.node_id)
        if node is not None and node.key != key:
            self._refuse_batch("node_id_bound", hb.node_id, key,
                               "node id is bound to another key while that node lives")
            return
        if node is None or node.incarnation != hb.incarnation:
            if not hb.task_endpoint:
                return
            refused = self._node_refusal(hb.node_id, key, replacing=node is not None)
            if refused:
                self._refuse_batch(refused[0], hb.node_id, key, refused[1])
                return
            try:
                sock = self._connect(hb.task_endpoint, key)
            except (TrustError, ValueError) as exc:
                self._refuse_batch("untrusted_key", hb.node_id, key, str(exc))
                return
            if node is not None:
                self.node_dead(node, "restarted")
            node = NodeLink(hb.node_id, hb.incarnation, hb.task_endpoint, sock, key)
            if hb.helper_incarnation == self.helper_incarnation:
                # Back after we declared it dead (SIGSTOP/SIGCONT). A node that echoes frame
                # numbers needs nothing here: this link's frames are numbered above any the
                # old link sent. An older node's `received` also counts the old link's
                # deliveries; that count, as of this heartbeat, is the base. It is only a
                # guess: deliveries the old link sent may still be on the way (a heartbeat
                # built before they were read), which is why nodes echo frame numbers.
                node.base_received = hb.received
            self.nodes[hb.node_id] = node
            self._ids_of_key.setdefault(key, set()).add(hb.node_id)
            self.metrics.nodes_alive.set(len(self.nodes))
            log.info("node %s joined (incarnation %x, %s, concurrency %d, key %s)",
                     inert(hb.node_id, 80), hb.incarnation, inert(hb.task_endpoint, 120),
                     hb.concurrency, key or "none: plain link")
            self._on_event("node_up", {"node_id": inert(hb.node_id, 80),
                                       "endpoint": inert(hb.task_endpoint, 120),
                                       "key": key})
        elif hb.beat and hb.beat < node.beat:
            return  # an older heartbeat overtaken by a newer one: ignore its credit
        node.last_heard = time.monotonic()
        node.beat = hb.beat
        node.held = hb.held_task_ids
        node.version = hb.version
        if batch.acks:
            # Counted once per batch, not per ack (also when the journal fails half-way).
            stats = self.stats
            succeeded = stats["succeeded"]
            try:
                for ack in batch.acks:
                    self._apply_ack(node, ack)
            finally:
                stats["acks"] += len(batch.acks)
                if stats["succeeded"] != succeeded:
                    self._succeeded_metric.inc(stats["succeeded"] - succeeded)
                    observe_many(self.metrics.e2e_latency, self._e2e_s)
                    self._e2e_s = []
        node.concurrency = min(hb.concurrency, MAX_NODE_CREDIT)
        node.running = hb.running
        kinds_full = hb.kinds_full  # with every ack batch: copied only when over the bound
        node.kinds_full = kinds_full if len(kinds_full) <= MAX_KINDS_PER_NODE \
            else tuple(kinds_full[:MAX_KINDS_PER_NODE])
        if node.kinds != frozenset(hb.kinds):
            node.kinds = self._bounded_kinds(node, hb.kinds)
            if len(self.kinds_announced) < MAX_KINDS_ANNOUNCED:
                self.kinds_announced |= node.kinds
        node.draining = hb.draining
        if hb.credit > MAX_NODE_CREDIT:
            self._warn.warning(("credit", node.key), "node %s (key %s) announced credit %d; "
                               "taken as %d (the most one node is given)", inert(node.node_id, 80),
                               node.key or "none", hb.credit, MAX_NODE_CREDIT)
        node.announced = min(hb.credit, MAX_NODE_CREDIT)
        node.frame_budget = self._frame_budget(hb)
        node.echoes = hb.max_message_bytes > 0  # a node of this protocol echoes frame numbers
        if hb.helper_incarnation == self.helper_incarnation:
            node.received = hb.received
            self._confirm(node, hb)
        else:
            node.received = 0
            if hb.held_task_ids:
                self._adopt(node, hb.held_task_ids)

    def _node_refusal(self, node_id: str, key: str, *, replacing: bool) -> tuple[str, str] | None:
        """Why a heartbeat may not create (or replace) the node `node_id` for `key`, or None."""
        if not replacing and len(self.nodes) >= self.settings.max_nodes:
            return ("max_nodes", f"the Helper tracks {len(self.nodes)} live nodes, its limit "
                                 f"(max_nodes={self.settings.max_nodes})")
        if key:  # on plain links there is no identity to count ids by
            held = self._ids_of_key.get(key, ())
            others = len(held) - (1 if node_id in held else 0)
            if others >= self.settings.max_node_ids_per_key:
                return ("ids_per_key", f"its key holds {others} other live node id(s), its limit "
                                       f"(max_node_ids_per_key="
                                       f"{self.settings.max_node_ids_per_key}); give every AI "
                                       "node a key of its own")
        return None

    def _refuse_batch(self, reason: str, node_id: str, key: str, why: str) -> None:
        self.metrics.acks_refused.labels(reason).inc()
        self._warn.warning(("refused", reason), "ack batch for node %s from key %s dropped: %s",
                           inert(node_id, 80), inert(key, 40) or "none", why)

    def _confirm(self, node: NodeLink, hb) -> None:  # noqa: ANN001 - wire.Heartbeat
        """Take off the ledger the frames the node has been seen to read, and queue again
        what they held that the node neither holds nor answered.

        A node that read a delivery lists it as held, or has sent its ack with this
        heartbeat or before it (on the same ordered channel, applied before this runs). So
        a delivery of a frame at or below the node's echoed frame number that is neither
        held nor answered never arrived: the frame was lost (dropped above the node's max
        message size, or with a broken connection), and frames behind it cannot overtake it.
        Nothing is charged to the delivery limit: the node did not die of it. A frame above
        the echo may still be on the way: it is never taken for lost here.
        An older node echoes no numbers (and announces no max message size): its `received`
        count confirms frames in order instead (the count held before frame numbers)."""
        frames = node.frames
        popped: list[SentFrame] = []
        if node.echoes:
            while frames and frames[0].seq <= hb.dispatch_seq:
                popped.append(frames.popleft())
        else:
            arrived = hb.received - node.base_received
            while frames and node.confirmed + len(frames[0].deliveries) <= arrived:
                frame = frames.popleft()
                node.confirmed += len(frame.deliveries)
                popped.append(frame)
        for frame in popped:
            node.outstanding -= len(frame.deliveries)
        if popped or not frames:
            self._reconcile(node, hb.held_task_ids, popped)

    def _reconcile(self, node: NodeLink, held, popped: list[SentFrame]) -> None:  # noqa: ANN001
        """Queue again the deliveries the node should hold and does not (see `_confirm`).
        The deliveries of the frames just confirmed that it neither holds nor answered never
        arrived ("not_received"). When no frame is left unconfirmed, the node has read
        everything we sent: any other delivery it no longer holds and never answered was
        lost on the way back, or dropped by the node ("not_held")."""
        if not node.inflight:
            return
        held_set = set(held)
        lost: dict[str, str] = {}
        for frame in popped:
            for task_id, delivery in frame.deliveries:
                if task_id not in held_set and node.inflight.get(task_id) == delivery:
                    lost[task_id] = "not_received"
        if not node.frames:
            for task_id in node.inflight:
                if task_id not in held_set:
                    lost.setdefault(task_id, "not_held")
        if not lost:
            return
        requeued = []
        for task_id, cause in lost.items():
            node.inflight.pop(task_id, None)
            entry = self.tasks.get(task_id)
            if entry is not None and not entry.terminal and entry.node_id == node.node_id:
                self.metrics.redeliveries.labels(cause).inc()
                self.enqueue(entry, front=True)
                requeued.append(f"{task_id}({cause})")
        if requeued:
            log.warning("node %s does not hold %d deliveries it never answered; queued again: "
                        "%s", inert(node.node_id, 80), len(requeued),
                        inert(" ".join(requeued), 2000))

    def _probe(self, node: NodeLink, now: float) -> None:
        """A frame has gone unconfirmed for `unconfirmed_after_s`: send a frame with no
        delivery behind it. Once the node echoes the probe's number, every earlier frame was
        read or is lost for good, and `_confirm` tells which: a lost frame is found without
        ever taking a delivery that is merely slow for a lost one. At most one probe per
        period; one that cannot be sent now is tried on a later tick.
        An older node does not echo: its frames unconfirmed that long are taken for lost
        (their deliveries not held are queued again; a slower one may then run twice, which
        the node's de-duplication window does not see across nodes)."""
        if now - node.probed_at < self.unconfirmed_after_s:
            return
        if not node.echoes:
            popped = []
            while node.frames and now - node.frames[0].sent_at > self.unconfirmed_after_s:
                frame = node.frames.popleft()
                node.outstanding -= len(frame.deliveries)
                popped.append(frame)
            node.probed_at = now
            self._reconcile(node, node.held, popped)
            return
        seq = self._frame_seq + 1
        if self._send(node.sock, wire.encode_dispatch_batch_raw([], b"", seq, self._tail)):
            self._frame_seq = seq
            node.frames.append(SentFrame(seq, now, []))
            node.probed_at = now

    def _adopt(self, node: NodeLink, held) -> None:  # noqa: ANN001
        """After our restart, a node still runs tasks we queued again: let it finish them."""
        for task_id in held:
            entry = self.tasks.get(task_id)
            if entry is None or entry.terminal or not entry.in_queue:
                continue
            self.pending.discard(entry)
            entry.state = wire.RUNNING
            entry.node_id = node.node_id
            entry.dispatched_at = time.monotonic()
            _add_holder(entry, node.key)
            node.inflight[task_id] = 0
            log.info("adopted task %s still held by node %s", inert(task_id, 80),
                     inert(node.node_id, 80))

    def _apply_ack(self, node: NodeLink, ack) -> None:  # noqa: ANN001 - wire.Ack
        task_id = ack.task_id  # read once: each read of a protobuf field makes a new str
        entry = self.tasks.get(task_id)
        kind = ack.kind
        if entry is None or entry.terminal:
            node.inflight.pop(task_id, None)
            if kind == wire.DONE and (entry is not None or task_id in self.retained
                                      or task_id in self.dead_letters):
                self.stats["duplicate_done"] += 1
            self.metrics.late_acks.inc()
            return
        if node.key not in entry.holders and entry.holders[:1] != (ANY_HOLDER,):
            # Never given to a node with this key: a node may not finish, fail or reject
            # another node's task.
            self.metrics.acks_not_holder.inc()
            self._warn.warning("not_holder", "ack for task %s from node %s (key %s) dropped: "
                               "the task was never sent to that key", inert(task_id, 80),
                               inert(node.node_id, 80), node.key or "none")
            return
        if kind == wire.DONE:
            # First DONE wins, whichever delivery it came from.
            self._release_delivery(entry)
            node.inflight.pop(task_id, None)
            entry.node_id = node.node_id
            if self.breakers is not None:
                self._record_outcome(entry, ack)
            self._succeed(entry, ack.result)
            return
        current = entry.node_id == node.node_id and (
            ack.delivery == entry.delivery or node.inflight.get(task_id) == 0)
        if kind == wire.STARTED:
            if current and entry.state == wire.DISPATCHED:
                entry.state = wire.RUNNING
            return
        error = ack.error[:MAX_ERROR_CHARS]
        if not current:
            self.stats["late_acks"] += 1
            self.metrics.late_acks.inc()
            return
        node.inflight.pop(ack.task_id, None)
        if kind == wire.FAILED and ack.error_class == wire.CANCELLED_RUN:
            # The node stopped a run we asked it to stop; normally the task is CANCELLED here
            # already (then this ack is late, above). Never retried.
            self._cancelled(entry)
            return
        if kind == wire.FAILED:
            self._record_outcome(entry, ack)
            if ack.lost:
                entry.remember("lost", error, node.node_id)
                self._lost_in_child(entry, error)
                return
            entry.remember("failed", error, node.node_id, entry.attempt)
            decision = self.retry_policy.decide(entry.attempt, entry.max_attempts,
                                                ack.error_class, ack.retry_after_ms, self._rng)
            entry.error = error
            if ack.error_class == wire.TIMEOUT:
                self.metrics.timeouts.labels("run").inc()
            if not decision.retry:
                self._dead(entry, decision.dead_reason, error)
                return
            entry.attempt += 1
            self.metrics.retries.inc()
            self._schedule_retry(entry, decision.delay_s)
            return
        if kind == wire.REJECTED:
            cause = wire.error_class_name(ack.error_class).lower()
            if ack.error_class == wire.UNKNOWN_TASK_KIND:
                node.kinds = node.kinds - {entry.kind}
            elif ack.error_class == wire.MALFORMED:
                self._dead(entry, wire.PAYLOAD_REJECTED, error)
                return
            self.metrics.redeliveries.labels(cause).inc()
            self.enqueue(entry, front=True)

    def _lost_in_child(self, entry: TaskEntry, error: str) -> None:
        """The run's child process died under it (the node lives on): a lost delivery, as if
        its node had died while it ran, not an attempt. Queued again at the front, or DEAD
        (DELIVERY_LIMIT) at the poison-pill bound."""
        entry.lost_deliveries += 1
        entry.error = error
        if entry.lost_deliveries >= self.settings.max_lost_deliveries:
            self._dead(entry, wire.DELIVERY_LIMIT,
                       f"{entry.lost_deliveries} deliveries died with their process (last on "
                       f"node {inert(entry.node_id, 80)}: {error}); treated as a poison pill")
            return
        self._append(records.TRANSITION, entry.task_id.encode(), wire.encode_record(
            wire.TransitionRecord(task_id=entry.task_id, state=wire.QUEUED,
                                  attempts=entry.attempt, error=error,
                                  deliveries=entry.lost_deliveries)))
        self.metrics.redeliveries.labels("child_died").inc()
        self.enqueue(entry, front=True)

    # ---- cancel and the operators' view ------------------------------------------------

    def cancel(self, task_id: str):  # noqa: ANN201 - wire.CancelResult
        """Cancel one task: NOT_FOUND, ALREADY_FINISHED (terminal: nothing changes), or OK:
        it is CANCELLED now (journaled; the caller syncs before answering), and if a node
        holds it, the node is told to stop the run. Its ack for that run, whatever it says,
        then finds a terminal task and is dropped: a cancelled task is never retried."""
        entry = self.tasks.get(task_id)
        if entry is None:
            if task_id in self.retained:
                return wire.CancelResult(task_id=task_id, code=wire.ALREADY_FINISHED,
                                         state=wire.SUCCEEDED)
            if task_id in self.dead_letters:
                return wire.CancelResult(task_id=task_id, code=wire.ALREADY_FINISHED,
                                         state=wire.DEAD)
            return wire.CancelResult(task_id=task_id, code=wire.NOT_FOUND)
        if entry.terminal:
            return wire.CancelResult(task_id=task_id, code=wire.ALREADY_FINISHED,
                                     state=entry.state)
        node = self.nodes.get(entry.node_id) if entry.node_id else None
        was_running = node is not None and task_id in node.inflight
        self._cancelled(entry)
        if was_running:
            self._send(node.sock, wire.encode_cancel_batch([task_id], self.reply_to,
                                                           self.helper_incarnation, self.group,
                                                           self.group_epoch))
        return wire.CancelResult(task_id=task_id, code=wire.OK, state=wire.CANCELLED,
                                 was_running=was_running)

    def _cancelled(self, entry: TaskEntry) -> None:
        """Record the task CANCELLED (terminal, not retried); its payload is dropped."""
        self.pending.discard(entry)
        self._release_delivery(entry)
        finished_ns = time.time_ns()
        self._append(records.TRANSITION, entry.task_id.encode(), wire.encode_record(
            wire.TransitionRecord(task_id=entry.task_id, state=wire.CANCELLED,
                                  attempts=entry.attempt, at_ns=finished_ns,
                                  deliveries=entry.lost_deliveries, node_id=entry.node_id)))
        entry.state = wire.CANCELLED
        entry.finished_ns = finished_ns
        entry.task = None
        entry.encoded = b""
        self.stats["cancelled"] += 1
        self.metrics.outcomes.labels("cancelled").inc()
        self._finish(entry)

    def nodes_view(self):  # noqa: ANN201 - wire.NodesReply
        """The nodes, the queue by kind, the rate limits (held back or not) and the circuit
        breakers as this Helper sees them now."""
        now = time.monotonic()
        reply = wire.NodesReply()
        for node in self.nodes.values():
            reply.nodes.append(wire.NodeInfo(
                node_id=node.node_id, endpoint=node.endpoint,
                state="draining" if node.draining else "alive", credit=node.announced,
                concurrency=node.concurrency, held=len(node.held), running=node.running,
                version=node.version, last_beat_age_ms=int((now - node.last_heard) * 1000),
                inflight=len(node.inflight), kinds=sorted(node.kinds)))
        for kind, (depth, oldest) in sorted(self.pending.depth_by_kind().items()):
            reply.queues.append(wire.KindQueue(kind=kind, depth=depth,
                                               oldest_age_ms=int((now - oldest) * 1000)))
        reply.retry_waiting = len(self.retry_waiting)
        limits = self.rate_limits
        held = set(limits.throttled())
        for kind in limits.kinds:
            share, whole = limits.share(kind), limits.limit(kind)
            reply.rate_limits.append(wire.RateLimitInfo(
                kind=kind, per_s=share.per_s, burst=share.burst, limit_per_s=whole.per_s,
                held=kind in held))
        if self.breakers is not None:
            for info in self.breakers.snapshot(now):
                reply.circuits.append(wire.CircuitInfo(
                    name=info.name, scope=info.scope, state=info.state.value,
                    failures=info.failures, calls=info.calls,
                    probe_in_ms=max(0, int((info.reopen_at - now) * 1000))
                    if info.reopen_at else 0))
        return reply

    def _release_delivery(self, entry: TaskEntry) -> None:
        node = self.nodes.get(entry.node_id)
        if node is not None:
            node.inflight.pop(entry.task_id, None)

    # ---- terminal states ---------------------------------------------------------------

    def _succeed(self, entry: TaskEntry, result: bytes) -> None:
        """Record the task SUCCEEDED with `result`. The record is written first: a result too
        large for a journal record makes the task DEAD (PAYLOAD_REJECTED) instead, with both
        sizes in its error; nothing of it raises out of the ack path."""
        finished_ns = time.time_ns()
        key = entry.task_id.encode()
        record = wire.encode_record(wire.TaskRecord(
            task=wire.Task(task_id=entry.task_id, kind=entry.kind, priority=entry.priority,
                           submitted_ns=entry.submitted_ns,
                           idempotency_key=entry.idempotency_key),
            state=wire.SUCCEEDED, attempts=entry.attempt, deliveries=entry.lost_deliveries,
            result=result, error=entry.error, finished_ns=finished_ns, node_id=entry.node_id,
            history=entry.history))
        try:
            self._append(records.TASK, key, record)
        except ValueError as exc:  # the journal's record size check
            limit = (f"{self.record_limit_bytes} bytes" if self.record_limit_bytes
                     else "its limit")
            self._dead(entry, wire.PAYLOAD_REJECTED,
                       f"the result of {len(result)} bytes from node {inert(entry.node_id, 80)} "
                       f"does not fit the Helper's journal record limit of {limit} "
                       f"({exc}); return smaller results (store large ones elsewhere and "
                       "return a reference)")
            return
        # A DONE can overtake the task's own bookkeeping: after our restart the task is queued
        # again while a node still finishes it, or a retry waits while an earlier delivery's
        # DONE comes in. Out of the queue with it, or it is dispatched again with no payload.
        self.pending.discard(entry)
        entry.state = wire.SUCCEEDED
        entry.result = result
        # Kept for status and result queries only: drop the task and its payload (dead tasks
        # keep theirs, an operator may replay them).
        entry.task = None
        entry.encoded = b""
        entry.finished_ns = finished_ns
        if self.tasks.get(entry.task_id) is entry:
            del self.tasks[entry.task_id]
        self._release(key)
        self._retain(entry.task_id, record, self._segment(), entry.deliveries)
        self.stats["succeeded"] += 1  # the outcomes metric follows once per batch (on_ack_batch)
        self._e2e_s.append(max(0.0, time.monotonic() - entry.accepted_at))  # by on_ack_batch
        self._finish(entry)

    def _dead(self, entry: TaskEntry, reason: int, error: str) -> None:
        self.pending.discard(entry)
        self._release_delivery(entry)
        entry.state = wire.DEAD
        entry.dead_reason = reason
        entry.error = error
        entry.finished_ns = time.time_ns()
        self._append(records.TRANSITION, entry.task_id.encode(), wire.encode_record(
            wire.TransitionRecord(task_id=entry.task_id, state=wire.DEAD,
                                  attempts=entry.attempt, error=error, dead_reason=reason,
                                  at_ns=entry.finished_ns, deliveries=entry.lost_deliveries,
                                  node_id=entry.node_id)))
        reason_name = wire.dead_reason_name(reason)
        self.stats["dead"] += 1
        self.metrics.outcomes.labels("dead").inc()
        self.metrics.dead.labels(reason_name).inc()
        log.warning("task %s (%s) is dead: %s: %s", inert(entry.task_id, 80),
                    inert(entry.kind, 60), reason_name, inert(error, 500))
        self._on_event("task_dead", {"task_id": inert(entry.task_id, 80),
                                     "kind": inert(entry.kind, 60), "reason": reason_name,
                                     "error": inert(error, 500)})
        self.dead_letters.add(entry.task_id, dead_letter_size(entry))
        self._bury(entry)
        self._finish(entry)
        self._evict_dead()

    def _bury(self, entry: TaskEntry) -> None:
        """A dead task leaves the table (and the heap) for the dead-letter store: its full
        record, the task as submitted included, behind the count of its deliveries. Its key
        stays live in the journal until it is purged, replayed or evicted."""
        if self.tasks.get(entry.task_id) is entry:
            del self.tasks[entry.task_id]
        self.dead.put(entry.task_id, _SENT.pack(min(entry.deliveries, 0xFFFF_FFFF))
                      + wire.encode_record(entry.record()))

    def _evict_dead(self) -> None:
        """Forget the oldest dead letters past their bounds, for good (see mesh/deadletter.py)."""
        evicted = 0
        for task_id in self.dead_letters.overflow():
            if not self.dead.remove(task_id):
                continue
            self._forget(task_id)
            evicted += 1
        if evicted:
            self.stats["dead_evicted"] += evicted
            self.metrics.dead_letters_evicted.inc(evicted)

    def _finish(self, entry: TaskEntry) -> None:
        if entry.state == wire.CANCELLED:  # rare: kept in the table, bounded apart
            self.finished.append(entry.task_id)
            self._evict_cancelled()
        waiters = self._waiters.pop(entry.task_id, None)
        if waiters:
            for waiter in waiters:
                waiter(entry)

    def _retain(self, task_id: str, record: bytes, segment: int, deliveries: int = 0) -> None:
        """A succeeded task's self-contained record (journaled in `segment`, its key released)
        goes to the retained store, behind the count of its deliveries (for its status; the
        journal keeps only the lost ones); the oldest past retention are evicted."""
        self.retained.put(task_id, _SENT.pack(min(deliveries, 0xFFFF_FFFF)) + record, segment)
        if self._floor is None:
            self._floor = segment
            self._keep_from(segment)
        self._evict()

    def _evict(self) -> None:
        """Forget the oldest succeeded tasks past retention (dead ones stay for operators), and
        let the journal drop segments older than the oldest retained result's record. No FORGET
        record: an evicted result the journal still holds is evicted again after a restart."""
        limit = self.settings.max_retained_results
        retained = self.retained
        if len(retained) <= limit:
            return
        floor = self._floor
        while len(retained) > limit:
            popped = retained.pop_oldest()
            if popped is None:
                break
            # Tags grow from oldest to newest: the evicted one's is a floor that may keep a
            # segment a little longer than needed, never shorter; one read less per eviction.
            floor = popped[1]
        if floor != self._floor:
            self._floor = floor
            self._keep_from(floor)

    def find(self, task_id: str) -> TaskEntry | None:
        """The task, live or retained (a retained one is a snapshot read from the store:
        changing it changes nothing)."""
        entry = self.tasks.get(task_id)
        if entry is not None:
            return entry
        stored = self.retained.get(task_id)
        if stored is None:
            return self.dead_letter(task_id)
        entry = _entry_of_record(wire.decode_task_record(stored[_SENT.size:]), 0,
                                 self.settings.max_attempts)
        entry.deliveries = _SENT.unpack_from(stored)[0]
        return entry

    def revive(self, entry: TaskEntry) -> None:
        """A dead letter replayed by an operator (`mesh.deadletter.replay`): back in the table,
        as the newest task, out of the dead-letter store."""
        self.dead.remove(entry.task_id)
        self._seq += 1
        entry.seq = self._seq
        entry.accepted_at = time.monotonic()
        self.tasks[entry.task_id] = entry

    def dead_letter(self, task_id: str) -> TaskEntry | None:
        """A dead letter, read from its store (a snapshot: `mesh.deadletter` replays or purges
        it through the dispatcher), or None."""
        stored = self.dead.get(task_id)
        if stored is None:
            return None
        rec = wire.decode_task_record(stored[_SENT.size:])
        entry = _entry_of_record(rec, 0, self._kind_attempts(rec.task.kind))
        entry.deliveries = _SENT.unpack_from(stored)[0]
        return entry

    def _evict_cancelled(self) -> None:
        """Forget the oldest cancelled tasks past `max_retained_results` of them (they stay in
        the table with a live key each, as they are few; succeeded ones are in `retained`)."""
        limit = self.settings.max_retained_results
        while len(self.finished) > limit:
            task_id = self.finished.popleft()
            entry = self.tasks.get(task_id)
            if entry is not None and entry.state == wire.CANCELLED:
                del self.tasks[task_id]
                self._forget(task_id)

    def journal_record(self, record_type: int, task_id: str, message) -> None:  # noqa: ANN001
        self._append(record_type, task_id.encode(), wire.encode_record(message))

    def forget(self, task_id: str) -> None:
        self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        key = task_id.encode()
        self._append(records.FORGET, key, b"")
        self._release(key)

    def _schedule_retry(self, entry: TaskEntry, delay_s: float) -> None:
        entry.state = wire.QUEUED
        entry.node_id = ""
        entry.not_before = time.monotonic() + delay_s
        self._append(records.TRANSITION, entry.task_id.encode(), wire.encode_record(
            wire.TransitionRecord(task_id=entry.task_id, state=wire.QUEUED,
                                  attempts=entry.attempt, error=entry.error, at_ns=time.time_ns(),
                                  not_before_ns=time.time_ns() + int(delay_s * 1e9),
                                  deliveries=entry.lost_deliveries)))
        if delay_s <= 0:
            entry.not_before = 0.0
            self.enqueue(entry)
        else:
            self.retry_waiting.append(entry)

    # ---- waiting for results -----------------------------------------------------------

    def add_waiter(self, task_id: str, callback: Callable[[TaskEntry], None]) -> None:
        self._waiters.setdefault(task_id, []).append(callback)

    def remove_waiter(self, task_id: str, callback: Callable[[TaskEntry], None]) -> None:
        waiters = self._waiters.get(task_id)
        if waiters and callback in waiters:
            waiters.remove(callback)
            if not waiters:
                del self._waiters[task_id]

    # ---- nodes -------------------------------------------------------------------------

    def node_dead(self, node: NodeLink, cause: str) -> None:
        """Re-queue every delivery the node held, at the front; close its socket at once."""
        if self.nodes.get(node.node_id) is node:
            del self.nodes[node.node_id]
            held = self._ids_of_key.get(node.key)
            if held is not None:
                held.discard(node.node_id)  # the binding of its id to its key ends here
                if not held:
                    del self._ids_of_key[node.key]
        self._close(node.sock)
        self.metrics.node_deaths.labels(cause).inc()
        self.metrics.nodes_alive.set(len(self.nodes))
        requeued: list[str] = []
        for task_id in list(node.inflight):
            entry = self.tasks.get(task_id)
            if entry is None or entry.terminal or entry.node_id != node.node_id:
                continue
            if entry.state == wire.RUNNING:
                # It was running when the node died: it may be what killed it.
                entry.lost_deliveries += 1
                entry.remember("lost", f"node died ({cause}) while running it", node.node_id)
                if entry.lost_deliveries >= self.settings.max_lost_deliveries:
                    self._dead(entry, wire.DELIVERY_LIMIT,
                               f"{entry.lost_deliveries} deliveries died with their node "
                               f"(last: {inert(node.node_id, 80)}); treated as a poison pill")
                    continue
                self._append(records.TRANSITION, entry.task_id.encode(), wire.encode_record(
                    wire.TransitionRecord(task_id=entry.task_id, state=wire.QUEUED,
                                          attempts=entry.attempt,
                                          deliveries=entry.lost_deliveries)))
            self.metrics.redeliveries.labels("node_" + cause).inc()
            self.enqueue(entry, front=True)
            requeued.append(task_id)
        node.inflight.clear()
        if node.draining:
            # It announced its drain in its heartbeats (SIGTERM, e.g. a rolling deploy): its
            # going away is expected, so an INFO mesh.node.left, not an ERROR mesh.node.down.
            log.info("node %s left after draining (%s); %d deliveries re-queued: %s",
                     inert(node.node_id, 80), cause, len(requeued),
                     inert(" ".join(requeued), 2000))
            self._on_event("node_left", {"node_id": inert(node.node_id, 80), "cause": cause,
                                         "requeued": len(requeued)})
            return
        log.warning("node %s declared dead (%s); %d deliveries re-queued: %s",
                    inert(node.node_id, 80), cause, len(requeued),
                    inert(" ".join(requeued), 2000))
        self._on_event("node_down", {"node_id": inert(node.node_id, 80), "cause": cause,
                                     "requeued": len(requeued)})

    def node_gone(self, node_id: str, cause: str = "discovery", incarnation: int = 0) -> None:
        """Discovery says the node (that incarnation of it, when given) is gone or critical."""
        node = self.nodes.get(node_id)
        if node is not None and (not incarnation or node.incarnation == incarnation):
            if node.draining:
                # A draining node leaves discovery while it still finishes and hands back its
                # tasks (acks on the way): its heartbeats, not discovery, say when it is gone.
                # Declaring it dead here would run its tasks twice and charge them a lost
                # delivery (poison-pill count).
                return
            self.node_dead(node, cause)

    # ---- timers ------------------------------------------------------------------------

    def tick(self) -> None:
        """Called every ~50-100 ms: liveness, ack timeouts, due retries, unroutable kinds."""
        now = time.monotonic()
        dead_after = self.settings.node_dead_after_s
        for node in list(self.nodes.values()):
            if now - node.last_heard > dead_after:
                self.node_dead(node, "missed_heartbeats")
        ack_timeout = self.settings.ack_timeout_s
        for node in self.nodes.values():
            stale = [tid for tid, _ in node.inflight.items()
                     if (e := self.tasks.get(tid)) is not None and e.state == wire.DISPATCHED
                     and now - e.dispatched_at > ack_timeout]
            held = set(node.held) if stale else ()
            for task_id in stale:
                if task_id in held and (node.running >= node.concurrency
                                        or self.tasks[task_id].kind in node.kinds_full):
                    # Waiting for a slot on a busy live node is progress, not a lost delivery.
                    # A node with free slots that holds a task and does not start it is not
                    # making progress with it: send it again (the first DONE wins).
                    self.tasks[task_id].dispatched_at = now
                    continue
                node.inflight.pop(task_id, None)
                self.metrics.redeliveries.labels("ack_timeout").inc()
                self.metrics.timeouts.labels("ack").inc()
                log.info("task %s sent again: no STARTED from node %s within the ack timeout",
                         inert(task_id, 80), inert(node.node_id, 80))
                self.enqueue(self.tasks[task_id], front=True)
            if node.frames and now - node.frames[0].sent_at > self.unconfirmed_after_s:
                self._probe(node, now)
        if self.retry_waiting:
            due = [e for e in self.retry_waiting if e.not_before <= now or e.terminal]
            if due:
                self.retry_waiting = [e for e in self.retry_waiting
                                      if e.not_before > now and not e.terminal]
                for entry in due:
                    if not entry.terminal:  # a late DONE may have finished it meanwhile
                        entry.not_before = 0.0
                        self.enqueue(entry)
        self._check_unroutable(now)
        if (self.pending and (not self.nodes or self.held_back)
                and now >= self._expiry_sweep_at):
            self._expire_queued(now)

    def _expire_queued(self, now: float) -> None:
        """No node is up, or kinds are held back (breaker open, rate limited), so no dispatch
        checks those tasks' deadlines: once a second, dead-letter the queued tasks whose
        deadline passed (EXPIRED), so they do not show QUEUED until they are picked."""
        self._expiry_sweep_at = now + 1.0
        now_ns = time.time_ns()
        held = None if not self.nodes else self.held_back
        for entry in self.pending.take(lambda e: 0 < e.task.deadline_ns < now_ns
                                       and (held is None or e.kind in held)):
            self._dead(entry, wire.EXPIRED, f"deadline passed "
                       f"{(now_ns - entry.task.deadline_ns) / 1e9:.3f}s before start "
                       "(no AI node was up)")

    def _check_unroutable(self, now: float) -> None:
        if not self.nodes:
            self.unroutable_since.clear()
            return
        served: set[str] = set()
        for node in self.nodes.values():
            served |= node.kinds
        for kind in self.pending.kinds():
            if kind in served:
                self.unroutable_since.pop(kind, None)
                continue
            since = self.unroutable_since.setdefault(kind, now)
            if now - since >= self.settings.unroutable_grace_s:
                del self.unroutable_since[kind]
                known = ", ".join(sorted(served)) or "none"
                for entry in self.pending.drain_kind(kind):
                    self._dead(entry, wire.UNKNOWN_KIND,
                               f"no AI node serves task kind {inert(kind, 60)!r} (served kinds: "
                               f"{inert(known, 500)})")

    def update_gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set(len(self.pending))
        m.queue_bytes.set(self.pending.size_bytes)
        m.retry_waiting.set(len(self.retry_waiting))
        m.inflight.set(sum(len(n.inflight) for n in self.nodes.values()))
        oldest = self.pending.oldest_queued_at()
        m.oldest_pending_age.set(0.0 if oldest is None else time.monotonic() - oldest)
        m.dead_letters.set(len(self.dead_letters))
        m.dead_letter_bytes.set(self.dead_letters.size_bytes)
        limits = self.rate_limits
        if limits.kinds:
            now = time.monotonic()
            queued = set(self.pending.kinds())
            for kind in limits.throttled():
                if kind not in queued:
                    limits.idle(kind, now)  # nothing waits any more: not throttled
            for kind, seconds in limits.drain_throttled_s(now).items():
                m.rate_limited.labels(kind).inc(seconds)

    def policy_stats(self) -> dict[str, float]:
        """Breaker states (0 closed, 1 half-open, 2 open) and rate limits for `mesh stats`:
        `circuit.SCOPE.NAME`, `rate_limit_per_s.KIND` (this Helper's share), `throttled.KIND`
        (1 while held back by its rate limit)."""
        out: dict[str, float] = {}
        now = time.monotonic()
        if self.breakers is not None:
            for info in self.breakers.snapshot(now):
                out[f"circuit.{info.scope}.{info.name}"] = float(CIRCUIT_STATE_VALUE[info.state])
        throttled = set(self.rate_limits.throttled())
        for kind in self.rate_limits.kinds:
            out[f"rate_limit_per_s.{kind}"] = self.rate_limits.share(kind).per_s
            out[f"throttled.{kind}"] = 1.0 if kind in throttled else 0.0
        return out

    # ---- recovery ----------------------------------------------------------------------

    def replay(self, record) -> None:  # noqa: ANN001 - journal Record
        """Apply one journal record during recovery (records come oldest first)."""
        if record.type == records.TASK:
            rec = wire.decode_task_record(record.payload)
            self._seq += 1
            if rec.state == wire.SUCCEEDED:  # a retained result (self-contained): key released
                self.tasks.pop(rec.task.task_id, None)
                self.retained.put(rec.task.task_id, _SENT.pack(0) + record.payload,
                                  self._segment())
                self._release(record.key)
                return
            self.retained.remove(rec.task.task_id)
            entry = _entry_of_record(rec, self._seq, self._kind_attempts(rec.task.kind))
            self.tasks[entry.task_id] = entry
        elif record.type == records.TRANSITION:
            rec = wire.decode_transition_record(record.payload)
            entry = self.tasks.get(rec.task_id)
            if entry is None:
                if rec.task_id not in self.retained:
                    self._release(record.key)  # its task was forgotten; compaction may drop it
                return
            if rec.error and (rec.state == wire.QUEUED or rec.dead_reason in (
                    wire.ATTEMPTS_EXHAUSTED, wire.FATAL_ERROR)):
                # a retry or the last failure: the failed attempts, as `_apply_ack` noted them
                # (a lost delivery's note is kept only by a rewrite, TaskRecord.history)
                item = wire.Attempt(attempt=max(rec.attempts - (rec.state == wire.QUEUED), 1),
                                    error=rec.error, at_ns=rec.at_ns, outcome="failed")
                entry.history = (*entry.history[-(MAX_HISTORY - 1):], item)
            entry.state = rec.state
            entry.attempt = rec.attempts or entry.attempt
            entry.lost_deliveries = rec.deliveries
            if rec.state == wire.SUCCEEDED:
                entry.result = rec.result
            entry.error = rec.error or entry.error
            entry.dead_reason = rec.dead_reason
            entry.finished_ns = rec.at_ns if entry.terminal else 0
            entry.node_id = rec.node_id
            entry.not_before = _monotonic_from_wall(rec.not_before_ns)
            if entry.state == wire.SUCCEEDED:  # older format: out of the heap at once, and
                self.tasks.pop(entry.task_id)  # rewritten self-contained by finish_replay
                entry.task = None
                self.retained.put(entry.task_id,
                                  _SENT.pack(0) + wire.encode_record(entry.record()),
                                  self._segment())
                self._migrate.append(entry.task_id)
        elif record.type == records.FORGET:
            self.tasks.pop(record.key.decode(), None)
            self.retained.remove(record.key.decode())
            self.dead.remove(record.key.decode())
            self.dead_letters.remove(record.key.decode())
            self._release(record.key)

    def finish_replay(self) -> dict[str, int]:
        """Queue every task that is not terminal; rebuild retention. Returns counts."""
        counts = {"queued": 0, "succeeded": 0, "dead": 0, "cancelled": 0}
        live = sorted(self.tasks.values(), key=lambda e: e.seq)
        for entry in live:
            if entry.state == wire.CANCELLED:
                entry.task = None
                entry.encoded = b""
                self.finished.append(entry.task_id)
                counts["cancelled"] += 1
            elif entry.state == wire.DEAD:
                counts["dead"] += 1
            else:
                entry.state = wire.QUEUED
                entry.node_id = ""
                # Which node held it before the restart is not journaled: a node finishing it
                # now may be any ai-node key (as adoption lets any node claim what it holds).
                entry.holders = (ANY_HOLDER,)
                if entry.not_before > time.monotonic():
                    self.retry_waiting.append(entry)
                else:
                    entry.not_before = 0.0
                    self.enqueue(entry)
                counts["queued"] += 1
        self._evict()
        self._evict_cancelled()
        self._migrate_retained()
        counts["succeeded"] = len(self.retained)
        self._floor = self.retained.oldest_tag()
        self._keep_from(self._floor)
        for entry in sorted((e for e in live if e.state == wire.DEAD),
                            key=lambda e: e.finished_ns):
            self.dead_letters.add(entry.task_id, dead_letter_size(entry))
            self._bury(entry)
        self._evict_dead()
        if counts["queued"]:
            self.reconcile_until = time.monotonic() + self.settings.reconcile_window_s
        return counts

    def _migrate_retained(self) -> None:
        """Results replayed from the older format (a SUCCEEDED transition) are journaled again
        as one self-contained record each, and their keys released (see `_retain`)."""
        migrate, self._migrate = self._migrate, []
        for task_id in migrate:
            stored = self.retained.get(task_id)
            if stored is None:
                continue
            key = task_id.encode()
            self._append(records.TASK, key, stored[_SENT.size:])
            self._release(key)
            self.retained.put(task_id, stored, self._segment())

    def key_is_live(self, key: bytes) -> bool:
        """Whether the journal must keep `key`'s records: a task of the table or a dead letter.
        (A retained result's key is released: its segment is kept instead.)"""
        task_id = key.decode("utf-8", "surrogatepass")
        return task_id in self.tasks or task_id in self.dead_letters

    def snapshot_records(self) -> list[tuple[int, bytes, bytes]]:
        """(type, key, payload) records that replay to every task this Helper knows: the
        retained results (oldest first, so a replay keeps the same ones past retention), the
        dead letters (in order of death), then the tasks of the table. A Helper group's leader
        sends them to a follower whose log must be replaced (a snapshot): the table alone is
        not enough, since succeeded and dead tasks leave it for their stores, and a follower
        reset without them would answer them unknown once it leads."""
        out: list[tuple[int, bytes, bytes]] = []
        for task_id in list(self.retained.task_ids()):
            stored = self.retained.get(task_id)
            if stored is not None:
                out.append((records.TASK, task_id.encode(), stored[_SENT.size:]))
        for task_id in self.dead_letters:
            stored = self.dead.get(task_id)
            if stored is not None:
                out.append((records.TASK, task_id.encode(), stored[_SENT.size:]))
        for task_id in list(self.tasks):
            key = task_id.encode()
            for type_, payload in self.rewrite(key):
                out.append((type_, key, payload))
        return out

    def rewrite(self, key: bytes) -> list[tuple[int, bytes]]:
        """The full state of one live task, for journal compaction."""
        entry = self.tasks.get(key.decode())
        if entry is None:
            stored = self.retained.get(key.decode())
            if stored is None:
                stored = self.dead.get(key.decode())
            return [] if stored is None else [(records.TASK, stored[_SENT.size:])]
        return [(records.TASK, wire.encode_record(entry.record()))]


def _entry_of_record(rec, seq: int, max_attempts: int) -> TaskEntry:  # noqa: ANN001
    """A TaskEntry from a journal TaskRecord (recovery; a retained task's snapshot)."""
    entry = TaskEntry.of(rec.task, seq, max_attempts)
    entry.state = rec.state or wire.QUEUED
    entry.attempt = rec.attempts or 1
    entry.lost_deliveries = rec.deliveries
    entry.result = rec.result
    entry.error = rec.error
    entry.dead_reason = rec.dead_reason
    entry.finished_ns = rec.finished_ns
    entry.node_id = rec.node_id
    entry.not_before = _monotonic_from_wall(rec.not_before_ns)
    entry.history = tuple(rec.history)
    entry.replays = rec.replays
    if entry.state == wire.SUCCEEDED:
        entry.task = None
        entry.encoded = b""
    return entry


def _monotonic_from_wall(wall_ns: int) -> float:
    if not wall_ns:
        return 0.0
    return time.monotonic() + (wall_ns - time.time_ns()) / 1e9



def _add_holder(entry: TaskEntry, key: str) -> None:
    """Remember that a node with `key` was given the task (the most recent MAX_HOLDER_KEYS)."""
    holders = entry.holders
    if key not in holders:
        if holders[:1] == (ANY_HOLDER,):
            entry.holders = (ANY_HOLDER, *holders[1:][-(MAX_HOLDER_KEYS - 2):], key)
        else:
            entry.holders = (*holders[-(MAX_HOLDER_KEYS - 1):], key)
