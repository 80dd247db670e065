"""A group's leader lock in Consul: a session with a TTL and a lock-delay, and one KV key.

`ConsulLock` is the Consul backend of mesh's `Leadership` (mesh/leadership.py defines the
interface; this module does not import mesh, it only has the same method names and returns its
own `ConsulHolder` values). The key is `<prefix>/<group>/leader`; its value is JSON
`{"leader_id", "epoch", "advert"}`.

How a term begins (try_acquire):
1. a session: TTL `ttl_s`, LockDelay `lock_delay_s`, behavior **release** (the key and its
   history stay when the leader's session ends), Consul's default check serfHealth (the session
   also ends when this agent's node fails);
2. PUT ?acquire=<session>: false while another session holds the key or while it is in its
   lock-delay (Consul holds a lock back for LockDelay after its holder's session was invalidated,
   so a stalled leader that has not noticed yet is not overlapped at once);
3. GET the key: the **epoch** is its ModifyIndex as read while our session holds it. Consul's
   Raft index only grows, a later acquire writes at a larger index than every read done under
   an earlier holder, and unlike LockIndex it does not restart when the key is deleted; the
   epoch is then written into the value (a second acquire by the same session: same lock) so
   that followers read it from there.

Keeping it (confirm): renew the session (404: it was invalidated -> lost), then read the key
(not ours any more -> lost). Consul invalidates a session no earlier than TTL after its last
renewal (and may wait up to 2 x TTL); mesh's Leadership stops claiming the term at TTL after the
last confirmation began, so the old leader steps down before Consul frees the lock, and
lock-delay adds a margin for clock-rate differences.

Giving it up (release): release the key (no lock-delay: we know we stopped), destroy the session.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from discovery.base import DiscoveryError
from discovery.consul import ConsulDiscovery, KeyState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConsulHolder:
    """Who holds a group's key: the leader's id, its term's epoch, what it advertised."""

    leader_id: str
    epoch: int
    advert: Mapping[str, str] = field(default_factory=dict)
    session: str = ""


class ConsulLock:
    """One group's leader key and this candidate's session (thread-safe; calls block)."""

    def __init__(
        self,
        consul: ConsulDiscovery,
        group: str,
        *,
        prefix: str = "mesh/groups",
        ttl_s: float = 10.0,
        lock_delay_s: float = 15.0,
        session_name: str | None = None,
        node_checks: list[str] | None = None,
    ) -> None:
        if not group or "/" in group:
            raise DiscoveryError(f"group {group!r} cannot name a Consul key: no '/' and not empty")
        self.consul = consul
        self.group = group
        self.key = f"{prefix.strip('/')}/{group}/leader"
        self.ttl_s = ttl_s
        self.lock_delay_s = lock_delay_s
        self.session_name = session_name or f"mesh group {group} leader"
        self.node_checks = node_checks
        self.session: str | None = None
        self._epoch: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ConsulLock({self.key!r}, session={self.session!r}, epoch={self._epoch})"

    def try_acquire(self, leader_id: str, advert: Mapping[str, str]) -> int | None:
        with self._lock:
            if self.session is not None and not self.consul.renew_session(self.session):
                self.session, self._epoch = None, None
            if self.session is None:
                self.session = self.consul.create_session(
                    self.session_name, ttl_s=self.ttl_s, lock_delay_s=self.lock_delay_s,
                    behavior="release", node_checks=self.node_checks,
                )
            value = {"leader_id": leader_id, "advert": dict(advert)}
            if not self.consul.acquire(self.key, self.session, json.dumps(value).encode()):
                return None
            _, state = self.consul.get_key(self.key)
            if state is None or state.session != self.session:
                return None  # lost between the two calls (invalidated or released)
            epoch = state.modify_index
            value["epoch"] = epoch
            if not self.consul.acquire(self.key, self.session, json.dumps(value).encode()):
                return None
            self._epoch = epoch
            return epoch

    def confirm(self, epoch: int) -> bool:
        with self._lock:
            if self.session is None or self._epoch != epoch:
                return False
            if not self.consul.renew_session(self.session):
                self.session, self._epoch = None, None
                return False
            _, state = self.consul.get_key(self.key)
            if state is None or state.session != self.session:
                return False
            return True

    def leader(self, index: int, wait_s: float) -> tuple[int, ConsulHolder | None]:
        """A blocking query on the key; the holder or None (free, deleted, or in lock-delay)."""
        new_index, state = self.consul.get_key(self.key, index=index, wait_s=wait_s)
        return max(1, new_index), holder_of(state)

    def release(self) -> None:
        with self._lock:
            session, self.session, self._epoch = self.session, None, None
        if session is None:
            return
        try:
            self.consul.release(self.key, session)
        except DiscoveryError as exc:
            log.warning("could not release %s (%s); destroying the session frees it after its lock-delay",
                        self.key, exc)
        try:
            self.consul.destroy_session(session)
        except DiscoveryError as exc:
            log.warning("could not destroy session %s (%s); Consul ends it after its TTL", session, exc)

    def close(self) -> None:
        self.release()


def holder_of(state: KeyState | None) -> ConsulHolder | None:
    """The holder a key state shows, or None when the key is missing or not locked."""
    if state is None or state.session is None:
        return None
    try:
        value = json.loads(state.value or b"{}")
    except ValueError:
        value = {}
    if not isinstance(value, dict):
        value = {}
    advert = value.get("advert") if isinstance(value.get("advert"), dict) else {}
    return ConsulHolder(
        leader_id=str(value.get("leader_id") or ""),
        epoch=int(value.get("epoch") or state.modify_index),
        advert={str(k): str(v) for k, v in advert.items()},
        session=state.session,
    )
