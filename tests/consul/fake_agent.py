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

Test controls: start() / stop() (start again binds the same port and, like a dev agent, starts
with empty state and index 1 unless persist=True: then, like an agent with a data dir and
servers that kept the catalog, registrations, check states and the index survive),
services(), checks(), index, set_index() (a snapshot restore: the index goes backwards, state
stays), requests, set_node_health(), hang() to stop answering (a wedged agent),
fail_next(n) to answer the next n catalog/health reads with 500 "No cluster leader" (agent-local
endpoints such as register and check updates keep working without a leader, as in Consul).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
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
    ) -> None:
        self.acl_token = acl_token
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

    def start(self) -> FakeConsulAgent:
        if self._running:
            return self
        if not self.persist:
            with self._cond:
                self._reset_state()
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
        raise ApiError(405 if route and route[0] in ("agent", "health") else 404, f"method {method} not allowed on {path}")

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
