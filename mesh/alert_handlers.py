"""Alert handlers of a notifier: each called until it succeeds, none losing an alert.

A handler is a callable taking one `wire.Alert`, async or sync (a sync one runs in a worker
thread, never on the loop). `HandlerSet.__call__` is the subscriber's `on_alert`: it runs every
handler on the alert at once and returns when all have succeeded. A handler that raises is
called again after an exponential backoff with full jitter (capped); handlers that already
succeeded are not called again for that alert. The subscriber's position advances only when
`__call__` returns, so after a crash the alert is offered again (at least once per handler).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import random
import time
from collections.abc import Callable

from mesh import wire
from mesh.errors import ConfigError
from mesh.trust import inert

log = logging.getLogger(__name__)
alert_log = logging.getLogger("mesh.alert")

#: an alert is logged at its own severity (an unknown one at WARNING, never lower)
LOG_LEVELS = {wire.INFO: logging.INFO, wire.WARNING: logging.WARNING, wire.ERROR: logging.ERROR,
              wire.CRITICAL: logging.CRITICAL}

Handler = Callable[[wire.Alert], object]


def log_handler(alert: wire.Alert) -> None:
    """The sample handler: one line per alert. Every text field came over the wire, so each is
    made inert: a newline in a node id or a source cannot start a forged line."""
    lag_ms = (time.time_ns() - alert.time_ns) / 1e6
    labels = ",".join(f"{inert(k, 64)}={inert(v, 200)}"
                      for k, v in sorted(alert.labels.items())[:32])
    alert_log.log(LOG_LEVELS.get(alert.severity, logging.WARNING),
                  "ALERT %s %s source=%s publisher=%s seq=%d lag_ms=%.2f%s payload=%r",
                  wire.severity_label(alert.severity).upper(), inert(alert.kind, 100),
                  inert(alert.source, 200), inert(alert.publisher_id, 100), alert.seq, lag_ms,
                  f" labels={labels}" if labels else "", bytes(alert.payload[:200]))


def load_handler(spec: str) -> Handler:
    """`module:function` -> the callable (async or sync)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"a handler is given as module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import handler module {module_name!r}: {exc}") from exc
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise ConfigError(f"{spec} is not a callable")
    return handler


class HandlerSet:
    def __init__(self, handlers: list[tuple[str, Handler]], *, retry_base_s: float = 0.1,
                 retry_cap_s: float = 30.0) -> None:
        if not handlers:
            raise ConfigError("a notifier needs at least one handler")
        self.handlers = handlers
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.failures = 0
        self.handled = 0

    async def __call__(self, alert: wire.Alert) -> None:
        if len(self.handlers) == 1:
            await self._run_one(*self.handlers[0], alert)
        else:
            await asyncio.gather(*(self._run_one(name, h, alert) for name, h in self.handlers))
        self.handled += 1

    async def _run_one(self, name: str, handler: Handler, alert: wire.Alert) -> None:
        attempt = 0
        while True:
            try:
                result = handler(alert) if _is_async(handler) else await asyncio.to_thread(
                    handler, alert)
                if inspect.isawaitable(result):
                    await result
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried, never dropped
                attempt += 1
                self.failures += 1
                delay = random.uniform(0, min(self.retry_cap_s, self.retry_base_s * 2 ** attempt))
                log.warning("handler %s failed on alert %s seq %d (attempt %d): %s; retrying in "
                            "%.2f s", name, inert(alert.publisher_id, 100), alert.seq, attempt,
                            inert(str(exc)), delay)
                await asyncio.sleep(delay)


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None))
