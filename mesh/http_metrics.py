"""The HTTP gateway's own Prometheus metrics: requests by route and status, latency, long-polls
and failovers. (mesh/metrics.py holds every other node's metrics; these join it when that file
is free to edit: see docs/decisions/008-http-gateway.md.)"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mesh.metrics import observe_many

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
        #: requests observed this loop turn, counted at its end
        self._pending: list[tuple[tuple[str, str, int], float]] = []

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request. From the event loop, at the end of this turn, together with the
        turn's other requests: off the path of the answer being made (a locked update of a
        counter and a histogram per request), and one update per turn under load. A scrape
        (`exposition`) counts what is pending first."""
        self._pending.append(((route, method, status), seconds))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self._count_pending)
            except RuntimeError:  # no loop: count now
                self._count_pending()

    def _count_pending(self) -> None:
        pending, self._pending = self._pending, []
        if len(pending) == 1:  # a request alone in its turn
            key, seconds = pending[0]
            children = self._children_of(key)
            children[0].inc()
            children[1].observe(seconds)
            return
        by_key: dict[tuple[str, str, int], list[float]] = {}
        for key, seconds in pending:
            by_key.setdefault(key, []).append(seconds)
        for key, durations in by_key.items():
            children = self._children_of(key)
            children[0].inc(len(durations))
            observe_many(children[1], durations)

    def _children_of(self, key: tuple[str, str, int]) -> tuple:
        children = self._children.get(key)
        if children is None:
            route, method, status = key
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)), self.latency.labels(route))
        return children

    def exposition(self) -> bytes:
        self._count_pending()
        return generate_latest(self.registry)
