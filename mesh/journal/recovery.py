"""Recovery of one journal directory's segments: what each holds, what is damaged, what to keep.

The rule (docs/decisions/001): recovery never deletes bytes that may hold acknowledged records.
Every record that does not overlap damage is replayed, in every segment, also after a damaged
segment header; no segment is set aside. Each damaged range is logged and copied first to
``<segment>.damaged-<offset>-<length>`` (0600; not when it is all zeros) and stays where it is,
except in the newest segment, where the bytes after its last valid record (a torn tail, or
garbage) are cut off after the copy so that appends continue right after that record.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .record import RECORD_OVERHEAD, Damage, Record, RecordRun, Scan, _problem_at, decode_run_v1, is_zero, last_non_zero, scan
from .segment import (
    FILE_MODE,
    MARKER_SIZE,
    SEGMENT_HEADER_SIZE,
    SEGMENT_HEADER_V1_SIZE,
    fsync_directory,
    list_segments,
    parse_header,
    read_marker_file,
)

log = logging.getLogger("mesh.journal")

#: bytes read from the start of each segment to find the marker when journal.marker is lost
_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class DamagedRange:
    """Bytes of a segment that held no valid record at recovery."""

    segment: int  # sequence number
    offset: int
    length: int
    reason: str
    #: where a copy of the bytes was put (None: they were all zeros, nothing to keep)
    aside_path: Path | None
    #: after the last valid record of the newest segment, and cut off (normal after a crash)
    torn_tail: bool = False
    #: marker occurrences inside: about how many records it held
    markers: int = 0


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What recovery found damaged; the Helper shows it (``Journal.recovery_report``)."""

    ranges: tuple[DamagedRange, ...] = ()
    #: format-1 segments that were read with the old decoder (no resynchronisation)
    format1_segments: tuple[int, ...] = ()

    @property
    def damaged_bytes(self) -> int:
        return sum(r.length for r in self.ranges)

    @property
    def skipped_records(self) -> int:
        """An estimate: the marker occurrences inside the damaged ranges."""
        return sum(r.markers for r in self.ranges)

    @property
    def clean(self) -> bool:
        return not self.ranges

    @property
    def only_torn_tail(self) -> bool:
        """True if all damage was a torn tail of the newest segment (what a crash leaves)."""
        return all(r.torn_tail for r in self.ranges)


@dataclass(slots=True)
class SegmentOutcome:
    records: list[Record] | RecordRun  # a RecordRun holds the segment's bytes until dropped
    ranges: list[DamagedRange] = field(default_factory=list)
    #: where appends would continue (only meaningful for the newest segment)
    end: int = 0
    #: the file's size after recovery
    size: int = 0
    #: appends cannot continue in it (format 1, or a damaged header): start a new segment
    sealed: bool = False
    format1: bool = False


def find_marker(directory: Path, found: list[tuple[int, Path]]) -> tuple[bytes | None, bool]:
    """The journal's marker and whether ``journal.marker`` holds it.

    Order: the marker file; else the marker most segment headers (format 2) name; else the
    first 8 bytes after the header of segments whose first record checks out with them.
    """
    marker = read_marker_file(directory)
    if marker is not None:
        return marker, True
    heads = []
    for seq, path in found:
        try:
            with open(path, "rb") as f:
                heads.append((seq, f.read(_HEAD_BYTES)))
        except OSError:
            continue
    votes: collections.Counter[bytes] = collections.Counter()
    for seq, head in heads:
        header, _problem = parse_header(head, seq)
        if header is not None and header.marker is not None:
            votes[header.marker] += 1
    if not votes:
        for _seq, head in heads:
            candidate = head[SEGMENT_HEADER_SIZE : SEGMENT_HEADER_SIZE + MARKER_SIZE]
            if len(candidate) == MARKER_SIZE and _problem_at(head, SEGMENT_HEADER_SIZE, len(head), candidate)[1] is None:
                votes[candidate] += 1
    if votes:
        return votes.most_common(1)[0][0], False
    return None, False


def copy_aside(path: Path, offset: int, data: bytes) -> Path:
    """Copy damaged bytes to ``<segment>.damaged-<offset>-<length>`` (0600, fsynced); idempotent."""
    target = path.with_name(f"{path.name}.damaged-{offset}-{len(data)}")
    try:
        if target.stat().st_size == len(data):
            return target  # an earlier recovery copied the same range
    except FileNotFoundError:
        pass
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def recover_segment(seq: int, path: Path, marker: bytes, *, newest: bool, only_if_empty: bool = False) -> SegmentOutcome | None:
    """Read one segment, copy its damaged ranges aside and (newest only) cut its torn tail.

    ``only_if_empty``: only remove the newest segment if a crash left it half created (a bad
    header and nothing but zeros after it: no record was ever in it); None if it is not so.
    Raises OSError if the file cannot be read, copied from or cut.
    """
    if only_if_empty:
        with open(path, "rb") as f:
            if parse_header(f.read(SEGMENT_HEADER_SIZE), seq)[0] is not None:
                return None
    data = path.read_bytes()
    size = len(data)
    header, problem = parse_header(data, seq)
    if only_if_empty and (header is not None or not (size <= SEGMENT_HEADER_SIZE or is_zero(data, SEGMENT_HEADER_SIZE))):
        return None
    header_damage: Damage | None = None
    format1 = False
    if header is None:
        if newest and (size <= SEGMENT_HEADER_SIZE or is_zero(data, SEGMENT_HEADER_SIZE)):
            # a crash while creating it: no record was ever in it
            outcome = SegmentOutcome([])
            stop = last_non_zero(data, 0, size)
            if stop:
                outcome.ranges.append(_keep(path, seq, data, Damage(0, stop, f"{problem} (crash while creating it)", 0), torn=True))
            path.unlink()
            return outcome
        found = scan(data, SEGMENT_HEADER_SIZE, marker, lazy=True)
        if not found.records and size > SEGMENT_HEADER_V1_SIZE:
            old = _scan_v1(data)  # perhaps a format-1 segment whose header was hit
            if old.records:
                found, format1 = old, True
        header_end = SEGMENT_HEADER_V1_SIZE if format1 else SEGMENT_HEADER_SIZE
        header_damage = Damage(0, min(size, header_end), problem or "bad header", 0)
    elif header.version == 1:
        found, format1 = _scan_v1(data), True
    else:
        assert header.marker is not None
        found = scan(data, header.size, header.marker, lazy=True)
    outcome = SegmentOutcome(found.records, end=found.end, size=size, format1=format1)
    outcome.sealed = header is None or format1
    for damage in ([header_damage] if header_damage else []) + found.damage:
        outcome.ranges.append(_keep(path, seq, data, damage))
    if newest:
        if found.tail is not None:
            outcome.ranges.append(_keep(path, seq, data, found.tail, torn=True))
        if found.tail is not None or (outcome.sealed and found.end < size):
            # cut after the last valid record: a torn tail, garbage, or (in a segment appends do
            # not continue in) the preallocated zeros, which would read as a lost end later
            fsync_directory(path.parent)  # the copies first
            os.truncate(path, found.end)
            outcome.size = found.end
    else:
        if found.tail is not None:
            outcome.ranges.append(_keep(path, seq, data, found.tail))
        zeros_from = found.tail.offset + found.tail.length if found.tail is not None else found.end
        if zeros_from < size:
            reason = "zero tail in a sealed segment: its end was lost"
            outcome.ranges.append(_keep(path, seq, data, Damage(zeros_from, size - zeros_from, reason, 0)))
    return outcome


def read_records(directory: Path) -> Iterator[Record]:
    """The valid records of a journal directory, oldest segment first, read only: nothing is
    copied, cut or removed (to judge a directory before deciding what to do with it)."""
    found = list_segments(directory)
    marker, _stored = find_marker(directory, found)
    for seq, path in found:
        data = path.read_bytes()
        header, _problem = parse_header(data, seq)
        if header is not None and header.marker is None:
            yield from _scan_v1(data).records
        elif header is not None:
            yield from scan(data, header.size, header.marker).records
        elif marker is not None:
            yield from scan(data, SEGMENT_HEADER_SIZE, marker).records


def _scan_v1(data: bytes) -> Scan:
    records, end, reason = decode_run_v1(data, SEGMENT_HEADER_V1_SIZE)
    result = Scan(records=records, end=end)
    stop = last_non_zero(data, end, len(data))
    if stop > end:
        result.tail = Damage(end, stop - end, reason or "not a record", 0)
    result.zero_tail = stop < len(data)
    return result


def _keep(path: Path, seq: int, data: bytes, damage: Damage, *, torn: bool = False) -> DamagedRange:
    """Log one damaged range and copy its bytes aside (unless they are all zeros)."""
    chunk = data[damage.offset : damage.offset + damage.length]
    aside = None if is_zero(chunk) else copy_aside(path, damage.offset, chunk)
    what = "cut off after copying it" if torn else "left in place"
    log.warning(
        "journal segment %s offset %d: %d damaged bytes (%s, about %d records); %s%s",
        path.name, damage.offset, damage.length, damage.reason, damage.markers, what,
        f", copy in {aside.name}" if aside is not None else "",
    )
    return DamagedRange(seq, damage.offset, damage.length, damage.reason, aside, torn, damage.markers)


def record_size(record: Record) -> int:
    return RECORD_OVERHEAD + len(record.key) + len(record.payload)
