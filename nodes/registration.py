"""A node's presence in discovery, driven from its event loop.

The heartbeat is triggered by the node's own event loop (so a wedged loop stops it and the
node goes critical), and performed in a thread (a Consul HTTP call must never block the loop).
Membership changes from a discovery Watch thread are handed to the loop with
call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable

from pathlib import Path

from discovery import (Discovery, DiscoveryAuthError, DiscoveryError, DiscoveryUnavailable,
                       EmbeddedDiscovery, Health, Instance, Watch, ensure_private_dirs,
                       private_runtime_dir, redact_url)
from discovery.embedded import process_alive
from mesh.errors import InUse
from mesh.ownership import OwnerLock, claim_node_id

log = logging.getLogger("mesh.registration")


def service_health(service: object, note: str = "serving") -> Callable[[], tuple[Health, str]]:
    """The discovery health of a node whose mesh object may say `health() -> (ok, reason)`
    (the Helper: not ok while its journal is failed): CRITICAL with the reason while not ok,
    PASSING again when it recovers. An object without health() always passes. Each turn of the
    value is logged once."""
    last = {"ok": True}

    def health() -> tuple[Health, str]:
        check = getattr(service, "health", None)
        if check is None:
            return Health.PASSING, note
        try:
            ok, reason = check()
        except Exception as exc:  # a bug in health() must not stop the heartbeat
            ok, reason = False, f"health check raised {type(exc).__name__}: {exc}"
        if bool(ok) != last["ok"]:
            last["ok"] = bool(ok)
            if ok:
                log.info("healthy again (%s): discovery check passing", reason or note)
            else:
                log.error("unhealthy (%s): discovery check critical until it recovers", reason)
        if ok:
            return Health.PASSING, reason or note
        return Health.CRITICAL, reason or "unhealthy"

    return health


def node_lock_dir(discovery: Discovery) -> Path:
    """Where AI nodes of one registry lock their ids (a node id is unique within its registry,
    so two meshes on one host do not collide): beside the embedded registry they share, else in
    the per-user runtime dir, one directory per Consul agent address."""
    if isinstance(discovery, EmbeddedDiscovery):
        return discovery.private_subdir(".owners")
    registry = str(getattr(discovery, "addr", "") or type(discovery).__name__)
    return ensure_private_dirs(private_runtime_dir("owners"), re.sub(r"[^A-Za-z0-9_.-]", "_", registry))


def check_reachable(discovery: Discovery, service: str, wait_s: float, url: str | None) -> None:
    """Ask discovery once for `service`, retrying with backoff for up to `wait_s` while it does
    not answer (an agent starting with the host): a node started against a registry it cannot
    reach stops here, before it binds or says it is up, with one line (exit code 3). Refusals
    (an ACL token, a directory of another user) are raised at once, as they are."""
    deadline = time.monotonic() + wait_s
    delay_s = 0.2
    while True:
        try:
            discovery.instances(service, passing_only=True)
            return
        except DiscoveryUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DiscoveryUnavailable(
                    f"discovery {redact_url(url or 'embedded')} does not answer "
                    f"({' '.join(str(exc).split())}); waited {wait_s:g}s. Start it (a local "
                    "Consul agent), or pass --discovery, or raise --discovery-wait") from None
            if delay_s == 0.2:
                log.info("discovery does not answer yet (%s); waiting up to %.0fs", exc, wait_s)
            time.sleep(min(delay_s, left))
            delay_s = min(2.0, delay_s * 2)


def claim_node(discovery: Discovery, service: str, node_id: str) -> OwnerLock:
    """Refuse a second AI node with a live `node_id`: one per host by a lock file (released by
    the kernel when its holder dies), and across hosts by the registry: a passing instance of
    `service` whose meta names the same node id. An instance of this host whose pid is gone is a
    SIGKILLed predecessor's, still passing until its TTL lapses: not in the way (our lock proves
    it). Raises InUse; a registry that cannot be read is logged and skipped (the node works
    without it, and registering tells a refused token at once)."""
    advice = "stop it or choose another --node-id"
    lock = claim_node_id(node_lock_dir(discovery), node_id, advice=advice)
    try:
        try:
            _, found = discovery.instances(service, passing_only=True)
        except DiscoveryError as exc:
            log.warning("cannot check discovery for another node with id %s: %s", node_id, exc)
            found = []
        for inst in found:
            if inst.meta.get("node_id") != node_id or _dead_here(inst):
                continue
            if inst.meta.get("host") == socket.gethostname() and inst.meta.get("pid"):
                raise InUse(f"node id {node_id} is in use by pid {inst.meta['pid']} (another AI "
                            f"node); {advice}", resource=f"node id {node_id}",
                            holder_pid=int(inst.meta["pid"]))
            raise InUse(f"node id {node_id} is in use by {inst.instance_id} at "
                            f"{inst.address}:{inst.port}, passing in discovery (another AI node); "
                            f"{advice}", resource=f"node id {node_id}")
    except BaseException:
        lock.release()
        raise
    return lock


def _dead_here(inst: Instance) -> bool:
    """An instance registered from this host by a process that no longer runs."""
    try:
        pid = int(inst.meta.get("pid", ""))
    except ValueError:
        return False
    return inst.meta.get("host") == socket.gethostname() and not process_alive(pid)


class Presence:
    """Register a node, feed its TTL check from the loop, survive registry outages.

    - start() registers once. A registry that refuses us (wrong ACL token, invalid
      registration: any DiscoveryError but DiscoveryUnavailable) raises, so the node fails at
      startup with that message; an unreachable registry is logged and retried.
    - While the registry is unreachable the node keeps working; heartbeats back off from
      ttl_s/3 to `max_backoff_s`, the outage is logged once, then every `log_every_s`, and the
      recovery is logged. The registration is made again when the registry answers (a restarted
      agent that lost it included: see ConsulRegistration.heartbeat).
    """

    def __init__(self, discovery: Discovery, instance: Instance, *, ttl_s: float = 3.0,
                 deregister_after_s: float = 60.0,
                 health: Callable[[], tuple[Health, str]] | None = None,
                 max_backoff_s: float = 5.0, log_every_s: float = 30.0) -> None:
        self.discovery = discovery
        self.instance = instance
        self.ttl_s = ttl_s
        self.deregister_after_s = deregister_after_s
        self.max_backoff_s = max(max_backoff_s, ttl_s / 3)
        self.log_every_s = log_every_s
        self._health = health or (lambda: (Health.PASSING, ""))
        self._registration = None
        self._task: asyncio.Task | None = None
        self._down_since: float | None = None
        self._last_log = 0.0
        self._failures = 0

    def _register(self):  # noqa: ANN202
        return self.discovery.register(self.instance, ttl_s=self.ttl_s,
                                       deregister_after_s=self.deregister_after_s)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._registration = await loop.run_in_executor(None, self._register)
            log.info("registered %s as %s (ttl %.1fs)", self.instance.instance_id,
                     self.instance.service, self.ttl_s)
        except DiscoveryUnavailable as exc:
            self._failed(exc)
        self._task = loop.create_task(self._beat())

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        delay_s = self.ttl_s / 3
        while True:
            await asyncio.sleep(delay_s)
            health, note = self._health()
            try:
                if self._registration is None:
                    self._registration = await loop.run_in_executor(None, self._register)
                await loop.run_in_executor(None, self._registration.heartbeat, health, note)
            except DiscoveryError as exc:
                self._failed(exc)
                delay_s = min(self.max_backoff_s, delay_s * 2)
                continue
            delay_s = self.ttl_s / 3
            if self._down_since is not None:
                log.info("discovery is back after %.1fs (%d failed heartbeats): %s registered "
                         "and passing its check again", time.monotonic() - self._down_since,
                         self._failures, self.instance.instance_id)
                self._down_since = None
                self._failures = 0

    def _failed(self, exc: DiscoveryError) -> None:
        self._failures += 1
        now = time.monotonic()
        level = logging.ERROR if isinstance(exc, DiscoveryAuthError) else logging.WARNING
        if self._down_since is None:
            self._down_since = self._last_log = now
            log.log(level, "cannot register or heartbeat %s in discovery: %s. The node keeps "
                    "working with the last known membership and retries with backoff "
                    "(up to %.0fs)", self.instance.instance_id, exc, self.max_backoff_s)
        elif now - self._last_log >= self.log_every_s:
            self._last_log = now
            log.log(level, "discovery still failing for %s after %.0fs (%d attempts): %s",
                    self.instance.instance_id, now - self._down_since, self._failures, exc)

    @property
    def registered(self) -> bool:
        return self._registration is not None and self._down_since is None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._registration is not None:
            registration, self._registration = self._registration, None
            try:
                await asyncio.get_running_loop().run_in_executor(None, registration.deregister)
            except DiscoveryError as exc:
                log.warning("could not deregister: %s", exc)


def watch(discovery: Discovery, service: str,
          on_change: Callable[[list[Instance]], None], *, wait_s: float = 5.0) -> Watch:
    """Watch a service; `on_change` runs on the calling event loop."""
    loop = asyncio.get_running_loop()
    # Every instance, critical ones included: a saturated node is WARNING and must stay in use.
    w = Watch(discovery, service, lambda found: loop.call_soon_threadsafe(on_change, found),
              wait_s=wait_s, passing_only=False)
    w.start()
    return w


class _CountingDiscovery:
    """A Discovery seen through a Watch, counting failed queries (outages of the registry)."""

    def __init__(self, discovery: Discovery) -> None:
        self._discovery = discovery
        self.failures = 0

    def instances(self, service: str, **kwargs) -> tuple[int, list[Instance]]:  # noqa: ANN003
        try:
            return self._discovery.instances(service, **kwargs)
        except DiscoveryError:
            self.failures += 1
            raise


def watch_nodes(discovery: Discovery, service: str,
                on_change: Callable[[list[Instance], bool], None], *,
                wait_s: float = 5.0) -> Watch:
    """Like watch(), and tells on_change whether the registry may have lost registrations
    since the previous answer: it was unreachable in between, or its index went backwards
    (restarted or restored). Decided on the watch thread, in order with the answers."""
    loop = asyncio.get_running_loop()
    counting = _CountingDiscovery(discovery)
    seen = {"failures": 0, "resets": 0}

    def report(found: list[Instance]) -> None:
        suspect = counting.failures != seen["failures"] or w.index_resets != seen["resets"]
        seen.update(failures=counting.failures, resets=w.index_resets)
        loop.call_soon_threadsafe(on_change, found, suspect)

    w = Watch(counting, service, report, wait_s=wait_s, passing_only=False)
    w.start()
    return w


NodeRun = tuple[str, int]  # (node_id, incarnation)


class GoneNodes:
    """Which node runs discovery reports gone: the rule the Helper applies to its watch.

    - CRITICAL (TTL lapsed: loop wedged or process dead) is gone at once.
    - Absent after being listed is gone, except within `grace_s` after the registry may have
      lost registrations (it was unreachable, or its index went backwards): a restarted agent
      has forgotten every registration until the nodes' next heartbeats re-register them, and
      "not re-registered yet" must not re-queue every in-flight task of the mesh. Absences are
      checked again by expire().
    - While the registry is unreachable the Watch reports nothing, so nothing is gone.
    Pure: the clock is a parameter.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._listed: set[NodeRun] = set()
        self._missing: set[NodeRun] = set()
        self._critical: set[NodeRun] = set()
        self._amnesty_until = 0.0

    def update(self, alive: Iterable[NodeRun], critical: Iterable[NodeRun], *,
               registry_restarted: bool, now: float) -> list[NodeRun]:
        """Take the whole membership from one watch answer; return the runs now gone."""
        alive, critical = set(alive), set(critical)
        if registry_restarted:
            self._amnesty_until = now + self.grace_s
        gone = critical - self._critical  # once per turn to critical: a node can come back
        self._critical = critical
        absent = (self._listed | self._missing) - alive - critical
        self._listed = alive
        if now < self._amnesty_until:
            self._missing = absent
        else:
            self._missing = set()
            gone |= absent
        return sorted(gone)

    def expire(self, now: float) -> list[NodeRun]:
        """Absences that outlived the grace after a registry restart."""
        if now < self._amnesty_until or not self._missing:
            return []
        gone, self._missing = sorted(self._missing), set()
        return gone

    @property
    def amnesty_until(self) -> float:
        return self._amnesty_until
