"""Keys, roles and the ZAP handler: who may connect to a socket, and what each peer may do.

Every peer holds a CURVE key pair, and every public key it may be known by is allowed as
exactly one role. A server socket names a ZAP *domain*; the domain admits some roles
(`DOMAIN_ROLES`); the ZAP handler started here (pyzmq's `AsyncioAuthenticator`, one per
context, because ZeroMQ has one ZAP endpoint per context) lets a client in only when its key
is allowed as one of them, and stamps each of its frames with the User-Id `"ROLE:Z85KEY"`.
`role_of` reads that back, `allowed(role, operation)` says what the role may do.

Guarantees:
- Fail closed. A server socket set up through `mesh.sockets.curve_server` enforces its ZAP
  domain, so with no handler running nobody gets in (ZeroMQ would otherwise admit any key).
  A key the store does not know, a key allowed as a role the domain does not admit, a domain
  this module does not know: refused at the handshake, before a single frame is read.
- A key is one role. A public key allowed under two roles makes the store refuse to load.
- Secrets stay private: the store's directories are 0700, secret files 0600, owned by the
  user; `KeyStore.check()` refuses anything looser, like ssh does.

Store layout (`KeyStore`), in zmq.auth's certificate format (`load_certificate` reads it):

    ROOT/                      0700
      own/ROLE.key             this host's public key for ROLE (metadata role = "ROLE")
      own/ROLE.key_secret      its secret key, 0600
      allowed/ROLE/NAME.key    public keys allowed to act as ROLE (and pinned as ROLE's
                               servers: a Client pins the key in allowed/helper/)

`KeyStore.ensure_local(root)` makes a complete single-host store: a key pair per role, each
allowed as its role, so one user's Helper, AI nodes, clients and notifiers trust each other
with no setup. Across hosts the operator creates keys (`mesh keys new`) and copies public
certificates into the `allowed/ROLE/` directories of the peers that must accept them.

This module also holds the two tools for text and noise from untrusted peers: `inert` (make
wire text safe to log) and `RateLimitedLog` (one warning per kind per interval).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.auth.asyncio import AsyncioAuthenticator

from mesh.errors import ConfigError

log = logging.getLogger("mesh.trust")

INSECURE_WARNING = ("--insecure: ZeroMQ links are plain text and unauthenticated; anyone who "
                    "can reach a port can submit, ack or read alerts. Use only on a closed "
                    "test network.")


class TrustError(ConfigError):
    """A key or key store is missing, malformed, or not private enough."""


# ---- roles and what they may do ---------------------------------------------------------

class Role(enum.StrEnum):
    CLIENT = "client"
    OPERATOR = "operator"
    AI_NODE = "ai-node"
    HELPER = "helper"
    NOTIFIER = "notifier"
    MONITOR = "monitor"   # publishes alerts and nothing else (`mesh alert publish`)


class Operation(enum.StrEnum):
    SUBMIT = "submit"
    STATUS = "status"
    RESULT = "result"
    DEAD_LETTER_LIST = "dead-letter-list"
    DEAD_LETTER_INSPECT = "dead-letter-inspect"
    DEAD_LETTER_REPLAY = "dead-letter-replay"
    DEAD_LETTER_PURGE = "dead-letter-purge"
    STATS = "stats"
    CANCEL = "cancel"
    NODES = "nodes"
    HEARTBEAT = "heartbeat"
    ACK = "ack"
    DELIVERY = "delivery"
    ALERT_PUBLISH = "alert-publish"
    ALERT_SUBSCRIBE = "alert-subscribe"
    ALERT_REPLAY = "alert-replay"


#: Any client key may cancel any task (issue 12): task ids are unguessable (random, or derived
#: from an idempotency key the submitter chose), and a client may already submit work.
_CLIENT_OPERATIONS = frozenset({Operation.SUBMIT, Operation.STATUS, Operation.RESULT,
                                Operation.CANCEL})

#: What each role may do; nothing else is allowed. A client key cannot purge dead letters nor
#: read stats; an operator may do what a client may and administer dead letters (decided in
#: issue 10 phase 2: an operator replaying a dead letter and then watching its status is one job).
ALLOWED: dict[Role, frozenset[Operation]] = {
    Role.CLIENT: _CLIENT_OPERATIONS,
    Role.OPERATOR: _CLIENT_OPERATIONS | frozenset({
        Operation.DEAD_LETTER_LIST, Operation.DEAD_LETTER_INSPECT, Operation.DEAD_LETTER_REPLAY,
        Operation.DEAD_LETTER_PURGE, Operation.STATS, Operation.NODES}),
    Role.AI_NODE: frozenset({Operation.HEARTBEAT, Operation.ACK}),
    Role.HELPER: frozenset({Operation.DELIVERY, Operation.ALERT_PUBLISH}),
    Role.NOTIFIER: frozenset({Operation.ALERT_SUBSCRIBE, Operation.ALERT_REPLAY}),
    Role.MONITOR: frozenset({Operation.ALERT_PUBLISH}),
}


class Domain(enum.StrEnum):
    """The ZAP domain of a server socket: which roles may connect to it at all."""

    INTAKE = "mesh.intake"    # Helper intake ROUTER
    ACKS = "mesh.acks"        # Helper ack PULL
    TASKS = "mesh.tasks"      # AI node task PULL
    ALERTS = "mesh.alerts"    # alert PUB and replay ROUTER
    REPLICATION = "mesh.replication"  # a Helper group leader's record stream (followers only)


DOMAIN_ROLES: dict[Domain, frozenset[Role]] = {
    Domain.INTAKE: frozenset({Role.CLIENT, Role.OPERATOR}),
    Domain.ACKS: frozenset({Role.AI_NODE}),
    Domain.TASKS: frozenset({Role.HELPER}),
    Domain.ALERTS: frozenset({Role.NOTIFIER}),
    Domain.REPLICATION: frozenset({Role.HELPER}),
}


def allowed(role: Role | None, operation: Operation) -> bool:
    return role is not None and operation in ALLOWED.get(role, ())


def user_id_of(frame_or_user_id: zmq.Frame | str | bytes | None) -> str:
    """The ZAP User-Id of a received frame ("" on a plain link, or for no frame)."""
    if frame_or_user_id is None:
        return ""
    if isinstance(frame_or_user_id, bytes):
        return frame_or_user_id.decode("ascii", "replace")
    if isinstance(frame_or_user_id, str):
        return frame_or_user_id
    try:
        return frame_or_user_id.get("User-Id") or ""
    except zmq.ZMQError:  # EINVAL: the frame came over a link without ZAP metadata
        return ""


def role_of(frame_or_user_id: zmq.Frame | str | bytes | None) -> Role | None:
    """The role a frame's sender was admitted as, from its User-Id "ROLE:KEY"; None for a
    plain link or anything this version does not know."""
    role, sep, _ = user_id_of(frame_or_user_id).partition(":")
    if not sep:
        return None
    try:
        return Role(role)
    except ValueError:
        return None


def key_of(frame_or_user_id: zmq.Frame | str | bytes | None) -> str:
    """The Z85 public key in a User-Id ("" when there is none): the sender's identity, e.g. to
    check that an ack comes from the node that holds the delivery."""
    _, sep, key = user_id_of(frame_or_user_id).partition(":")
    return key if sep else ""


def refusal(role: Role | None, operation: Operation) -> str:
    """The text of a refusal, naming what was asked and what would allow it."""
    may = sorted(r.value for r, ops in ALLOWED.items() if operation in ops)
    who = f"a {role.value} key" if role is not None else "an unauthenticated peer"
    return (f"{operation.value} is not allowed for {who}; it needs a key with role "
            f"{' or '.join(may)} (see `mesh keys new`)")


# ---- keys -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Certificate:
    """A public key and what its file says about it."""

    public_key: bytes           # Z85, 40 bytes
    role: Role | None           # from the metadata `role = "..."`; None when absent or unknown
    path: Path
    role_text: str = ""         # the metadata value as written (for messages)

    @property
    def name(self) -> str:
        return self.path.name.removesuffix("_secret").removesuffix(".key")


@dataclass(frozen=True)
class KeyPair:
    public_key: bytes           # Z85
    secret_key: bytes = field(repr=False)
    role: Role | None = None
    path: Path | None = None

    @property
    def public_z85(self) -> str:
        return self.public_key.decode("ascii")


def _metadata(path: Path) -> dict[str, str]:
    """The `metadata` section of a zmq.auth certificate file."""
    out: dict[str, str] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw[0].isspace():
            section = raw.strip()
            continue
        if section == "metadata" and "=" in raw:
            key, _, value = raw.partition("=")
            out[key.strip()] = value.strip().strip("\"'")
    return out


def _parse_role(text: str) -> Role | None:
    try:
        return Role(text)
    except ValueError:
        return None


def load_certificate(path: str | os.PathLike) -> Certificate:
    path = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(path)
        role_text = _metadata(path).get("role", "")
    except (OSError, ValueError) as exc:
        raise TrustError(f"cannot read certificate {path}: {exc}") from exc
    if len(public) != 40:
        raise TrustError(f"certificate {path} holds a public key of {len(public)} characters, "
                         "not a 40-character Z85 CURVE key")
    return Certificate(public, _parse_role(role_text), path, role_text)


def load_keypair(path: str | os.PathLike) -> KeyPair:
    """A key pair from NAME.key_secret (the path of NAME.key works too)."""
    path = Path(path)
    if path.suffix == ".key":
        path = path.with_name(path.name + "_secret")
    cert = load_certificate(path)
    _, secret = zmq.auth.load_certificate(path)
    if not secret or len(secret) != 40:
        raise TrustError(f"{path} holds no CURVE secret key")
    return KeyPair(cert.public_key, secret, cert.role, path)


_BANNER = ("#   ****  Generated by mesh (zmq.auth certificate format)  ****\n"
           "#   {what}\n")


def _certificate_text(public: bytes, secret: bytes | None, role: Role) -> str:
    what = ("ZeroMQ CURVE **Secret** Certificate: keep it private (0600)" if secret else
            "ZeroMQ CURVE Public Certificate")
    text = (_BANNER.format(what=what) + "metadata\n" + f'    role = "{role.value}"\n'
            + "curve\n" + f'    public-key = "{public.decode()}"\n')
    if secret:
        text += f'    secret-key = "{secret.decode()}"\n'
    return text


def _write_new(path: Path, text: str, mode: int, *, replace: bool = False) -> None:
    """Write a file with `mode` from its first byte (never briefly world-readable), complete
    before it appears under its name. Refuses to overwrite unless `replace`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have taken bits away; none are ever added
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise TrustError(f"{path} exists; remove it first or choose another --name") \
                    from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_keypair(directory: str | os.PathLike, name: str, role: Role) -> tuple[Path, Path]:
    """Create NAME.key and NAME.key_secret (0600) in `directory` (made 0700 if new). Never
    overwrites an existing key. Returns (public path, secret path)."""
    directory = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise TrustError(f"key name {name!r} must be a plain file name")
    _private_dir(directory)
    public, secret = zmq.curve_keypair()
    public_path = directory / f"{name}.key"
    secret_path = directory / f"{name}.key_secret"
    _write_new(secret_path, _certificate_text(public, secret, role), 0o600)
    try:
        _write_new(public_path, _certificate_text(public, None, role), 0o644)
    except BaseException:
        secret_path.unlink(missing_ok=True)
        raise
    return public_path, secret_path


_IDENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,120}")


def check_identity_name(name: str) -> None:
    """An identity names key files: letters, digits, '.', '_', '-', at most 121 characters,
    not starting with a dot."""
    if not _IDENTITY_NAME.fullmatch(name or ""):
        raise TrustError(f"key identity {inert(name, 60)!s} must be letters, digits, '.', '_' "
                         "or '-' (at most 121, not starting with '.' or '-'); pick a node id "
                         "like that or run with a named key")


def _private_dir(path: Path) -> None:
    """Make `path` (and missing parents) and leave it 0700 if we created it."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


def check_private(path: Path, *, secret: bool = False) -> None:
    """Raise TrustError unless `path` is ours and closed to others: directories no group/other
    access at all, secret files no group/other bits either."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TrustError(f"{path} does not exist") from None
    if st.st_uid != os.getuid():
        raise TrustError(f"{path} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        want = "700" if stat.S_ISDIR(st.st_mode) else "600"
        kind = "secret key" if secret else "key directory"
        raise TrustError(f"{kind} {path} is open to others (mode {stat.S_IMODE(st.st_mode):o}); "
                         f"run `chmod {want} {path}`")


class KeyStore:
    """A directory of this host's key pairs and of the public keys it allows, per role (see
    the module docstring for the layout). Loading is explicit (`load`) and re-done by
    `reload`; nothing is cached across a reload."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.own_dir = self.root / "own"
        self.allowed_dir = self.root / "allowed"
        self._roles: dict[bytes, Role] = {}
        self._certs: dict[Role, list[Certificate]] = {}
        self._stamp: tuple = ()

    def __repr__(self) -> str:
        return f"KeyStore({str(self.root)!r})"

    @classmethod
    def ensure_local(cls, root: str | os.PathLike) -> KeyStore:
        """The single-host store at `root`, completed if anything is missing: a key pair per
        role in own/, each public key allowed as its role (allowed/ROLE/local.key). Safe to
        call from several processes at once (a file lock), and keeps existing keys."""
        store = cls(root)
        _private_dir(store.root)
        check_private(store.root)
        with store._locked():
            _private_dir(store.own_dir)
            _private_dir(store.allowed_dir)
            for role in Role:
                secret_path = store.own_dir / f"{role.value}.key_secret"
                if not secret_path.exists():
                    store.own_dir.joinpath(f"{role.value}.key").unlink(missing_ok=True)
                    write_keypair(store.own_dir, role.value, role)
                pair = load_keypair(secret_path)
                allow_dir = store.allowed_dir / role.value
                _private_dir(allow_dir)
                local = allow_dir / "local.key"
                if not local.exists() or load_certificate(local).public_key != pair.public_key:
                    _write_new(local, _certificate_text(pair.public_key, None, role), 0o644,
                               replace=True)
        store.load()
        return store

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def check(self) -> None:
        """Raise TrustError unless the store is private: root, own/ and allowed/ dirs 0700
        (an allow-list others can write to is a door anyone can open), secrets 0600."""
        check_private(self.root)
        for d in (self.own_dir, self.allowed_dir):
            if d.exists():
                check_private(d)
        if self.allowed_dir.is_dir():
            for d in self.allowed_dir.iterdir():
                if d.is_dir():
                    check_private(d)
        if self.own_dir.is_dir():
            for f in self.own_dir.glob("*.key_secret"):
                check_private(f, secret=True)

    def load(self) -> KeyStore:
        """Check the permissions and read every allow-list. Raises TrustError on a loose
        permission or a key allowed under two roles; skips (with a warning) a certificate
        whose role metadata contradicts its directory, and directories of unknown roles."""
        self.check()
        stamp = self.stamp()
        roles: dict[bytes, Role] = {}
        certs: dict[Role, list[Certificate]] = {role: [] for role in Role}
        if self.allowed_dir.is_dir():
            for d in sorted(self.allowed_dir.iterdir()):
                if not d.is_dir():
                    continue
                role = _parse_role(d.name)
                if role is None:
                    log.warning("key store %s: ignoring %s (no role is called %s; roles: %s)",
                                self.root, d, inert(d.name, 40), ", ".join(Role))
                    continue
                for path in sorted(d.glob("*.key")):
                    cert = load_certificate(path)
                    if cert.role_text and cert.role is not role:
                        log.warning("key store %s: ignoring %s: its metadata says role %s, "
                                    "but it sits in allowed/%s", self.root, path,
                                    inert(cert.role_text, 40), role.value)
                        continue
                    other = roles.get(cert.public_key)
                    if other is not None and other is not role:
                        raise TrustError(
                            f"public key {cert.public_key.decode()} ({path}) is allowed as "
                            f"both {other.value} and {role.value}; a key has one role, "
                            "remove one of the files")
                    roles[cert.public_key] = role
                    certs[role].append(cert)
        self._roles, self._certs, self._stamp = roles, certs, stamp
        return self

    reload = load

    def stamp(self) -> tuple:
        """The modification times of the allow-list directories: a key added or removed
        changes its directory's (a few stat calls, no reading)."""
        out = []
        for d in (self.allowed_dir, *(self.allowed_dir / r.value for r in Role)):
            try:
                out.append(os.stat(d).st_mtime_ns)
            except OSError:
                out.append(0)
        return tuple(out)

    def changed(self) -> bool:
        """Has an allow-list directory changed since the last load?"""
        return self.stamp() != self._stamp

    def role_of_key(self, public_key: bytes | str) -> Role | None:
        """The role a Z85 public key is allowed as, or None."""
        if isinstance(public_key, str):
            public_key = public_key.encode("ascii", "replace")
        return self._roles.get(public_key)

    def allowed_keys(self, role: Role) -> list[Certificate]:
        return list(self._certs.get(role, ()))

    def ensure_identity(self, role: Role, name: str) -> KeyPair:
        """This host's own key pair NAME for `role` (own/NAME.key_secret), made if missing and
        allowed as `role` (allowed/ROLE/NAME.key), behind the store's lock. For a process
        that needs a key of its own rather than the host's shared ROLE key: an AI node's key
        is what its node id is bound to at the Helper, so two nodes on one host must not share
        one. Keeps an existing key."""
        check_identity_name(name)
        _private_dir(self.root)
        check_private(self.root)
        with self._locked():
            _private_dir(self.own_dir)
            secret_path = self.own_dir / f"{name}.key_secret"
            if not secret_path.exists():
                self.own_dir.joinpath(f"{name}.key").unlink(missing_ok=True)
                write_keypair(self.own_dir, name, role)
            pair = load_keypair(secret_path)
            if pair.role is not None and pair.role is not role:
                raise TrustError(f"{secret_path} is a {pair.role.value} key, not a "
                                 f"{role.value} key; choose another name")
            allow_dir = self.allowed_dir / role.value
            _private_dir(self.allowed_dir)
            _private_dir(allow_dir)
            allowed_path = allow_dir / f"{name}.key"
            if (not allowed_path.exists()
                    or load_certificate(allowed_path).public_key != pair.public_key):
                _write_new(allowed_path, _certificate_text(pair.public_key, None, role), 0o644,
                           replace=True)
        self.load()
        return pair

    def keypair(self, role: Role, name: str | None = None) -> KeyPair:
        """This host's key pair for acting as `role`: own/ROLE.key_secret, or
        own/NAME.key_secret for a named identity (`ensure_identity`)."""
        path = self.own_dir / f"{name or role.value}.key_secret"
        if not path.exists():
            raise TrustError(f"no {role.value} key in {self.own_dir}; create one with "
                             f"`mesh keys new --role {role.value} --out {self.own_dir}` or "
                             f"`mesh keys local --store {self.root}` on a single host")
        check_private(path, secret=True)
        pair = load_keypair(path)
        if pair.role is not None and pair.role is not role:
            raise TrustError(f"{path} is a {pair.role.value} key, not a {role.value} key")
        return pair

    def server_key(self, role: Role, announced: bytes | str | None = None) -> bytes:
        """The public key a client pins for a server acting as `role`: the key the server
        announced (e.g. in discovery), if it is allowed as `role`; with no announcement, the
        only key allowed as `role`. Anything else is a TrustError: a client never trusts a
        server key just because discovery said so."""
        if announced:
            key = announced.encode("ascii", "replace") if isinstance(announced, str) else announced
            if self._roles.get(key) is not role:
                raise TrustError(f"server key {inert(key, 60)} is not allowed as {role.value} "
                                 f"in {self.allowed_dir / role.value}; copy its certificate "
                                 "there (`mesh keys allow`) if it is yours")
            return key
        keys = {c.public_key for c in self._certs.get(role, ())}
        if len(keys) != 1:
            raise TrustError(f"{len(keys)} keys are allowed as {role.value} in "
                             f"{self.allowed_dir / role.value}; the server must announce which "
                             "one it holds")
        return next(iter(keys))

    def allow(self, role: Role, certificate: str | os.PathLike, name: str | None = None) -> Path:
        """Copy a public certificate into allowed/ROLE/ (its secret part never)."""
        cert = load_certificate(certificate)
        if cert.role is not None and cert.role is not role:
            raise TrustError(f"{certificate} is a {cert.role.value} key; it cannot be allowed "
                             f"as {role.value}")
        if self.root.is_dir():
            self.load()
        other = self.role_of_key(cert.public_key)
        if other is not None and other is not role:
            raise TrustError(f"{certificate} is already allowed as {other.value}; a key has "
                             "one role")
        target_dir = self.allowed_dir / role.value
        _private_dir(self.root)
        _private_dir(self.allowed_dir)
        _private_dir(target_dir)
        target = target_dir / f"{name or cert.name}.key"
        _write_new(target, _certificate_text(cert.public_key, None, role), 0o644)
        self.load()
        return target


# ---- links and the ZAP handler ----------------------------------------------------------

@dataclass(frozen=True)
class ServerLink:
    """How a binding socket is secured: `mesh.sockets.curve_server` applies it."""

    keypair: KeyPair
    domain: Domain


@dataclass(frozen=True)
class ClientLink:
    """How a connecting socket is secured: `mesh.sockets.curve_client` applies it."""

    keypair: KeyPair
    server_key: bytes


class _Authenticator(AsyncioAuthenticator):
    """pyzmq's asyncio ZAP handler, with the User-Id "ROLE:Z85KEY"."""

    def __init__(self, context: zmq.Context, trust: Trust) -> None:
        super().__init__(context, log=logging.getLogger("mesh.trust.zap"))
        self._trust = trust

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # pyzmq's handler task ends at the first exception, and every handshake after it would
        # wait forever: refuse this one, keep serving.
        try:
            await super().handle_zap_message(msg)
        except Exception:
            log.exception("ZAP request failed; the connection is refused")
            if len(msg) >= 2:
                with contextlib.suppress(zmq.ZMQError):
                    self._send_zap_reply(msg[1], b"500", b"Internal error")

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        role = self._trust.store.role_of_key(key)
        return f"{role.value if role else '?'}:{key.decode('ascii')}"


class Trust:
    """A process's keys and allow-lists, and the ZAP handlers of the contexts it serves on.

    `server(ctx, role, domain)` / `client(role, server_role, key)` give what the socket
    factories in `mesh.sockets` take (`link=`); both return None on an insecure Trust, which
    the factories read as a plain link. `permits(user_id, operation)` is the per-message check.
    Lifecycle: `release(ctx)` before that context is terminated (an open ZAP socket would
    block `term()`); `close()` releases every context. Both idempotent.
    """

    #: an unknown key makes the store re-read its allow-lists at most this often, so a key
    #: copied in while running is honoured without a restart (and a flood of strangers costs
    #: one directory scan per interval)
    RESCAN_INTERVAL_S = 1.0

    def __init__(self, store: KeyStore | None, *, insecure: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 identities: dict[Role, str] | None = None) -> None:
        if store is None and not insecure:
            raise TrustError("a Trust needs a KeyStore, or insecure=True for plain links")
        self.store = store
        self.insecure = insecure
        #: role -> name of the own key used for it instead of own/ROLE.key (`local(identity=)`)
        self.identities: dict[Role, str] = dict(identities or {})
        self._clock = clock
        self._last_scan = clock()
        self._authenticators: dict[int, _Authenticator] = {}
        #: handshakes refused, by (domain, reason): for metrics and tests
        self.refused: dict[tuple[str, str], int] = {}
        self._log = RateLimitedLog(log, interval_s=10.0, clock=clock)
        if insecure:
            log.warning(INSECURE_WARNING)

    @classmethod
    def plain(cls) -> Trust:
        """Plain, unauthenticated links (`--insecure`); logs INSECURE_WARNING."""
        return cls(None, insecure=True)

    @classmethod
    def default(cls) -> Trust:
        """The single-host store at `default_key_dir()`: what a Helper or Client built with no
        `trust` argument uses, so a local mesh is authenticated with no setup."""
        return cls.local(default_key_dir())

    @classmethod
    def local(cls, root: str | os.PathLike, *, identity: str | None = None,
              identity_role: Role = Role.AI_NODE) -> Trust:
        """The single-host store at `root`, created or completed as needed. With `identity`
        (e.g. "ai-node-<node id>"), this process acts as `identity_role` with its own key
        own/IDENTITY.key, made and allowed as that role if missing (`ensure_identity`)."""
        store = KeyStore.ensure_local(root)
        if identity is None:
            return cls(store)
        store.ensure_identity(identity_role, identity)
        return cls(store, identities={identity_role: identity})

    def keypair(self, role: Role) -> KeyPair:
        """The key pair this process acts as `role` with (its identity's, if it has one)."""
        return self.store.keypair(role, self.identities.get(role))

    def public_key(self, role: Role) -> str:
        """The Z85 public key this process acts as `role` with ("" on an insecure Trust):
        what a server announces in discovery (`curve_key`)."""
        return "" if self.insecure else self.keypair(role).public_z85

    # -- sockets -------------------------------------------------------------------------

    def server(self, ctx: zmq.Context, role: Role, domain: Domain) -> ServerLink | None:
        """The link for a socket this process binds as `role` in `domain`. Starts the ZAP
        handler on `ctx` first (once per context; call from the event loop that will serve
        it, before binding)."""
        if self.insecure:
            return None
        domain = Domain(domain)
        self._authenticator(ctx)
        return ServerLink(self.keypair(role), domain)

    def client(self, role: Role, server_role: Role,
               server_key: bytes | str | None = None) -> ClientLink | None:
        """The link for a socket this process connects as `role` to a server acting as
        `server_role`; `server_key` is the key the server announced (checked against the
        allow-list of `server_role`), or None when the store allows exactly one."""
        if self.insecure:
            return None
        return ClientLink(self.keypair(role), self.store.server_key(server_role, server_key))

    def permits(self, frame_or_user_id: zmq.Frame | str | bytes | None,
                operation: Operation) -> bool:
        """May the sender of this frame do `operation`? Always True on an insecure Trust
        (there is no identity to check; the warning at start says so)."""
        return self.insecure or allowed(role_of(frame_or_user_id), operation)

    def reload(self) -> None:
        """Re-read the allow-lists (e.g. on SIGHUP). Connections already admitted stay."""
        if self.store is not None:
            self.store.reload()
            self._last_scan = self._clock()

    def release(self, ctx: zmq.Context) -> None:
        auth = self._authenticators.pop(_context_key(ctx), None)
        if auth is not None:
            auth.stop()

    def close(self) -> None:
        for auth in self._authenticators.values():
            auth.stop()
        self._authenticators.clear()

    def _authenticator(self, ctx: zmq.Context) -> _Authenticator:
        key = _context_key(ctx)
        auth = self._authenticators.get(key)
        if auth is None:
            auth = _Authenticator(ctx, self)
            try:
                auth.start()
            except zmq.ZMQError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise TrustError("this ZeroMQ context already has a ZAP handler (one per "
                                     "context); share one Trust per context") from exc
                raise
            for domain in Domain:
                auth.configure_curve_callback(domain.value, self)
            self._authenticators[key] = auth
        return auth

    # -- the ZAP decision ----------------------------------------------------------------

    def callback(self, domain: str, client_key: bytes) -> bool:
        """pyzmq's credentials-provider hook: admit `client_key` (Z85) to `domain`?"""
        role = self.store.role_of_key(client_key)
        # Re-read for an unknown key when an allow-list directory changed (a node that just
        # made its own key, e.g. `mesh ai --node-id` next to a running Helper), and at most once
        # per interval otherwise (an edited file in place).
        if role is None and (self.store.changed()
                             or self._clock() - self._last_scan >= self.RESCAN_INTERVAL_S):
            self._last_scan = self._clock()
            try:
                self.store.reload()
            except TrustError as exc:
                self._log.warning("reload", "key store not reloaded: %s", exc)
            role = self.store.role_of_key(client_key)
        try:
            admits = DOMAIN_ROLES[Domain(domain)]
        except ValueError:
            admits = frozenset()
        if role is not None and role in admits:
            return True
        reason = "unknown key" if role is None else f"role {role.value} not admitted"
        self.refused[(domain, reason)] = self.refused.get((domain, reason), 0) + 1
        self._log.warning((domain, reason), "refused a connection to %s: %s (key %s)",
                          inert(domain, 40), reason, inert(client_key, 40))
        return False


def default_key_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where this user's local key store lives: $MESH_KEY_DIR, else $XDG_DATA_HOME/mesh/keys,
    else ~/.local/share/mesh/keys. A persistent directory, not $XDG_RUNTIME_DIR: keys copied to
    other hosts must outlive a reboot. The one place `mesh` reads the environment (`environ`,
    default os.environ), so that a Client or Helper made with no `trust` finds the same store
    as the `mesh` commands; nodes/ passes its flags' choice explicitly."""
    env = os.environ if environ is None else environ
    if env.get("MESH_KEY_DIR"):
        return env["MESH_KEY_DIR"]
    data_home = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                          "share")
    return os.path.join(data_home, "mesh", "keys")


def _context_key(ctx: zmq.Context) -> int:
    """Shadow contexts (sockets.sync_view) share one ZAP endpoint with their original."""
    return ctx.underlying


# ---- untrusted text ---------------------------------------------------------------------

def inert(text: str | bytes | None, max_len: int = 200) -> str:
    """Text from the wire made safe for a log line or an alert: control characters, line
    breaks, bidi overrides and other invisibles escaped as repr does (`\\n`, `\\x1b`,
    `\\u202e`), backslashes doubled so an escape cannot be forged, and cut to `max_len`
    characters with the number cut off said."""
    if text is None:
        return ""
    if isinstance(text, bytes | bytearray | memoryview):
        text = bytes(text).decode("utf-8", "backslashreplace")
    elif not isinstance(text, str):
        text = str(text)
    if len(text) <= max_len and text.isprintable() and "\\" not in text:
        return text
    out = []
    size = 0
    for i, ch in enumerate(text):
        if ch == "\\":
            piece = "\\\\"
        elif ch.isprintable():
            piece = ch
        else:
            piece = repr(ch)[1:-1]
        if size + len(piece) > max_len:
            return "".join(out) + f"...(+{len(text) - i} chars)"
        out.append(piece)
        size += len(piece)
    return "".join(out)


class RateLimitedLog:
    """At most one record per key per interval, then a count of what was held back.

    For warnings that peers can trigger (bad frames, refused keys): the first is logged at
    once, repeats within `interval_s` are counted, and the next record that gets through says
    how many were suppressed. Keys are meant to be few (kinds of trouble, not peer data); at
    `max_keys` the oldest is forgotten so a flood of distinct keys cannot grow memory.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 256) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[object, float] = {}
        self.suppressed: dict[object, int] = {}

    @property
    def last_logged(self) -> dict[object, float]:
        """Key -> when its last record got through (the clock's time), least recent first."""
        return self._last

    def admit(self, key: object) -> int | None:
        """May a record of `key` get through now? None: no (counted as held back); else how
        many were held back since the last one that did (the count starts again)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return None
        held = self.suppressed.pop(key, 0)
        if last is None and len(self._last) >= self._max_keys:
            oldest = next(iter(self._last))
            del self._last[oldest]
            self.suppressed.pop(oldest, None)
        self._last.pop(key, None)
        self._last[key] = now  # re-inserted: the dict stays in least-recently-logged order
        return held

    def log(self, level: int, key: object, msg: str, *args: object) -> bool:
        held = self.admit(key)
        if held is None:
            return False
        if held:
            msg += f" ({held} more like this held back)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: object, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
