"""Terms and epochs of a Helper group: one leader at a time, chosen by an existing lock engine.

A group's leader holds a lock: a Consul session's KV lock in Consul mode (discovery/leadership.py,
`ConsulLock`), an `flock` on a group lock file in embedded mode (`FileLock`, here: one host).
Each time the lock changes hands a new **term** begins with a larger **epoch**, the fencing
token the leader stamps on every record, delivery and ack; followers and AI nodes refuse anything
from an epoch older than the newest they have seen (docs/decisions/009-helper-groups.md).

`Leadership` drives any `LockBackend` (a small sync interface, run in worker threads):

    leadership = Leadership(FileLock(lock_dir, "orders"), candidate_id="h1", advert={...})
    term = await leadership.campaign()      # returns once we lead: Term(epoch, leader_id, ...)
    ... serve; leadership.holds() before answering; await leadership.lost.wait() ...
    await leadership.resign()               # or close()

Guarantees:
- `campaign()` returns only with the lock held and a term whose epoch is larger than every
  earlier term's of the group (the backend's promise); it waits for as long as another holds it.
- The term is confirmed every `renew_interval_s` (default ttl/3). `holds()` is True only while
  the last confirmation *began* less than the backend's `ttl_s` ago: the backend's engine frees
  the lock no earlier than ttl after the last renewal (Consul: TTL..2xTTL, plus lock-delay), so
  a leader that stalls (SIGSTOP, a long GC, a partition) stops claiming to lead before another
  can start. `holds()` reads only the clock: cheap enough for every answer.
- When the term ends — the backend says the lock is gone, or no confirmation succeeded within
  ttl — `lost` is set, `lost_reason` says why, `term` becomes None and `on_lost(term, reason)` is
  called once on the loop. A new `campaign()` clears `lost`.
- `resign()` and `close()` are idempotent; after them no task of ours runs. A worker thread in a
  blocking backend call may finish up to one `watch_wait_s` later.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mesh.errors import ConfigError

log = logging.getLogger("mesh.leadership")


@dataclass(frozen=True, slots=True)
class Term:
    """One leader's term of a group. `epoch` is the fencing token: strictly larger than every
    earlier term's of the same group. `advert` is what the leader published with it (its
    replication endpoint, its helper id...). `began_s` is on the local monotonic clock."""

    group: str
    epoch: int
    leader_id: str
    advert: Mapping[str, str] = field(default_factory=dict)
    began_s: float = 0.0


class HolderView(Protocol):
    """Who holds a group's lock, as a backend reads it (backends return their own values)."""

    leader_id: str
    epoch: int
    advert: Mapping[str, str]


class LockBackend(Protocol):
    """A lock engine for one group. Synchronous: `Leadership` calls it from worker threads.
    Transient failures (an unreachable agent) raise; `Leadership` retries them within ttl."""

    #: a confirmation stays good this long (the engine frees the lock no earlier)
    ttl_s: float

    def try_acquire(self, leader_id: str, advert: Mapping[str, str]) -> int | None:
        """Take the lock without waiting for a holder: the new term's epoch, or None while
        another holds it (or the engine holds it back, e.g. Consul's lock-delay)."""
        ...

    def confirm(self, epoch: int) -> bool:
        """Renew our hold of the term `epoch`: True while held, False once it is lost for good."""
        ...

    def leader(self, index: int, wait_s: float) -> tuple[int, HolderView | None]:
        """(index, the holder or None). With index > 0, wait up to wait_s for a change since it."""
        ...

    def release(self) -> None:
        """Give the lock up if held; idempotent, never raises for an unreachable engine."""
        ...

    def close(self) -> None:
        ...


class Leadership:
    """Campaign for, hold and give up the leadership of one group (see the module docstring)."""

    def __init__(
        self,
        backend: LockBackend,
        *,
        group: str,
        candidate_id: str,
        advert: Mapping[str, str] | None = None,
        renew_interval_s: float | None = None,
        retry_interval_s: float = 0.5,
        watch_wait_s: float = 2.0,
        on_lost: Callable[[Term, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if backend.ttl_s <= 0:
            raise ConfigError(f"the lock's ttl must be > 0 seconds, got {backend.ttl_s!r}")
        self.backend = backend
        self.group = group
        self.candidate_id = candidate_id
        self.advert = dict(advert or {})
        self.renew_interval_s = renew_interval_s if renew_interval_s is not None else backend.ttl_s / 3
        if not 0 < self.renew_interval_s < backend.ttl_s:
            raise ConfigError(f"renew_interval_s must be > 0 and below the lock's ttl ({backend.ttl_s} s), "
                              f"got {self.renew_interval_s!r}")
        self.retry_interval_s = retry_interval_s
        self.watch_wait_s = watch_wait_s
        self.on_lost = on_lost
        self._clock = clock
        self.term: Term | None = None
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._confirmed_s = 0.0  # when the last successful confirmation (or the acquire) began
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        epoch = self.term.epoch if self.term else None
        return f"Leadership(group={self.group!r}, candidate={self.candidate_id!r}, epoch={epoch})"

    # -- the hot-path check ---------------------------------------------------------------------

    def holds(self) -> bool:
        """True while we hold a term whose last confirmation began less than ttl ago."""
        return self.term is not None and self._clock() - self._confirmed_s < self.backend.ttl_s

    # -- campaign, keep, resign -----------------------------------------------------------------

    async def campaign(self) -> Term:
        """Wait until we hold the lock; return the new term. Cancellable."""
        if self._closed:
            raise ConfigError(f"{self!r} is closed")
        if self.term is not None:
            return self.term
        self.lost.clear()
        self.lost_reason = None
        index = 0
        while True:
            began = self._clock()
            try:
                epoch = await asyncio.to_thread(self.backend.try_acquire, self.candidate_id, self.advert)
            except Exception as exc:  # the engine is unreachable: keep campaigning
                log.warning("group %s: campaign of %s failed: %s; retrying", self.group, self.candidate_id, exc)
                epoch = None
            if epoch is not None:
                self._confirmed_s = began
                self.term = Term(self.group, epoch, self.candidate_id, dict(self.advert), began)
                self._keeper = asyncio.get_running_loop().create_task(self._keep(self.term),
                                                                      name=f"leadership-{self.group}")
                log.info("group %s: %s leads, epoch %d", self.group, self.candidate_id, epoch)
                return self.term
            # Wake early when the holder changes; bounded, since a lock-delay ends silently.
            try:
                index, _ = await asyncio.to_thread(self.backend.leader, index, self.retry_interval_s)
            except Exception:
                index = 0
                await asyncio.sleep(self.retry_interval_s)

    async def _keep(self, term: Term) -> None:
        while self.term is term:
            await asyncio.sleep(self.renew_interval_s)
            if self.term is not term:
                return
            if self._clock() - self._confirmed_s >= self.backend.ttl_s:  # e.g. we were stopped
                self._end(term, f"no confirmation within the lock's ttl of {self.backend.ttl_s:g} s")
                return
            began = self._clock()
            remaining_s = self.backend.ttl_s - (began - self._confirmed_s)
            try:
                held = await asyncio.wait_for(asyncio.to_thread(self.backend.confirm, term.epoch), remaining_s)
            except TimeoutError:
                self._end(term, f"the lock engine did not confirm within the lock's ttl of {self.backend.ttl_s:g} s")
                return
            except Exception as exc:
                log.warning("group %s: could not confirm epoch %d: %s", self.group, term.epoch, exc)
                continue
            if self.term is not term:
                return
            if not held:
                self._end(term, "the lock was lost (session invalidated, lock released or taken over)")
                return
            if self._clock() - began < self.backend.ttl_s:
                self._confirmed_s = began

    def _end(self, term: Term, reason: str) -> None:
        if self.term is not term:
            return
        self.term = None
        self.lost_reason = reason
        self.lost.set()
        log.warning("group %s: %s lost epoch %d: %s", self.group, self.candidate_id, term.epoch, reason)
        if self.on_lost is not None:
            try:
                self.on_lost(term, reason)
            except Exception:
                log.exception("group %s: on_lost callback raised", self.group)

    async def resign(self) -> None:
        """Give up the term (if any) and the lock. Idempotent."""
        term = self.term
        keeper, self._keeper = self._keeper, None
        if term is not None:
            self._end(term, "resigned")
        if keeper is not None and keeper is not asyncio.current_task():
            keeper.cancel()
            try:
                await keeper
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self.backend.release)

    async def close(self) -> None:
        """Resign and close the backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.resign()
        await asyncio.to_thread(self.backend.close)

    async def __aenter__(self) -> Leadership:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- who leads --------------------------------------------------------------------------------

    async def observe(self, index: int = 0, wait_s: float | None = None) -> tuple[int, Term | None]:
        """(index, the group's current leader as a Term, or None). With index > 0, waits up to
        wait_s (default watch_wait_s) for a change since that index: followers call this in a
        loop to find the leader to replicate from, and a deposed leader to see the new epoch."""
        wait = self.watch_wait_s if wait_s is None else wait_s
        new_index, holder = await asyncio.to_thread(self.backend.leader, index, wait)
        if holder is None:
            return new_index, None
        return new_index, Term(self.group, int(holder.epoch), str(holder.leader_id), dict(holder.advert))


# -- embedded mode: a lock file on one host ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileHolder:
    leader_id: str
    epoch: int
    advert: Mapping[str, str]
    pid: int = 0


class FileLock:
    """A group's lock on one host: `flock` on `<dir>/<group>.lock`, the epoch in
    `<dir>/<group>.epoch` (incremented under the lock, written to a temp file, fsynced, renamed,
    directory fsynced, before the term is returned), the holder in `<dir>/<group>.leader`.

    The kernel drops the lock when the holder dies (SIGKILL included), so the next candidate
    wins within its retry interval. A *stopped* holder (SIGSTOP) keeps it: embedded mode has
    no lease, and the group waits for it (Consul mode fences a stopped leader by TTL).
    `confirm` fails once the lock file was replaced or removed (another process could then lock
    a new file of the same name) or the epoch file shows a newer term.
    """

    def __init__(self, directory: str | os.PathLike[str], group: str, *, ttl_s: float = 2.0) -> None:
        if not group or os.sep in group or group.startswith(".") or "\0" in group:
            raise ConfigError(f"group {group!r} cannot name a lock file: use letters, digits and . _ -")
        self.directory = Path(directory)
        self.group = group
        self.ttl_s = ttl_s
        self.lock_path = self.directory / f"{group}.lock"
        self.epoch_path = self.directory / f"{group}.epoch"
        self.leader_path = self.directory / f"{group}.leader"
        self._fd: int | None = None
        self._epoch: int | None = None

    def __repr__(self) -> str:
        return f"FileLock({str(self.lock_path)!r}, held={self._fd is not None})"

    def try_acquire(self, leader_id: str, advert: Mapping[str, str]) -> int | None:
        if self._fd is not None and self._epoch is not None:
            return self._epoch
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            if not _same_file(fd, self.lock_path):  # unlinked between our open and our lock
                os.close(fd)
                return None
            epoch = read_epoch(self.epoch_path) + 1
            write_durably(self.epoch_path, f"{epoch}\n".encode())
            holder = {"leader_id": leader_id, "epoch": epoch, "advert": dict(advert), "pid": os.getpid()}
            write_durably(self.leader_path, json.dumps(holder).encode(), sync=False)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._epoch = fd, epoch
        return epoch

    def confirm(self, epoch: int) -> bool:
        if self._fd is None or self._epoch != epoch:
            return False
        return _same_file(self._fd, self.lock_path) and read_epoch(self.epoch_path) == epoch

    def leader(self, index: int, wait_s: float) -> tuple[int, FileHolder | None]:
        """Poll every 50 ms: the index is 2 x epoch + (1 while the lock is held)."""
        deadline = time.monotonic() + (wait_s if index > 0 else 0.0)
        while True:
            holder = self._read_holder()
            new_index = 2 * (holder.epoch if holder else read_epoch(self.epoch_path)) + (1 if holder else 0)
            if new_index != index or time.monotonic() >= deadline:
                return max(1, new_index), holder
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _read_holder(self) -> FileHolder | None:
        if self._fd is not None and self._epoch is not None:
            held = True
        else:
            held = _locked_by_someone(self.lock_path)
        if not held:
            return None
        try:
            data = json.loads(self.leader_path.read_bytes())
            return FileHolder(str(data["leader_id"]), int(data["epoch"]), dict(data.get("advert") or {}),
                              int(data.get("pid") or 0))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # the new holder is still writing it: seen on the next poll

    def release(self) -> None:
        fd, self._fd, self._epoch = self._fd, None, None
        if fd is not None:
            os.close(fd)  # drops the flock; the files stay (the epoch must outlive every term)

    def close(self) -> None:
        self.release()


def read_epoch(path: Path) -> int:
    """The last epoch stored at `path` (0 when there is none yet)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"the epoch file {path} holds {text[:40]!r}, not a number: restore it from a "
                          "follower's highest epoch or remove the group's lock directory") from None


def write_durably(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Replace `path` atomically (temp file + rename, mode 0600); with sync, the data and the
    directory entry are on disk before this returns. The one fsync outside mesh/journal/: the
    epoch is a fencing token and must never go back after a crash (decision 009)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _locked_by_someone(path: Path) -> bool:
    """True when another open file description holds an flock on `path` (probe with LOCK_SH)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing drops our probe lock
    return False
