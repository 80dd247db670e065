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

Every directory of the path the registry owns (`/tmp/mesh-<uid>` or `$XDG_RUNTIME_DIR/mesh`,
the registry, each service directory) is created 0700 and checked with lstat before use: ours,
a real directory, not writable by others. Anything else (a directory another local user made
first, a symlink) is refused with a one-line DiscoveryError. Lease files are 0600.

Blocking queries poll the directory every `poll_s` and keep, per Discovery object and query,
an index that grows whenever the visible set (ids, addresses, meta, health) changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
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


def default_runtime_dir(environ: Mapping[str, str] | None = None, *, tmp_dir: str = "/tmp") -> Path:
    """The mesh's private per-user directory on this host: `$XDG_RUNTIME_DIR/mesh`, else
    `/tmp/mesh-<uid>`. The registry lives in it, and nodes keep their lock files there.

    `environ` defaults to os.environ; nodes/ may pass its own mapping.
    """
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "mesh"
    return Path(tmp_dir) / f"mesh-{os.getuid()}"


def default_registry_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_RUNTIME_DIR/mesh/registry`, else `/tmp/mesh-<uid>/registry`."""
    return default_runtime_dir(environ) / "registry"


_ADVICE = "remove it or pass another directory (embedded:///some/dir)"


def _check_private_dir(path: Path) -> None:
    """Refuse `path` unless it is a real directory (lstat: a symlink is refused) that we own and
    no other user can write. Group/other read bits of one of ours are removed (with a warning),
    so a checked directory is 0700."""
    uid = os.getuid()
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise DiscoveryUnavailable(f"cannot inspect the registry directory {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise DiscoveryError(f"registry directory {path} is a symbolic link, which another user may have planted; {_ADVICE}")
    if not stat.S_ISDIR(st.st_mode):
        raise DiscoveryError(f"registry directory {path} is not a directory; {_ADVICE}")
    if st.st_uid != uid:
        raise DiscoveryError(
            f"registry directory {path} belongs to uid {st.st_uid}, not to us (uid {uid}): that user "
            f"could read or swap the registry; {_ADVICE}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise DiscoveryError(
            f"registry directory {path} is writable by other users (mode {mode:04o}): they could swap "
            f"the registry; {_ADVICE}"
        )
    if mode != 0o700:
        try:
            os.chmod(path, 0o700, follow_symlinks=False)
            st = os.lstat(path)
        except OSError as exc:
            raise DiscoveryUnavailable(f"cannot make the registry directory {path} private: {exc.strerror}") from exc
        if stat.S_ISLNK(st.st_mode) or st.st_uid != uid or stat.S_IMODE(st.st_mode) != 0o700:
            raise DiscoveryError(f"registry directory {path} changed while we checked it; {_ADVICE}")
        log.warning("registry directory %s was mode %04o; made it 0700", path, mode)


def _check_trusted_dir(path: Path) -> None:
    """A directory we create ours in without owning it ($XDG_RUNTIME_DIR): ours, not writable by others."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise DiscoveryUnavailable(f"cannot inspect {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o022:
        raise DiscoveryError(
            f"runtime directory {path} ($XDG_RUNTIME_DIR) is a symbolic link, not ours (uid {st.st_uid}) "
            f"or writable by others (mode {stat.S_IMODE(st.st_mode):04o}); unset XDG_RUNTIME_DIR or "
            "pass a directory (embedded:///some/dir)"
        )


def ensure_private_dirs(root: Path, *children: str) -> Path:
    """Create (mode 0700) and check `root` and each of `root/children[0]/children[1]...` in turn;
    return the last. Nothing is trusted because it exists: each directory is made with
    os.mkdir(0700) when missing, then checked with lstat (ours, a real directory, 0700), so a
    directory another user made first, or a symlink, is refused with DiscoveryError. Missing
    parents of `root` are created with the default mode (they are the caller's choice)."""
    path = root
    for part in ("", *children):
        if part:
            if part in (".", "..") or os.sep in part:
                raise DiscoveryError(f"{part!r} cannot name a directory under {path}")
            path = path / part
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            if part:  # a parent we checked was removed under us
                raise DiscoveryUnavailable(f"cannot create the registry directory {path}: its parent vanished") from None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                raise DiscoveryUnavailable(f"cannot create the registry directory {path}: {exc.strerror}") from exc
        except OSError as exc:
            raise DiscoveryUnavailable(f"cannot create the registry directory {path}: {exc.strerror}") from exc
        _check_private_dir(path)
    return path


def private_runtime_dir(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """`<default_runtime_dir>/<name>`, created and checked like the registry (see ensure_private_dirs)."""
    root = default_runtime_dir(environ)
    _check_runtime_parent(root, environ)
    return ensure_private_dirs(root, name)


def _check_runtime_parent(root: Path, environ: Mapping[str, str] | None) -> None:
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and root.parent == Path(runtime):
        _check_trusted_dir(root.parent)


def _create_private(path: Path) -> int:
    """Open a new file 0600 for writing; a leftover of a crashed writer of the same name is replaced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, 0o600)


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
        """Write the whole lease atomically (readers never see a half-written file), mode 0600,
        into a service directory checked like the registry's own."""
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        data = json.dumps(self._record(), separators=(",", ":")).encode()
        self._owner.service_dir(self._instance.service)
        try:
            fd = _create_private(tmp)
        except FileNotFoundError:  # the service directory was removed: make and check it again
            self._owner.service_dir(self._instance.service, recheck=True)
            fd = _create_private(tmp)
        # No fsync: a lease only matters while this host runs; after a reboot it is stale anyway.
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
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
        # Every directory of the path we own is made 0700 and checked (ensure_private_dirs): in
        # /tmp another user could otherwise make /tmp/mesh-<uid> first and swap the registry.
        if directory is None:
            root = default_runtime_dir()
            _check_runtime_parent(root, None)
            self._dir = ensure_private_dirs(root, "registry")
        else:
            self._dir = ensure_private_dirs(Path(directory))
        self._service_dirs: set[str] = set()
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

    def service_dir(self, service: str, *, recheck: bool = False) -> Path:
        """`<dir>/<service>`, created 0700 and checked once per process (or again on `recheck`)."""
        path = self._dir / service
        if recheck or service not in self._service_dirs:
            ensure_private_dirs(self._dir, service)
            self._service_dirs.add(service)
        return path

    def private_subdir(self, name: str) -> Path:
        """A private directory beside the services (`name` starts with a dot, so it never names
        a service), created 0700 and checked: nodes keep their lock files there."""
        if not name.startswith("."):
            raise DiscoveryError(f"{name!r}: a private registry subdirectory starts with a dot")
        return ensure_private_dirs(self._dir, name)

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
