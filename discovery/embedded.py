"""Discovery on one host without a server: a directory of lease files.

Layout: `<dir>/<service>/<instance_id>.json`, written atomically (temporary file + os.replace).
A lease holds the Instance fields, the registering pid (with its start time, so a reused pid
is not mistaken for the node), the host name, ttl_s and deregister_after_s. The file's mtime is
the last renewal: a heartbeat with unchanged health and note is one os.utime call; a change of
health or note rewrites the file.

Readers decide health the way a Consul agent would:
- the registering process no longer exists on this host (kill -9, crash): gone at once, the
  file is removed by whichever reader sees it first;
- the lease was not renewed within ttl_s (process stopped, event loop wedged): CRITICAL;
- CRITICAL for longer than deregister_after_s: removed by any reader;
- otherwise the health last reported by heartbeat().

Blocking queries poll the directory every `poll_s` and keep, per Discovery object and query,
an index that grows whenever the visible set (ids, addresses, meta, health) changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from discovery.base import (
    DiscoveryError,
    DiscoveryUnavailable,
    Health,
    Instance,
    membership_key,
    validate_instance,
)

log = logging.getLogger(__name__)

LEASE_SUFFIX = ".json"


def default_registry_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_RUNTIME_DIR/mesh/registry`, else `/tmp/mesh-<uid>/registry`.

    `environ` defaults to os.environ; nodes/ may pass its own mapping.
    """
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "mesh" / "registry"
    return Path(f"/tmp/mesh-{os.getuid()}") / "registry"


def _ensure_private_dir(path: Path) -> None:
    """Create `path` (mode 0700) and refuse a directory another user owns (e.g. a pre-made /tmp one)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise DiscoveryUnavailable(f"cannot create the registry directory {path}: {exc}") from exc
    if st.st_uid != os.getuid():
        raise DiscoveryError(
            f"registry directory {path} belongs to uid {st.st_uid}, not to us (uid {os.getuid()}); "
            "remove it or pass another directory (embedded:///some/dir)"
        )


def _proc_identity(pid: int) -> tuple[str, str] | None:
    """(state, start time) of `pid` from /proc, or None when /proc has no such entry or does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    rest = data[data.rfind(")") + 2 :].split()
    if len(rest) < 20:
        return None
    return rest[0], rest[19]  # field 3: state; field 22: starttime in clock ticks since boot


def _process_start(pid: int) -> str:
    ident = _proc_identity(pid)
    return ident[1] if ident else ""


def process_alive(pid: int, start: str = "") -> bool:
    """True when `pid` runs on this host (and, if known, started at `start`: not a reused pid).

    A zombie (killed, not yet reaped) counts as dead.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    ident = _proc_identity(pid)
    if ident is None:
        return True  # no /proc (not Linux): os.kill is all we know
    state, started = ident
    if state in ("Z", "X"):
        return False
    return not start or start == started


def _duration_ok(name: str, value: float) -> None:
    if not (value > 0):
        raise DiscoveryError(f"{name} must be > 0 seconds, got {value!r}")


class EmbeddedRegistration:
    """A lease file renewed by heartbeat(); see the module docstring for the rules."""

    def __init__(self, owner: EmbeddedDiscovery, instance: Instance, ttl_s: float, deregister_after_s: float) -> None:
        self._owner = owner
        self._instance = instance
        self._ttl_s = ttl_s
        self._deregister_after_s = deregister_after_s
        self._path = owner.lease_path(instance.service, instance.instance_id)
        self._lock = threading.Lock()
        self._health = instance.health
        self._note = ""
        self._done = False
        self._pid = os.getpid()
        self._pid_start = _process_start(self._pid)

    @property
    def path(self) -> Path:
        return self._path

    def _record(self) -> dict:
        inst = self._instance
        return {
            "service": inst.service,
            "instance_id": inst.instance_id,
            "address": inst.address,
            "port": inst.port,
            "tags": list(inst.tags),
            "meta": dict(inst.meta),
            "health": str(self._health),
            "note": self._note,
            "pid": self._pid,
            "pid_start": self._pid_start,
            "host": socket.gethostname(),
            "ttl_s": self._ttl_s,
            "deregister_after_s": self._deregister_after_s,
            "renewed_at": time.time(),
        }

    def write(self) -> None:
        """Write the whole lease atomically (readers never see a half-written file)."""
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        data = json.dumps(self._record(), separators=(",", ":")).encode()
        # No fsync: a lease only matters while this host runs; after a reboot it is stale anyway.
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self._path)

    def heartbeat(self, health: Health = Health.PASSING, note: str = "") -> None:
        health = Health(health)
        with self._lock:
            if self._done:
                return
            try:
                if health == self._health and note == self._note:
                    # The cheap path: one utime syscall renews the lease (mtime = renewal time).
                    try:
                        os.utime(self._path)
                        return
                    except FileNotFoundError:
                        log.info("lease %s was removed by a reader (it looked dead); rewriting it", self._path)
                self._health = health
                self._note = note
                self.write()
            except OSError as exc:
                raise DiscoveryUnavailable(f"cannot renew the lease {self._path}: {exc}") from exc

    def deregister(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            try:
                self._path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the lease %s: %s", self._path, exc)


class EmbeddedDiscovery:
    """The one-host registry. Thread-safe; one object per process is enough."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, poll_s: float = 0.05) -> None:
        self._dir = Path(directory) if directory is not None else default_registry_dir()
        _ensure_private_dir(self._dir)
        self._poll_s = poll_s
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._counter = 0
        # (service, passing_only) -> (fingerprint, index)
        self._seen: dict[tuple[str, bool], tuple[str, int]] = {}

    @property
    def directory(self) -> Path:
        return self._dir

    def lease_path(self, service: str, instance_id: str) -> Path:
        return self._dir / service / f"{instance_id}{LEASE_SUFFIX}"

    def __repr__(self) -> str:
        return f"EmbeddedDiscovery({str(self._dir)!r})"

    # -- Discovery ----------------------------------------------------------------------------

    def register(
        self, instance: Instance, *, ttl_s: float = 10.0, deregister_after_s: float = 60.0
    ) -> EmbeddedRegistration:
        validate_instance(instance)
        _duration_ok("ttl_s", ttl_s)
        _duration_ok("deregister_after_s", deregister_after_s)
        reg = EmbeddedRegistration(self, instance, ttl_s, deregister_after_s)
        try:
            reg.write()
        except OSError as exc:
            raise DiscoveryUnavailable(f"cannot write the lease {reg.path}: {exc}") from exc
        return reg

    def instances(
        self, service: str, *, index: int = 0, wait_s: float = 0.0, passing_only: bool = True
    ) -> tuple[int, list[Instance]]:
        current_index, found = self._snapshot(service, passing_only)
        if index <= 0 or wait_s <= 0 or index != current_index:
            return current_index, found
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.wait(min(self._poll_s, remaining)):
                return current_index, found
            current_index, found = self._snapshot(service, passing_only)
            if current_index != index:
                return current_index, found

    def close(self) -> None:
        """Wake blocked instances() calls; leases stay (each Registration owns its own)."""
        self._closed.set()

    # -- reading ------------------------------------------------------------------------------

    def _snapshot(self, service: str, passing_only: bool) -> tuple[int, list[Instance]]:
        found = self.read(service)
        if passing_only:
            found = [inst for inst in found if inst.health == Health.PASSING]
        fingerprint = hashlib.blake2b(repr(membership_key(found)).encode(), digest_size=16).hexdigest()
        with self._lock:
            key = (service, passing_only)
            seen = self._seen.get(key)
            if seen is not None and seen[0] == fingerprint:
                return seen[1], found
            self._counter += 1
            self._seen[key] = (fingerprint, self._counter)
            return self._counter, found

    def read(self, service: str) -> list[Instance]:
        """Every instance of `service` with its health, removing leases of dead processes."""
        folder = self._dir / service
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DiscoveryUnavailable(f"cannot read the registry directory {folder}: {exc}") from exc
        now = time.time()
        result = []
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(LEASE_SUFFIX):
                continue
            inst = self._read_lease(folder / name, now)
            if inst is not None:
                result.append(inst)
        return result

    def _read_lease(self, path: Path, now: float) -> Instance | None:
        try:
            mtime = os.stat(path).st_mtime
            with open(path, "rb") as f:
                rec = json.loads(f.read())
            inst = Instance(
                service=str(rec["service"]),
                instance_id=str(rec["instance_id"]),
                address=str(rec["address"]),
                port=int(rec["port"]),
                tags=tuple(rec.get("tags") or ()),
                meta={str(k): str(v) for k, v in (rec.get("meta") or {}).items()},
                health=Health(rec.get("health", "passing")),
            )
            ttl_s = float(rec["ttl_s"])
            deregister_after_s = float(rec["deregister_after_s"])
            pid = int(rec.get("pid", 0))
            pid_start = str(rec.get("pid_start", ""))
            host = str(rec.get("host", ""))
        except FileNotFoundError:
            return None  # removed between listdir and open
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable lease %s: %s", path, exc)
            return None
        if host == self._host and not process_alive(pid, pid_start):
            log.info("%s: process %d is gone; removing its lease", inst.instance_id, pid)
            self._remove(path, mtime)
            return None
        expired_for_s = now - (mtime + ttl_s)
        if expired_for_s > 0:
            if expired_for_s > deregister_after_s:
                log.info(
                    "%s: critical for %.0f s (> %.0f s); removing its lease",
                    inst.instance_id, expired_for_s, deregister_after_s,
                )
                self._remove(path, mtime)
                return None
            return Instance(
                inst.service, inst.instance_id, inst.address, inst.port, inst.tags, inst.meta, Health.CRITICAL
            )
        return inst

    @staticmethod
    def _remove(path: Path, seen_mtime: float) -> None:
        try:
            # A lease renewed since we looked (SIGCONT'd process) is left alone.
            if os.stat(path).st_mtime != seen_mtime:
                return
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the stale lease %s: %s", path, exc)
