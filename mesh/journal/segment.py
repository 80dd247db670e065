"""Segment files: their names, their header and how to list them in a journal directory.

A segment is ``NNNNNNNNNNNNNNNNNNNN.seg`` (the zero-padded sequence number) holding a 24-byte
header and then records back to back. The header carries the magic, the format version and the
segment's own sequence number, protected by a crc32, so a renamed or foreign file is refused.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

MAGIC = b"MESHJNL1"
FORMAT_VERSION = 1
#: magic, format version, reserved, segment seq, crc32 of the 20 bytes before it
SEGMENT_HEADER = struct.Struct("<8sHHQI")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size
_NAME = re.compile(r"^(\d{20})\.seg$")


def segment_name(seq: int) -> str:
    return f"{seq:020d}.seg"


def encode_header(seq: int) -> bytes:
    head = SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, 0, seq, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


def header_problem(data: bytes, seq: int) -> str | None:
    """Why ``data`` does not start with a valid header for segment ``seq`` (None if it does)."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return f"torn segment header ({len(data)} of {SEGMENT_HEADER_SIZE} bytes)"
    magic, version, _reserved, got_seq, crc = SEGMENT_HEADER.unpack_from(data, 0)
    if zlib.crc32(data[: SEGMENT_HEADER_SIZE - 4]) != crc:
        return "segment header checksum mismatch"
    if magic != MAGIC:
        return f"bad magic {magic!r}"
    if version != FORMAT_VERSION:
        return f"unsupported segment format version {version} (this build reads {FORMAT_VERSION})"
    if got_seq != seq:
        return f"header names segment {got_seq}, file name says {seq}"
    return None


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
