"""The discovery interface: plain values, a sync API, and a diffing watch thread.

Backends (embedded, static, Consul) implement `Discovery`; nodes/ bridges the sync calls into
asyncio. Nothing here knows ZeroMQ, tasks or `mesh`: an `Instance` is a service name, an id,
an address, a port, tags, string metadata and a health value.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class DiscoveryError(Exception):
    """Base of every error a discovery backend raises on purpose."""


class DiscoveryUnavailable(DiscoveryError):
    """The registry cannot be reached or did not answer in time; retrying later may work."""


class DiscoveryAuthError(DiscoveryError):
    """The registry refused our credentials (e.g. a Consul ACL token); retrying will not help."""


class Health(enum.StrEnum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"


_SEVERITY = {Health.PASSING: 0, Health.WARNING: 1, Health.CRITICAL: 2}


def worst(statuses: list[Health] | tuple[Health, ...]) -> Health:
    """The worst of several health values (PASSING when there are none, as Consul does)."""
    result = Health.PASSING
    for status in statuses:
        if _SEVERITY[status] > _SEVERITY[result]:
            result = status
    return result


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered node run. `meta` carries endpoints, concurrency, version, incarnation...

    Meta keys follow Consul's rules so every backend accepts the same values: letters, digits,
    `_` and `-` only (no dots), at most 128 characters, values at most 512 characters, at most
    64 pairs, and no `consul-` prefix. `validate_instance` checks this.
    """

    service: str
    instance_id: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    health: Health = Health.PASSING

    def key(self) -> tuple:
        """A hashable value that changes when anything a watcher cares about changes."""
        return (
            self.service,
            self.instance_id,
            self.address,
            self.port,
            tuple(self.tags),
            tuple(sorted(self.meta.items())),
            str(self.health),
        )


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}$")
_META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def validate_instance(instance: Instance) -> None:
    """Raise DiscoveryError when `instance` would be refused by some backend.

    Checked up front so a mistake shows the same way on the embedded backend as on Consul.
    """
    for what, value in (("service", instance.service), ("instance_id", instance.instance_id)):
        if not _NAME_RE.match(value):
            raise DiscoveryError(
                f"{what} {value!r} is not a valid name: use letters, digits and . _ : @ -, "
                "starting with a letter or digit, at most 200 characters"
            )
    if is_unspecified_address(instance.address):
        raise DiscoveryError(
            f"{instance.instance_id!r} advertises address {instance.address!r}, which is not routable "
            "(a wildcard means 'this host' to whoever reads it): a node must advertise an address other "
            "nodes can reach, such as its IP or host name"
        )
    if not (0 <= instance.port <= 65535):
        raise DiscoveryError(f"port {instance.port} of {instance.instance_id!r} is out of range 0..65535")
    if len(instance.meta) > 64:
        raise DiscoveryError(f"{instance.instance_id!r} has {len(instance.meta)} meta pairs; at most 64 are allowed")
    for key, value in instance.meta.items():
        if not isinstance(key, str) or not _META_KEY_RE.match(key) or key.startswith("consul-"):
            raise DiscoveryError(
                f"meta key {key!r} of {instance.instance_id!r} is invalid: use letters, digits, _ and - "
                "(no dots), at most 128 characters, not starting with 'consul-'"
            )
        if not isinstance(value, str) or len(value) > 512:
            raise DiscoveryError(f"meta value of {key!r} must be a string of at most 512 characters")
    for tag in instance.tags:
        if not isinstance(tag, str):
            raise DiscoveryError(f"tag {tag!r} of {instance.instance_id!r} must be a string")


def is_unspecified_address(address: str) -> bool:
    """True for 0.0.0.0, ::, [::] and their spellings: a bind wildcard, never a peer's address.

    Consul refuses them as a service address too (400 "Invalid service address")."""
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text).is_unspecified
    except ValueError:
        return text == "*"


def membership_key(instances: list[Instance]) -> tuple:
    """An order-independent value equal for two lists that a watcher would treat the same."""
    return tuple(sorted(inst.key() for inst in instances))


class Registration(Protocol):
    def heartbeat(self, health: Health = Health.PASSING, note: str = "") -> None:
        """Renew the lease and report health; cheap enough to call every second.

        May raise DiscoveryUnavailable (retry on the next beat) or DiscoveryAuthError.
        A heartbeat after deregister() is a no-op.
        """
        ...

    def deregister(self) -> None:
        """Remove the registration; idempotent."""
        ...


class Discovery(Protocol):
    def register(self, instance: Instance, *, ttl_s: float = 10.0, deregister_after_s: float = 60.0) -> Registration:
        ...

    def instances(
        self, service: str, *, index: int = 0, wait_s: float = 0.0, passing_only: bool = True
    ) -> tuple[int, list[Instance]]:
        """Return (index, instances). With index > 0 and wait_s > 0, block until the set may have
        changed since `index` or wait_s passes. A return is no proof of a change: diff it.
        `passing_only` keeps only instances whose every check passes (WARNING is excluded too,
        as with Consul's `?passing`)."""
        ...

    def close(self) -> None:
        ...


class NoopRegistration:
    """What register() returns where registering means nothing (the static backend)."""

    def heartbeat(self, health: Health = Health.PASSING, note: str = "") -> None:
        return None

    def deregister(self) -> None:
        return None


class _TokenBucket:
    """Rate limit for the watch loop: `burst` queries at once, then `rate_per_s` on average.

    Consul's blocking-query guide asks for this instead of a sleep per iteration, so a burst of
    real changes is seen at once while a flapping index cannot turn the loop into a busy loop.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def delay_s(self) -> float:
        """Take one token; return how long to wait before using it (0 when one was ready)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate


class Watch:
    """A thread that long-polls `discovery.instances(service)` and reports real changes.

    Guarantees:
    - `on_change(instances)` is called from the watch thread with the full current list, once
      for the first successful answer (even when it is empty) and then only when the set of
      instances, their health, address, tags or meta actually changed (returns of a blocking
      query without a change are swallowed).
    - While the backend is unreachable, the last known membership stands (no callback), the
      loop backs off exponentially with jitter up to `max_backoff_s`, logs the outage once at
      WARNING (then at most every `log_every_s`) and logs the recovery.
    - An index that goes backwards (registry restarted or restored) resets to 0; an index
      below 1 is never sent back as-is; a token bucket bounds the query rate.
    - `stop()` is idempotent and joins the thread; it returns within about `wait_s`.

    on_change runs on the watch thread: an asyncio caller hands the list over with
    `loop.call_soon_threadsafe(...)` and must not block in the callback.
    """

    def __init__(
        self,
        discovery: Discovery,
        service: str,
        on_change: Callable[[list[Instance]], None],
        *,
        passing_only: bool = True,
        wait_s: float = 5.0,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        rate_per_s: float = 5.0,
        burst: int = 3,
        log_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._discovery = discovery
        self._service = service
        self._on_change = on_change
        self._passing_only = passing_only
        self._wait_s = wait_s
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._log_every_s = log_every_s
        self._clock = clock
        self._bucket = _TokenBucket(rate_per_s, burst, clock)
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last: list[Instance] | None = None
        self._last_key: tuple | None = None
        self._index = 0
        self._resets = 0
        self._failures = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; a second call, or a call after stop(), does nothing."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name=f"discovery-watch-{self._service}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop and join. Waits at most `timeout_s` (default: wait_s + 5 s) for a query in flight."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(self._wait_s + 5.0 if timeout_s is None else timeout_s)
        if thread.is_alive():
            # Expected at a clean stop: the thread sits in a blocking query (at most wait_s) and
            # reports nothing once stopped; a daemon thread, it ends with that query or the
            # process. Not worth a WARNING on every SIGTERM.
            log.debug("discovery watch of %r is still in a blocking query; left to end with it "
                      "(a daemon thread)", self._service)

    # -- state, for callers and tests -------------------------------------------------------

    @property
    def last_known(self) -> list[Instance] | None:
        """The membership last reported to on_change (None before the first answer)."""
        with self._lock:
            return None if self._last is None else list(self._last)

    def wait_first(self, timeout_s: float) -> bool:
        """Wait until the first membership was reported; False if `timeout_s` passed first."""
        return self._first.wait(timeout_s)

    @property
    def index(self) -> int:
        return self._index

    @property
    def index_resets(self) -> int:
        """How many times the index went backwards and was reset to 0."""
        return self._resets

    @property
    def failures(self) -> int:
        """Consecutive failed queries (0 while the backend answers)."""
        return self._failures

    # -- loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff_s = self._min_backoff_s
        down_since: float | None = None
        last_log = 0.0
        while not self._stop.is_set():
            delay = self._bucket.delay_s()
            if delay > 0 and self._stop.wait(delay):
                break
            try:
                new_index, found = self._discovery.instances(
                    self._service,
                    index=self._index,
                    wait_s=self._wait_s if self._index > 0 else 0.0,
                    passing_only=self._passing_only,
                )
            except DiscoveryError as exc:
                self._failures += 1
                now = self._clock()
                if down_since is None:
                    down_since = now
                    last_log = now
                    known = "nothing yet" if self._last is None else f"{len(self._last)} instance(s)"
                    log.warning(
                        "discovery of %r failed: %s; keeping the last known membership (%s), retrying with backoff",
                        self._service, exc, known,
                    )
                elif now - last_log >= self._log_every_s:
                    last_log = now
                    log.warning(
                        "discovery of %r still failing after %.0f s (%d attempts): %s",
                        self._service, now - down_since, self._failures, exc,
                    )
                # Full jitter keeps many watchers from hammering a registry that comes back.
                if self._stop.wait(random.uniform(backoff_s / 2, backoff_s)):
                    break
                backoff_s = min(self._max_backoff_s, backoff_s * 2)
                continue
            except Exception:  # a backend bug must not kill the watch silently
                log.exception("discovery watch of %r: unexpected error; retrying", self._service)
                if self._stop.wait(self._max_backoff_s):
                    break
                continue

            if down_since is not None:
                log.info(
                    "discovery of %r is back after %.1f s (%d failed attempts)",
                    self._service, self._clock() - down_since, self._failures,
                )
                down_since = None
            self._failures = 0
            backoff_s = self._min_backoff_s
            self._advance_index(new_index)
            if self._stop.is_set():
                break
            self._maybe_report(found)

    def _advance_index(self, new_index: int) -> None:
        if new_index < self._index:
            log.info(
                "discovery index of %r went backwards (%d -> %d): registry restarted or restored; "
                "resetting to 0",
                self._service, self._index, new_index,
            )
            self._resets += 1
            self._index = 0
        elif new_index < 1:
            # An index of 0 makes the next query non-blocking; 1 keeps it blocking.
            self._index = 1
        else:
            self._index = new_index

    def _maybe_report(self, found: list[Instance]) -> None:
        key = membership_key(found)
        if key == self._last_key:
            return
        with self._lock:
            self._last_key = key
            self._last = list(found)
        try:
            self._on_change(list(found))
        except Exception:
            log.exception("on_change callback of the %r watch raised; the watch goes on", self._service)
        finally:
            self._first.set()


def parse_addr(addr: str, what: str = "Consul address") -> tuple[str, str, int]:
    """`host:port`, `http://host:port` or `https://host:port` -> (scheme, host, port)."""
    scheme = "http"
    rest = addr.strip()
    if "://" in rest:
        scheme, _, rest = rest.partition("://")
        scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise DiscoveryError(f"{what} {addr!r}: scheme must be http or https")
    parts = urllib.parse.urlsplit(f"//{rest.rstrip('/')}")
    try:
        port = parts.port or 8500
    except ValueError:
        raise DiscoveryError(f"{what} {addr!r} is not host:port") from None
    if not parts.hostname:
        raise DiscoveryError(f"{what} {addr!r} is not host:port")
    return scheme, parts.hostname, port
