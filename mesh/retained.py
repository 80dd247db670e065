"""Retained results: succeeded tasks kept for status and result queries, on disk, with an index
of 12 bytes a slot in memory.

A Helper keeps up to `max_retained_results` (100,000 by default) succeeded tasks answerable.
As Python objects they cost about 1 KiB each (the entry, its strings, its result); here each is
one record in an append-only spill file and one slot of an open-addressing table held in two
arrays: 32 bits of the task id's hash (`array('I')`, never 0 or 1) and the record's position
(`array('q')`). A hash match is checked against the task id stored in the record, so a
collision (one comparison in 2**32) costs a read, never a wrong answer. The dead letters
(mesh/deadletter.py) are kept in a store of the same kind.

The spill files are a cache, not a source of truth: the journal holds every result (its
SUCCEEDED transition), recovery rebuilds the store from it, and the store starts empty (its
directory is cleared at open). So nothing here is fsynced. Writes are buffered (`BUFFER_BYTES`)
and a read of a buffered record is served from memory.

Order: records are appended in the order tasks finish, so the oldest retained result is the
first live record from the head: `pop_oldest` walks from there (what the retention bound
evicts). Files are segments of about `segment_bytes`; one whose records are all gone is
deleted. A position is `segment << 40 | offset`.

Without a directory (`directory=None`, a Dispatcher built in a unit test) the records stay in
a dict in memory, with the same behaviour.
"""

from __future__ import annotations

import collections
import os
import shutil
import struct
from array import array
from pathlib import Path

BUFFER_BYTES = 256 * 2**10
READ_AHEAD_BYTES = 64 * 2**10
SEGMENT_BYTES = 16 * 2**20
_SEG_SHIFT = 40
_POS_MASK = (1 << _SEG_SHIFT) - 1
_HEAD = struct.Struct("<IHI")  # record length (after this header), task id length, tag
_EMPTY, _GONE = 0, 1  # a live slot's key is above _GONE
_MIN_SLOTS = 1024


def _fingerprint(task_id: str) -> int:
    """A task id's slot key: 32 bits of its hash, never _EMPTY or _GONE."""
    h = hash(task_id) & 0xFFFF_FFFF
    return h if h > _GONE else h + 2


class RetainedStore:
    def __init__(self, directory: str | os.PathLike | None = None, *,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self._dir = Path(directory) if directory is not None else None
        self._memory: collections.OrderedDict[str, tuple[int, bytes]] | None = None
        if self._dir is None:
            self._memory = collections.OrderedDict()
            return
        if self._dir.exists():
            shutil.rmtree(self._dir)  # a cache of the journal: rebuilt by recovery
        self._dir.mkdir(parents=True, mode=0o700)
        self._segment_bytes = segment_bytes
        self._keys = array("I", [_EMPTY]) * _MIN_SLOTS
        self._positions = array("q", [0]) * _MIN_SLOTS
        self._used = 0  # live + _GONE slots
        self._count = 0
        self._live: dict[int, int] = {}  # segment -> live records
        self._ends: dict[int, int] = {}  # segment -> bytes written (file + buffer)
        self._fds: dict[int, int] = {}
        self._seg = -1
        self._buf = bytearray()
        self._buf_start = 0  # position of the buffer's first byte (in segment self._seg)
        self._head = 0  # no live record before this position
        self._ahead = b""  # bytes read ahead from the head: eviction reads one file at a time
        self._ahead_at = -1  # position of self._ahead[0]
        self._roll()

    # ---- the store ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._memory) if self._memory is not None else self._count

    def __contains__(self, task_id: str) -> bool:
        if self._memory is not None:
            return task_id in self._memory
        return self._find(task_id)[0] >= 0

    def get(self, task_id: str) -> bytes | None:
        """The record stored for `task_id`, or None."""
        if self._memory is not None:
            found = self._memory.get(task_id)
            return None if found is None else found[1]
        slot, record = self._find(task_id)
        return record if slot >= 0 else None

    def put(self, task_id: str, record: bytes, tag: int = 0) -> None:
        """Store `record` for `task_id`, replacing any older one; it becomes the newest. `tag`
        (a 32-bit number: the Helper's journal segment of the record) is what `oldest_tag`
        gives back."""
        if self._memory is not None:
            self._memory.pop(task_id, None)
            self._memory[task_id] = (tag, record)
            return
        self.remove(task_id)
        key = task_id.encode("utf-8", "surrogatepass")
        if self._ends[self._seg] >= self._segment_bytes:
            self._roll()
        seg = self._seg
        position = (seg << _SEG_SHIFT) | self._ends[seg]
        self._buf += _HEAD.pack(len(key) + len(record), len(key), tag)
        self._buf += key
        self._buf += record
        self._ends[seg] += _HEAD.size + len(key) + len(record)
        self._live[seg] += 1
        if len(self._buf) >= BUFFER_BYTES:
            self._flush()
        if (self._used + 1) * 4 > len(self._keys) * 3:
            self._resize(max(_MIN_SLOTS, _pow2_above(self._count * 2 + 2)))
        self._insert(_fingerprint(task_id), position)
        self._count += 1

    def remove(self, task_id: str) -> bool:
        if self._memory is not None:
            return self._memory.pop(task_id, None) is not None
        slot, _ = self._find(task_id)
        if slot < 0:
            return False
        self._drop_slot(slot)
        return True

    def pop_oldest(self) -> tuple[str, int] | None:
        """Remove the oldest record; returns its task id and tag (None when empty)."""
        if self._memory is not None:
            if not self._memory:
                return None
            task_id, (tag, _) = self._memory.popitem(last=False)
            return task_id, tag
        found = self._oldest()
        if found is None:
            return None
        slot, task_id, tag, size = found
        self._head += size  # before the drop: it may delete the segment and move the head on
        self._drop_slot(slot)
        return task_id, tag

    def oldest_tag(self) -> int | None:
        """The tag of the oldest record (None when empty)."""
        if self._memory is not None:
            return next(iter(self._memory.values()))[0] if self._memory else None
        found = self._oldest()
        return None if found is None else found[2]

    def _oldest(self) -> tuple[int, str, int, int] | None:
        """(slot, task id, tag, record size) of the oldest live record; moves the head past
        dead ones."""
        while self._count:
            head = self._head
            seg, offset = head >> _SEG_SHIFT, head & _POS_MASK
            if offset >= self._ends.get(seg, 0):
                if seg >= self._seg:
                    break  # nothing left: cannot happen while _count > 0
                self._head = (seg + 1) << _SEG_SHIFT
                continue
            length, key_length, tag = _HEAD.unpack(self._read_ahead(head, _HEAD.size))
            task_id = self._read_ahead(head + _HEAD.size, key_length).decode(
                "utf-8", "surrogatepass")
            slot = self._slot_of(_fingerprint(task_id), head)
            if slot >= 0:
                return slot, task_id, tag, _HEAD.size + length
            self._head = head + _HEAD.size + length
        return None

    def _read_ahead(self, position: int, size: int) -> bytes:
        """`_read` for the head's walk: from a chunk of up to READ_AHEAD_BYTES read once."""
        start = position - self._ahead_at
        if self._ahead_at < 0 or start < 0 or start + size > len(self._ahead) or (
                position >> _SEG_SHIFT) != (self._ahead_at >> _SEG_SHIFT):
            seg, offset = position >> _SEG_SHIFT, position & _POS_MASK
            if seg == self._seg and offset >= self._buf_start:
                return self._read(position, size)  # still in the write buffer
            end = self._buf_start if seg == self._seg else self._ends[seg]
            self._ahead = os.pread(self._fds[seg], max(size, min(READ_AHEAD_BYTES, end - offset)),
                                   offset)
            self._ahead_at = position
            start = 0
            if len(self._ahead) < size:
                raise OSError(f"retained results: short read in segment {seg} at {offset}")
        return self._ahead[start:start + size]

    def task_ids(self):  # noqa: ANN201 - Iterator[str]
        """Every retained task id, oldest first (reads the spill files)."""
        if self._memory is not None:
            yield from list(self._memory)
            return
        position = self._head
        while True:
            seg, offset = position >> _SEG_SHIFT, position & _POS_MASK
            if offset >= self._ends.get(seg, 0):
                if seg >= self._seg:
                    return
                position = (seg + 1) << _SEG_SHIFT
                continue
            length, key_length, _ = _HEAD.unpack(self._read(position, _HEAD.size))
            task_id = self._read(position + _HEAD.size, key_length).decode(
                "utf-8", "surrogatepass")
            if self._slot_of(_fingerprint(task_id), position) >= 0:
                yield task_id
            position += _HEAD.size + length

    def close(self) -> None:
        if self._memory is not None:
            self._memory.clear()
            return
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._buf = bytearray()
        shutil.rmtree(self._dir, ignore_errors=True)

    # ---- the table ---------------------------------------------------------------------

    def _find(self, task_id: str) -> tuple[int, bytes]:
        """(slot, record) of `task_id`, or (-1, b"")."""
        fp = _fingerprint(task_id)
        keys = self._keys
        mask = len(keys) - 1
        i = fp & mask
        while True:
            k = keys[i]
            if k == _EMPTY:
                return -1, b""
            if k == fp:
                found = self._record_if(self._positions[i], task_id)
                if found is not None:
                    return i, found
            i = (i + 1) & mask

    def _slot_of(self, fp: int, position: int) -> int:
        keys, positions = self._keys, self._positions
        mask = len(keys) - 1
        i = fp & mask
        while True:
            k = keys[i]
            if k == _EMPTY:
                return -1
            if k == fp and positions[i] == position:
                return i
            i = (i + 1) & mask

    def _insert(self, fp: int, position: int) -> None:
        keys = self._keys
        mask = len(keys) - 1
        i = fp & mask
        while keys[i] > _GONE:
            i = (i + 1) & mask
        if keys[i] == _EMPTY:
            self._used += 1
        keys[i] = fp
        self._positions[i] = position

    def _drop_slot(self, slot: int) -> None:
        position = self._positions[slot]
        self._keys[slot] = _GONE
        self._count -= 1
        seg = position >> _SEG_SHIFT
        self._live[seg] -= 1
        if not self._live[seg] and seg != self._seg:
            self._delete_segment(seg)

    def _resize(self, slots: int) -> None:
        # slot by slot: a list of the live (key, position) pairs would be ~120 bytes each at
        # once, and the heap would keep that peak's pages (pymalloc arenas stay half used)
        old_keys, old_positions = self._keys, self._positions
        self._keys = array("I", [_EMPTY]) * slots
        self._positions = array("q", [0]) * slots
        self._used = 0
        for i in range(len(old_keys)):
            if old_keys[i] > _GONE:
                self._insert(old_keys[i], old_positions[i])

    # ---- the files ---------------------------------------------------------------------

    def _record_if(self, position: int, task_id: str) -> bytes | None:
        length, key_length, _ = _HEAD.unpack(self._read(position, _HEAD.size))
        body = self._read(position + _HEAD.size, length)
        if body[:key_length].decode("utf-8", "surrogatepass") != task_id:
            return None
        return bytes(body[key_length:])

    def _read(self, position: int, size: int) -> bytes:
        seg, offset = position >> _SEG_SHIFT, position & _POS_MASK
        if seg == self._seg and offset >= self._buf_start:
            start = offset - self._buf_start
            return bytes(self._buf[start:start + size])
        data = os.pread(self._fds[seg], size, offset)
        if len(data) != size:
            raise OSError(f"retained results: short read in segment {seg} at {offset}")
        return data

    def _flush(self) -> None:
        if self._buf:
            os.write(self._fds[self._seg], self._buf)
            self._buf_start += len(self._buf)
            self._buf = bytearray()

    def _roll(self) -> None:
        if self._seg >= 0:
            self._flush()
            if not self._live[self._seg]:
                self._delete_segment(self._seg)
        self._seg += 1
        path = self._dir / f"{self._seg:08d}.spill"
        self._fds[self._seg] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                                       0o600)
        self._live[self._seg] = 0
        self._ends[self._seg] = 0
        self._buf_start = 0
        if not self._count:
            self._head = self._seg << _SEG_SHIFT

    def _delete_segment(self, seg: int) -> None:
        if self._ahead_at >= 0 and self._ahead_at >> _SEG_SHIFT == seg:
            self._ahead, self._ahead_at = b"", -1
        os.close(self._fds.pop(seg))
        os.unlink(self._dir / f"{seg:08d}.spill")
        del self._live[seg]
        del self._ends[seg]
        if self._head >> _SEG_SHIFT <= seg:
            self._head = (seg + 1) << _SEG_SHIFT


def _pow2_above(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
