"""The file side of the journal: one open segment, batch writes, fdatasync, undo, deletion, and
the zero-fill that preallocates segments ahead of need.

Only the journal's flusher thread calls a SegmentWriter (and ``Journal.close`` once that thread
has ended), so it needs no lock. Every batch is bracketed by ``begin()`` and either ``sync()`` /
``commit()`` or ``rollback()``: a failed batch is cut off the files again, so a later recovery
never sees part of it.

Preallocation (docs/decisions/001): an fdatasync after a write that grows a file must also commit
the new file size (ext4: a jbd2 transaction), one that overwrites blocks already written and
synced commits data only, which is measurably cheaper. So segments are filled with real zeros
(not fallocate: unwritten extents cost metadata again when first written) and synced before
records land there; records are written with ``pwrite`` at the tracked data end. The zero-fill
runs in ``fill_step()`` chunks, which the flusher runs while it is idle or, when the space is
needed soon, once after a round (after its callers were answered): the active segment is kept
preallocated AHEAD bytes past its data end (up to ``segment_size``), and once it is half full the
first AHEAD bytes of the next segment are prepared as ``next.seg.prealloc``, renamed into place
when the journal rotates. A sealed segment is truncated to its data end, so only the newest
segment ever ends in zeros.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .segment import FILE_MODE, SEGMENT_HEADER_SIZE, encode_header, fsync_directory, segment_name

log = logging.getLogger("mesh.journal")

_OPEN_FLAGS = os.O_WRONLY | os.O_CLOEXEC
#: the next segment, being zero-filled; never a segment name, so recovery ignores it (and removes it)
PREP_NAME = "next.seg.prealloc"
#: bytes one zero-fill step writes (and then fdatasyncs): ~1 ms on the reference disk, so a
#: sync() arriving meanwhile waits at most about that long (4 MiB steps measured 4-10 ms)
FILL_CHUNK = 1 << 20
#: the active segment is kept preallocated this far past its data end (up to segment_size), and
#: the next segment is prepared this far: bounds the zero-fill an idle journal does, and the disk
#: space preallocation takes beyond the data
AHEAD = 8 << 20
#: the active segment is extended after a round (not only when idle) once fewer bytes than this
#: are preallocated ahead of its data end
LOW_WATER = 256 << 10
#: after a zero-fill error (e.g. ENOSPC), no zero-fill for this long; records are still written
FILL_RETRY_S = 1.0
#: the journal preallocates unless its policy is ``none`` (which never fdatasyncs on the hot path);
#: bench/journal_micro.py turns this off to measure the difference
PREALLOCATE = True

_ZEROS = bytes(FILL_CHUNK)
# The zero-fill is background work that must not consume a fault the tests inject into the
# records' own os.pwrite / os.fdatasync (they patch the os module): it calls these.
_fill_pwrite = os.pwrite
_fill_fdatasync = os.fdatasync


class SegmentWriter:
    def __init__(
        self,
        directory: Path,
        ends: dict[int, int],
        sizes: dict[int, int],
        active_seq: int,
        *,
        sync_on_seal: bool,
        segment_size: int = 64 * 2**20,
        preallocate: bool = False,
        marker: bytes = bytes(8),
    ) -> None:
        self.directory = directory
        #: the journal's sync marker, written into every new segment's header
        self.marker = marker
        #: data end (header + valid records) of every segment file, by sequence number
        self.ends = dict(ends)
        #: on-disk size of every segment file (data end + preallocated zero tail)
        self.sizes = {seq: max(sizes.get(seq, 0), end) for seq, end in self.ends.items()}
        #: bytes the journal's files take: every segment file plus the prepared next segment
        self.size_bytes = sum(self.sizes.values())
        #: header and record bytes in the segment files
        self.data_bytes = sum(self.ends.values())
        self.seq = active_seq
        self.fd: int | None = None
        self.fsync_count = 0
        #: header and record bytes written (pwrite) to segments, ever; the zero-fill is apart
        self.bytes_written = 0
        #: zero bytes the preallocation wrote, ever
        self.fill_bytes = 0
        #: fdatasyncs of the zero-fill (not counted in fsync_count)
        self.fill_syncs = 0
        #: bytes written since the last fdatasync of the open segment
        self.unsynced_bytes = 0
        self.segment_size = segment_size
        self.preallocate = preallocate
        #: zero bytes ready (written and synced) in the prepared next segment file
        self.prep_size = 0
        self._prep_fd: int | None = None
        self._fill_retry_at = 0.0
        self._sync_on_seal = sync_on_seal
        self.dir_dirty = False
        self._touched: list[tuple[int, int | None]] = []  # (seq, data end before the batch or None if created)

    def path(self, seq: int) -> Path:
        return self.directory / segment_name(seq)

    def open(self, *, durable: bool) -> None:
        """Open the active segment for writing at its data end, creating it (with its header) if missing."""
        if self.seq in self.ends:
            self.fd = os.open(self.path(self.seq), _OPEN_FLAGS)
        else:
            self._create(self.seq)
        if durable:
            self.sync()

    def begin(self) -> None:
        self._touched = [(self.seq, self.ends[self.seq])] if self.fd is not None else []

    def write(self, seq: int, data: bytes | bytearray) -> None:
        if seq != self.seq or self.fd is None:
            self._switch(seq)
        fd = self.fd
        assert fd is not None
        view = memoryview(data)
        start = self.ends[seq]
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(fd, view[done:], start + done)
        finally:
            view.release()
            if done:
                end = start + done
                self.ends[seq] = end
                self.data_bytes += done
                self.unsynced_bytes += done
                self.bytes_written += done
                if end > self.sizes[seq]:
                    self.size_bytes += end - self.sizes[seq]
                    self.sizes[seq] = end

    def sync(self) -> bool:
        """fdatasync the open segment (and the directory if a segment was created or removed).

        Returns False if no segment is open (compaction removed it; the next write starts one).
        """
        synced = False
        if self.fd is not None:
            os.fdatasync(self.fd)
            self.fsync_count += 1
            synced = True
        self.unsynced_bytes = 0
        if self.dir_dirty:
            self._sync_directory()
        return synced

    def commit(self) -> None:
        self._touched = []

    def rollback(self) -> None:
        """Cut everything written since ``begin()`` off the files again (raises OSError if it cannot).

        A segment the batch created is removed; in one that existed, the bytes the batch wrote are
        overwritten with zeros (keeping the preallocation), or, if that fails, truncated away.
        A failed rollback may be called again (the journal retries it until the disk recovers):
        every step is idempotent, and the batch is forgotten only once all of them succeeded.
        """
        touched = self._touched
        if not touched:
            return
        for seq, before in reversed(touched):
            if before is None:
                if seq == self.seq and self.fd is not None:
                    os.close(self.fd)
                    self.fd = None
                self.path(seq).unlink(missing_ok=True)
                self.size_bytes -= self.sizes.pop(seq, 0)
                self.data_bytes -= self.ends.pop(seq, 0)
                self.dir_dirty = True
            elif self.ends[seq] > before:
                self._cut(seq, before)
        first, before = touched[0]
        if before is None:  # the batch began with no open segment: none is open again
            self.seq = first
        elif self.seq != first or self.fd is None:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.seq = first
            self.fd = os.open(self.path(first), _OPEN_FLAGS)
        self._touched = []
        try:  # make the cut durable; if this fails too the next batch's sync reports it
            if self.fd is not None:
                os.fdatasync(self.fd)
            if self.dir_dirty:
                self._sync_directory()
        except OSError:
            pass
        self.unsynced_bytes = 0

    def _cut(self, seq: int, before: int) -> None:
        end = self.ends[seq]
        path = self.path(seq)
        try:
            fd = os.open(path, _OPEN_FLAGS)
            try:
                pos = before
                while pos < end:
                    pos += os.pwrite(fd, memoryview(_ZEROS)[: min(len(_ZEROS), end - pos)], pos)
            finally:
                os.close(fd)
        except OSError:
            os.truncate(path, before)  # raises if the cut is impossible: the journal fails
            self.size_bytes -= self.sizes[seq] - before
            self.sizes[seq] = before
        self.data_bytes -= end - before
        self.ends[seq] = before

    def delete(self, seqs: list[int]) -> int:
        """Remove sealed segments; returns the bytes freed."""
        freed = 0
        for seq in seqs:
            if seq == self.seq and self.fd is not None:
                # a failed batch took back the segment after it; the next write starts that one
                os.close(self.fd)
                self.fd = None
            self.path(seq).unlink(missing_ok=True)
            size = self.sizes.pop(seq, 0)
            self.data_bytes -= self.ends.pop(seq, 0)
            self.size_bytes -= size
            freed += size
        self._sync_directory()
        return freed

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._drop_prep()

    def reconcile(self) -> None:
        """After a failure: finish cutting off the failed batch, reopen the active segment and
        make both durable (raises OSError while the disk still fails)."""
        self.rollback()
        if self.fd is None and self.seq in self.ends:
            self.fd = os.open(self.path(self.seq), _OPEN_FLAGS)
        if self.fd is not None:
            os.fdatasync(self.fd)
        self._sync_directory()
        self.unsynced_bytes = 0

    # ------------------------------------------------------------------ zero-fill

    def _active_needs_fill(self) -> bool:
        if self.fd is None:
            return False
        size = self.sizes[self.seq]
        # hysteresis: extend once a whole chunk is missing from the AHEAD window
        return size < self.segment_size and size - self.ends[self.seq] <= AHEAD - FILL_CHUNK

    def _prep_needs_fill(self) -> bool:
        # the next segment is prepared only once the active one is half full (an idle journal
        # does not zero-fill a segment it may never use), and only its first AHEAD bytes
        if self.fd is None or self.ends[self.seq] * 2 < self.segment_size:
            return False
        return self.prep_size < min(self.segment_size, AHEAD)

    def fill_pending(self) -> bool:
        """Whether a zero-fill step has work to do (and may run now)."""
        if not self.preallocate or time.monotonic() < self._fill_retry_at:
            return False
        return self._active_needs_fill() or self._prep_needs_fill()

    def fill_urgent(self) -> bool:
        """Whether the zero-fill should run now even though callers may be waiting: the active
        segment has less than LOW_WATER preallocated ahead of its data, or it is nearly full
        (less than 2 x AHEAD left) and the next one is not ready."""
        if not self.fill_pending():
            return False
        assert self.fd is not None
        size, end = self.sizes[self.seq], self.ends[self.seq]
        if size < self.segment_size and size - end < LOW_WATER:
            return True
        return self._prep_needs_fill() and self.segment_size - end < 2 * AHEAD

    def fill_step(self) -> bool:
        """Zero-fill and fdatasync one FILL_CHUNK: of the active segment if it has less than
        AHEAD preallocated past its data, else of the next segment. Returns whether it did.
        An error is logged and pauses the zero-fill for FILL_RETRY_S; the records never depend
        on it."""
        if not self.fill_pending():
            return False
        chunk = FILL_CHUNK
        try:
            if self._active_needs_fill():
                assert self.fd is not None
                seq = self.seq
                start = self.sizes[seq]
                count = min(chunk, self.segment_size - start)
                _zero_fill(self.fd, start, count)
                self.sizes[seq] = start + count
            else:
                if self._prep_fd is None:
                    self._prep_fd = os.open(self.directory / PREP_NAME, _OPEN_FLAGS | os.O_CREAT | os.O_TRUNC, FILE_MODE)
                    self.prep_size = 0
                count = min(chunk, self.segment_size - self.prep_size)
                _zero_fill(self._prep_fd, self.prep_size, count)
                self.prep_size += count
            self.size_bytes += count
            self.fill_bytes += count
            self.fill_syncs += 1
            return True
        except OSError as exc:
            self._fill_retry_at = time.monotonic() + FILL_RETRY_S
            log.warning("journal preallocation in %s failed (%s); writing on without it", self.directory, exc)
            return False

    def _drop_prep(self) -> None:
        if self._prep_fd is not None:
            os.close(self._prep_fd)
            self._prep_fd = None
            self.size_bytes -= self.prep_size
            self.prep_size = 0
            try:
                (self.directory / PREP_NAME).unlink(missing_ok=True)
            except OSError:
                pass

    # ------------------------------------------------------------------ segments

    def _switch(self, seq: int) -> None:
        """Seal the open segment (if any) and start segment ``seq``."""
        if self.fd is not None:
            trimmed = self._trim(self.seq)
            if self._sync_on_seal and (self.unsynced_bytes or trimmed):
                self.sync()
            os.close(self.fd)
            self.fd = None
        self.seq = seq
        self._create(seq)

    def _trim(self, seq: int) -> bool:
        """Truncate the open segment to its data end (its zero tail is not needed any more, and
        recovery takes a zero tail in any but the newest segment for a lost end)."""
        assert self.fd is not None
        end = self.ends[seq]
        if os.fstat(self.fd).st_size == end:
            return False
        os.ftruncate(self.fd, end)
        self.size_bytes -= self.sizes[seq] - end
        self.sizes[seq] = end
        return True

    def _create(self, seq: int) -> None:
        path = self.path(seq)
        if self._prep_fd is not None and self.prep_size >= SEGMENT_HEADER_SIZE:
            os.rename(self.directory / PREP_NAME, path)
            fd, size = self._prep_fd, self.prep_size
            self._prep_fd, self.prep_size = None, 0
            self.size_bytes -= size  # counted again below, as the segment's
        else:
            fd, size = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_TRUNC, FILE_MODE), 0
        self.fd = fd
        self.sizes[seq] = size
        self.size_bytes += size
        self.ends[seq] = 0
        self._touched.append((seq, None))
        self.dir_dirty = True
        self.write(seq, encode_header(seq, self.marker))
        assert self.ends[seq] == SEGMENT_HEADER_SIZE

    def _sync_directory(self) -> None:
        fsync_directory(self.directory)
        self.dir_dirty = False


def _zero_fill(fd: int, start: int, count: int) -> None:
    view = memoryview(_ZEROS)
    done = 0
    while done < count:
        done += _fill_pwrite(fd, view[done:count], start + done)
    _fill_fdatasync(fd)
