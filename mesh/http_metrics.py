"""The HTTP gateway's own Prometheus metrics: requests by route and status, latency, long-polls
and failovers. (mesh/metrics.py holds every other node's metrics; these join it when that file
is free to edit: see docs/decisions/008-http-gateway.md.)"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
                      1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("mesh_http_requests", "HTTP requests answered, by route "
                                "(template), method and status", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("mesh_http_request_seconds", "Time to answer, by route",
                                 ["route"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.long_polls = Gauge("mesh_http_long_polls", "Long-polls (GET ?wait=) held now",
                                registry=r)
        self.failovers = Gauge("mesh_http_helper_failovers", "Submits resent to another Helper "
                               "after a timeout (since start)", registry=r)
        self.suspects = Gauge("mesh_http_helpers_suspect", "Helpers that did not answer and "
                              "are asked last until a probe answers", registry=r)
        #: (route, method, status) -> its counter and histogram children: `labels()` takes a
        #: lock and builds a key on every call, a cost per request; the set of keys is small
        #: (route templates x methods x statuses)
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:
            children = self._children[(route, method, status)] = (
                self.requests.labels(route, method, str(status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
