"""The write-ahead journal: cheap appends, group commit per policy, replay and compaction.

Threads: ``append``, ``sync``, ``release`` and ``compact`` run on the event-loop thread;
writes, fdatasyncs and file deletions run on one flusher thread, except that
``sync_here()`` does a round on the loop thread when the flusher is idle (the segment
writer is worked under ``_io_lock`` by one thread at a time). Loop and flusher share only
the append buffer and the request lists, under one lock. ``sync()`` futures are resolved on
the loop with ``call_soon_threadsafe``. The per-key liveness index is loop-thread only.

Positions are logical: ``_appended`` counts every byte ever appended, and a ``sync()`` waits
until the flusher has settled its position (durable per policy, or failed).

See docs/decisions/001-journal-format.md for the torn-tail and compaction rules.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mesh.errors import JournalError

from . import writer as _writer_module
from .live_keys import LiveKeys
from .record import MAX_KEY_BYTES, PREFIX_SIZE, RECORD_HEADER, RECORD_OVERHEAD, Record, check_fields
from .recovery import DamagedRange, RecoveryReport, find_marker, record_size, recover_segment
from .segment import (
    DIR_MODE,
    FILE_MODE,
    MARKER_NAME,
    MARKER_SIZE,
    SEGMENT_HEADER_SIZE,
    list_segments,
    write_marker_file,
)
from .writer import PREP_NAME, SegmentWriter

log = logging.getLogger("mesh.journal")

_crc32 = zlib.crc32
_pack_header = RECORD_HEADER.pack
_pack_type_keylen = struct.Struct("<BB").pack

#: the flusher zero-fills (preallocates) segments once no sync() request came for this long
IDLE_FILL_S = 0.002
#: a failed journal retries to reconcile its files after this long, doubling up to RETRY_MAX_S
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0


class FsyncPolicy(enum.StrEnum):
    ALWAYS = "always"  # every sync() call does its own write + fdatasync
    BATCH = "batch"  # group commit: concurrent sync() callers share one fdatasync
    INTERVAL = "interval"  # sync() waits for write(); fdatasync every interval_ms in the background
    NONE = "none"  # sync() waits for write(); fdatasync only on close


class _State(enum.Enum):
    NEW = "not recovered yet; call recover() first"
    OPEN = "open"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(slots=True)
class _Compaction:
    """Segments to delete once every byte appended before ``target`` is durable."""

    target: int
    seqs: list[int]
    infos: dict[int, list[int]]  # seq -> [logical size, records], to restore on failure
    rewritten_seq: int | None = None
    rewritten_keys: list[tuple[bytes, int]] = field(default_factory=list)  # (key, its bytes in rewritten_seq)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return f"{name}: {exc.strerror or exc}"


class Journal:
    """Append-only segment files of checksummed records, with group commit and compaction.

    Lifecycle: ``recover()`` (exhaust it and apply its records), ``start()``, then ``append`` /
    ``sync`` / ``release`` / ``compact``, and ``await close()``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        policy: FsyncPolicy = FsyncPolicy.BATCH,
        segment_size_bytes: int = 64 * 2**20,
        interval_ms: int = 5,
        max_record_bytes: int = 8 * 2**20,
        rewrite: Callable[[bytes], list[tuple[int, bytes]]] | None = None,
    ) -> None:
        if segment_size_bytes < SEGMENT_HEADER_SIZE + RECORD_OVERHEAD:
            raise ValueError(f"segment_size_bytes={segment_size_bytes} is too small")
        if interval_ms <= 0:
            raise ValueError(f"interval_ms={interval_ms} must be positive")
        if max_record_bytes < RECORD_OVERHEAD:
            raise ValueError(f"max_record_bytes={max_record_bytes} is too small")
        self.directory = Path(directory)
        self.policy = FsyncPolicy(policy)
        self.segment_size_bytes = segment_size_bytes
        self.interval_ms = interval_ms
        self.max_record_bytes = max_record_bytes
        self._rewrite = rewrite

        # observability
        self.last_fsync_s = 0.0
        self.last_batch_records = 0
        self.on_fsync: Callable[[float, int], None] | None = None
        #: called on the loop thread as ``on_health(failed, failure)`` when the journal turns
        #: failed (True, why) or recovers (False, None); see ``failed``
        self.on_health: Callable[[bool, str | None], None] | None = None

        self._state = _State.NEW
        self._failure: str | None = None
        self._recoverable = True
        self._report: RecoveryReport | None = None
        self._marker = bytes(MARKER_SIZE)
        self._rewritten_bytes = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Held by whichever thread works the segment writer: the flusher, or the loop thread
        # in sync_here(). Never taken while holding _lock.
        self._io_lock = threading.Lock()
        # --- shared with the flusher, under _lock ---
        self._chunks: list[tuple[int, bytearray]] = []  # full buffers of segments sealed in memory
        self._buf = bytearray()  # records for the active segment, not yet handed to the flusher
        self._buf_records = 0
        self._appended = 0  # logical bytes appended, ever
        self._settled = 0  # logical position up to which every sync() is answered
        self._requests: list[tuple[int, asyncio.Future[None] | None]] = []
        self._compactions: list[_Compaction] = []
        self._sticky_error: str | None = None  # a failure no pending sync() was told about
        self._closing = False
        self._fill_asked = False  # sync_here() ran a round and left zero-fill to do
        self._fill_timed = False  # the flusher sleeps on the timer that zero-fills once idle
        # --- loop thread only ---
        self._active_seq = 1
        self._active_size = SEGMENT_HEADER_SIZE  # logical size of the active segment
        self._active_records = 0
        self._live = LiveKeys()
        self._oldest = self._live.oldest  # read on the hot path
        self._oldest_get = self._live.oldest.get
        self._key_bytes = self._live.key_bytes
        self._live_bytes = self._live.live_bytes
        self._compaction_pending = False
        #: compaction keeps every segment from this one on, live keys or not (see keep_from)
        self._keep_from: int | None = None
        # --- flusher thread ---
        self._writer: SegmentWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed: asyncio.Future[None] | None = None
        self._unsynced_records = 0
        self._recovery_dirty = False
        self._close_error: str | None = None
        # The idle clock: when the last round ended, on the flusher or in sync_here() (monotonic
        # seconds; one float, written by whichever thread ran the round). The flusher zero-fills
        # only once no round ran for IDLE_FILL_S, so the fill never lands beside a round.
        self._round_ended_s = time.monotonic()

    # ------------------------------------------------------------------ observability

    @property
    def size_bytes(self) -> int:
        """Bytes the journal's files take on disk: every segment file, including the zero tail
        preallocated in the active one, plus the next segment being prepared (see docs/decisions/001)."""
        return self._writer.size_bytes if self._writer else 0

    @property
    def segment_count(self) -> int:
        return len(self._writer.sizes) if self._writer else 0

    @property
    def fsync_count(self) -> int:
        return self._writer.fsync_count if self._writer else 0

    @property
    def live_keys(self) -> int:
        return len(self._oldest)

    @property
    def segment(self) -> int:
        """The segment of the record appended last (during recovery: yielded last). With
        `keep_from`, a caller keeps records it has released without a live key each."""
        return self._active_seq

    def keep_from(self, seq: int | None) -> None:
        """Compaction deletes (or rewrites) no segment numbered `seq` or later, whatever its
        live keys; None lifts the floor. For records whose keys were released but that must
        survive a restart while they are still wanted, oldest first: the Helper's retained
        results, a floor that moves forward as the oldest are evicted."""
        self._keep_from = seq

    @property
    def appended_bytes(self) -> int:
        """Record bytes appended since this process opened the journal (compaction rewrites included)."""
        return self._appended

    @property
    def rewritten_bytes(self) -> int:
        """Record bytes compaction appended (the rewrites), since this process opened the journal."""
        return self._rewritten_bytes

    @property
    def bytes_written(self) -> int:
        """Header and record bytes written to segment files (the zero-fill is in ``fill_bytes``)."""
        return self._writer.bytes_written if self._writer else 0

    @property
    def fill_bytes(self) -> int:
        """Zero bytes written to preallocate segments."""
        return self._writer.fill_bytes if self._writer else 0

    @property
    def failed(self) -> bool:
        """True while a write failure could not be cut off the files (e.g. EMFILE, EIO): appends
        and syncs raise JournalError at once, and the flusher retries (0.1 s .. 5 s apart) until
        the disk recovers, then the journal is open again. False otherwise."""
        return self._state is _State.FAILED

    @property
    def failure(self) -> str | None:
        """Why the journal is failed (None when it is not)."""
        return self._failure if self._state is _State.FAILED else None

    @property
    def recovery_report(self) -> RecoveryReport | None:
        """What ``recover()`` found damaged (None until its iterator is exhausted)."""
        return self._report

    # ------------------------------------------------------------------ recovery

    def recover(self) -> Iterator[Record]:
        """Open the directory (creating it, mode 0700, if missing) and yield every valid record,
        oldest segment first, in append order.

        Every record that does not overlap damage is yielded, in every segment (see recovery.py
        and docs/decisions/001): damaged ranges are logged, copied aside to
        ``<segment>.damaged-<offset>-<length>`` and left in place, except after the last valid
        record of the newest segment, where they are cut off (a torn tail). Zero tail: zeros
        after the last record of the newest segment are its clean, preallocated end; in an older
        segment they mean its end was lost (reported). ``recovery_report`` says what was found.
        After the iterator is exhausted the journal is ready for appends after the last valid
        record of the newest segment (or in a new segment, if that one is format 1 or its header
        is damaged). A key is live from its first replayed record until ``release(key)``.
        """
        if self._state is not _State.NEW:
            raise JournalError(f"recover() runs once, before start(); the journal is {self._state.value}")
        directory = self.directory
        try:
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            _restrict(directory, DIR_MODE)
            found = list_segments(directory)
            (directory / PREP_NAME).unlink(missing_ok=True)  # a next segment being prepared
            (directory / (MARKER_NAME + ".tmp")).unlink(missing_ok=True)
            marker, stored = find_marker(directory, found)
            if marker is None:  # a new journal; no zero byte, so any part of a record is non-zero
                marker = bytes(b or 0xA5 for b in os.urandom(MARKER_SIZE))
            if not stored:
                write_marker_file(directory, marker)
            _restrict(directory / MARKER_NAME, FILE_MODE)
        except OSError as exc:
            raise JournalError(f"cannot open journal directory {directory}: {_describe(exc)}") from exc
        self._marker = marker
        ends: dict[int, int] = {}
        sizes: dict[int, int] = {}
        ranges: list[DamagedRange] = []
        format1: list[int] = []
        last_seq: int | None = None
        appendable = False
        live = self._live
        next_seq = found[-1][0] + 1 if found else 1
        if found:  # the newest segment may be a crash's half-created file: then the one before is the newest
            try:
                removed = recover_segment(found[-1][0], found[-1][1], marker, newest=True, only_if_empty=True)
            except OSError as exc:
                raise JournalError(f"cannot recover journal segment {found[-1][1]}: {_describe(exc)}") from exc
            if removed is not None:
                ranges += removed.ranges
                self._recovery_dirty = True
                found = found[:-1]
        for index, (seq, path) in enumerate(found):
            newest = index == len(found) - 1
            try:
                _restrict(path, FILE_MODE)
                outcome = recover_segment(seq, path, marker, newest=newest)
                assert outcome is not None
            except OSError as exc:
                raise JournalError(f"cannot recover journal segment {path}: {_describe(exc)}") from exc
            ranges += outcome.ranges
            if outcome.format1:
                format1.append(seq)
            if outcome.ranges or (newest and outcome.sealed):
                self._recovery_dirty = True
            records = outcome.records
            size = outcome.size
            last_seq = seq
            appendable = newest and not outcome.sealed
            # sealed segments keep every byte; only the newest one is appended to, at its end
            ends[seq] = outcome.end if appendable else size
            sizes[seq] = size
            live.open_segment(seq)
            live.seal(seq, ends[seq], len(records))
            self._active_seq = seq  # what `segment` says while this segment's records are read
            oldest_get = self._oldest_get
            key_bytes, live_bytes = self._key_bytes, self._live_bytes
            for record in records:
                key = record.key
                if key:
                    first = oldest_get(key)
                    if first is None:
                        live.add(key, seq, record_size(record))
                    elif first == seq:
                        grown = record_size(record)
                        key_bytes[key] += grown
                        live_bytes[seq] += grown
                yield record
            # one segment's bytes (and records) at a time: not alive while the next is read
            records = outcome = None
        if appendable:
            assert last_seq is not None
            self._active_seq = last_seq
            self._active_size, self._active_records = live.sealed.pop(last_seq)
        else:
            # a new segment: the newest one is format 1 or has a damaged header (it stays as it
            # is, sealed), or there is none
            self._active_seq = next_seq
            self._active_size = SEGMENT_HEADER_SIZE
            live.open_segment(self._active_seq)
        self._report = RecoveryReport(tuple(ranges), tuple(format1))
        if format1:
            log.warning("journal %s: read format-1 segments %s; new records go to format-2 segments", directory, format1)
        self._writer = SegmentWriter(
            directory,
            ends,
            sizes,
            self._active_seq,
            sync_on_seal=self.policy is not FsyncPolicy.NONE,
            segment_size=self.segment_size_bytes,
            preallocate=_writer_module.PREALLOCATE and self.policy is not FsyncPolicy.NONE,
            marker=marker,
        )
        self._writer.dir_dirty = self._recovery_dirty
        self._state = _State.OPEN

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the flusher thread; ``sync()`` futures are resolved on ``loop`` (default: running loop)."""
        if self._state is _State.NEW:
            raise JournalError("call recover() and apply its records before start()")
        if self._thread is not None:
            raise JournalError("the journal is already started")
        if self._state is not _State.OPEN:
            raise JournalError(f"cannot start: the journal is {self._state.value}")
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        assert self._writer is not None
        try:  # open (or create) the active segment here, so start() reports a bad directory
            self._writer.open(durable=False)
        except OSError as exc:
            raise JournalError(f"cannot open the active journal segment in {self.directory}: {_describe(exc)}") from exc
        self._closed = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name=f"journal-flusher:{self.directory.name}", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Write and fdatasync everything appended, delete what compaction scheduled, stop the
        flusher thread and close every file. Idempotent; ``sync()`` after it raises JournalError."""
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return
        if self._thread is None:
            if self._state is not _State.CLOSED:
                self._close_unstarted()
            return
        with self._lock:
            self._closing = True
            self._cond.notify()
        assert self._closed is not None
        await asyncio.shield(self._closed)
        self._thread.join()
        if self._close_error is not None:
            message, self._close_error = self._close_error, None
            raise JournalError(message)

    def _close_unstarted(self) -> None:
        """close() of a journal that was never started: flush on the calling thread."""
        assert self._writer is not None
        self._closing = True
        try:
            self._writer.open(durable=False)
            ok = self._flush_round(None, final=True)
        except OSError as exc:
            raise JournalError(f"cannot open the active journal segment in {self.directory}: {_describe(exc)}") from exc
        finally:
            self._writer.close()
            self._state = _State.CLOSED
        if not ok:
            raise JournalError("the last records could not be written on close (see log)")

    # ------------------------------------------------------------------ hot path

    def append(self, type: int, key: bytes, payload: bytes) -> None:
        """Buffer one record (no system call). It is durable once a later ``sync()`` returns."""
        keylen = len(key)
        size = RECORD_OVERHEAD + keylen + len(payload)
        if size > self.max_record_bytes:
            raise ValueError(
                f"journal record of {size} bytes (key {keylen}, payload {len(payload)}) exceeds "
                f"max_record_bytes={self.max_record_bytes}; store large payloads elsewhere"
            )
        if not 0 < type < 256 or keylen > MAX_KEY_BYTES:
            check_fields(type, key)
        if self._state is not _State.OPEN or self._closing:
            raise JournalError(f"cannot append: the journal is {self._describe_state()}")
        crc = _crc32(payload, _crc32(key, _crc32(_pack_type_keylen(type, keylen))))
        with self._lock:
            if self._active_size + size > self.segment_size_bytes and self._active_size > SEGMENT_HEADER_SIZE:
                self._rotate_locked()
            buf = self._buf
            buf += _pack_header(self._marker, size - PREFIX_SIZE, crc, type, keylen)
            buf += key
            buf += payload
            self._buf_records += 1
            self._appended += size
        self._active_size += size
        self._active_records += 1
        if key:
            seq = self._oldest_get(key)
            if seq is None:
                self._live.add(key, self._active_seq, size)
            elif seq == self._active_seq:  # another record of the key in its oldest segment
                self._key_bytes[key] += size
                self._live_bytes[seq] += size

    def _describe_state(self) -> str:
        if self._closing:
            return "closing"
        if self._state is _State.FAILED and self._failure:
            return f"failed ({self._failure})"
        return self._state.value

    def _rotate_locked(self) -> None:
        self._chunks.append((self._active_seq, self._buf))
        self._buf = bytearray()
        self._live.seal(self._active_seq, self._active_size, self._active_records)
        self._active_seq += 1
        self._active_size = SEGMENT_HEADER_SIZE
        self._active_records = 0
        self._live.open_segment(self._active_seq)

    async def sync(self) -> None:
        """Return once every record appended before this call is durable per the policy.

        Raises JournalError (with the errno name, e.g. ENOSPC) if writing or syncing failed: the
        failed round is cut off the file and dropped with every record appended until then, and
        every waiting sync() raises (or the next one, for records no waiting sync() covered).
        Those records are never made durable later; the journal goes on with the next append.
        """
        await self.sync_future()

    def sync_future(self) -> asyncio.Future[None]:
        """`sync()` as a plain future, for callers that finish with a callback instead of a
        task (the Helper's intake: one less task and loop turn per submit). Same guarantees;
        the future's exception is the JournalError."""
        loop = self._loop
        if loop is None or self._state is not _State.OPEN or self._closing:
            state = "not started" if self._state is _State.OPEN and loop is None else self._describe_state()
            raise JournalError(f"cannot sync: the journal is {'closing' if self._closing else state}")
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._sticky_error is not None:
                message, self._sticky_error = self._sticky_error, None
                future.set_exception(JournalError(message))
                return future
            if self._appended == self._settled and self.policy is not FsyncPolicy.ALWAYS:
                future.set_result(None)
                return future
            self._requests.append((self._appended, future))
            self._cond.notify()
        return future

    def sync_here(self) -> bool:
        """Write and fdatasync on the calling (loop) thread, if the flusher is idle and no
        sync() waits; True once every record appended so far is durable.

        For a lone submit on a quiet journal: it skips the two thread hand-overs of sync()
        (wake the flusher; the flusher wakes the loop), about as long as the fdatasync
        itself on a small machine. It blocks the loop for that fdatasync, so callers use it
        only when the loop has nothing else to do. False: nothing was made durable by this
        call; use sync()/sync_future(), which also reports any error of this attempt.
        """
        if (self.policy not in (FsyncPolicy.BATCH, FsyncPolicy.ALWAYS) or self._loop is None
                or self._state is not _State.OPEN or self._closing):
            return False
        if not self._io_lock.acquire(blocking=False):
            return False  # the flusher is writing, syncing or zero-filling
        try:
            with self._lock:
                if self._requests or self._sticky_error is not None:
                    return False
                if self._appended == self._settled:
                    return True
            try:
                ok = self._flush_round(None)
            except Exception:  # a bug, as in the flusher: make it loud and fail the journal
                log.exception("journal round on the loop thread crashed")
                self._fail("journal round on the loop thread crashed (see log)", recoverable=False)
                return False
            finally:
                self._round_ended_s = time.monotonic()  # a round, as the flusher's: not idle
            if not ok:
                return False  # the sticky error goes to the next sync()
            writer = self._writer
            if writer is not None and writer.fill_pending():
                urgent = writer.fill_urgent()
                with self._lock:
                    # The flusher zero-fills ahead of the next records: at once when urgent,
                    # else once the journal is idle. A flusher already asleep on that idle
                    # timer is left asleep: under load a wake-up per round cost the loop a
                    # futex wake and the flusher two context switches per request, for nothing.
                    if urgent or not self._fill_timed:
                        self._fill_asked = True
                        self._cond.notify()
            return True
        finally:
            self._io_lock.release()

    # ------------------------------------------------------------------ liveness and compaction

    def release(self, key: bytes) -> None:
        """No record of ``key`` is needed any more (the task ended and was forgotten)."""
        self._live.release(key)

    def compact(self) -> int:
        """Schedule the deletion of old segments; returns the bytes they hold (0: nothing to do,
        and nothing was written).

        Rule (live_keys.py, docs/decisions/001): take sealed segments oldest first. Each with no
        live key is deleted as is. The oldest one that still has live keys is rewritten
        (``rewrite(key)`` for each of them, appended to the active segment) and deleted only
        when it starts a run of segments whose live bytes are at most half of what deleting
        them frees; so each rewritten byte frees two, write amplification stays below 2, and a
        journal where nothing is released writes nothing. Files are deleted only after
        everything appended up to now is durable, and only from the oldest end. One compaction
        is in flight at a time.
        """
        if self._state is not _State.OPEN or self._closing or self._compaction_pending:
            return 0
        empty, rewrite_seq = self._live.plan(can_rewrite=self._rewrite is not None)
        if self._keep_from is not None:
            empty = [seq for seq in empty if seq < self._keep_from]
            if rewrite_seq is not None and rewrite_seq >= self._keep_from:
                rewrite_seq = None
        job = _Compaction(target=0, seqs=empty, infos={})
        if rewrite_seq is not None:
            self._rewrite_segment(rewrite_seq, job)
            job.seqs.append(rewrite_seq)
        if not job.seqs:
            return 0
        job.infos = self._live.forget(job.seqs)
        reclaimed = sum(size for size, _records in job.infos.values())
        self._compaction_pending = True
        with self._lock:
            job.target = self._appended
            self._compactions.append(job)
            self._requests.append((job.target, None))
            self._cond.notify()
        return reclaimed

    def _rewrite_segment(self, seq: int, job: _Compaction) -> None:
        assert self._rewrite is not None
        job.rewritten_seq = seq
        try:
            for key in list(self._live.by_segment[seq]):
                records = self._rewrite(key)
                job.rewritten_keys.append((key, self._live.detach(key, seq)))
                before = self._appended
                for type_, payload in records:
                    self.append(type_, key, payload)
                self._rewritten_bytes += self._appended - before
        except BaseException:
            self._live.restore({}, seq, job.rewritten_keys)
            raise

    def _compaction_done(self, job: _Compaction, ok: bool) -> None:
        """Loop thread: the flusher deleted the job's segments (ok) or dropped its rewrite (not ok)."""
        self._compaction_pending = False
        if not ok:
            self._live.restore(job.infos, job.rewritten_seq, job.rewritten_keys)

    # ------------------------------------------------------------------ flusher thread

    def _run(self) -> None:
        writer = self._writer
        assert writer is not None
        try:  # make the segment opened by start() and any recovery cut durable
            with self._io_lock:
                writer.sync()
        except OSError as exc:
            self._fail(f"cannot fdatasync the journal segment in {self.directory}: {_describe(exc)}")
        interval_s = self.interval_ms / 1000 if self.policy is FsyncPolicy.INTERVAL else None
        next_tick = time.monotonic() + (interval_s or 0)
        self._round_ended_s = time.monotonic()
        retry_delay = RETRY_MIN_S
        retry_at = time.monotonic() + retry_delay
        try:
            io = self._io_lock
            while True:
                with io:
                    fill = self._state is _State.OPEN and writer.fill_pending()
                retry = self._state is _State.FAILED and self._recoverable
                idle = False
                idle_since = 0.0
                with self._lock:
                    while not self._requests and not self._closing and not self._fill_asked:
                        now = time.monotonic()
                        deadline = next_tick if interval_s is not None else None
                        if fill:
                            idle_at = self._round_ended_s + IDLE_FILL_S
                            deadline = min(deadline, idle_at) if deadline is not None else idle_at
                        if retry:
                            deadline = min(deadline, retry_at) if deadline is not None else retry_at
                        if deadline is None:
                            self._cond.wait()
                            continue
                        remaining = deadline - now
                        if remaining <= 0:
                            idle, idle_since = True, self._round_ended_s
                            break
                        self._fill_timed = fill
                        self._cond.wait(remaining)
                    self._fill_timed = False
                    closing = self._closing
                    asked, self._fill_asked = self._fill_asked, False
                if closing:
                    if self._state is _State.FAILED and self._recoverable:
                        self._try_reconcile(writer)  # leave the files cut back if the disk allows
                    with io:
                        if self._state is _State.OPEN and not self._flush_round(None, final=True):
                            self._close_error = "the last records could not be written on close (see log)"
                    break
                if self._state is not _State.OPEN:
                    self._fail_pending(f"the journal is {self._describe_state()}")
                    if retry and time.monotonic() >= retry_at:
                        if self._try_reconcile(writer):
                            retry_delay = RETRY_MIN_S
                        else:
                            retry_delay = min(RETRY_MAX_S, retry_delay * 2)
                    retry_at = time.monotonic() + retry_delay
                    continue
                if interval_s is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + interval_s
                    with io:
                        self._flush_round(None, tick=True)
                elif idle:
                    self._fill_while_idle(writer, idle_since)
                    continue
                elif asked and not self._requests:
                    # a round ran in sync_here(): what follows one of our rounds follows it (an
                    # urgent step now, else the fill once idle, on the next pass)
                    with io:
                        if writer.fill_urgent():
                            writer.fill_step()
                            self._round_ended_s = time.monotonic()
                    continue
                else:
                    with io:
                        self._flush_round(self.policy is FsyncPolicy.ALWAYS)
                with io:
                    if writer.fill_urgent():
                        writer.fill_step()  # after the round's answers: its callers do not wait for it
                self._round_ended_s = time.monotonic()
        except BaseException:  # a bug: make it loud, fail the journal, release every waiter
            log.exception("journal flusher thread crashed")
            self._fail("journal flusher thread crashed (see log)", recoverable=False)
        finally:
            with self._io_lock:
                writer.close()
            self._recoverable = False  # nobody is left to retry
            self._state = _State.CLOSED if self._closing else _State.FAILED
            self._fail_pending(f"the journal is {self._state.value}")
            self._call_loop(self._set_closed)

    def _try_reconcile(self, writer: SegmentWriter) -> bool:
        """Flusher, failed journal: cut the failed batch off the files again, reopen the active
        segment and make it durable; on success the journal is open again."""
        with self._io_lock:
            try:
                writer.reconcile()
            except OSError as exc:
                log.warning("journal %s is still failed: reconciling its files failed (%s); retrying", self.directory, _describe(exc))
                return False
            with self._lock:
                # appends raise while failed; one that raced with the failure is dropped too
                if self._appended != self._settled:
                    self._sticky_error = self._sticky_error or self._failure
                self._chunks = []
                self._buf = bytearray()
                self._buf_records = 0
                self._settled = self._appended
                self._state = _State.OPEN
            self._failure = None
            self._failure = None
        log.warning("journal %s recovered: its files are back at the last durable record; open again", self.directory)
        self._call_loop(self._notify_health, False, None)
        return True

    def _notify_health(self, failed: bool, failure: str | None) -> None:
        hook = self.on_health
        if hook is not None:
            try:
                hook(failed, failure)
            except Exception:
                log.exception("journal on_health hook raised")

    def _fill_while_idle(self, writer: SegmentWriter, idle_since: float) -> None:
        """Zero-fill chunk by chunk until done or a request, close() or a round in sync_here()
        comes (it waits for one chunk); after a round the flusher waits IDLE_FILL_S again.
        ``idle_since``: the idle clock when the flusher found itself idle."""
        while True:
            with self._io_lock:  # one chunk at a time: sync_here() may go between chunks
                if self._round_ended_s != idle_since or not writer.fill_step():
                    break
            if self._requests or self._closing:
                break

    def _flush_round(self, one_request: bool | None, *, tick: bool = False, final: bool = False) -> bool:
        """Hand the buffer to the disk and answer the sync() requests it covers.

        ``one_request``: ALWAYS answers one request per fdatasync. ``tick``: the INTERVAL timer.
        ``final``: close(); write and fdatasync everything under every policy.
        Returns False if the round's records were dropped.
        """
        writer = self._writer
        assert writer is not None
        with self._lock:
            if one_request:
                requests = self._requests[:1]
                del self._requests[:1]
            elif tick:
                requests = []
            else:
                requests, self._requests = self._requests, []
            chunks = self._chunks
            chunks.append((self._active_seq, self._buf))
            self._chunks = []
            self._buf = bytearray()
            records = self._buf_records
            self._buf_records = 0
            end = self._appended
        start = self._settled
        policy = self.policy
        must_sync = final or tick or policy is FsyncPolicy.ALWAYS or policy is FsyncPolicy.BATCH
        syncing = False
        try:
            writer.begin()
            for seq, data in chunks:
                if data:
                    writer.write(seq, data)
            self._unsynced_records += records
            if must_sync and (writer.unsynced_bytes or policy is FsyncPolicy.ALWAYS or final):
                syncing = True
                began = time.perf_counter()
                if writer.sync():
                    self._note_fsync(time.perf_counter() - began)
            writer.commit()
        except OSError as exc:
            if tick and syncing:
                # INTERVAL background fdatasync: earlier sync() calls already reported these as written
                log.error("journal fdatasync in %s failed (%s); will retry", self.directory, _describe(exc))
                writer.commit()
                with self._lock:
                    self._settled = end
                return True
            self._unsynced_records = max(0, self._unsynced_records - records)
            message = f"journal write to {self.directory} failed ({_describe(exc)}); the records of this batch were dropped"
            self._undo(writer, message, requests, start)
            return False
        with self._lock:
            self._settled = end
        self._answer(requests, None)
        self._run_compactions(end if (policy is FsyncPolicy.NONE or must_sync or not writer.unsynced_bytes) else -1, final)
        return True

    def _undo(self, writer: SegmentWriter, message: str, requests: list, start: int) -> None:
        try:
            writer.rollback()
        except OSError as exc:
            # The journal is failed until the flusher manages to finish the cut (_try_reconcile).
            message = f"{message}; cutting them off failed too ({_describe(exc)}): the journal is failed until the disk recovers"
            self._mark_failed(message)
        else:
            log.error("%s", message)
        with self._lock:
            # Everything appended so far goes too: every sync() waiting now fails, so the records
            # still buffered belong to callers told "failed" (or to nobody yet: see sticky error).
            self._chunks = []
            self._buf = bytearray()
            self._buf_records = 0
            end = self._appended
            self._settled = end
            pending, self._requests = self._requests, []
            waiting = requests + [r for r in pending if r[1] is not None]
            told = max((target for target, future in waiting if future is not None), default=start)
            if told < end:
                self._sticky_error = message
            dropped, self._compactions = self._compactions, []
        self._answer(waiting, message)
        for job in dropped:
            self._call_loop(self._compaction_done, job, False)

    def _run_compactions(self, durable: int, final: bool) -> None:
        if not self._compactions:
            return
        with self._lock:
            due = [job for job in self._compactions if final or job.target <= durable]
            self._compactions = [job for job in self._compactions if not (final or job.target <= durable)]
        assert self._writer is not None
        for job in due:
            try:
                self._writer.delete(job.seqs)
            except OSError as exc:
                log.error("journal compaction could not delete segments %s: %s", job.seqs, _describe(exc))
            self._call_loop(self._compaction_done, job, True)

    def _note_fsync(self, elapsed: float) -> None:
        records, self._unsynced_records = self._unsynced_records, 0
        self.last_fsync_s = elapsed
        self.last_batch_records = records
        hook = self.on_fsync
        if hook is not None:
            try:
                hook(elapsed, records)
            except Exception:
                log.exception("journal on_fsync hook raised")

    def _fail(self, message: str, *, recoverable: bool = True) -> None:
        """Mark the journal failed and fail every waiting sync()."""
        self._mark_failed(message, recoverable=recoverable)
        self._fail_pending(message)

    def _mark_failed(self, message: str, *, recoverable: bool = True) -> None:
        """A recoverable failure is retried by the flusher (_try_reconcile); a bug is not."""
        log.error("%s", message)
        if not recoverable:
            self._recoverable = False
        if self._state is _State.OPEN:
            self._state = _State.FAILED
            self._failure = message
            self._call_loop(self._notify_health, True, message)

    def _fail_pending(self, message: str) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        self._answer(requests, message)

    def _answer(self, requests: list[tuple[int, asyncio.Future[None] | None]], error: str | None) -> None:
        futures = [future for _target, future in requests if future is not None]
        if futures:
            self._call_loop(_settle, futures, error)

    def _call_loop(self, callback: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is None:  # close() of an unstarted journal runs on the caller's thread
            callback(*args)
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed; nobody is waiting any more
            pass

    def _set_closed(self) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)


def _settle(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(JournalError(error))


def _restrict(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if it is ours and more open (files from older builds were 0644)."""
    st = os.stat(path)
    if st.st_uid == os.getuid() and (st.st_mode & 0o777) != mode:
        os.chmod(path, mode)
