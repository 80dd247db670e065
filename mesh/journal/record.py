"""Record framing: the byte layout of one journal record and the checked decoding of a run of them.

Layout, little-endian: ``[u32 length][u32 crc32][u8 type][u8 keylen][key][payload]`` where
``length`` counts the bytes from ``type`` to the end of ``payload`` and ``crc32`` (zlib) covers
exactly those bytes. A record is valid only if it is complete and its checksum matches.

Segments are preallocated with zeros (see writer.py), so a run of records is followed by a zero
tail: a record length of 0 where a record would start, with nothing but zeros from there to the
end of the data, is the clean end of the run. A length of 0 followed by any non-zero byte is
corruption, like any other bad record.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

#: length, crc32, type, keylen
RECORD_HEADER = struct.Struct("<IIBB")
#: the bytes before ``type`` (length and crc) that the checksum does not cover
PREFIX_SIZE = 8
#: bytes a record costs beyond its key and payload
RECORD_OVERHEAD = RECORD_HEADER.size
MAX_KEY_BYTES = 255

_ZERO_BLOCK = bytes(1 << 20)


def is_zero(data: bytes | memoryview, start: int = 0) -> bool:
    """Whether every byte of ``data`` from ``start`` on is zero (memcmp speed, 1 MiB at a time)."""
    view = memoryview(data)
    size = len(view)
    step = len(_ZERO_BLOCK)
    for pos in range(start, size, step):
        block = view[pos : pos + step].tobytes()
        if block != (_ZERO_BLOCK if len(block) == step else bytes(len(block))):
            return False
    return True


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


def encode(type: int, key: bytes, payload: bytes) -> bytes:
    """The framed bytes of one record (the journal inlines the same steps on its hot path)."""
    check_fields(type, key)
    body = bytes((type, len(key))) + key + payload
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def decode_run(data: bytes | memoryview, start: int) -> tuple[list[Record], int, str | None]:
    """Decode consecutive records of ``data`` from ``start`` until the end or the first bad one.

    Returns ``(records, end, reason)``: the valid records, the offset just past the last valid
    one, and why decoding stopped early (``None`` if it reached the end cleanly: the end of
    ``data``, or a zero tail starting at ``end``). Nothing after a bad record is trusted: a torn
    or corrupt record ends the run.
    """
    view = memoryview(data)
    size = len(view)
    records: list[Record] = []
    pos = start
    unpack = RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    reason: str | None = None
    while pos < size:
        if size - pos < RECORD_OVERHEAD:
            if is_zero(view, pos):
                break  # a zero tail shorter than a record header
            reason = f"torn record header ({size - pos} of {RECORD_OVERHEAD} bytes present)"
            break
        length, crc, type_, keylen = unpack(view, pos)
        end = pos + PREFIX_SIZE + length
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
        if crc32(view[pos + PREFIX_SIZE : end]) != crc:
            reason = "checksum mismatch"
            break
        if type_ == 0 or 2 + keylen > length:
            reason = f"malformed record (type {type_}, key length {keylen}, length {length})"
            break
        key_end = pos + RECORD_OVERHEAD + keylen
        records.append(Record(type_, bytes(view[pos + RECORD_OVERHEAD : key_end]), bytes(view[key_end:end])))
        pos = end
    return records, pos, reason
