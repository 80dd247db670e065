"""Every Prometheus metric of the mesh, on one registry per node object.

No module-level metrics: a process may hold several nodes (tests, the demo), and each must
report its own. Hot paths update these once per batch, not once per task.
"""

from __future__ import annotations

import errno
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mesh.errors import AddressInUse

_LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """`histogram.observe(v)` for each of `values`, with one update of its sum and of each
    bucket hit instead of a locked update of both per value (a batch of durations mostly falls
    in one or two buckets). Falls back to one observe per value if prometheus_client's
    internals (upper bounds, per-bucket values, sum) are not as expected."""
    if not values:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        i = bisect_left(bounds, value)  # the first bound >= value: observe()'s bucket
        counts[i] = counts.get(i, 0) + 1
    total.inc(sum(values))
    for i, count in counts.items():
        buckets[i].inc(count)


class HelperMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.submitted = Counter("mesh_tasks_submitted", "Tasks accepted (durable)", registry=r)
        self.duplicates = Counter(
            "mesh_submit_duplicates", "Submits of an already known task id (idempotent)",
            registry=r)
        self.rejected = Counter(
            "mesh_submit_rejected", "Submits refused, by reason", ["reason"], registry=r)
        self.outcomes = Counter(
            "mesh_tasks_finished", "Tasks that reached a terminal state", ["state"], registry=r)
        self.dead = Counter("mesh_tasks_dead", "Dead-lettered tasks, by reason", ["reason"],
                            registry=r)
        self.retries = Counter("mesh_task_retries", "Failed attempts scheduled again", registry=r)
        self.redeliveries = Counter(
            "mesh_redeliveries", "Deliveries sent again, by cause", ["cause"], registry=r)
        self.timeouts = Counter(
            "mesh_task_timeouts", "Timeouts, by which: run (handler over its limit, reported by "
            "the AI node) or ack (no STARTED within ack_timeout_s of dispatch)", ["timeout"],
            registry=r)
        self.late_acks = Counter(
            "mesh_late_acks", "Acks for a delivery that was no longer current", registry=r)
        self.bad_frames = Counter(
            "mesh_bad_frames", "Frames dropped as unreadable, by socket", ["socket"], registry=r)
        self.dispatched = Counter("mesh_deliveries_sent", "Deliveries sent to nodes", registry=r)
        self.queue_depth = Gauge("mesh_queue_depth", "Tasks queued, not dispatched", registry=r)
        self.queue_bytes = Gauge("mesh_queue_bytes", "Payload bytes queued", registry=r)
        self.retry_waiting = Gauge("mesh_retry_waiting", "Tasks waiting out a backoff",
                                   registry=r)
        self.inflight = Gauge("mesh_inflight", "Deliveries on nodes", registry=r)
        self.oldest_pending_age = Gauge(
            "mesh_oldest_pending_age_seconds", "Age of the oldest queued task (consumer lag)",
            registry=r)
        self.nodes_alive = Gauge("mesh_nodes_alive", "AI nodes alive", registry=r)
        self.node_deaths = Counter("mesh_node_deaths", "AI nodes declared dead, by cause",
                                   ["cause"], registry=r)
        self.accept_latency = Histogram(
            "mesh_accept_latency_seconds", "Submit received to accepted (journal durable)",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.e2e_latency = Histogram(
            "mesh_end_to_end_latency_seconds", "Submit to result recorded",
            buckets=_LATENCY_BUCKETS_S + (30.0, 60.0, 300.0), registry=r)
        self.fsync_latency = Histogram(
            "mesh_journal_fsync_seconds", "Journal fdatasync time", buckets=_LATENCY_BUCKETS_S,
            registry=r)
        self.fsync_batch = Histogram(
            "mesh_journal_fsync_batch_records", "Records made durable by one fdatasync",
            buckets=_BATCH_BUCKETS, registry=r)
        self.journal_bytes = Gauge("mesh_journal_bytes", "Journal size on disk", registry=r)
        self.journal_errors = Counter("mesh_journal_errors", "Journal write or sync failures",
                                      registry=r)
        self.group_catchups = Counter(
            "mesh_group_catchups", "Followers of a Helper group brought up to date by this "
            "leader, by path: log (the records they lacked) or snapshot (its live records)",
            ["path"], registry=r)
        self.journal_failed = Gauge(
            "mesh_journal_failed",
            "1 while the journal is failed (every submit refused until it reopens), else 0",
            registry=r)
        self.journal_damaged_bytes = Gauge(
            "mesh_journal_damaged_bytes",
            "Bytes the last journal recovery found damaged and skipped (copied aside)", registry=r)
        self.journal_damaged_records = Gauge(
            "mesh_journal_damaged_records",
            "Records the last journal recovery estimates it skipped inside damaged ranges",
            registry=r)
        self.dead_letters = Gauge("mesh_dead_letters", "Dead letters kept", registry=r)
        self.dead_letter_bytes = Gauge(
            "mesh_dead_letter_bytes", "Bytes of the dead letters kept (task and error)",
            registry=r)
        self.dead_letters_evicted = Counter(
            "mesh_dead_letters_evicted", "Oldest dead letters forgotten past the bounds",
            registry=r)
        self.result_waiters = Gauge("mesh_result_waiters", "Result long-polls held", registry=r)
        self.intake_refused = Counter(
            "mesh_intake_requests_refused", "Client requests refused by a bound, by which",
            ["bound"], registry=r)
        self.requests_denied = Counter(
            "mesh_intake_requests_denied", "Client requests refused because the sender's key "
            "has no role that may do them (PERMISSION_DENIED), by operation", ["operation"],
            registry=r)
        self.acks_refused = Counter(
            "mesh_ack_frames_refused", "Ack batches (heartbeat and acks) dropped for who sent "
            "them, by reason: role, node_id_bound (another key holds the node id), ids_per_key "
            "(the key holds its allowed node ids), max_nodes (the node table is full), "
            "untrusted_key", ["reason"], registry=r)
        self.acks_not_holder = Counter(
            "mesh_acks_not_holder", "Acks for a task the sending node's key was never given",
            registry=r)
        self.replies_dropped = Counter(
            "mesh_intake_replies_dropped", "Replies not sent: the client is gone or not reading "
            "(its send queue is at the high-water mark)", ["reason"], registry=r)
        self.circuit_state = Gauge(
            "mesh_circuit_state", "Circuit breaker state: 0 closed, 1 half-open (a probe may "
            "go), 2 open (the kind is not dispatched); scope kind or dependency",
            ["name", "scope"], registry=r)
        self.circuit_transitions = Counter(
            "mesh_circuit_transitions", "Circuit breaker state changes, by scope and new state",
            ["scope", "state"], registry=r)
        self.rate_limited = Counter(
            "mesh_rate_limited_seconds", "Time a kind had a task ready but no rate-limit token "
            "(throttled: it waits queued)", ["kind"], registry=r)


class AINodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.received = Counter("mesh_ai_deliveries_received", "Deliveries received", registry=r)
        self.completed = Counter("mesh_ai_tasks_completed", "Handler runs, by outcome",
                                 ["outcome"], registry=r)
        self.dedup_hits = Counter(
            "mesh_ai_dedup_hits", "Redeliveries answered from the window, not run again",
            registry=r)
        self.rejected = Counter("mesh_ai_rejected", "Deliveries refused, by reason", ["reason"],
                                registry=r)
        self.bad_frames = Counter("mesh_ai_bad_frames", "Unreadable frames dropped", registry=r)
        self.running = Gauge("mesh_ai_running", "Handlers running", registry=r)
        self.waiting = Gauge("mesh_ai_waiting", "Deliveries waiting for a slot", registry=r)
        self.run_latency = Histogram("mesh_ai_run_seconds", "Handler run time",
                                     buckets=_LATENCY_BUCKETS_S + (30.0, 60.0, 300.0),
                                     registry=r)
        self.timeouts = Counter("mesh_ai_timeouts", "Handlers past their run timeout",
                                registry=r)
        self.helper_links = Gauge("mesh_ai_helper_links", "Helpers this node has an ack link to",
                                  registry=r)
        self.children = Gauge("mesh_ai_children", "Child processes of the process executor, "
                              "by state", ["state"], registry=r)
        self.child_events = Counter(
            "mesh_ai_child_events", "Process executor child events: started, recycled_tasks, "
            "recycled_memory, killed_timeout, killed_cancel, died, start_failures", ["event"],
            registry=r)
        self._pool_counts: dict[str, int] = {}

    def observe_pool(self, stats) -> None:  # noqa: ANN001 - mesh.executors.PoolStats
        """Once per heartbeat: the pool's gauges, and its counts since the last call."""
        for state in ("idle", "busy", "starting", "waiting"):
            self.children.labels(state).set(getattr(stats, state))
        for event, field in (("started", "children_started"),
                             ("recycled_tasks", "recycled_tasks"),
                             ("recycled_memory", "recycled_memory"),
                             ("killed_timeout", "killed_timeout"),
                             ("killed_cancel", "killed_cancel"), ("died", "died"),
                             ("start_failures", "start_failures")):
            value = getattr(stats, field)
            delta = value - self._pool_counts.get(event, 0)
            if delta > 0:
                self.child_events.labels(event).inc(delta)
            self._pool_counts[event] = value


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> tuple:
    """Serve /metrics on a thread; port 0 picks a free one. Returns (server, real_port).
    A taken port raises mesh.errors.AddressInUse."""
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise AddressInUse(f"http://{addr}:{port}/metrics", f"metrics port {addr}:{port} is in "
                           "use by another process; stop it or choose another port") from None
    return server, thread, server.server_address[1]


class StatsCollector:
    """Exports a plain counters object (the alert lane's `stats`) as Prometheus counters when
    scraped: nothing on the hot path, one read per scrape.

        registry.register(StatsCollector("mesh_alerts_published", publisher.stats, {...}))
    """

    def __init__(self, prefix: str, stats: object, help_by_name: dict[str, str]) -> None:
        self.prefix = prefix
        self.stats = stats
        self.help_by_name = help_by_name

    def collect(self):  # noqa: ANN201 - the prometheus_client collector protocol
        from prometheus_client.core import CounterMetricFamily

        for name, text in self.help_by_name.items():
            family = CounterMetricFamily(f"{self.prefix}_{name}", text)
            family.add_metric([], float(getattr(self.stats, name)))
            yield family


PUBLISHER_STATS_HELP = {
    "published": "Alerts published",
    "replay_requests": "Replay requests answered",
    "replayed_alerts": "Alerts sent again through replay",
    "malformed_requests": "Unreadable replay requests dropped",
    "journal_errors": "Alert journal write or sync failures",
}

SUBSCRIBER_STATS_HELP = {
    "live": "Alerts received live on SUB",
    "replayed": "Alerts received through replay",
    "delivered": "Alerts handed to the handlers",
    "duplicates": "Duplicate alerts dropped",
    "malformed": "Unreadable frames dropped",
    "lost": "Alerts reported lost (out of the publisher's history)",
    "replay_requests": "Replay requests sent",
    "replay_timeouts": "Replay requests that timed out",
    "callback_errors": "Handler failures (retried)",
}


def register_alert_publisher(registry: CollectorRegistry, stats: object) -> None:
    registry.register(StatsCollector("mesh_alert_publisher", stats, PUBLISHER_STATS_HELP))


def register_alert_subscriber(registry: CollectorRegistry, stats: object) -> None:
    registry.register(StatsCollector("mesh_alert_subscriber", stats, SUBSCRIBER_STATS_HELP))


WEBHOOK_STATS_HELP = {
    "posted": "Alerts posted to the webhook",
    "failures": "Webhook POSTs that failed (each retried with backoff)",
}


def register_alert_webhook(registry: CollectorRegistry, stats: object) -> None:
    registry.register(StatsCollector("mesh_alert_webhook", stats, WEBHOOK_STATS_HELP))
