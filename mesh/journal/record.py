"""Record framing: the byte layout of one journal record and the checked decoding of a segment.

Format 2, little-endian: ``[8-byte marker][u32 length][u32 crc32][u8 type][u8 keylen][key][payload]``
where the marker is the journal's sync marker (segment.py), ``length`` counts the bytes from
``type`` to the end of ``payload`` and ``crc32`` (zlib) covers exactly those bytes. A record is
valid only if it starts with the marker, is complete and its checksum matches.

After damage, ``scan`` finds the next intact record by searching for the marker and checking the
record there; every record that does not overlap the damage is found again. A client never sees
the marker, so a payload cannot hold a record that the search would take for a real one.

Segments are preallocated with zeros (see writer.py), so the records of the newest segment are
followed by a zero tail: nothing but zeros from where a record would start to the end of the
file is the clean end of the records.

Format 1 (``decode_run_v1``, read only) had no marker: ``[u32 length][u32 crc32][u8 type][u8 keylen]...``;
nothing after its first bad record can be found again.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

#: marker, length, crc32, type, keylen
RECORD_HEADER = struct.Struct("<8sIIBB")
_LENGTH_CRC_TYPE_KEYLEN = struct.Struct("<IIBB")
MARKER_SIZE = 8
#: the bytes before ``type`` (marker, length and crc) that the checksum does not cover
PREFIX_SIZE = 16
#: bytes a record costs beyond its key and payload
RECORD_OVERHEAD = RECORD_HEADER.size
MAX_KEY_BYTES = 255

#: format 1: length, crc32, type, keylen
RECORD_HEADER_V1 = struct.Struct("<IIBB")
_PREFIX_V1 = 8

_ZERO_BLOCK = bytes(1 << 20)


def is_zero(data: bytes | memoryview, start: int = 0, end: int | None = None) -> bool:
    """Whether every byte of ``data[start:end]`` is zero (memcmp speed, 1 MiB at a time)."""
    view = memoryview(data)
    size = len(view) if end is None else end
    step = len(_ZERO_BLOCK)
    for pos in range(start, size, step):
        block = view[pos : min(pos + step, size)].tobytes()
        if block != (_ZERO_BLOCK if len(block) == step else bytes(len(block))):
            return False
    return True


def last_non_zero(data: bytes, start: int, end: int) -> int:
    """The offset just past the last non-zero byte of ``data[start:end]`` (``start`` if none)."""
    stripped = data[start:end].rstrip(b"\0")
    return start + len(stripped)


@dataclass(frozen=True, slots=True)
class Record:
    """One journal record as the caller wrote it."""

    type: int  # 1..255, chosen by the caller
    key: bytes  # the task id (utf-8); 0..255 bytes; b"" for keyless records
    payload: bytes


def check_fields(type: int, key: bytes) -> None:
    """Raise ValueError if ``type`` or ``key`` cannot be framed."""
    if not 0 < type < 256:
        raise ValueError(f"record type {type!r} is out of range; use 1..255")
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(f"record key of {len(key)} bytes exceeds {MAX_KEY_BYTES} bytes; use a shorter task id")


def encode(type: int, key: bytes, payload: bytes, marker: bytes) -> bytes:
    """The framed bytes of one record (the journal inlines the same steps on its hot path)."""
    check_fields(type, key)
    body = bytes((type, len(key))) + key + payload
    return marker + struct.pack("<II", len(body), zlib.crc32(body)) + body


def encode_v1(type: int, key: bytes, payload: bytes) -> bytes:
    """A format-1 record (tests of the upgrade path write old journals with it)."""
    check_fields(type, key)
    body = bytes((type, len(key))) + key + payload
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes of a segment that hold no valid record."""

    offset: int
    length: int
    reason: str
    markers: int  # marker occurrences inside: about how many records were lost there


@dataclass(slots=True)
class Scan:
    """What one segment holds: its valid records and the damage between and after them."""

    records: list[Record] | RecordRun = field(default_factory=list)
    #: offset just past the last valid record (or the header): where appends would continue
    end: int = 0
    #: damaged ranges before ``end`` (each followed by a valid record)
    damage: list[Damage] = field(default_factory=list)
    #: non-zero bytes after ``end`` that are no record (up to the last non-zero byte), or None
    tail: Damage | None = None
    #: whether zero bytes follow ``end`` (or the tail damage) to the end of the data
    zero_tail: bool = False


class RecordRun:
    """The valid records of one segment, decoded one at a time from the segment's bytes as they
    are iterated: 8 bytes (the record's offset) each until then, where a list of `Record`s costs
    ~400 bytes each (a 32 MiB segment: ~40 MiB more at the peak of a recovery, and a heap that
    keeps that peak's pages). Iterating again decodes again; equal to a list of the same records."""

    __slots__ = ("_data", "_offsets")

    def __init__(self, data: bytes, offsets: array) -> None:
        self._data = data
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self) -> Iterator[Record]:
        data = self._data
        unpack = _LENGTH_CRC_TYPE_KEYLEN.unpack_from
        for pos in self._offsets:
            length, _crc, type_, keylen = unpack(data, pos + MARKER_SIZE)
            key_end = pos + RECORD_OVERHEAD + keylen
            yield Record(type_, data[pos + RECORD_OVERHEAD : key_end], data[key_end : pos + PREFIX_SIZE + length])

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, RecordRun)) else NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _problem_at(data: bytes, pos: int, size: int, marker: bytes) -> tuple[int, str | None]:
    """``(end, None)`` if a valid record starts at ``pos``, else ``(0, why not)``."""
    if size - pos < RECORD_OVERHEAD:
        return 0, f"torn record header ({size - pos} of {RECORD_OVERHEAD} bytes present)"
    if not data.startswith(marker, pos):
        return 0, "no record marker"
    length, crc, type_, keylen = _LENGTH_CRC_TYPE_KEYLEN.unpack_from(data, pos + MARKER_SIZE)
    end = pos + PREFIX_SIZE + length
    if length < 2:
        return 0, f"record length {length} is below the minimum of 2"
    if end > size:
        return 0, f"torn record (needs {end - pos} bytes, {size - pos} present)"
    if zlib.crc32(memoryview(data)[pos + PREFIX_SIZE : end]) != crc:
        return 0, "checksum mismatch"
    if type_ == 0 or 2 + keylen > length:
        return 0, f"malformed record (type {type_}, key length {keylen}, length {length})"
    return end, None


def _next_record(data: bytes, start: int, size: int, marker: bytes) -> int:
    """The offset of the first valid record at or after ``start`` (-1 if none)."""
    candidate = data.find(marker, start, size)
    while candidate != -1:
        if _problem_at(data, candidate, size, marker)[1] is None:
            return candidate
        candidate = data.find(marker, candidate + 1, size)
    return -1


def scan(data: bytes, start: int, marker: bytes, *, lazy: bool = False) -> Scan:
    """Decode the records of ``data`` from ``start``, resynchronising on the marker after damage.
    ``lazy``: ``records`` is a `RecordRun` over ``data`` (recovery), not a list.

    A position where no valid record starts begins a damaged range, which ends at the next valid
    record (found by the marker and checked by its crc). Zeros from a position to the end of the
    data are the zero tail (the clean end of a preallocated segment); non-zero bytes after the
    last valid record are ``tail``.
    """
    size = len(data)
    result = Scan(end=start)
    records = result.records
    offsets = array("q") if lazy else None
    unpack = _LENGTH_CRC_TYPE_KEYLEN.unpack_from
    crc32 = zlib.crc32
    view = memoryview(data)
    pos = start
    while pos < size:
        # the common case inline: an intact record at pos
        if size - pos >= RECORD_OVERHEAD and data.startswith(marker, pos):
            length, crc, type_, keylen = unpack(data, pos + MARKER_SIZE)
            end = pos + PREFIX_SIZE + length
            if length >= 2 and end <= size and type_ != 0 and 2 + keylen <= length and crc32(view[pos + PREFIX_SIZE : end]) == crc:
                if offsets is not None:
                    offsets.append(pos)
                else:
                    key_end = pos + RECORD_OVERHEAD + keylen
                    records.append(Record(type_, data[pos + RECORD_OVERHEAD : key_end], data[key_end:end]))
                pos = result.end = end
                continue
        if is_zero(data, pos):
            result.zero_tail = True
            break
        reason = _problem_at(data, pos, size, marker)[1] or "no record"
        following = _next_record(data, pos + 1, size, marker)
        if following == -1:
            stop = last_non_zero(data, pos, size)
            result.tail = Damage(pos, stop - pos, reason, data.count(marker, pos, stop))
            result.zero_tail = stop < size
            break
        result.damage.append(Damage(pos, following - pos, reason, data.count(marker, pos, following)))
        pos = following
    view.release()
    if offsets is not None:
        result.records = RecordRun(data, offsets)
    return result


def decode_run_v1(data: bytes | memoryview, start: int) -> tuple[list[Record], int, str | None]:
    """Decode consecutive format-1 records of ``data`` from ``start`` until the end or the first bad one.

    Returns ``(records, end, reason)``: the valid records, the offset just past the last valid
    one, and why decoding stopped early (``None`` if it reached the end cleanly: the end of
    ``data``, or a zero tail starting at ``end``). Format 1 has no marker: nothing after a bad
    record can be found again.
    """
    view = memoryview(data)
    size = len(view)
    records: list[Record] = []
    pos = start
    unpack = RECORD_HEADER_V1.unpack_from
    crc32 = zlib.crc32
    overhead = RECORD_HEADER_V1.size
    reason: str | None = None
    while pos < size:
        if size - pos < overhead:
            if is_zero(view, pos):
                break  # a zero tail shorter than a record header
            reason = f"torn record header ({size - pos} of {overhead} bytes present)"
            break
        length, crc, type_, keylen = unpack(view, pos)
        end = pos + _PREFIX_V1 + length
        if length == 0:
            if is_zero(view, pos):
                break  # the preallocated zero tail: the clean end
            reason = "record length 0 followed by non-zero bytes (not a clean zero tail)"
            break
        if length < 2:
            reason = f"record length {length} is below the minimum of 2"
            break
        if end > size:
            reason = f"torn record (needs {end - pos} bytes, {size - pos} present)"
            break
        if crc32(view[pos + _PREFIX_V1 : end]) != crc:
            reason = "checksum mismatch"
            break
        if type_ == 0 or 2 + keylen > length:
            reason = f"malformed record (type {type_}, key length {keylen}, length {length})"
            break
        key_end = pos + overhead + keylen
        records.append(Record(type_, bytes(view[pos + overhead : key_end]), bytes(view[key_end:end])))
        pos = end
    return records, pos, reason
