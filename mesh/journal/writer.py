"""The file side of the journal: one open segment, batch writes, fdatasync, undo, deletion.

Only the journal's flusher thread calls a SegmentWriter (and ``Journal.close`` once that thread
has ended), so it needs no lock. Every batch is bracketed by ``begin()`` and either ``sync()`` /
``commit()`` or ``rollback()``: a failed batch is cut off the files again, so a later recovery
never sees part of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .segment import SEGMENT_HEADER_SIZE, encode_header, segment_name

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC


class SegmentWriter:
    def __init__(self, directory: Path, sizes: dict[int, int], active_seq: int, *, sync_on_seal: bool) -> None:
        self.directory = directory
        #: on-disk size of every segment file, by sequence number
        self.sizes = dict(sizes)
        self.size_bytes = sum(self.sizes.values())
        self.seq = active_seq
        self.fd: int | None = None
        self.fsync_count = 0
        #: bytes written since the last fdatasync of the open segment
        self.unsynced_bytes = 0
        self._sync_on_seal = sync_on_seal
        self.dir_dirty = False
        self._touched: list[tuple[int, int | None]] = []  # (seq, size before the batch or None if created)

    def path(self, seq: int) -> Path:
        return self.directory / segment_name(seq)

    def open(self, *, durable: bool) -> None:
        """Open the active segment for appending, creating it (with its header) if missing."""
        if self.seq in self.sizes:
            self.fd = os.open(self.path(self.seq), _OPEN_FLAGS)
        else:
            self._create(self.seq)
        if durable:
            self.sync()

    def begin(self) -> None:
        self._touched = [(self.seq, self.sizes[self.seq])] if self.fd is not None else []

    def write(self, seq: int, data: bytes | bytearray) -> None:
        if seq != self.seq or self.fd is None:
            self._switch(seq)
        fd = self.fd
        assert fd is not None
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.write(fd, view[done:])
        finally:
            view.release()
            self.sizes[seq] += done
            self.size_bytes += done
            self.unsynced_bytes += done

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
        """Cut everything written since ``begin()`` off the files again (raises OSError if it cannot)."""
        touched, self._touched = self._touched, []
        if not touched:
            return
        for seq, before in reversed(touched):
            if before is None:
                if seq == self.seq and self.fd is not None:
                    os.close(self.fd)
                    self.fd = None
                self.path(seq).unlink(missing_ok=True)
                self.size_bytes -= self.sizes.pop(seq, 0)
                self.dir_dirty = True
            else:
                os.truncate(self.path(seq), before)
                self.size_bytes -= self.sizes[seq] - before
                self.sizes[seq] = before
        first, before = touched[0]
        if before is None:  # the batch began with no open segment: none is open again
            self.seq = first
        elif self.seq != first or self.fd is None:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.seq = first
            self.fd = os.open(self.path(first), _OPEN_FLAGS)
        try:  # make the cut durable; if this fails too the next batch's sync reports it
            if self.fd is not None:
                os.fdatasync(self.fd)
            if self.dir_dirty:
                self._sync_directory()
        except OSError:
            pass
        self.unsynced_bytes = 0

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
            self.size_bytes -= size
            freed += size
        self._sync_directory()
        return freed

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _switch(self, seq: int) -> None:
        """Seal the open segment (if any) and start segment ``seq``."""
        if self.fd is not None:
            if self._sync_on_seal and self.unsynced_bytes:
                self.sync()
            os.close(self.fd)
            self.fd = None
        self.seq = seq
        self._create(seq)

    def _create(self, seq: int) -> None:
        self.fd = os.open(self.path(seq), _OPEN_FLAGS | os.O_CREAT | os.O_TRUNC, 0o644)
        self.sizes[seq] = 0
        self._touched.append((seq, None))
        self.dir_dirty = True
        self.write(seq, encode_header(seq))
        assert self.sizes[seq] == SEGMENT_HEADER_SIZE

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.dir_dirty = False
