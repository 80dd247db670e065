"""One owner at a time: an exclusive lock file held for the owner's whole life.

A Helper owns its data dir (`<data_dir>/LOCK`); an AI node owns its node id (a lock file per id
in a private directory its launcher chooses). Two owners would append to the same journal
segments or answer for the same node, and lose acknowledged tasks.

Guarantees:
- `OwnerLock.acquire()` takes an exclusive `flock` without waiting, or raises `InUse` at once
  naming the holder's pid (the holder writes it into the file).
- The kernel drops the lock when the holder exits, SIGKILL included: there is no stale lock to
  clean up, and the file is never deleted (deleting a lock file lets two processes lock two
  different files of one name).
- A child forked by the holder (os.fork, multiprocessing) closes its copy of the descriptor at
  once, so a lingering child does not keep the lock after its parent died; exec'd children never
  get it (the descriptor is close-on-exec).
- `flock` conflicts between two opens in one process too: two Helpers of one process on one
  data dir are refused as two processes are.
- Lock files are created 0600; `claim_data_dir` makes the data dir 0700 first.

Library users hold the lock around a Helper themselves:

    with claim_data_dir(settings.data_dir):
        async with Helper(settings) as helper:
            ...
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
import weakref
from pathlib import Path

from mesh.errors import ConfigError, InUse

log = logging.getLogger("mesh.ownership")

DATA_DIR_LOCK = "LOCK"
_PID_READ_TRIES = 10  # the holder writes its pid just after locking: wait that long for it
_PID_READ_PAUSE_S = 0.005


class OwnerLock:
    """An exclusive lock on one file. `resource`, `holder` and `advice` word the InUse error:
    "<resource> is in use by pid N (<holder>); <advice>"."""

    def __init__(self, path: str | os.PathLike[str], *, resource: str, holder: str,
                 advice: str) -> None:
        self.path = Path(path)
        self.resource = resource
        self.holder = holder
        self.advice = advice
        self._fd: int | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _close_in_child(ref))

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OwnerLock:
        """Take the lock or raise InUse (or ConfigError when the file cannot be opened)."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the lock file {self.path}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ConfigError(f"cannot lock {self.path}: {exc.strerror}") from exc
                pid = _holder_pid(fd)
                by = f"pid {pid}" if pid is not None else "another process"
                raise InUse(f"{self.resource} is in use by {by} ({self.holder}); {self.advice}",
                            resource=self.resource, holder_pid=pid) from None
            st = os.fstat(fd)
            if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the file does); idempotent. The file stays."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> OwnerLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"OwnerLock({str(self.path)!r}, held={self.held})"


def _close_in_child(ref: weakref.ref) -> None:
    lock = ref()
    if lock is not None and lock._fd is not None:
        fd, lock._fd = lock._fd, None
        try:
            os.close(fd)  # the parent's descriptor keeps the lock; this copy must not
        except OSError:
            pass


def _holder_pid(fd: int) -> int | None:
    for attempt in range(_PID_READ_TRIES):
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text:
            try:
                return int(text)
            except ValueError:
                return None
        if attempt + 1 < _PID_READ_TRIES:
            time.sleep(_PID_READ_PAUSE_S)
    return None


def prepare_data_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Make `data_dir` private: created 0700 (missing parents with the default mode); an
    existing one of ours that other local users could read is tightened to 0700, with a
    warning. One of another user's is left as it is, with a warning."""
    path = Path(data_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the data dir {path}: {exc.strerror}") from exc
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"data dir {path} is not a directory; choose another data dir")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        if st.st_uid == os.getuid():
            os.chmod(path, 0o700)
            log.warning("data dir %s was mode %04o (other local users could read the journal); "
                        "made it 0700", path, mode)
        else:
            log.warning("data dir %s belongs to uid %d with mode %04o: other local users may read "
                        "or change the journal", path, st.st_uid, mode)
    return path


def claim_data_dir(data_dir: str | os.PathLike[str], *,
                   advice: str = "stop it or give this Helper another data dir") -> OwnerLock:
    """Prepare `data_dir` (see prepare_data_dir) and lock `<data_dir>/LOCK` for a Helper.
    Returns the held lock; raises InUse when another Helper holds it."""
    path = prepare_data_dir(data_dir)
    return OwnerLock(path / DATA_DIR_LOCK, resource=f"data dir {path}",
                     holder="another Helper", advice=advice).acquire()


def claim_node_id(lock_dir: str | os.PathLike[str], node_id: str, *,
                  advice: str = "stop it or give this node another id") -> OwnerLock:
    """Lock `<lock_dir>/<node_id>.lock` for an AI node. `lock_dir` must exist and be private
    (the caller vouches for it). Returns the held lock; raises InUse when another node holds it."""
    if not node_id or os.sep in node_id or node_id.startswith(".") or "\0" in node_id:
        raise ConfigError(f"node id {node_id!r} cannot name a lock file: use letters, digits "
                          "and . _ : @ -, starting with a letter or digit")
    return OwnerLock(Path(lock_dir) / f"{node_id}.lock", resource=f"node id {node_id}",
                     holder="another AI node", advice=advice).acquire()
