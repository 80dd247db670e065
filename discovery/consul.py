"""Discovery through a Consul agent, on py-consul (`import consul`).

Registration: one service per node run (name, id, address, port, tags, meta) with one TTL
check of our own id, `service:<instance_id>:ttl`, carrying DeregisterCriticalServiceAfter.
heartbeat() feeds that check (pass / warn with a note / fail), so liveness is proven by the
node's own event loop: a wedged loop stops heart-beating and the check goes critical after
ttl_s (see docs/decisions/002-discovery.md). The agent losing our registration (restart of a
dev agent, a 404 for the check) or a failed heartbeat makes the next heartbeat register again.

Reads: GET /v1/health/service/<name> as a blocking query; each entry's health is the worst of
its checks (serfHealth included, as Consul's `?passing` does). A read that ACLs emptied
(X-Consul-Results-Filtered-By-ACLs) raises DiscoveryAuthError instead of looking like "no nodes".
Consul sends that header only to a request that carries a token, so an empty answer to a
request without one is logged as a likely missing token when the agent refuses anonymous
requests (one GET /v1/agent/self tells).

Sessions and KV locks (for leader election, see discovery/leadership.py): create_session
(TTL, LockDelay, Behavior as Go durations, so tests may use sub-10 s values where an agent
allows them), renew_session (False once the session is gone: Consul answers 404),
destroy_session, session_info, acquire / release (true/false, as Consul answers), get_key
(a blocking query on one key: (index, KeyState | None)), put_key and delete_key (with cas).
A session is invalidated by Consul at the earliest TTL after its last renewal and possibly
up to twice that (SessionTTLMultiplier); its locks are then released (or deleted) and held
back from other sessions for LockDelay.

TLS: `verify` (False or a CA file) and `cert` (client certificate and key) go to py-consul as
they are. A certificate the other side refuses, or a plain-HTTP agent behind an https://
address, is a DiscoveryAuthError / DiscoveryError with the reason, not "unreachable".

The ACL token travels only in the X-Consul-Token header (py-consul's way): it is in no URL
we build, so in no log line of ours or of urllib3, and in no error message (tested).

py-consul quirks handled here:
- `Check.ttl()` takes no deregister argument: DeregisterCriticalServiceAfter is added by hand.
- its sync client reads CONSUL_HTTP_TOKEN in preference to an explicit token, and
  CONSUL_HTTP_ADDR / CONSUL_HTTP_SSL / CONSUL_HTTP_SSL_VERIFY when host, port, scheme or verify
  are missing: we always pass them and set the token after construction, so this library
  never reads the environment (nodes/ does, through consul_url_from_env).
- every HTTP call gets `connections_timeout` (the agent must answer within timeout_s; a
  blocking query gets its wait plus wait/16 jitter on top).
- `wait` is only sent with an index, and an index without wait blocks for Consul's default
  5 minutes, so the index is only sent when the caller asked to wait.
- requests sessions are not documented as thread-safe: each thread gets its own client.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import consul
import requests
from consul.callback import CB
from consul.exceptions import BadRequest, ClientError, NotFound

from discovery.base import (
    DiscoveryAuthError,
    DiscoveryError,
    DiscoveryUnavailable,
    Health,
    Instance,
    validate_instance,
    worst,
    parse_addr,
)

log = logging.getLogger(__name__)

_TTL_CALL = {Health.PASSING: "ttl_pass", Health.WARNING: "ttl_warn", Health.CRITICAL: "ttl_fail"}
_STATUS = {"passing": Health.PASSING, "warning": Health.WARNING, "critical": Health.CRITICAL}
# Consul's answers when it does not know a check: 404 (recent agents) or 500 (older ones).
_UNKNOWN_CHECK_MARKERS = ("does not have associated TTL", "Unknown check", "not found")


@dataclass(frozen=True, slots=True)
class KeyState:
    """One Consul KV entry as read: its value, the session holding its lock (None when free),
    how many times a new session acquired it (LockIndex) and the Raft indexes of its creation
    and last write (ModifyIndex grows with every write, release and invalidation)."""

    key: str
    value: bytes
    session: str | None
    lock_index: int
    create_index: int
    modify_index: int
    flags: int = 0


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string Consul parses: 10 -> "10s", 0.25 -> "250ms"."""
    if seconds <= 0:
        raise DiscoveryError(f"a duration must be > 0 seconds, got {seconds!r}")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


class ConsulDiscovery:
    """A Consul agent as the registry. Thread-safe; close() releases the HTTP sessions."""

    def __init__(
        self,
        addr: str = "127.0.0.1:8500",
        token: str | None = None,
        *,
        timeout_s: float = 5.0,
        verify: bool | str = True,
        cert: tuple[str, str] | str | None = None,
        datacenter: str | None = None,
        missing_token_log_every_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scheme, self._host, self._port = parse_addr(addr)
        self.addr = f"{self._scheme}://{self._host}:{self._port}"
        self._token = token or None
        self._timeout_s = timeout_s
        self._verify = verify
        self._cert = cert
        self._datacenter = datacenter
        self._clock = clock
        self._missing_token_log_every_s = missing_token_log_every_s
        self._empty_logged: dict[str, float] = {}  # service -> when an empty answer was last logged
        self._anonymous_refused: bool | None = None
        self._local = threading.local()
        self._clients: list[consul.Consul] = []
        self._lock = threading.Lock()
        self._closed = False
        self._warned_filtered: set[str] = set()

    def __repr__(self) -> str:
        return f"ConsulDiscovery({self.addr!r}, token={'***' if self._token else None})"

    # -- HTTP plumbing -------------------------------------------------------------------------

    def client(self) -> consul.Consul:
        """This thread's py-consul client (one requests session per thread)."""
        c = getattr(self._local, "client", None)
        if c is None:
            with self._lock:
                if self._closed:
                    raise DiscoveryError(f"{self!r} is closed")
                c = consul.Consul(
                    host=self._host,
                    port=self._port,
                    scheme=self._scheme,
                    verify=self._verify,
                    cert=self._cert,
                    dc=self._datacenter,
                    connections_timeout=self._timeout_s,
                )
                c.token = self._token  # py-consul would prefer CONSUL_HTTP_TOKEN from the environment
                self._clients.append(c)
            self._local.client = c
        return c

    def call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        """Run one py-consul call, turning its failures into discovery errors."""
        try:
            return fn(*args, **kwargs)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            tls = _ssl_error(exc)
            if tls is not None:
                raise self._tls_error(what, tls) from exc
            kind = "did not answer in time" if isinstance(exc, requests.exceptions.Timeout) else "is unreachable"
            raise DiscoveryUnavailable(
                f"Consul agent at {self.addr} {kind} ({what}): {type(exc).__name__}; "
                "is the agent running and the address right?"
            ) from exc
        except (consul.ACLPermissionDenied, consul.ACLDisabled) as exc:
            given = "the ACL token given" if self._token else "the anonymous token (no token given)"
            raise DiscoveryAuthError(
                f"Consul refused {given} for {what} at {self.addr}: {_body(exc)}. Pass a token with "
                "service:write on the service (and service:read, node:read to watch) in "
                "CONSUL_HTTP_TOKEN or a file named by CONSUL_HTTP_TOKEN_FILE"
            ) from exc
        except (BadRequest, ClientError, NotFound) as exc:
            raise DiscoveryError(f"Consul at {self.addr} rejected {what}: {exc}") from exc
        except consul.ConsulException as exc:  # 5xx (e.g. "No cluster leader") or an unreadable answer
            raise DiscoveryUnavailable(f"Consul agent at {self.addr} failed {what}: {exc}") from exc
        except requests.exceptions.RequestException as exc:
            raise DiscoveryUnavailable(f"Consul agent at {self.addr}: {what} failed: {exc}") from exc

    def _tls_error(self, what: str, exc: ssl.SSLError) -> DiscoveryError:
        """A TLS failure as an error that says which side refused what and what to set."""
        reason = str(getattr(exc, "reason", None) or "").upper()
        detail = reason.lower().replace("_", " ") or str(exc)
        if getattr(exc, "verify_message", None):
            detail = f"certificate verify failed: {exc.verify_message}"
        head = f"TLS with the Consul agent at {self.addr} failed ({what}): {detail}"
        if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in reason:
            return DiscoveryAuthError(
                f"{head}. The agent's certificate is not signed by the CA we trust or does not name "
                f"{self._host}: set CONSUL_CACERT to the CA that signed it"
            )
        if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:  # an alert from the agent about our cert
            return DiscoveryAuthError(
                f"{head}. The agent refused our client certificate (or got none): set CONSUL_CLIENT_CERT "
                "and CONSUL_CLIENT_KEY to a certificate signed by the agent's CA"
            )
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
            return DiscoveryError(f"{head}. Is the agent serving HTTPS on this port? Use http:// if it is not")
        return DiscoveryUnavailable(head)

    # -- Discovery ----------------------------------------------------------------------------

    def register(
        self, instance: Instance, *, ttl_s: float = 10.0, deregister_after_s: float = 60.0
    ) -> ConsulRegistration:
        """Register `instance` with its TTL check; the check starts as `instance.health`.

        Consul keeps deregister_after_s at 1 minute at least and reaps every 30 s: it is garbage
        collection of dead runs, not failure detection (that is the TTL and `passing_only`).
        """
        validate_instance(instance)
        reg = ConsulRegistration(self, instance, ttl_s=ttl_s, deregister_after_s=deregister_after_s)
        reg.register(instance.health)
        return reg

    def instances(
        self, service: str, *, index: int = 0, wait_s: float = 0.0, passing_only: bool = True
    ) -> tuple[int, list[Instance]]:
        """GET /v1/health/service/<service> (what py-consul's health.service sends), read through
        our own callback so the X-Consul-Results-Filtered-By-ACLs header is seen: a token without
        service:read / node:read gets an empty list with that header instead of an error."""
        params: list[tuple[str, Any]] = []
        if index > 0 and wait_s > 0:
            params += [("index", index), ("wait", go_duration(wait_s))]
        if passing_only:
            params.append(("passing", "1"))
        if self._datacenter:
            params.append(("dc", self._datacenter))
        client = self.client()
        path = f"/v1/health/service/{service}"
        new_index, entries, filtered = self.call(
            f"GET {path}", client.http.get, _health_callback, path, params=params, headers=client.prepare_headers()
        )
        try:
            parsed_index = int(new_index)
        except (TypeError, ValueError):
            raise DiscoveryUnavailable(f"Consul at {self.addr} sent a bad X-Consul-Index {new_index!r}") from None
        found = [_to_instance(service, entry) for entry in entries or []]
        if not entries and not filtered and self._token is None:
            self._note_empty_without_token(service)
        elif entries:
            self._empty_logged.pop(service, None)
        if passing_only:
            found = [inst for inst in found if inst.health == Health.PASSING]
        if filtered:
            given = "the ACL token given" if self._token else "the anonymous token (no token given)"
            message = (
                f"Consul at {self.addr} hid instances of {service!r} from {given} "
                "(X-Consul-Results-Filtered-By-ACLs): it needs service:read on the service and node:read"
            )
            if not found:
                raise DiscoveryAuthError(message)
            if service not in self._warned_filtered:
                self._warned_filtered.add(service)
                log.warning("%s; the list may be incomplete", message)
        return parsed_index, found

    def _note_empty_without_token(self, service: str) -> None:
        """Log, at most every few minutes, that an empty answer may be ACLs hiding everything.

        Consul sets X-Consul-Results-Filtered-By-ACLs only for a request with a token (not to
        leak what exists), so with ACLs on (default deny) and no token every list is empty and
        unmarked: the mesh would see "no nodes" forever. Quiet when the agent answers anonymous
        requests (ACLs off): then empty means empty."""
        now = self._clock()
        last = self._empty_logged.get(service)
        if last is not None and now - last < self._missing_token_log_every_s:
            return
        self._empty_logged[service] = now
        if self._anonymous_refused is None:
            self._anonymous_refused = self._probe_anonymous()
        if self._anonymous_refused is False:
            return
        acl = ("refuses requests without a token (ACLs are on)" if self._anonymous_refused
               else "may have ACLs on")
        log.warning(
            "Consul at %s returned no instances of %r and no ACL-filter header, and %s: Consul marks no "
            "answer to a request without a token as filtered, so the list may be hidden, not empty. "
            "Is CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE) set? The token needs service:read and node:read",
            self.addr, service, acl,
        )

    def _probe_anonymous(self) -> bool | None:
        """True if the agent refuses an anonymous GET /v1/agent/self, False if it answers, None if unknown."""
        try:
            self.call("GET /v1/agent/self", self.client().http.get, CB.json(), "/v1/agent/self")
        except DiscoveryAuthError:
            return True
        except DiscoveryError:
            return None
        return False

    # -- sessions and KV locks ------------------------------------------------------------------

    def create_session(
        self,
        name: str,
        *,
        ttl_s: float | None = 10.0,
        lock_delay_s: float = 15.0,
        behavior: str = "release",
        node_checks: list[str] | None = None,
    ) -> str:
        """PUT /v1/session/create; returns the session id.

        `node_checks` None keeps Consul's default (serfHealth: the session ends when this
        agent's node fails); [] ties the session to its TTL alone. Consul accepts a TTL of
        10 s to 24 h and a LockDelay of 0 to 60 s; py-consul's session.create takes whole
        seconds only, so the body is built here with Go durations."""
        if behavior not in ("release", "delete"):
            raise DiscoveryError(f"session behavior must be 'release' or 'delete', got {behavior!r}")
        body: dict[str, Any] = {"Name": name, "Behavior": behavior,
                                "LockDelay": "0s" if lock_delay_s <= 0 else go_duration(lock_delay_s)}
        if ttl_s:
            body["TTL"] = go_duration(ttl_s)
        if node_checks is not None:
            body["NodeChecks"] = list(node_checks)
        client = self.client()
        params = [("dc", self._datacenter)] if self._datacenter else []
        return self.call(
            f"PUT /v1/session/create ({name})", client.http.put, CB.json(is_id=True), "/v1/session/create",
            params=params, headers=client.prepare_headers(), data=json.dumps(body),
        )

    def renew_session(self, session_id: str) -> bool:
        """PUT /v1/session/renew/<id>: True when renewed, False when the session is gone (404:
        invalidated by TTL, a check or a destroy). Other failures raise."""
        client = self.client()

        def callback(response):
            if response.code == 404:
                return False
            CB._status(response)
            return True

        return self.call(f"PUT /v1/session/renew/{session_id}", client.http.put, callback,
                         f"/v1/session/renew/{session_id}", params=self._dc_params(),
                         headers=client.prepare_headers())

    def destroy_session(self, session_id: str) -> None:
        """PUT /v1/session/destroy/<id>: invalidate now (its locks are released or deleted and get
        their lock-delay). Idempotent: an unknown id is no error."""
        client = self.client()
        self.call(f"PUT /v1/session/destroy/{session_id}", client.session.destroy, session_id)

    def session_info(self, session_id: str) -> dict | None:
        """GET /v1/session/info/<id>: the session as Consul describes it, or None when gone."""
        client = self.client()
        _, info = self.call(f"GET /v1/session/info/{session_id}", client.session.info, session_id)
        return info

    def acquire(self, key: str, session_id: str, value: bytes = b"") -> bool:
        """PUT /v1/kv/<key>?acquire=<session>: True when the session holds the lock now (also when
        it held it already: the value is updated); False when another session holds it or the
        key is in its lock-delay after the last holder's session was invalidated."""
        client = self.client()
        return bool(self.call(f"PUT /v1/kv/{key}?acquire", client.kv.put, key, value, acquire=session_id))

    def release(self, key: str, session_id: str) -> bool:
        """PUT /v1/kv/<key>?release=<session>: False when the session does not hold the lock.
        An explicit release sets no lock-delay (only an invalidated session does)."""
        client = self.client()
        return bool(self.call(f"PUT /v1/kv/{key}?release", client.kv.put, key, None, release=session_id))

    def get_key(self, key: str, *, index: int = 0, wait_s: float = 0.0) -> tuple[int, KeyState | None]:
        """GET /v1/kv/<key> -> (X-Consul-Index, the entry or None when missing). With index > 0 and
        wait_s > 0 a blocking query: it returns when the key may have changed since `index` or
        when wait_s passes (a return is no proof of a change: compare the state)."""
        client = self.client()
        kwargs: dict[str, Any] = {}
        if index > 0 and wait_s > 0:
            kwargs = {"index": index, "wait": go_duration(wait_s)}
        raw_index, entry = self.call(f"GET /v1/kv/{key}", client.kv.get, key, **kwargs)
        try:
            new_index = int(raw_index)
        except (TypeError, ValueError):
            raise DiscoveryUnavailable(f"Consul at {self.addr} sent a bad X-Consul-Index {raw_index!r}") from None
        if entry is None:
            return new_index, None
        return new_index, KeyState(
            key=str(entry.get("Key") or key),
            value=entry.get("Value") or b"",
            session=entry.get("Session") or None,
            lock_index=int(entry.get("LockIndex") or 0),
            create_index=int(entry.get("CreateIndex") or 0),
            modify_index=int(entry.get("ModifyIndex") or 0),
            flags=int(entry.get("Flags") or 0),
        )

    def put_key(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        """PUT /v1/kv/<key>[?cas=N]: False when the check-and-set did not match."""
        client = self.client()
        return bool(self.call(f"PUT /v1/kv/{key}", client.kv.put, key, value, cas=cas))

    def delete_key(self, key: str, *, cas: int | None = None) -> bool:
        """DELETE /v1/kv/<key>[?cas=N]: False when the check-and-set did not match."""
        client = self.client()
        return bool(self.call(f"DELETE /v1/kv/{key}", client.kv.delete, key, cas=cas))

    def _dc_params(self) -> list[tuple[str, str]]:
        return [("dc", self._datacenter)] if self._datacenter else []

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for c in clients:
            c.http.session.close()


def _health_callback(response) -> tuple[str | None, Any, bool]:
    """(X-Consul-Index, decoded body, filtered-by-ACLs) of a health query; errors as py-consul raises them."""
    CB._status(response)  # 403 -> ACLPermissionDenied, 5xx -> ConsulException, ...
    if response.code == 404:
        return response.headers.get("X-Consul-Index"), [], False
    try:
        data = json.loads(response.body)
    except ValueError as exc:
        raise consul.ConsulException(f"Failed to decode JSON: {response.body[:200]!r} {exc}") from exc
    if "X-Consul-Index" not in response.headers:
        raise consul.ConsulException(f"Missing index header: {dict(response.headers)}")
    filtered = str(response.headers.get("X-Consul-Results-Filtered-By-ACLs", "")).lower() == "true"
    return response.headers["X-Consul-Index"], data, filtered


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError under a requests/urllib3 error, if any (they nest it in args and .reason)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        cur = todo.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError):
            return cur
        todo += [*cur.args, getattr(cur, "reason", None), cur.__cause__, cur.__context__]
    return None


def _body(exc: Exception) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _to_instance(service: str, entry: dict) -> Instance:
    svc = entry.get("Service") or {}
    node = entry.get("Node") or {}
    statuses = [_STATUS.get(str(chk.get("Status", "")).lower(), Health.CRITICAL) for chk in entry.get("Checks") or []]
    return Instance(
        service=str(svc.get("Service") or service),
        instance_id=str(svc.get("ID") or ""),
        # An empty service address means "the node's address" in Consul.
        address=str(svc.get("Address") or node.get("Address") or ""),
        port=int(svc.get("Port") or 0),
        tags=tuple(svc.get("Tags") or ()),
        meta={str(k): str(v) for k, v in (svc.get("Meta") or {}).items()},
        health=worst(statuses),
    )


class ConsulRegistration:
    """One node run in Consul: the service, its TTL check, and re-registration after loss."""

    def __init__(self, owner: ConsulDiscovery, instance: Instance, *, ttl_s: float, deregister_after_s: float) -> None:
        self._owner = owner
        self._instance = instance
        self._ttl = go_duration(ttl_s)
        self._deregister_after = go_duration(deregister_after_s)
        self.service_id = instance.instance_id
        self.check_id = f"service:{instance.instance_id}:ttl"
        self._lock = threading.Lock()
        self._needs_register = False
        self._done = False
        self.registrations = 0  # how many times the service was (re-)registered

    def check_definition(self, status: Health) -> dict[str, Any]:
        check = consul.Check.ttl(self._ttl)  # {"ttl": "10s"}: no deregister argument in py-consul
        check.update(
            {
                "CheckID": self.check_id,
                "Name": f"mesh liveness of {self.service_id}",
                "Notes": "TTL fed by the node's event loop; critical when the loop stops turning",
                "Status": str(status),
                "DeregisterCriticalServiceAfter": self._deregister_after,
            }
        )
        return check

    def register(self, status: Health = Health.PASSING) -> None:
        inst = self._instance
        self._owner.call(
            f"PUT /v1/agent/service/register ({inst.service} {inst.instance_id})",
            self._owner.client().agent.service.register,
            inst.service,
            service_id=inst.instance_id,
            address=inst.address,
            port=inst.port,
            tags=list(inst.tags),
            meta=dict(inst.meta),
            check=self.check_definition(status),
            replace_existing_checks=True,
        )
        self.registrations += 1

    def heartbeat(self, health: Health = Health.PASSING, note: str = "") -> None:
        health = Health(health)
        with self._lock:
            if self._done:
                return
            try:
                if self._needs_register:
                    log.info("re-registering %s with the Consul agent at %s", self.service_id, self._owner.addr)
                    self.register(health)
                    self._needs_register = False
                if not self._update_ttl(health, note):
                    log.warning(
                        "the Consul agent at %s does not know check %s (agent restarted?); re-registering %s",
                        self._owner.addr, self.check_id, self.service_id,
                    )
                    self.register(health)
                    if not self._update_ttl(health, note):
                        raise DiscoveryUnavailable(
                            f"Consul agent at {self._owner.addr} still does not know check {self.check_id} "
                            "right after registering it"
                        )
            except DiscoveryError:
                self._needs_register = True
                raise

    def _update_ttl(self, health: Health, note: str) -> bool:
        """PUT the TTL status; False when the agent does not know the check."""
        fn = getattr(self._owner.client().agent.check, _TTL_CALL[health])
        try:
            return bool(
                self._owner.call(f"PUT /v1/agent/check/{health} {self.check_id}", fn, self.check_id, notes=note or None)
            )  # py-consul answers False on a 404
        except DiscoveryError as exc:
            if any(marker in str(exc) for marker in _UNKNOWN_CHECK_MARKERS) and not isinstance(exc, DiscoveryAuthError):
                return False
            raise

    def deregister(self) -> None:
        """Remove the service and its check. Idempotent; an unreachable agent is logged, not raised
        (Consul reaps the run after DeregisterCriticalServiceAfter anyway)."""
        with self._lock:
            if self._done:
                return
            self._done = True
            try:
                self._owner.call(
                    f"PUT /v1/agent/service/deregister/{self.service_id}",
                    self._owner.client().agent.service.deregister,
                    self.service_id,
                )
            except DiscoveryError as exc:
                log.warning(
                    "could not deregister %s (%s); Consul removes it %s after its check goes critical",
                    self.service_id, exc, self._deregister_after,
                )
