"""The last alerts seen, newest first: a bounded ring the HTTP gateway fills from the alert lane
and /v1/overview (the live page) shows.

An `AlertSubscriber`'s `on_alert`: it only appends, so it never stalls the lane. Every text field
came over the wire: each is cut to a bound here, and the page writes it with textContent only.
"""

from __future__ import annotations

from collections import deque

from mesh import wire
from mesh.http_views import iso

#: how many alerts the ring keeps
RECENT_ALERTS = 100


class RecentAlerts:
    def __init__(self, size: int = RECENT_ALERTS) -> None:
        self._ring: deque[dict] = deque(maxlen=size)
        self.seen = 0

    async def __call__(self, alert: wire.Alert) -> None:
        self._ring.append(alert_json(alert))
        self.seen += 1

    def json(self) -> list[dict]:
        """The alerts kept, newest first."""
        return list(reversed(self._ring))


def alert_json(alert: wire.Alert) -> dict:
    return {"kind": alert.kind[:100], "severity": wire.severity_label(alert.severity),
            "source": alert.source[:200], "time": iso(alert.time_ns),
            "publisher": alert.publisher_id[:100], "seq": alert.seq,
            "labels": {k[:64]: v[:200] for k, v in sorted(alert.labels.items())[:32]},
            "payload": bytes(alert.payload[:500]).decode("utf-8", "replace")}
