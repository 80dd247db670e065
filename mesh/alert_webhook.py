"""A notifier handler that POSTs each alert as JSON to a webhook (`mesh notifier --webhook URL`).

Guarantees: alerts are posted one at a time, in the order the notifier hands them over; a POST
that fails (connection error, timeout, any status but 2xx) is retried with full-jitter
exponential backoff (`retry_base_s`, capped at `retry_cap_s`), forever: an alert is never
dropped while the notifier runs. At most `max_queued` alerts wait for the webhook; when that
many wait, the handler call waits too, which holds back the alert lane (the subscriber buffers,
and beyond its bound replays from the publishers' histories), so memory stays bounded and
nothing is lost. Each alert is handed over (the notifier's position advances) when it is
queued: alerts queued but not yet posted when the notifier is killed are not posted again.
Failures are counted in `stats` (exported as mesh_alert_webhook_*_total).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import urllib.error
import urllib.request

from mesh import wire
from mesh.errors import ConfigError
from mesh.trust import inert

log = logging.getLogger(__name__)


class WebhookStats:
    __slots__ = ("posted", "failures", "queued")

    def __init__(self) -> None:
        self.posted = 0
        self.failures = 0
        self.queued = 0


def alert_json(alert: wire.Alert) -> bytes:
    """The body of one POST: every field of the alert; the payload as text when it is UTF-8
    (`payload`), else null with `payload_hex`."""
    raw = bytes(alert.payload)
    try:
        text, hexed = raw.decode(), None
    except UnicodeDecodeError:
        text, hexed = None, raw.hex()
    body = {"publisher_id": alert.publisher_id, "publisher_epoch": f"{alert.publisher_epoch:016x}",
            "seq": alert.seq, "kind": alert.kind,
            "severity": wire.severity_label(alert.severity), "source": alert.source,
            "time_ns": alert.time_ns, "labels": dict(alert.labels), "payload": text}
    if hexed is not None:
        body["payload_hex"] = hexed
    return json.dumps(body).encode()


class WebhookHandler:
    """Lifecycle: `await start()`, then call it with alerts (it is a notifier handler),
    `await stop()` (idempotent; what is still queued is abandoned, and logged)."""

    def __init__(self, url: str, *, max_queued: int = 1000, timeout_s: float = 5.0,
                 retry_base_s: float = 0.2, retry_cap_s: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"a webhook URL starts with http:// or https://, got {url!r}")
        if max_queued <= 0 or timeout_s <= 0 or retry_base_s <= 0 or retry_cap_s <= 0:
            raise ConfigError("webhook max_queued, timeout_s, retry_base_s and retry_cap_s "
                              "must be > 0")
        self.url = url
        self.timeout_s = timeout_s
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.stats = WebhookStats()
        self._max_queued = max_queued
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self._max_queued)
        self._task = asyncio.get_running_loop().create_task(self._post_all(), name="webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._queue is not None and self._queue.qsize():
            log.warning("webhook %s: %d alert(s) not posted at stop", self.url,
                        self._queue.qsize())

    async def __call__(self, alert: wire.Alert) -> None:
        await self._queue.put(alert)  # waits while max_queued alerts wait
        self.stats.queued = self._queue.qsize()

    async def _post_all(self) -> None:
        while True:
            alert = await self._queue.get()
            body = alert_json(alert)
            attempt = 0
            while True:
                try:
                    await asyncio.to_thread(self._post, body)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, never dropped
                    attempt += 1
                    self.stats.failures += 1
                    delay = random.uniform(0, min(self.retry_cap_s,
                                                  self.retry_base_s * 2 ** attempt))
                    log.warning("webhook %s failed for alert %s seq %d (attempt %d): %s; "
                                "retrying in %.2f s", self.url, inert(alert.publisher_id, 100),
                                alert.seq, attempt, inert(str(exc), 300), delay)
                    await asyncio.sleep(delay)
            self.stats.posted += 1
            self.stats.queued = self._queue.qsize()

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
            if not 200 <= response.status < 300:
                raise OSError(f"HTTP {response.status}")
