"""Segment files: their names, their header, the journal's sync marker, and how to list them.

A segment is ``NNNNNNNNNNNNNNNNNNNN.seg`` (the zero-padded sequence number) holding a header and
then records back to back. Format 2 (written now) has a 32-byte header: magic, format version,
reserved, the journal's 8-byte sync marker, the segment's own sequence number and a crc32 of the
28 bytes before it. Format 1 (read only) had a 24-byte header without the marker. A renamed or
foreign file is refused by its header; a damaged header does not hide the segment's records
(recovery takes the sequence number from the file name and the marker from ``journal.marker``
or the other segments).

The marker (docs/decisions/001) is 8 random bytes drawn once per journal and written in front of
every record, so recovery can find the next intact record after damage. It never leaves the
journal directory, so a client cannot forge it inside a payload.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"MESHJNL1"
FORMAT_VERSION = 2
#: magic, format version (both formats start so)
_PREAMBLE = struct.Struct("<8sH")
#: format 1: magic, version, reserved, segment seq, crc32 of the 20 bytes before it
SEGMENT_HEADER_V1 = struct.Struct("<8sHHQI")
#: format 2: magic, version, reserved, sync marker, segment seq, crc32 of the 28 bytes before it
SEGMENT_HEADER = struct.Struct("<8sHH8sQI")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size
SEGMENT_HEADER_V1_SIZE = SEGMENT_HEADER_V1.size
MARKER_SIZE = 8
#: the journal's marker, also kept apart from the segments: magic, marker, crc32 of both
MARKER_NAME = "journal.marker"
_MARKER_FILE = struct.Struct("<8s8sI")
_MARKER_MAGIC = b"MESHMARK"
_NAME = re.compile(r"^(\d{20})\.seg$")
#: files the journal creates are readable by their owner only
FILE_MODE = 0o600
DIR_MODE = 0o700


def segment_name(seq: int) -> str:
    return f"{seq:020d}.seg"


def encode_header(seq: int, marker: bytes) -> bytes:
    head = SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, 0, marker, seq, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    size: int  # bytes the header takes; records follow
    marker: bytes | None  # None in format 1


def parse_header(data: bytes, seq: int) -> tuple[Header | None, str | None]:
    """The valid header ``data`` starts with for segment ``seq``, or (None, why not)."""
    if len(data) < _PREAMBLE.size:
        return None, f"torn segment header ({len(data)} bytes)"
    magic, version = _PREAMBLE.unpack_from(data, 0)
    layout = SEGMENT_HEADER if version == FORMAT_VERSION else SEGMENT_HEADER_V1 if version == 1 else None
    if layout is None:
        if (magic == MAGIC and len(data) >= SEGMENT_HEADER_SIZE
                and zlib.crc32(data[: SEGMENT_HEADER_SIZE - 4]) == struct.unpack_from("<I", data, SEGMENT_HEADER_SIZE - 4)[0]):
            return None, f"unsupported segment format version {version} (this build reads 1 and {FORMAT_VERSION})"
        return None, "segment header damaged (unknown format version)"
    if len(data) < layout.size:
        return None, f"torn segment header ({len(data)} of {layout.size} bytes)"
    fields = layout.unpack_from(data, 0)
    if zlib.crc32(data[: layout.size - 4]) != fields[-1]:
        return None, "segment header checksum mismatch"
    if magic != MAGIC:
        return None, f"bad magic {magic!r}"
    if fields[-2] != seq:
        return None, f"header names segment {fields[-2]}, file name says {seq}"
    return Header(version, layout.size, fields[3] if version == FORMAT_VERSION else None), None


def header_problem(data: bytes, seq: int) -> str | None:
    """Why ``data`` does not start with a valid header for segment ``seq`` (None if it does)."""
    return parse_header(data, seq)[1]


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files of ``directory``, oldest first; other files are ignored."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            m = _NAME.match(entry.name)
            if m and entry.is_file():
                found.append((int(m.group(1)), Path(entry.path)))
    found.sort()
    return found


def read_marker_file(directory: Path) -> bytes | None:
    """The marker stored in ``journal.marker``, or None if it is missing or damaged."""
    try:
        data = (directory / MARKER_NAME).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != _MARKER_FILE.size:
        return None
    magic, marker, crc = _MARKER_FILE.unpack(data)
    if magic != _MARKER_MAGIC or zlib.crc32(data[:-4]) != crc:
        return None
    return marker


def write_marker_file(directory: Path, marker: bytes) -> None:
    """Store ``marker`` durably (temp file, fsync, rename, fsync the directory), mode 0600."""
    body = _MARKER_MAGIC + marker
    data = body + struct.pack("<I", zlib.crc32(body))
    tmp = directory / (MARKER_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / MARKER_NAME)
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
