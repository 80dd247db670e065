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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from mesh import records, wire
from mesh.errors import JournalError, StoppedLeading
from mesh.journal import FsyncPolicy, Journal, replace
from mesh.journal.recovery import read_records
from mesh.replication import EpochHistory, Entry, LeaderState, StaleEpoch

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


def holds_position(directory: Path) -> bool:
    """Whether a journal directory holds a POSITION record (read only): a follower's log is
    complete once one is there. The older reset wrote a snapshot and its POSITION, last, in one
    round, so its new log had none until that round reached the file (mesh/journal/replace.py)."""
    return any(record.type == records.POSITION for record in read_records(directory))


def decode_position(payload: bytes) -> Position:
    known, last, history = msgspec.msgpack.decode(payload)
    return Position(int(known), int(last), tuple((int(e), int(i)) for e, i in history))


def scan_position(recovered: Iterable) -> Position:
    """The log's position from its recovered records (the last POSITION; dirty if anything
    but a POSITION follows it, or if records exist and none is a POSITION)."""
    scan = LogScan(max_bytes=0)
    for record in recovered:
        scan.feed(record)
    return scan.finish()


class LogScan:
    """Reads a member's journal, oldest record first: its position (`scan_position`) and the
    entries it can still give their (epoch, index), newest `max_bytes` of them, for catch-up
    from the log.

    Records carry no index; POSITION records do. Between POSITION(a) and POSITION(b) with b > a
    the records are the entries a+1..b exactly when there are b - a of them (the writers put a
    POSITION before every sync and around a compaction's rewrites). A run that does not add up
    (a crash between append and sync, a snapshot's records, a failed batch cut off) drops every
    entry before it: the entries kept are always contiguous and end at the last POSITION.
    Runs with b == a (compaction rewrites) are not entries and are skipped."""

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self.position = Position()
        self.entries: deque[Entry] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._anchor: int | None = None  # last_index of the last POSITION seen
        self._run: list[tuple[int, bytes, bytes]] = []

    def feed(self, record) -> None:  # noqa: ANN001 - a journal Record
        if record.type != records.POSITION:
            self._run.append((record.type, record.key, record.payload))
            return
        position = decode_position(record.payload)
        gap = None if self._anchor is None else position.last_index - self._anchor
        if gap is not None and gap > 0 and gap == len(self._run):
            history = EpochHistory(position.history)
            first = self._anchor + 1
            for offset, (type_, key, payload) in enumerate(self._run):
                self._keep(Entry(history.epoch_at(first + offset), first + offset, type_, key, payload))
        elif gap != 0:
            self.entries.clear()
            self._bytes = 0
        self._anchor = position.last_index
        self._run = []
        self.position = position

    def finish(self) -> Position:
        self.position.dirty = bool(self._run)
        #: a dirty log's records after its last POSITION: (type, key, payload), in order
        self.tail = list(self._run)
        if self.position.dirty:  # the log end is uncertain: no catch-up from it
            self.entries.clear()
            self._bytes = 0
        return self.position

    def _keep(self, entry: Entry) -> None:
        self.entries.append(entry)
        self._bytes += entry.size_bytes
        while self._bytes > self._max_bytes and self.entries:
            self._bytes -= self.entries.popleft().size_bytes


class LeaderJournal:
    """The leader Helper's journal (see the module docstring). Everything else is the wrapped
    Journal's."""

    def __init__(self, journal: Journal, state: LeaderState, *, holds: Callable[[], bool],
                 send_now: Callable[[], None],
                 is_live: Callable[[bytes], bool] = lambda key: True) -> None:
        self._journal = journal
        self.state = state
        self._holds = holds
        #: sends the followers what they lack at once. Called by every sync, before the local
        #: fsync starts: the follower's fsync runs while ours does, not after it, and records
        #: reach followers when (and only when) the leader syncs them (`LeaderState.syncing`)
        self._send_now = send_now
        self._position_at = -1
        self._anchor = True
        #: whether the Helper still needs a key's records (its dispatcher's answer)
        self._is_live = is_live
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # (index, seq, future) heap
        self._seq = 0
        self.closed_reason: str | None = None

    def __getattr__(self, name: str):  # noqa: ANN204 - the wrapped journal's attribute
        return getattr(self._journal, name)

    def recover(self) -> Iterator:
        """The journal's records (for the Helper's replay); on the way, the entries this log
        can still give followers that are behind go into the term's backlog (`LogScan`), so a
        new leader serves catch-up from its log, not only from what it appended in its term."""
        scan = LogScan(self.state.max_backlog_bytes)
        for record in self._journal.recover():
            scan.feed(record)
            yield record
        position = scan.finish()
        self._position_at = position.last_index
        restored = self.state.restore_backlog(scan.entries)
        log.info("group log: %d entries (from index %d) kept for followers' catch-up",
                 restored, self.state.backlog_first_index)
        if scan.tail:
            self._adopt_tail(scan.tail)

    def _adopt_tail(self, tail: list[tuple[int, bytes, bytes]]) -> None:
        """Give the records of a dirty log's tail their indexes in this term: append them again
        as entries, right after the replay (before anything the Helper appends), so followers
        get them like any other record.

        A dirty tail is what the journal wrote after its last POSITION before a crash (the
        flusher writes the whole buffer, so records appended while it ran go out without the
        POSITION that follows them): submits admitted and never answered, results, a
        compaction's rewrites. The Helper replayed them, so its table knows those tasks, but
        they stand at no index: no follower ever gets them. A client resending such a task's
        id was answered "accepted" as a duplicate once the commit covered the log, while the
        record lived on this member alone, and a failover lost it. Appended again, they
        replay to the same state; keys the dispatcher holds no longer (a retained result's,
        a NOOP's) are released again."""
        first = self.state.last_index + 1
        for type_, key, payload in tail:
            self.append(type_, key, payload)
        for key in {key for _, key, _ in tail}:
            if not self._is_live(key):
                self._journal.release(key)
        log.warning("group log: %d records past the log's last position (written before a "
                    "crash, replayed) appended again as entries %d..%d", len(tail), first,
                    self.state.last_index)

    def compact(self) -> int:
        """The journal's compaction, with a POSITION before and after the records it rewrites,
        so `LogScan` can tell them from entries."""
        self._append_position()
        before = self._journal.appended_bytes
        reclaimed = self._journal.compact()
        if self._journal.appended_bytes != before:
            self._append_position(force=True)
        return reclaimed

    # -- appends --------------------------------------------------------------------------

    def append(self, type: int, key: bytes, payload: bytes) -> None:
        """Journal the record, then give it its index: a record the journal refuses (too large,
        journal failed) gets none, so no follower holds a record the leader's log lacks."""
        state = self.state
        if state.fenced_by is not None:
            raise JournalError(f"not recorded: {StaleEpoch(state.epoch, state.fenced_by)}")
        if self._anchor:  # the term's first record: a POSITION in front, so LogScan can index it
            self._append_position(force=True)
            self._anchor = False
        self._journal.append(type, key, payload)
        state.append(type, key, payload)

    def _append_position(self, *, force: bool = False) -> None:
        state = self.state
        if force or state.last_index != self._position_at:
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
        self._ship(target)  # first: the followers' part of the way starts now
        self._append_position()
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
        self._ship(target)  # first: the followers' fsync overlaps ours (and the POSITION append)
        self._append_position()
        if not self._journal.sync_here():
            return False
        self.durable(target)
        return self.state.committed(target) and self._holds() and self.closed_reason is None

    async def sync(self) -> None:
        """Durable here (results, compaction): no wait for followers, nothing is answered."""
        target = self.state.last_index
        self._ship(target)
        self._append_position()
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
            future.set_exception(StoppedLeading(self.closed_reason))
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
        """The term ended (or the Helper stops): nothing waiting is accepted. They are answered
        SHUTTING_DOWN (`StoppedLeading`), not JOURNAL_FAILED: no disk failed, and the client
        sends the same ids to the next leader."""
        self.closed_reason = reason
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(StoppedLeading(reason))


class FollowerTable:
    """What a follower's journal must keep, worked out from the records it holds, by the rules
    the leader's Helper applies to its own journal (mesh/dispatcher.py): a task's key is live
    from its first record until its FORGET; a succeeded task's self-contained record is a
    retained result (key released at once), and segments are kept from the oldest of the
    newest `max_retained_results` on (`Journal.keep_from`); NOOP records are needed by no
    replay. Compaction then rewrites a live key as the records it has had since its last TASK
    record, which replays to the same state. Loop thread only; no I/O."""

    def __init__(self, journal: Journal, max_retained_results: int) -> None:
        self._journal = journal
        self._max_retained = max_retained_results
        self._records: dict[bytes, list[tuple[int, bytes]]] = {}
        self._retained: dict[bytes, int] = {}  # key -> segment of its record, oldest first
        self._floor: int | None = None
        self.position_payload = b""

    def apply(self, type_: int, key: bytes, payload: bytes, segment: int) -> None:
        """A record of the log, in order (`segment`: where the journal put it)."""
        journal = self._journal
        if type_ == records.POSITION:
            self.position_payload = payload
        elif type_ == records.TASK:
            self._retained.pop(key, None)
            if wire.decode_task_record(payload).state == wire.SUCCEEDED:
                self._records.pop(key, None)
                journal.release(key)
                self._retained[key] = segment
                self._evict()
            else:
                self._records[key] = [(type_, payload)]
        elif type_ == records.TRANSITION and key in self._records:
            self._records[key].append((type_, payload))
        elif type_ == records.FORGET:
            self._records.pop(key, None)
            self._retained.pop(key, None)
            journal.release(key)
        else:  # a NOOP, or a transition of a task this log no longer knows: nothing replays it
            journal.release(key)

    def rewrite(self, key: bytes) -> list[tuple[int, bytes]]:
        if key == POSITION_KEY:
            return [(records.POSITION, self.position_payload)] if self.position_payload else []
        return list(self._records.get(key, ()))

    def _evict(self) -> None:
        retained = self._retained
        while len(retained) > self._max_retained:
            del retained[next(iter(retained))]
        floor = next(iter(retained.values()), None)
        if floor is not None and floor != self._floor:
            self._floor = floor
            self._journal.keep_from(floor)


class FollowerLog:
    """A follower's journal: append what the leader sent, sync, report the durable index;
    compacted by the leader's rules (`FollowerTable`), so it stays as small as the leader's."""

    def __init__(self, directory: Path, *, segment_size_bytes: int, max_record_bytes: int,
                 max_retained_results: int = 100_000,
                 reset_step: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self._segment_size_bytes = segment_size_bytes
        self._max_record_bytes = max_record_bytes
        self._max_retained = max_retained_results
        #: told of each durable step of a `reset` (mesh.journal.replace.STEPS): crash tests
        self._reset_step = reset_step or (lambda name: None)
        self.journal: Journal | None = None
        self.table: FollowerTable | None = None
        self.position = Position()
        self._untracked: list = []  # (entry, its segment) appended, not yet in the table

    def _new_journal(self, directory: Path | None = None) -> Journal:
        journal = Journal(directory or self.directory, policy=FsyncPolicy.BATCH,
                          segment_size_bytes=self._segment_size_bytes,
                          max_record_bytes=self._max_record_bytes, rewrite=self._rewrite)
        self.table = FollowerTable(journal, self._max_retained)
        self._untracked = []
        return journal

    def _rewrite(self, key: bytes) -> list[tuple[int, bytes]]:
        return self.table.rewrite(key)

    def open(self) -> Position:
        """Open the journal (first finishing or undoing a `reset` a crash interrupted: the log
        is the old one or the complete new one) and read its position."""
        replace.recover(self.directory, complete=holds_position)
        self.journal = journal = self._new_journal()
        scan = LogScan(max_bytes=0)
        table = self.table
        for record in journal.recover():
            scan.feed(record)
            table.apply(record.type, record.key, record.payload, journal.segment)
        self.position = scan.finish()
        journal.start(asyncio.get_running_loop())
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
        appended, `await synced(...)` with the same position makes them durable. The entries
        reach the compaction table later (`track`), after the ack."""
        journal = self.journal
        untracked = self._untracked
        for entry in entries:
            journal.append(entry.type, entry.key, entry.payload)
            untracked.append((entry, journal.segment))
        position = encode_position(known_epoch, last_index, history)
        journal.append(records.POSITION, POSITION_KEY, position)
        self.table.position_payload = position
        if not journal.sync_here():
            return False
        self.position = Position(known_epoch, last_index, tuple(history.as_list()))
        return True

    def track(self) -> None:
        """Apply the entries appended since the last call to the compaction table (off the
        path to the ack: a succeeded task's record is decoded here)."""
        untracked, self._untracked = self._untracked, []
        if not untracked:
            return
        table = self.table
        for entry, segment in untracked:
            table.apply(entry.type, entry.key, entry.payload, segment)

    def compact(self) -> int:
        """Compact by the leader's rules; a POSITION after the rewritten records (one comes
        before them already: every append ends with one), so `LogScan` skips them."""
        journal = self.journal
        if journal is None or journal.failed:
            return 0
        self.track()
        before = journal.appended_bytes
        reclaimed = journal.compact()
        if journal.appended_bytes != before and self.table.position_payload:
            journal.append(records.POSITION, POSITION_KEY, self.table.position_payload)
        return reclaimed

    async def synced(self, known_epoch: int, last_index: int, history: EpochHistory) -> None:
        """What was appended is durable (JournalError if that failed)."""
        await self.journal.sync_future()
        self.position = Position(known_epoch, last_index, tuple(history.as_list()))

    async def reset(self, snapshot_records, known_epoch: int, as_of_index: int,  # noqa: ANN001
                    history: EpochHistory) -> None:
        """Replace the log with a snapshot. The new log is built beside the old one
        (`<journal>.incoming`), fdatasynced and its directory fsynced, and only then swapped
        into place (renames, parent directory fsynced; mesh/journal/replace.py): the old log,
        which holds every record this member acked, stays whole until the new one is durable
        in its place. A crash at any step leaves one of the two whole (`open` finishes or
        undoes the swap). On a failure before the swap the old log is opened again."""
        await self.close()
        step = self._reset_step
        try:
            building = await asyncio.to_thread(replace.prepare, self.directory, step)
            journal = self._new_journal(building)
            for _ in journal.recover():
                pass
            journal.start(asyncio.get_running_loop())
            try:
                for type_, key, payload in snapshot_records:
                    journal.append(type_, key, payload)
                journal.append(records.POSITION, POSITION_KEY,
                               encode_position(known_epoch, as_of_index, history))
                await journal.sync_future()
            finally:
                await journal.close()
            await asyncio.to_thread(replace.seal, self.directory, step)
            await asyncio.to_thread(replace.swap_in, self.directory, step)
        finally:
            self.open()  # the new log, or (a failure before the swap) the old one
        if (self.position.last_index, self.position.known_epoch) != (as_of_index, known_epoch):
            raise JournalError(f"the log reset to a snapshot as of index {as_of_index} reads "
                               f"back at index {self.position.last_index}")

    async def close(self) -> None:
        """Close the journal; its final flush makes everything appended durable, so the
        position becomes the last POSITION appended. (A member that wins its campaign while a
        batch's sync is still pending closes its log here: with the position of before that
        batch it led from a log end its journal had passed, and the batch's records, replayed
        into its table, stood at no index.)"""
        if self.journal is not None:
            journal, self.journal = self.journal, None
            try:
                await journal.close()
            except JournalError as exc:
                log.error("follower journal close failed: %s", exc)
                return
            payload = self.table.position_payload if self.table is not None else b""
            if payload and not self.position.dirty:
                self.position = decode_position(payload)

