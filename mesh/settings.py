"""Typed, frozen settings for every mesh object, validated once at construction.

Units are in the names. `mesh` never reads the environment: `nodes/config.py` builds these from
flags, files and env, and tests build them directly.
"""

from __future__ import annotations

import msgspec

from mesh.errors import ConfigError

FSYNC_POLICIES = ("always", "batch", "interval", "none")
BREAKER_MODES = ("off", "dependency", "all")
#: how long a Client waits for a Helper's answer unless told otherwise (issue 12: a submit to a
#: Helper that is down must not hang; 3 s is the gateway's figure too)
DEFAULT_TIMEOUT_S = 3.0
#: the values of `mesh ai --executor` ("" or "async" is the default: see mesh/executors)
EXECUTORS = ("async", "thread", "process")


class HelperSettings(msgspec.Struct, frozen=True, kw_only=True):
    #: stable name of this Helper (survives restarts; the journal belongs to it)
    helper_id: str
    #: directory of the journal and the Helper's small state file
    data_dir: str
    #: ROUTER endpoint clients submit to; port 0 picks a free port (reused on restart)
    intake_endpoint: str = "tcp://127.0.0.1:0"
    #: PULL endpoint AI nodes send acks and heartbeats to; port 0 picks a free port (reused on restart)
    ack_endpoint: str = "tcp://127.0.0.1:0"
    #: journal fsync policy: always | batch (group commit) | interval | none
    fsync_policy: str = "batch"
    fsync_interval_ms: int = 5
    journal_segment_bytes: int = 32 * 2**20
    #: largest task payload accepted
    max_payload_bytes: int = 1 * 2**20
    #: bound of the pending queue (queued, not yet dispatched) by count and by payload bytes
    max_pending_tasks: int = 200_000
    max_pending_bytes: int = 512 * 2**20
    #: default attempts per task (a task may carry its own)
    max_attempts: int = 3
    #: attempts per task kind, overriding `max_attempts` (a task's own still wins)
    kind_max_attempts: dict[str, int] = msgspec.field(default_factory=dict)
    #: retry backoff: full jitter over base * 2**(attempt-1), capped
    retry_base_s: float = 1.0
    retry_cap_s: float = 30.0
    #: deliveries lost with a dying node before a task is a poison pill (DEAD, DELIVERY_LIMIT)
    max_lost_deliveries: int = 3
    #: a node unheard for this long is declared dead and its deliveries go elsewhere
    node_dead_after_s: float = 2.0
    #: a delivery with no STARTED (nor held in the node's heartbeat) after this is sent again
    ack_timeout_s: float = 10.0
    #: a task no live node serves for this long goes DEAD (UNKNOWN_KIND)
    unroutable_grace_s: float = 30.0
    #: refuse a submit (INVALID_TASK) for a kind no AI node has announced in a heartbeat since
    #: this Helper started, instead of accepting it to wait unroutable_grace_s before DEAD;
    #: from node_dead_after_s after the start on (before, live nodes may not have spoken yet)
    refuse_unknown_kinds: bool = False
    #: after a restart, wait this long for nodes to report what they still hold before resending
    reconcile_window_s: float = 1.0
    #: finished tasks kept for status/result queries (count, then oldest forgotten)
    max_retained_results: int = 100_000
    #: most deliveries in one DispatchBatch
    dispatch_batch_max: int = 64
    #: send a task to a node while its journal record is still being synced (the submitter still
    #: hears "accepted" only after the sync); see docs/decisions/004-dispatch-during-sync.md
    dispatch_before_sync: bool = False
    #: publish a queue alert when queued tasks reach this fraction of max_pending_tasks
    queue_alert_fraction: float = 0.8
    #: strict priority, except every Nth pick goes to the lane whose head waited longest
    priority_aging_every: int = 8
    #: admission limits besides max_payload_bytes (see mesh/admission.py); the task id is
    #: bounded by the journal's key limit (255 UTF-8 bytes), not by a setting
    max_kind_bytes: int = 255
    max_headers: int = 64
    max_header_bytes: int = 64 * 2**10
    max_idempotency_key_bytes: int = 1024
    min_priority: int = -1000
    max_priority: int = 1000
    #: dead letters kept, by count and by bytes (task + error); past either bound the oldest
    #: dead letter is forgotten for good (journaled, counted, alerted)
    max_dead_letters: int = 10_000
    max_dead_letter_bytes: int = 64 * 2**20
    #: result long-polls held at once, in all and per client connection; a longer wait is cut
    #: to max_result_wait_s (the client then sees the task not terminal yet and asks again)
    max_result_waiters: int = 50_000
    max_result_waiters_per_client: int = 5_000
    max_result_wait_s: float = 600.0
    #: task ids in one status request (duplicates count once) and bytes of one reply
    max_status_ids: int = 1000
    max_reply_bytes: int = 16 * 2**20
    #: bytes of large replies a client may leave unread before more large ones are refused
    max_unread_reply_bytes: int = 64 * 2**20
    #: live AI nodes (node ids) tracked at once, each with a PUSH socket; a heartbeat naming a
    #: new node id beyond it is dropped (and counted), so forged ids cannot grow the table
    max_nodes: int = 256
    #: live node ids one ai-node key may hold (a key is one node; only with CURVE, where
    #: heartbeats carry their sender's key): a flood of ids from one key stops at this many
    max_node_ids_per_key: int = 1
    #: dispatch rate per task kind, KIND -> "COUNT/UNIT[,burst=N]" (mesh.policies.rate_limit),
    #: split evenly among the Helpers discovery lists
    rate_limits: dict[str, str] = msgspec.field(default_factory=dict)
    #: circuit breakers (mesh.policies.circuit): "dependency" (default) only per dependency a
    #: handler names (DependencyDown), "all" per kind too (its retryable failures, timeouts and
    #: child deaths), "off" never hold a kind back
    breakers: str = "dependency"
    breaker_failure_ratio: float = 0.5
    breaker_min_calls: int = 10
    breaker_window_calls: int = 50
    breaker_window_s: float = 60.0
    breaker_cool_down_s: float = 30.0
    breaker_max_cool_down_s: float = 300.0
    breaker_probe_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.fsync_policy not in FSYNC_POLICIES:
            raise ConfigError(
                f"fsync_policy {self.fsync_policy!r} is not one of {', '.join(FSYNC_POLICIES)}"
            )
        _positive(self, "max_payload_bytes", "max_pending_tasks", "max_pending_bytes",
                  "max_attempts", "max_lost_deliveries", "dispatch_batch_max",
                  "max_retained_results", "priority_aging_every", "max_kind_bytes",
                  "max_headers", "max_header_bytes", "max_idempotency_key_bytes",
                  "max_dead_letters", "max_dead_letter_bytes", "max_result_waiters",
                  "max_result_waiters_per_client", "max_result_wait_s", "max_status_ids",
                  "max_reply_bytes", "max_unread_reply_bytes", "max_nodes",
                  "max_node_ids_per_key")
        if self.min_priority > self.max_priority:
            raise ConfigError(f"min_priority {self.min_priority} is above max_priority "
                              f"{self.max_priority}")
        _positive(self, "node_dead_after_s", "ack_timeout_s", "retry_base_s", "retry_cap_s")
        if not self.helper_id:
            raise ConfigError("helper_id must not be empty")
        for kind, attempts in self.kind_max_attempts.items():
            if attempts <= 0:
                raise ConfigError(f"kind_max_attempts[{kind!r}] must be > 0, got {attempts!r}")
        if self.breakers not in BREAKER_MODES:
            raise ConfigError(f"breakers {self.breakers!r} is not one of "
                              f"{', '.join(BREAKER_MODES)}")
        self.rate_limit_rates()
        self.breaker_settings()

    def rate_limit_rates(self) -> dict:
        """`rate_limits` parsed: KIND -> mesh.policies.rate_limit.Rate (ConfigError if bad)."""
        from mesh.policies.rate_limit import parse_rate
        return {kind: parse_rate(text) for kind, text in self.rate_limits.items()}

    def breaker_settings(self):  # noqa: ANN201 - mesh.policies.circuit.BreakerSettings
        from mesh.policies.circuit import BreakerSettings
        return BreakerSettings(
            failure_ratio=self.breaker_failure_ratio, min_calls=self.breaker_min_calls,
            window_calls=self.breaker_window_calls, window_s=self.breaker_window_s,
            cool_down_s=self.breaker_cool_down_s, max_cool_down_s=self.breaker_max_cool_down_s,
            probe_timeout_s=self.breaker_probe_timeout_s)


class AINodeSettings(msgspec.Struct, frozen=True, kw_only=True):
    #: stable name of this node; a fresh incarnation id is drawn per run
    node_id: str
    #: PULL endpoint Helpers push tasks to; port 0 picks a free port
    task_endpoint: str = "tcp://127.0.0.1:0"
    #: tasks run at once
    concurrency: int = 16
    #: deliveries accepted beyond `concurrency`, waiting for a slot (hides one network round
    #: trip). 0 by default: a prefetched delivery waits on a busy node while another node may
    #: have a free slot, which with long tasks costs whole waves; short-task throughput
    #: measured no lower at 0 (docs/decisions/005-failure-semantics.md, "Fair dispatch")
    prefetch: int = 0
    #: heartbeat period to every known Helper
    heartbeat_interval_s: float = 0.25
    #: default run timeout when the task carries none
    run_timeout_s: float = 300.0
    #: finished tasks remembered for de-duplication of redeliveries
    dedup_window: int = 50_000
    #: largest delivery accepted (frames above this are dropped by ZeroMQ itself)
    max_message_bytes: int = 16 * 2**20
    #: on SIGTERM, how long running tasks may take to finish before they are handed back
    drain_grace_s: float = 30.0
    #: largest result a handler may return; a larger one fails the attempt (FATAL) instead of
    #: being sent. The default is the Helper's default max_payload_bytes: the Helper journals
    #: a result in one record, and its record limit (mesh.admission.journal_record_limit) is
    #: that plus at least 64 KiB of slack, so a result this size always fits. A Helper run
    #: with a smaller --max-payload-bytes wants its nodes' --max-result-bytes lowered to match.
    max_result_bytes: int = 1 * 2**20
    #: Helper links (ack sockets) at most; a delivery that would open one more is refused
    #: (counted, dropped: its Helper resends it), so bogus reply_to endpoints cannot grow the
    #: node. A link learned from a delivery, idle this long and holding nothing, may be
    #: closed to make room for a new one.
    max_helpers: int = 64
    helper_link_idle_s: float = 60.0
    #: where handlers run (mesh.executors): "async" (async handlers on the loop, sync ones in
    #: threads: the default), "thread" (every handler in a thread) or "process" (every
    #: handler in one of `concurrency` child processes)
    executor: str = "async"
    #: process executor: retire a child after this many tasks, or when its RSS after a task
    #: is above this many bytes (0: no bound); SIGKILL this long after the SIGTERM of a child
    #: whose run passed its timeout; how long a child may take to load the app and its hooks
    max_tasks_per_child: int = 0
    max_memory_per_child_bytes: int = 0
    child_kill_grace_s: float = 1.0
    child_start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        _positive(self, "concurrency", "heartbeat_interval_s", "run_timeout_s", "dedup_window",
                  "max_message_bytes", "max_result_bytes", "max_helpers", "helper_link_idle_s")
        if self.prefetch < 0:
            raise ConfigError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor {self.executor!r} is not one of async, thread, process")
        if self.max_tasks_per_child < 0 or self.max_memory_per_child_bytes < 0:
            raise ConfigError("max_tasks_per_child and max_memory_per_child_bytes must be 0 "
                              "(no bound) or positive")
        if self.child_kill_grace_s < 0:
            raise ConfigError(f"child_kill_grace_s must be >= 0, got {self.child_kill_grace_s}")
        _positive(self, "child_start_timeout_s")
        if not self.node_id:
            raise ConfigError("node_id must not be empty")


def _positive(settings: msgspec.Struct, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if value <= 0:
            raise ConfigError(f"{name} must be > 0, got {value!r}")
