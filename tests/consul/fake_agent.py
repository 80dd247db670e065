"""An in-process fake Consul agent: the slice of the HTTP API the mesh uses, over real HTTP.

Implemented (shapes follow hashicorp/consul api-docs agent/service, agent/check, health):
- PUT /v1/agent/service/register[?replace-existing-checks=true]  Name, ID, Address, Port, Tags,
  Meta, Check / Checks (TTL, CheckID/ID, Name, Status, Notes, DeregisterCriticalServiceAfter).
  Keys are matched case-insensitively and without underscores, as Consul's decoder does.
- PUT /v1/agent/service/deregister/<id>
- PUT /v1/agent/check/register, PUT /v1/agent/check/deregister/<id>
- PUT /v1/agent/check/pass|warn|fail/<check_id>?note=...   (404 for an unknown check)
- GET /v1/agent/services, GET /v1/agent/checks, GET /v1/agent/self
- GET /v1/health/service/<name>?passing&tag=&index=N&wait=Xs   with X-Consul-Index; a blocking
  query waits until the index is above N or the wait passes (no jitter), as Consul's
  blockingQuery does; the index is agent-wide (like real churn, #3890), never below 1.
- TTL checks turn critical when not fed ("TTL expired (last output before timeout follows): ...");
  DeregisterCriticalServiceAfter removes the service (minimum `min_deregister_critical_s`,
  60 s like Consul unless a test shortens it).
- ACLs (default deny) when started with `acl_token` (a token allowed everything): writes without
  a token get 403 "Permission denied: anonymous token lacks permission ..."; an unknown token gets
  403 "ACL not found"; `limited_token` is a known token with no rules (403 "Permission denied:
  token with AccessorID ... lacks permission" on writes). List reads a token may not see come back
  empty, and X-Consul-Results-Filtered-By-ACLs: true is set only when the request carried a token:
  Consul leaves it off for anonymous requests so as not to leak what exists (agent_endpoint.go,
  "only if the user is authenticated"). GET /v1/agent/self needs agent:read (403 otherwise).
  The token is read as Consul's parseToken does: ?token= first, then X-Consul-Token, then
  Authorization: Bearer.
- A service address of 0.0.0.0, :: or [::] is refused with 400 "Invalid service address".
- TLS when started with `tls=` an ssl.SSLContext (server side; CERT_REQUIRED to ask for client
  certificates); a plain HTTP request to it gets Go's 400 "Client sent an HTTP request to an
  HTTPS server."

Sessions and KV locks (api-docs session, kv; semantics from docs/automate/session):
- PUT /v1/session/create  Name, Node, TTL ("10s"; 10s..24h as Consul: `min_session_ttl_s`
  lowers the floor for tests), LockDelay ("15s" or nanoseconds; at most 60 s, default 15 s),
  Behavior (release | delete), Checks / NodeChecks / ServiceChecks (default serfHealth; a check
  that is critical at creation is refused) -> {"ID": ...}
- PUT /v1/session/renew/<id>  -> [session] (404 "Session id '...' not found" when gone);
  PUT /v1/session/destroy/<id> -> true (also for an unknown id);
  GET /v1/session/info/<id> -> [session] or []; GET /v1/session/list -> [sessions]
  (blocking with ?index=&wait= like every read here).
- Invalidation: destroy, TTL not renewed, or one of its checks going critical (serfHealth:
  set_node_health("critical")). **TTL**: like Consul's servers, the fake invalidates a session
  `session_ttl_multiplier` x TTL after the last create/renew (2, Consul's
  SessionTTLMultiplier: the TTL is a lower bound and Consul waits up to twice as long); a
  test sets 1 for an exact TTL. On invalidation every key the session holds is released
  (behavior release: Session cleared, ModifyIndex bumped, LockIndex kept) or deleted (behavior
  delete), and each such key gets a lock-delay: any ?acquire of it fails (false) until
  LockDelay has passed. An explicit ?release sets no lock-delay (as in Consul).
- PUT /v1/kv/<key>[?acquire=S|?release=S|?cas=N|?flags=N] body = raw value -> true/false.
  acquire: false while another session holds the key or during its lock-delay; a new holder
  increments LockIndex, the holder re-acquiring only updates the value; an unknown session is
  500 "invalid session". release: false unless S holds the key. cas=0: only if missing; cas=N:
  only if ModifyIndex == N.
- GET /v1/kv/<key> -> [{Key, Value (base64 or null), Flags, Session?, LockIndex, CreateIndex,
  ModifyIndex}] with X-Consul-Index (the key's ModifyIndex, or the KV table's index when the
  key is missing: 404 then); blocking with ?index=&wait= wakes when that index passes N.
  DELETE /v1/kv/<key>[?cas=N] -> true/false.
  KV and session reads and writes go to the servers: fail_next(..., prefix="/v1/kv/") or
  "/v1/session/" makes them fail like a leaderless cluster.

Test controls: start() / stop() (start again binds the same port and, like a dev agent, starts
with empty state and index 1 unless persist=True: then, like an agent with a data dir and
servers that kept the catalog, registrations, check states and the index survive),
services(), checks(), index, set_index() (a snapshot restore: the index goes backwards, state
stays), requests, set_node_health(), hang() to stop answering (a wedged agent),
fail_next(n) to answer the next n catalog/health reads with 500 "No cluster leader" (agent-local
endpoints such as register and check updates keep working without a leader, as in Consul).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """A Go duration ("10s", "250ms", "1m30s", "1.5h") in seconds; ValueError if malformed."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {text!r}")
    return total


def _norm(d: dict) -> dict:
    """Keys lower-cased without underscores: "DeregisterCriticalServiceAfter" == "deregister_critical_service_after"."""
    return {k.replace("_", "").lower(): v for k, v in d.items()}


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


@dataclass
class Service:
    id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    create_index: int
    modify_index: int

    def agent_json(self) -> dict:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Meta": dict(self.meta),
            "Port": self.port,
            "Address": self.address,
            "TaggedAddresses": {},
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Datacenter": "dc1",
        }


@dataclass
class Check:
    id: str
    name: str
    service_id: str
    service_name: str
    service_tags: list[str]
    status: str
    notes: str
    output: str
    ttl_s: float | None
    deregister_after_s: float | None
    definition: dict[str, Any]
    create_index: int
    modify_index: int
    deadline: float | None = None  # monotonic time the TTL lapses
    critical_since: float | None = None
    type: str = field(default="ttl")

    def json(self, node: str) -> dict:
        return {
            "Node": node,
            "CheckID": self.id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(self.service_tags),
            "Type": self.type,
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": dict(self.definition),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Session:
    id: str
    name: str
    node: str
    lock_delay_s: float
    behavior: str
    ttl_s: float | None
    ttl_text: str
    multiplier: float
    node_checks: list[str]
    service_checks: list[str]
    create_index: int
    modify_index: int
    deadline: float | None = None  # monotonic time the session is invalidated unless renewed

    def renewed(self) -> None:
        if self.ttl_s is not None:
            self.deadline = time.monotonic() + self.ttl_s * self.multiplier

    def json(self) -> dict:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": int(self.lock_delay_s * 1e9),  # nanoseconds, as Consul answers
            "Behavior": self.behavior,
            "TTL": self.ttl_text,
            "NodeChecks": list(self.node_checks),
            "ServiceChecks": [{"ID": c, "Namespace": ""} for c in self.service_checks] or None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class KVEntry:
    key: str
    value: bytes
    flags: int
    session: str | None
    lock_index: int
    create_index: int
    modify_index: int

    def json(self) -> dict:
        out = {
            "Key": self.key,
            "Value": base64.b64encode(self.value).decode() if self.value else None,
            "Flags": self.flags,
            "LockIndex": self.lock_index,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.session is not None:
            out["Session"] = self.session
        return out


class FakeConsulAgent:
    def __init__(
        self,
        *,
        acl_token: str | None = None,
        min_deregister_critical_s: float = 60.0,
        reaper_interval_s: float = 0.02,
        persist: bool = False,
        node: str = "fake-node",
        tls: ssl.SSLContext | None = None,
        limited_token: str | None = None,
        min_session_ttl_s: float = 10.0,
        session_ttl_multiplier: float = 2.0,
    ) -> None:
        self.acl_token = acl_token
        self.min_session_ttl_s = min_session_ttl_s
        self.session_ttl_multiplier = session_ttl_multiplier
        self.limited_token = limited_token
        self.tls = tls
        self._failures: list[tuple[int, str, str]] = []  # (status, body, path prefix), consumed in order
        self.min_deregister_critical_s = min_deregister_critical_s
        self.reaper_interval_s = reaper_interval_s
        self.persist = persist
        self.node = node
        self.host = "127.0.0.1"
        self.port = 0
        self.requests: list[tuple[str, str, dict[str, list[str]], str | None]] = []
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._running = False
        self._hung = threading.Event()
        self._hang_requests = False
        self._reset_state()

    # -- lifecycle -------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._index = 1
        self._services: dict[str, Service] = {}
        self._checks: dict[str, Check] = {}
        self._node_status = "passing"
        self._sessions: dict[str, Session] = {}
        self._kv: dict[str, KVEntry] = {}
        self._kv_table_index = 1  # raised by every KV write and delete (Consul's kvs/tombstones index)
        self._lock_delays: dict[str, float] = {}  # key -> monotonic time its lock-delay ends

    def start(self) -> FakeConsulAgent:
        if self._running:
            return self
        if not self.persist:
            with self._cond:
                self._reset_state()
        else:
            with self._cond:  # Consul resets session TTL timers on a leader change
                for sess in self._sessions.values():
                    sess.renewed()
        self._hung.clear()
        self._hang_requests = False
        handler = type("Handler", (_Handler,), {"agent": self})
        server = _Server((self.host, self.port), handler)
        server.tls = self.tls
        server.daemon_threads = False  # server_close() joins every request thread
        self.port = server.server_address[1]
        self._server = server
        self._running = True
        self._threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-consul-http"),
            threading.Thread(target=self._reaper, name="fake-consul-reaper"),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Close the port and end every thread (blocked queries return at once)."""
        if not self._running:
            return
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._hung.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(10)
        self._threads = []
        self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def hang(self) -> None:
        """Keep accepting connections but never answer (until stop()): a wedged agent."""
        self._hang_requests = True

    def __enter__(self) -> FakeConsulAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.addr}"

    def fail_next(self, n: int, status: int = 500, body: str = "No cluster leader", prefix: str = "/v1/health/") -> None:
        """Answer the next `n` requests under `prefix` with `status` and `body`.

        Default: a lost leader. Consul's reads go to the servers and fail with 500 "No cluster
        leader"; /v1/agent/* endpoints are served by the local agent and keep working."""
        with self._cond:
            self._failures += [(status, body, prefix)] * n

    def set_index(self, index: int) -> None:
        """Move the index (e.g. backwards: a snapshot restore) and wake blocked queries."""
        with self._cond:
            self._index = max(1, index)
            self._cond.notify_all()

    def _injected_failure(self, path: str) -> tuple[int, str] | None:
        with self._cond:
            for n, (status, body, prefix) in enumerate(self._failures):
                if path.startswith(prefix):
                    del self._failures[n]
                    return status, body
        return None

    # -- state for tests --------------------------------------------------------------------

    @property
    def index(self) -> int:
        with self._cond:
            return self._index

    def services(self) -> dict[str, dict]:
        with self._cond:
            return {sid: s.agent_json() for sid, s in self._services.items()}

    def checks(self) -> dict[str, dict]:
        with self._cond:
            return {cid: c.json(self.node) for cid, c in self._checks.items()}

    def set_node_health(self, status: str) -> None:
        with self._cond:
            self._node_status = status
            self._bump()
            if status == "critical":
                for sess in [x for x in self._sessions.values() if "serfHealth" in x.node_checks]:
                    self._invalidate(sess.id)

    def sessions(self) -> dict[str, dict]:
        with self._cond:
            return {sid: x.json() for sid, x in self._sessions.items()}

    def kv(self) -> dict[str, dict]:
        with self._cond:
            return {k: e.json() for k, e in self._kv.items()}

    def expire_session(self, session_id: str) -> None:
        """Invalidate a session now, as its TTL running out would."""
        with self._cond:
            self._invalidate(session_id)

    # -- internals --------------------------------------------------------------------------

    def _bump(self) -> int:
        """Advance the index and wake blocking queries. Caller holds the condition."""
        self._index += 1
        self._cond.notify_all()
        return self._index

    def _set_status(self, chk: Check, status: str, output: str) -> None:
        now = time.monotonic()
        if status != chk.status or output != chk.output:
            chk.modify_index = self._bump()
        if status == "critical":
            if chk.status != "critical" or chk.critical_since is None:
                chk.critical_since = now
        else:
            chk.critical_since = None
        chk.status = status
        chk.output = output
        if status == "critical":
            for sess in [x for x in self._sessions.values() if chk.id in x.service_checks or chk.id in x.node_checks]:
                self._invalidate(sess.id)

    def _invalidate(self, session_id: str) -> None:
        """End a session: release or delete its keys, each with the session's lock-delay. Caller
        holds the condition."""
        sess = self._sessions.pop(session_id, None)
        if sess is None:
            return
        now = time.monotonic()
        for key, entry in list(self._kv.items()):
            if entry.session != session_id:
                continue
            if sess.lock_delay_s > 0:
                self._lock_delays[key] = now + sess.lock_delay_s
            idx = self._bump()
            self._kv_table_index = idx
            if sess.behavior == "delete":
                del self._kv[key]
            else:
                entry.session = None
                entry.modify_index = idx
        self._bump()

    def _reaper(self) -> None:
        while True:
            with self._cond:
                if not self._running:
                    return
                now = time.monotonic()
                for chk in list(self._checks.values()):
                    if chk.ttl_s is not None and chk.deadline is not None and now >= chk.deadline and chk.status != "critical":
                        self._set_status(
                            chk, "critical", f"TTL expired (last output before timeout follows): {chk.output}"
                        )
                    if (
                        chk.status == "critical"
                        and chk.deregister_after_s is not None
                        and chk.critical_since is not None
                        and chk.service_id in self._services
                        and now - chk.critical_since >= max(chk.deregister_after_s, self.min_deregister_critical_s)
                    ):
                        self._remove_service(chk.service_id)
                for sess in list(self._sessions.values()):
                    if sess.deadline is not None and now >= sess.deadline:
                        self._invalidate(sess.id)
                self._cond.wait(self.reaper_interval_s)

    def _remove_service(self, service_id: str) -> None:
        self._services.pop(service_id, None)
        for cid in [cid for cid, c in self._checks.items() if c.service_id == service_id]:
            del self._checks[cid]
        self._bump()

    def _add_check(self, raw: dict, service: Service | None, default_id: str) -> Check:
        d = _norm(raw)
        ttl = d.get("ttl")
        if not ttl:
            raise ApiError(400, "Invalid check: only TTL checks are supported by the fake agent")
        try:
            ttl_s = parse_duration(str(ttl))
            dcsa = d.get("deregistercriticalserviceafter")
            dcsa_s = parse_duration(str(dcsa)) if dcsa else None
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
        status = str(d.get("status") or "critical")
        if status not in ("passing", "warning", "critical"):
            raise ApiError(400, f"Invalid Check Status: {status!r}")
        check_id = str(d.get("checkid") or d.get("id") or default_id)
        name = str(d.get("name") or (f"Service '{service.name}' check" if service else check_id))
        existing = self._checks.get(check_id)
        chk = Check(
            id=check_id,
            name=name,
            service_id=service.id if service else "",
            service_name=service.name if service else "",
            service_tags=list(service.tags) if service else [],
            status="",
            notes=str(d.get("notes") or ""),
            output="",
            ttl_s=ttl_s,
            deregister_after_s=dcsa_s,
            definition={"TTL": str(ttl), "DeregisterCriticalServiceAfter": str(dcsa or "")},
            create_index=existing.create_index if existing else self._index + 1,
            modify_index=self._index + 1,
            deadline=time.monotonic() + ttl_s,
        )
        self._checks[check_id] = chk
        self._set_status(chk, status, "")
        self._bump()
        return chk

    # -- API --------------------------------------------------------------------------------

    def authorize(self, token: str | None, write: bool, resource: str) -> bool:
        """True: allowed; False: a read to filter. Raises ApiError(403) for a refused write or bad token."""
        if self.acl_token is None:
            return True
        if token is None or token == "":
            if write:
                raise ApiError(
                    403,
                    f"Permission denied: anonymous token lacks permission '{resource}'. The anonymous token "
                    "is used implicitly when a request does not specify a token.",
                )
            return False
        if token == self.limited_token:
            if write:
                raise ApiError(
                    403,
                    f"Permission denied: token with AccessorID '00000000-0000-4000-8000-00000000000b' lacks "
                    f"permission '{resource}'",
                )
            return False
        if token != self.acl_token:
            raise ApiError(403, "ACL not found")
        return True

    @staticmethod
    def filtered_headers(token: str | None, allowed: bool) -> dict[str, str]:
        """Consul marks a filtered answer only for a request that carried a token."""
        return {} if allowed or not token else {"X-Consul-Results-Filtered-By-ACLs": "true"}

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes, token: str | None):
        """Return (status, headers, json-able body or None)."""
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] != ["v1"]:
            raise ApiError(404, "404 page not found")
        route = parts[1:]
        failure = self._injected_failure(path)
        if failure is not None:
            raise ApiError(*failure)
        if method == "PUT" and route[:3] == ["agent", "service", "register"]:
            data = self._json(body)
            name = str(_norm(data).get("name") or "")
            if not name:
                raise ApiError(400, "Missing service name")
            if _is_any(str(_norm(data).get("address") or "")):
                raise ApiError(400, "Invalid service address")
            self.authorize(token, True, f'service:write\' on "{name}')
            return self.register_service(data, replace=query.get("replace-existing-checks", ["false"])[0] == "true")
        if method == "PUT" and route[:3] == ["agent", "service", "deregister"] and len(route) == 4:
            with self._cond:
                svc = self._services.get(route[3])
                self.authorize(token, True, f'service:write\' on "{svc.name if svc else route[3]}')
                if svc is None:
                    raise ApiError(404, f'Unknown service ID "{route[3]}". Ensure that the service ID is passed, not the service name.')
                self._remove_service(route[3])
            return 200, {}, None
        if method == "PUT" and route[:3] == ["agent", "check", "register"]:
            data = _norm(self._json(body))
            with self._cond:
                sid = str(data.get("serviceid") or "")
                svc = self._services.get(sid) if sid else None
                self.authorize(token, True, f'service:write\' on "{svc.name if svc else sid}')
                if sid and svc is None:
                    raise ApiError(400, f'ServiceID "{sid}" does not exist')
                self._add_check(data, svc, default_id=str(data.get("name") or ""))
            return 200, {}, None
        if method == "PUT" and route[:3] == ["agent", "check", "deregister"] and len(route) == 4:
            with self._cond:
                self.authorize(token, True, "node:write")
                if self._checks.pop(route[3], None) is None:
                    raise ApiError(404, f'Unknown check ID "{route[3]}"')
                self._bump()
            return 200, {}, None
        if method == "PUT" and route[:2] == ["agent", "check"] and len(route) == 4 and route[2] in ("pass", "warn", "fail"):
            with self._cond:
                chk = self._checks.get(route[3])
                self.authorize(token, True, f'service:write\' on "{chk.service_name if chk else route[3]}')
                if chk is None or chk.ttl_s is None:
                    raise ApiError(404, f'CheckID "{route[3]}" does not have associated TTL')
                status = {"pass": "passing", "warn": "warning", "fail": "critical"}[route[2]]
                chk.deadline = time.monotonic() + chk.ttl_s
                self._set_status(chk, status, query.get("note", [""])[0])
            return 200, {}, None
        if method == "GET" and route == ["agent", "services"]:
            if not self.authorize(token, False, "service:read"):
                return 200, self.filtered_headers(token, False), {}
            return 200, {}, self.services()
        if method == "GET" and route == ["agent", "checks"]:
            if not self.authorize(token, False, "node:read"):
                return 200, self.filtered_headers(token, False), {}
            return 200, {}, self.checks()
        if method == "GET" and route == ["agent", "self"]:
            if not self.authorize(token, False, "agent:read"):
                who = "anonymous token" if not token else "token with AccessorID '00000000-0000-4000-8000-00000000000b'"
                raise ApiError(403, f"Permission denied: {who} lacks permission 'agent:read' on \"{self.node}\"")
            return 200, {}, {"Config": {"NodeName": self.node, "Datacenter": "dc1"}, "Member": {"Name": self.node}}
        if method == "GET" and route[:2] == ["health", "service"] and len(route) == 3:
            return self.health_service(route[2], query, token)
        if route[:1] == ["session"]:
            return self.session_api(method, route[1:], query, body, token)
        if route[:1] == ["kv"] and len(route) > 1:
            return self.kv_api(method, "/".join(route[1:]), query, body, token)
        raise ApiError(405 if route and route[0] in ("agent", "health", "session", "kv") else 404,
                       f"method {method} not allowed on {path}")

    # -- sessions and KV ----------------------------------------------------------------------

    def _block(self, query: dict[str, list[str]], current) -> None:
        """A blocking read: wait while current() <= ?index, at most ?wait (default 5 min, cap 10).
        Caller holds the condition."""
        try:
            min_index = int(query.get("index", ["0"])[0])
            wait_s = parse_duration(query["wait"][0]) if "wait" in query else 300.0
        except ValueError as exc:
            raise ApiError(400, f"Invalid wait or index: {exc}") from None
        deadline = time.monotonic() + min(wait_s, 600.0)
        if min_index <= 0:
            return
        while self._running and current() <= min_index:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def session_api(self, method: str, route: list[str], query: dict[str, list[str]], body: bytes, token: str | None):
        if method == "PUT" and route == ["create"]:
            d = _norm(self._json(body))
            try:
                ttl_s = parse_duration(str(d["ttl"])) if d.get("ttl") else None
                raw_delay = d.get("lockdelay", "15s")
                # Consul takes a duration string or nanoseconds (what the Go API sends).
                delay_s = raw_delay / 1e9 if isinstance(raw_delay, (int, float)) else parse_duration(str(raw_delay))
            except ValueError as exc:
                raise ApiError(400, f"Request decode failed: {exc}") from None
            if ttl_s is not None and ttl_s != 0 and not (self.min_session_ttl_s <= ttl_s <= 86400):
                raise ApiError(400, f"Invalid Session TTL '{d['ttl']}', must be between [{self.min_session_ttl_s:g}s=24h0m0s]")
            if delay_s > 60:
                raise ApiError(400, f"Invalid LockDelay '{raw_delay}': at most 60s")
            behavior = str(d.get("behavior") or "release")
            if behavior not in ("release", "delete"):
                raise ApiError(400, f"Invalid Behavior setting '{behavior}'")
            if "checks" in d and d["checks"] is not None:
                node_checks = [str(c) for c in d["checks"]]
            else:
                node_checks = [str(c) for c in d.get("nodechecks") or []] if "nodechecks" in d else ["serfHealth"]
            service_checks = [str((c or {}).get("ID") or (c or {}).get("id") or "") for c in d.get("servicechecks") or []]
            with self._cond:
                self.authorize(token, True, "session:write")
                for cid in node_checks + service_checks:
                    status = self._node_status if cid == "serfHealth" else (self._checks[cid].status if cid in self._checks else None)
                    if status is None:
                        raise ApiError(500, f"Missing check '{cid}' registration")
                    if status == "critical":
                        raise ApiError(500, f"Check '{cid}' is in critical state")
                idx = self._bump()
                sess = Session(
                    id=str(uuid.uuid4()), name=str(d.get("name") or ""), node=str(d.get("node") or self.node),
                    lock_delay_s=delay_s, behavior=behavior, ttl_s=ttl_s or None, ttl_text=str(d.get("ttl") or ""),
                    multiplier=self.session_ttl_multiplier, node_checks=node_checks, service_checks=service_checks,
                    create_index=idx, modify_index=idx,
                )
                sess.renewed()
                self._sessions[sess.id] = sess
            return 200, {}, {"ID": sess.id}
        if method == "PUT" and route[:1] == ["renew"] and len(route) == 2:
            with self._cond:
                self.authorize(token, True, "session:write")
                sess = self._sessions.get(route[1])
                if sess is None:
                    raise ApiError(404, f"Session id '{route[1]}' not found")
                sess.renewed()
                return 200, {}, [sess.json()]
        if method == "PUT" and route[:1] == ["destroy"] and len(route) == 2:
            with self._cond:
                self.authorize(token, True, "session:write")
                self._invalidate(route[1])
            return 200, {}, True
        if method == "GET" and route[:1] == ["info"] and len(route) == 2:
            allowed = self.authorize(token, False, "session:read")
            with self._cond:
                self._block(query, lambda: self._index)
                sess = self._sessions.get(route[1]) if allowed else None
                return 200, self._read_headers(self._index), ([sess.json()] if sess else [])  # [] as Consul, not null
        if method == "GET" and route == ["list"]:
            allowed = self.authorize(token, False, "session:read")
            with self._cond:
                self._block(query, lambda: self._index)
                found = [x.json() for x in self._sessions.values()] if allowed else []
                return 200, self._read_headers(self._index), found
        raise ApiError(405, f"method {method} not allowed on /v1/session/{'/'.join(route)}")

    @staticmethod
    def _read_headers(index: int) -> dict[str, str]:
        return {"X-Consul-Index": str(max(1, index)), "X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}

    def _kv_index(self, key: str) -> int:
        entry = self._kv.get(key)
        return entry.modify_index if entry is not None else self._kv_table_index

    def kv_api(self, method: str, key: str, query: dict[str, list[str]], body: bytes, token: str | None):
        if method == "GET":
            allowed = self.authorize(token, False, f"key:read' on \"{key}")
            with self._cond:
                self._block(query, lambda: self._kv_index(key))
                entry = self._kv.get(key) if allowed else None
                headers = self._read_headers(self._kv_index(key))
                if entry is None:
                    return 404, headers, None
                return 200, headers, [entry.json()]
        if method == "DELETE":
            with self._cond:
                self.authorize(token, True, f"key:write' on \"{key}")
                entry = self._kv.get(key)
                if "cas" in query:
                    cas = int(query["cas"][0])
                    if entry is None or entry.modify_index != cas:
                        return 200, {}, False
                if entry is not None:
                    del self._kv[key]
                    self._kv_table_index = self._bump()
            return 200, {}, True
        if method != "PUT":
            raise ApiError(405, f"method {method} not allowed on /v1/kv/{key}")
        with self._cond:
            self.authorize(token, True, f"key:write' on \"{key}")
            entry = self._kv.get(key)
            try:
                flags = int(query["flags"][0]) if "flags" in query else None
                cas = int(query["cas"][0]) if "cas" in query else None
            except ValueError as exc:
                raise ApiError(400, f"Invalid flags or cas: {exc}") from None
            if cas is not None:
                if (cas == 0 and entry is not None) or (cas > 0 and (entry is None or entry.modify_index != cas)):
                    return 200, {}, False
            if "acquire" in query:
                sid = query["acquire"][0]
                if sid not in self._sessions:
                    raise ApiError(500, f'invalid session "{sid}"')
                if entry is not None and entry.session is not None and entry.session != sid:
                    return 200, {}, False
                if self._lock_delays.get(key, 0.0) > time.monotonic() and (entry is None or entry.session != sid):
                    return 200, {}, False
                idx = self._bump()
                if entry is None:
                    entry = self._kv[key] = KVEntry(key=key, value=body, flags=flags or 0, session=sid,
                                                    lock_index=1, create_index=idx, modify_index=idx)
                else:
                    if entry.session != sid:
                        entry.lock_index += 1
                    entry.session = sid
                    entry.value = body
                    entry.flags = entry.flags if flags is None else flags
                    entry.modify_index = idx
                self._kv_table_index = idx
                return 200, {}, True
            if "release" in query:
                sid = query["release"][0]
                if entry is None or entry.session != sid:
                    return 200, {}, False
                idx = self._bump()
                entry.session = None
                entry.value = body if body else entry.value
                entry.modify_index = idx
                self._kv_table_index = idx
                return 200, {}, True
            idx = self._bump()
            if entry is None:
                self._kv[key] = KVEntry(key=key, value=body, flags=flags or 0, session=None,
                                        lock_index=0, create_index=idx, modify_index=idx)
            else:  # a plain write to a locked key is allowed: Consul's locks are advisory
                entry.value = body
                entry.flags = entry.flags if flags is None else flags
                entry.modify_index = idx
            self._kv_table_index = idx
            return 200, {}, True

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            data = json.loads(body or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "Request decode failed: expected an object")
        return data

    def register_service(self, data: dict, replace: bool):
        d = _norm(data)
        name = str(d.get("name") or "")
        if not name:
            raise ApiError(400, "Missing service name")
        sid = str(d.get("id") or name)
        meta = d.get("meta") or {}
        for k, v in meta.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", k) or k.startswith("consul-"):
                raise ApiError(400, f"Invalid Service Meta: Key contains invalid characters: {k!r}")
            if len(str(v)) > 512:
                raise ApiError(400, f"Invalid Service Meta: Value is too long (limit: 512 characters): {k!r}")
        raw_checks = list(d.get("checks") or [])
        if d.get("check"):
            raw_checks.insert(0, d["check"])
        with self._cond:
            existing = self._services.get(sid)
            svc = Service(
                id=sid,
                name=name,
                address=str(d.get("address") or ""),
                port=int(d.get("port") or 0),
                tags=[str(t) for t in d.get("tags") or []],
                meta={str(k): str(v) for k, v in meta.items()},
                create_index=existing.create_index if existing else self._index + 1,
                modify_index=self._index + 1,
            )
            self._services[sid] = svc
            new_ids = set()
            for n, raw in enumerate(raw_checks, start=1):
                default_id = f"service:{sid}" if len(raw_checks) == 1 else f"service:{sid}:{n}"
                new_ids.add(self._add_check(raw, svc, default_id).id)
            if replace:
                for cid in [c.id for c in self._checks.values() if c.service_id == sid and c.id not in new_ids]:
                    del self._checks[cid]
            self._bump()
        return 200, {}, None

    def health_service(self, name: str, query: dict[str, list[str]], token: str | None):
        allowed = self.authorize(token, False, f'service:read\' on "{name}')
        try:
            min_index = int(query.get("index", ["0"])[0])
            wait_s = parse_duration(query["wait"][0]) if "wait" in query else 300.0
        except ValueError as exc:
            raise ApiError(400, f"Invalid wait or index: {exc}") from None
        wait_s = min(wait_s, 600.0)
        passing = "passing" in query and query["passing"][0].lower() not in ("0", "false")
        tags = query.get("tag", [])
        deadline = time.monotonic() + wait_s
        with self._cond:
            if min_index > 0:
                while self._running and self._index <= min_index:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            index = max(1, self._index)
            entries = []
            if allowed:
                for svc in sorted(self._services.values(), key=lambda s: s.id):
                    if svc.name != name or any(t not in svc.tags for t in tags):
                        continue
                    checks = [self._serf_check()] + [
                        c.json(self.node) for c in sorted(self._checks.values(), key=lambda c: c.id) if c.service_id == svc.id
                    ]
                    if passing and any(c["Status"] != "passing" for c in checks):
                        continue
                    entries.append(
                        {
                            "Node": {
                                "ID": "00000000-0000-0000-0000-000000000001",
                                "Node": self.node,
                                "Address": "127.0.0.1",
                                "Datacenter": "dc1",
                                "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
                                "Meta": {"consul-network-segment": ""},
                                "CreateIndex": 1,
                                "ModifyIndex": 1,
                            },
                            "Service": {**svc.agent_json(), "CreateIndex": svc.create_index, "ModifyIndex": svc.modify_index},
                            "Checks": checks,
                        }
                    )
        headers = {"X-Consul-Index": str(index), "X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}
        headers.update(self.filtered_headers(token, allowed))
        return 200, headers, entries

    def _serf_check(self) -> dict:
        return {
            "Node": self.node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": self._node_status,
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Definition": {},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }


def _is_any(address: str) -> bool:
    """Consul's ipaddr.IsAny: 0.0.0.0, :: and [::]."""
    text = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    try:
        return ipaddress.ip_address(text).is_unspecified
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with optional TLS; the handshake runs on the request's own thread, so a
    client that never completes it blocks nobody else."""

    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:  # noqa: ANN001
        if self.tls is not None:
            request.settimeout(10)
            try:
                first = request.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if first and first != b"\x16":  # not a TLS handshake record: plain HTTP, as Go answers it
                try:
                    request.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                except OSError:
                    pass
                return
            request = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                # A refused client certificate, an unknown CA...: OpenSSL has sent the alert. Close
                # gracefully (FIN, then drain what the client sent) so that a reset does not
                # overtake the alert, which a TLS 1.3 client reads only after sending its request.
                _drain_and_close(request)
                return
            request.settimeout(None)
            try:
                super().finish_request(request, client_address)
            finally:
                request.close()  # the plain socket was detached into the TLS one
            return
        super().finish_request(request, client_address)


def _drain_and_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)  # on an SSLSocket this drops TLS and shuts the TCP side
        sock.settimeout(1.0)
        while socket.socket.recv(sock, 4096):
            pass
    except OSError:
        pass
    finally:
        sock.close()


class _Handler(BaseHTTPRequestHandler):
    agent: FakeConsulAgent
    protocol_version = "HTTP/1.0"  # one request per connection: stop() never waits on keep-alive

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self, method: str) -> None:
        agent = self.agent
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        # Consul's parseToken: the ?token= query parameter wins, then X-Consul-Token, then Bearer.
        token = query["token"][0] if "token" in query else self.headers.get("X-Consul-Token")
        if token is None and self.headers.get("Authorization", "").startswith("Bearer "):
            token = self.headers["Authorization"][7:]
        agent.requests.append((method, url.path, query, token))
        if agent._hang_requests:
            agent._hung.wait()  # until stop()
            return
        try:
            status, headers, payload = agent.handle(method, url.path, query, body, token)
        except ApiError as exc:
            status, headers, payload = exc.status, {"Content-Type": "text/plain; charset=utf-8"}, exc.body
        if payload is None:
            data = b""
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", **headers}
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")
