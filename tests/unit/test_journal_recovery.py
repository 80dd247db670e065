"""Journal recovery beyond the codec: the report, the marker's fallbacks, reading format-1
journals, and who may read the files (0700 directory, 0600 files)."""

from __future__ import annotations

import asyncio
import os
import stat
import struct
import zlib
from pathlib import Path

from mesh.journal import Journal, Record, RecoveryReport
from mesh.journal.record import RECORD_OVERHEAD, encode_v1, scan
from mesh.journal.segment import (
    MAGIC,
    MARKER_NAME,
    SEGMENT_HEADER_SIZE,
    SEGMENT_HEADER_V1,
    list_segments,
    parse_header,
    read_marker_file,
    segment_name,
)


def records_of(n: int, size: int = 100, prefix: bytes = b"k") -> list[Record]:
    return [Record(1, prefix + b"%d" % i, bytes([i % 251]) * size) for i in range(n)]


async def write_journal(directory: Path, records: list[Record], **kwargs: object) -> None:
    journal = Journal(directory, **kwargs)  # type: ignore[arg-type]
    list(journal.recover())
    journal.start()
    for r in records:
        journal.append(r.type, r.key, r.payload)
    await journal.sync()
    await journal.close()


def recover(directory: Path, **kwargs: object) -> tuple[list[Record], RecoveryReport]:
    journal = Journal(directory, **kwargs)  # type: ignore[arg-type]
    records = list(journal.recover())
    report = journal.recovery_report
    asyncio.run(journal.close())
    assert report is not None
    return records, report


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_crash_tear_is_reported_as_a_torn_tail_and_copied_aside(tmp_path: Path) -> None:
    records = records_of(20)
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=64 * 1024))
    newest = list_segments(directory)[-1][1]
    end = scan(newest.read_bytes(), SEGMENT_HEADER_SIZE, read_marker_file(directory)).end
    torn_at = end - 50  # the last record lost its last 50 bytes, the zeros after it stay
    data = bytearray(newest.read_bytes())
    data[torn_at:end] = bytes(50)
    newest.write_bytes(bytes(data))
    recovered, report = recover(directory)
    assert recovered == records[:-1]
    start = end - (RECORD_OVERHEAD + len(records[-1].key) + 100)
    assert report.only_torn_tail and not report.clean
    [torn] = report.ranges
    assert (torn.offset, torn.length, torn.torn_tail, torn.markers) == (start, torn_at - start, True, 1)
    assert report.skipped_records == 1 and report.damaged_bytes == torn_at - start
    assert torn.aside_path is not None and torn.aside_path.read_bytes() == bytes(data[start:torn_at])
    assert newest.stat().st_size == start, "appends continue right after the last valid record"
    again, report = recover(directory)
    assert again == records[:-1] and report.clean


def test_damage_in_the_middle_is_not_a_torn_tail(tmp_path: Path) -> None:
    records = records_of(30)
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=1024))
    path = list_segments(directory)[0][1]
    data = bytearray(path.read_bytes())
    size = RECORD_OVERHEAD + 2 + 100
    for i in range(3):  # a byte of each of records 0..2
        data[SEGMENT_HEADER_SIZE + i * size + 50] ^= 0x11
    path.write_bytes(bytes(data))
    recovered, report = recover(directory)
    assert recovered == records[3:]
    assert not report.only_torn_tail and report.skipped_records == 3
    assert [(r.offset, r.length, r.torn_tail) for r in report.ranges] == [(SEGMENT_HEADER_SIZE, 3 * size, False)]


def test_marker_comes_from_the_other_segments_when_its_file_is_lost(tmp_path: Path) -> None:
    records = records_of(30)
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=1024))
    marker = read_marker_file(directory)
    (directory / MARKER_NAME).unlink()
    path = list_segments(directory)[0][1]
    data = bytearray(path.read_bytes())
    data[15] ^= 0xFF  # inside this segment's copy of the marker
    path.write_bytes(bytes(data))
    recovered, report = recover(directory)
    assert recovered == records
    assert [(r.segment, r.offset) for r in report.ranges] == [(1, 0)]
    assert read_marker_file(directory) == marker, "journal.marker is written again"


def test_marker_comes_from_the_first_record_when_every_header_is_lost(tmp_path: Path) -> None:
    records = records_of(5)
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=64 * 1024))
    (directory / MARKER_NAME).unlink()
    path = list_segments(directory)[0][1]
    data = bytearray(path.read_bytes())
    data[:SEGMENT_HEADER_SIZE] = bytes(SEGMENT_HEADER_SIZE)
    path.write_bytes(bytes(data))
    recovered, _report = recover(directory)
    assert recovered == records


def _v1_segment(seq: int, records: list[Record], zero_tail: int = 0) -> bytes:
    head = SEGMENT_HEADER_V1.pack(MAGIC, 1, 0, seq, 0)[:-4]
    header = head + struct.pack("<I", zlib.crc32(head))
    return header + b"".join(encode_v1(r.type, r.key, r.payload) for r in records) + bytes(zero_tail)


def test_format_1_journal_is_read_and_continued_in_format_2_segments(tmp_path: Path) -> None:
    old1, old2, new = records_of(10, prefix=b"a"), records_of(10, prefix=b"b"), records_of(5, prefix=b"c")
    directory = tmp_path / "j"
    directory.mkdir()
    (directory / segment_name(1)).write_bytes(_v1_segment(1, old1))
    (directory / segment_name(2)).write_bytes(_v1_segment(2, old2, zero_tail=4096))  # preallocated
    journal = Journal(directory)
    assert list(journal.recover()) == old1 + old2
    report = journal.recovery_report
    assert report is not None and report.clean and report.format1_segments == (1, 2)

    async def more() -> None:
        journal.start()
        for r in new:
            journal.append(r.type, r.key, r.payload)
        await journal.sync()
        await journal.close()

    asyncio.run(more())
    segments = list_segments(directory)
    assert [s for s, _p in segments] == [1, 2, 3]
    assert (directory / segment_name(2)).stat().st_size == len(_v1_segment(2, old2)), "its zero tail is cut"
    header, _problem = parse_header(segments[2][1].read_bytes(), 3)
    assert header is not None and header.version == 2
    recovered, report = recover(directory)
    assert recovered == old1 + old2 + new and report.clean


def test_damaged_format_1_segment_loses_its_rest_but_not_later_segments(tmp_path: Path) -> None:
    old1, old2 = records_of(10, prefix=b"a"), records_of(10, prefix=b"b")
    directory = tmp_path / "j"
    directory.mkdir()
    data = bytearray(_v1_segment(1, old1))
    data[24 + 3 * (10 + 2 + 100) + 20] ^= 1  # inside the 4th record
    (directory / segment_name(1)).write_bytes(bytes(data))
    (directory / segment_name(2)).write_bytes(_v1_segment(2, old2))
    recovered, report = recover(directory)
    assert recovered == old1[:3] + old2  # format 1 cannot resync: the rest of segment 1 is lost
    assert [(r.segment, r.offset) for r in report.ranges] == [(1, 24 + 3 * 112)]
    assert (directory / segment_name(1)).read_bytes() == bytes(data), "kept as it was"


def test_journal_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records_of(40), segment_size_bytes=1024))
    assert mode(directory) == 0o700
    assert mode(directory / MARKER_NAME) == 0o600
    segments = list_segments(directory)
    assert len(segments) > 2 and all(mode(p) == 0o600 for _s, p in segments)
    data = bytearray(segments[0][1].read_bytes())
    data[SEGMENT_HEADER_SIZE + 30] ^= 1
    segments[0][1].write_bytes(bytes(data))
    _records, report = recover(directory)
    assert report.ranges[0].aside_path is not None and mode(report.ranges[0].aside_path) == 0o600


def test_an_open_directory_and_segments_of_an_older_build_are_closed_to_others(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records_of(10)))
    os.chmod(directory, 0o755)
    for _s, path in list_segments(directory):
        os.chmod(path, 0o644)
    os.chmod(directory / MARKER_NAME, 0o644)
    recover(directory)
    assert mode(directory) == 0o700
    assert mode(directory / MARKER_NAME) == 0o600
    assert all(mode(p) == 0o600 for _s, p in list_segments(directory))
