"""A Helper group member's journal: indexes and positions on the leader, applied entries on a
follower (docs/decisions/009-helper-groups.md).

Both sides keep the group's log in the member's ordinary journal (`<data dir>/journal`), so a
follower that becomes leader starts an ordinary Helper on it (replay, then serve). Two record
types of their own (mesh/records.py), which the task table's replay skips:

- POSITION (key `\\0pos`, not replicated): (known epoch, last index, epoch history), appended
  before every sync. Recovery takes the last one; a log with records after it (a crash between
  the records and their sync) is *dirty*: its member asks its leader for a snapshot.
- NOOP (key `\\0noop`, replicated): a leader's first record of its term (it commits what earlier
  terms left, as in Raft).

`LeaderJournal` wraps the leader Helper's journal: every append gets its (epoch, index) from the
`LeaderState`, and `sync_future()` resolves only when the records are durable here *and* the
commit index covers them (min_replicas followers acked) while the term is held. `FollowerLog`
appends what the leader sends, syncs once per batch, and resets to a snapshot when asked.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from mesh import records
from mesh.errors import JournalError
from mesh.journal import FsyncPolicy, Journal
from mesh.replication import EpochHistory, LeaderState, StaleEpoch

log = logging.getLogger("mesh.group")

POSITION_KEY = b"\x00pos"
NOOP_KEY = b"\x00noop"
_REPLICATED_SKIP = (records.POSITION,)


@dataclass(slots=True)
class Position:
    known_epoch: int = 0
    last_index: int = 0
    history: tuple[tuple[int, int], ...] = ()
    dirty: bool = False  # records follow the last POSITION record: the log end is uncertain

    @property
    def last_epoch(self) -> int:
        return EpochHistory(self.history).epoch_at(self.last_index)


def encode_position(known_epoch: int, last_index: int, history: EpochHistory) -> bytes:
    return msgspec.msgpack.encode([known_epoch, last_index, [list(h) for h in history.as_list()]])


def decode_position(payload: bytes) -> Position:
    known, last, history = msgspec.msgpack.decode(payload)
    return Position(int(known), int(last), tuple((int(e), int(i)) for e, i in history))


def scan_position(recovered: list) -> Position:  # noqa: ANN001 - journal Records
    """The log's position from its recovered records (the last POSITION; dirty if anything
    but a POSITION follows it, or if records exist and none is a POSITION)."""
    position = Position()
    after = 0
    for record in recovered:
        if record.type == records.POSITION:
            position = decode_position(record.payload)
            after = 0
        else:
            after += 1
    position.dirty = after > 0
    return position


class LeaderJournal:
    """The leader Helper's journal (see the module docstring). Everything else is the wrapped
    Journal's."""

    def __init__(self, journal: Journal, state: LeaderState, *, holds: Callable[[], bool],
                 send_now: Callable[[], None]) -> None:
        self._journal = journal
        self.state = state
        self._holds = holds
        #: sends the followers what they lack at once. Called by every sync, before the local
        #: fsync starts: the follower's fsync runs while ours does, not after it, and records
        #: reach followers when (and only when) the leader syncs them (`LeaderState.syncing`)
        self._send_now = send_now
        self._position_at = -1
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # (index, seq, future) heap
        self._seq = 0
        self.closed_reason: str | None = None

    def __getattr__(self, name: str):  # noqa: ANN204 - the wrapped journal's attribute
        return getattr(self._journal, name)

    # -- appends --------------------------------------------------------------------------

    def append(self, type: int, key: bytes, payload: bytes) -> None:
        try:
            self.state.append(type, key, payload)
        except StaleEpoch as exc:
            raise JournalError(f"not recorded: {exc}") from None
        self._journal.append(type, key, payload)

    def _append_position(self) -> None:
        state = self.state
        if state.last_index != self._position_at:
            self._journal.append(records.POSITION, POSITION_KEY,
                                 encode_position(state.epoch, state.last_index, state.history))
            self._position_at = state.last_index

    def _ship(self, target: int) -> None:
        self.state.syncing(target)
        self._send_now()

    def position_record(self) -> list[tuple[int, bytes]]:
        """For compaction: the POSITION record as of now."""
        state = self.state
        return [(records.POSITION, encode_position(state.epoch, state.last_index, state.history))]

    # -- syncs ----------------------------------------------------------------------------

    def sync_future(self) -> asyncio.Future[None]:
        target = self.state.last_index
        self._append_position()
        self._ship(target)
        inner = self._journal.sync_future()
        loop = asyncio.get_running_loop()
        out = loop.create_future()

        def synced(future: asyncio.Future) -> None:
            if out.done():
                return
            error = future.exception() if not future.cancelled() else JournalError("cancelled")
            if error is not None:
                out.set_exception(error)
                return
            self.durable(target)
            self._wait_commit(target, out)

        inner.add_done_callback(synced)
        return out

    def sync_here(self) -> bool:
        target = self.state.last_index
        self._append_position()
        self._ship(target)
        if not self._journal.sync_here():
            return False
        self.durable(target)
        return self.state.committed(target) and self._holds() and self.closed_reason is None

    async def sync(self) -> None:
        """Durable here (results, compaction): no wait for followers, nothing is answered."""
        target = self.state.last_index
        self._append_position()
        self._ship(target)
        await self._journal.sync_future()
        self.durable(target)

    async def close(self) -> None:
        self.fail_waiters("the Helper is stopping")
        if not self._journal.failed:
            try:
                self._append_position()
            except JournalError:
                pass
        await self._journal.close()

    # -- commit ---------------------------------------------------------------------------

    def durable(self, index: int) -> None:
        self.state.durable(index)
        self.commit_advanced()

    def _wait_commit(self, index: int, future: asyncio.Future) -> None:
        if self.closed_reason is not None:
            future.set_exception(JournalError(self.closed_reason))
        elif self.state.committed(index) and self._holds():
            future.set_result(None)
        else:
            self._seq += 1
            heapq.heappush(self._waiters, (index, self._seq, future))

    def commit_advanced(self) -> None:
        """Resolve the syncs the commit index now covers (while the term is held)."""
        waiters = self._waiters
        if not waiters or not self._holds():
            return
        commit = self.state.commit_index
        while waiters and waiters[0][0] <= commit:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    def fail_pending(self, error: Exception) -> None:
        """Too few followers are in sync to commit what waits: those submits are answered
        with `error` (not accepted; the client resends the same ids)."""
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(error)

    def fail_waiters(self, reason: str) -> None:
        """The term ended (or the Helper stops): nothing waiting is accepted."""
        self.closed_reason = reason
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(JournalError(f"not accepted: {reason}; submit again"))


class FollowerLog:
    """A follower's journal: append what the leader sent, sync, report the durable index."""

    def __init__(self, directory: Path, *, segment_size_bytes: int, max_record_bytes: int) -> None:
        self.directory = directory
        self._segment_size_bytes = segment_size_bytes
        self._max_record_bytes = max_record_bytes
        self.journal: Journal | None = None
        self.position = Position()

    def open(self) -> Position:
        self.journal = Journal(self.directory, policy=FsyncPolicy.BATCH,
                               segment_size_bytes=self._segment_size_bytes,
                               max_record_bytes=self._max_record_bytes)
        self.position = scan_position(self.journal.recover())
        self.journal.start(asyncio.get_running_loop())
        return self.position

    async def append(self, entries, known_epoch: int, last_index: int,  # noqa: ANN001
                     history: EpochHistory) -> None:
        """Append entries and a POSITION after them; one sync."""
        if not self.append_now(entries, known_epoch, last_index, history):
            await self.synced(known_epoch, last_index, history)

    def append_now(self, entries, known_epoch: int, last_index: int,  # noqa: ANN001
                   history: EpochHistory) -> bool:
        """Append entries and a POSITION after them, and fsync on this (the loop) thread when
        the journal's flusher is idle: no thread hand-over. True: durable; False: they are
        appended, `await synced(...)` with the same position makes them durable."""
        journal = self.journal
        for entry in entries:
            journal.append(entry.type, entry.key, entry.payload)
        journal.append(records.POSITION, POSITION_KEY, encode_position(known_epoch, last_index, history))
        if not journal.sync_here():
            return False
        self.position = Position(known_epoch, last_index, tuple(history.as_list()))
        return True

    async def synced(self, known_epoch: int, last_index: int, history: EpochHistory) -> None:
        """What was appended is durable (JournalError if that failed)."""
        await self.journal.sync_future()
        self.position = Position(known_epoch, last_index, tuple(history.as_list()))

    async def reset(self, snapshot_records, known_epoch: int, as_of_index: int,  # noqa: ANN001
                    history: EpochHistory) -> None:
        """Replace the log with a snapshot: the old journal is set aside (renamed, not deleted)
        until the new one is synced, then removed."""
        await self.close()
        aside = self.directory.with_name(f"{self.directory.name}.aside-{time.time_ns()}")
        if self.directory.exists():
            os.replace(self.directory, aside)
        self.journal = Journal(self.directory, policy=FsyncPolicy.BATCH,
                               segment_size_bytes=self._segment_size_bytes,
                               max_record_bytes=self._max_record_bytes)
        for _ in self.journal.recover():
            pass
        self.journal.start(asyncio.get_running_loop())
        for type_, key, payload in snapshot_records:
            self.journal.append(type_, key, payload)
        self.journal.append(records.POSITION, POSITION_KEY, encode_position(known_epoch, as_of_index, history))
        await self.journal.sync_future()
        self.position = Position(known_epoch, as_of_index, tuple(history.as_list()))
        if aside.exists():
            await asyncio.to_thread(_remove_tree, aside)

    async def close(self) -> None:
        if self.journal is not None:
            journal, self.journal = self.journal, None
            try:
                await journal.close()
            except JournalError as exc:
                log.error("follower journal close failed: %s", exc)


def _remove_tree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)
