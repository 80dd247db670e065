"""Property tests of the journal: the codec round-trips, a crash at any byte recovers exactly the
longest fully written prefix, damage anywhere loses only the records it overlaps, and compaction
never loses the latest state of a live key."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.journal import FsyncPolicy, Journal, Record
from mesh.journal.record import RECORD_OVERHEAD, RecordRun, encode, scan
from mesh.journal.segment import MARKER_NAME, SEGMENT_HEADER_SIZE, list_segments, read_marker_file

records_st = st.builds(
    Record,
    type=st.integers(1, 255),
    key=st.binary(max_size=20),
    payload=st.binary(max_size=300),
)


@given(st.lists(records_st, max_size=50), st.binary(min_size=8, max_size=8).filter(lambda m: 0 not in m))
def test_codec_decodes_what_it_encodes(records: list[Record], marker: bytes) -> None:
    data = b"".join(encode(r.type, r.key, r.payload, marker) for r in records)
    decoded = scan(data, 0, marker)
    assert (decoded.records, decoded.end, decoded.damage, decoded.tail) == (records, len(data), [], None)


@given(st.lists(records_st, max_size=50), st.binary(min_size=8, max_size=8).filter(lambda m: 0 not in m))
def test_lazy_scan_of_recovery_decodes_the_same_records_one_at_a_time(records: list[Record], marker: bytes) -> None:
    data = b"".join(encode(r.type, r.key, r.payload, marker) for r in records)
    decoded = scan(data, 0, marker, lazy=True)
    assert isinstance(decoded.records, RecordRun) and len(decoded.records) == len(records)
    assert (list(decoded.records), decoded.end, decoded.damage, decoded.tail) == (records, len(data), [], None)
    assert decoded.records == records  # and again: iterating decodes afresh


def _segment_records(path: Path, data: bytes | None = None) -> list[Record]:
    marker = read_marker_file(path.parent)
    assert marker is not None
    return scan(path.read_bytes() if data is None else data, SEGMENT_HEADER_SIZE, marker).records


async def _write(directory: Path, records: list[Record], policy: FsyncPolicy = FsyncPolicy.NONE) -> None:
    # NONE writes plain files; BATCH preallocates segments (zero tail in the newest one)
    journal = Journal(directory, policy=policy, segment_size_bytes=400)
    list(journal.recover())
    journal.start()
    for r in records:
        journal.append(r.type, r.key, r.payload)
    await journal.sync()
    await journal.close()


def _replay(directory: Path) -> list[Record]:
    journal = Journal(directory)
    out = list(journal.recover())
    asyncio.run(journal.close())
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(records_st, min_size=1, max_size=30), data=st.data())
def test_crash_at_any_byte_recovers_the_longest_fully_written_prefix(records: list[Record], data: st.DataObject) -> None:
    policy = data.draw(st.sampled_from([FsyncPolicy.NONE, FsyncPolicy.BATCH]), label="policy")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "j"
        asyncio.run(_write(directory, records, policy))
        segments = [path for _seq, path in list_segments(directory)]
        sizes = [path.stat().st_size for path in segments]
        cut = data.draw(st.integers(0, sum(sizes)), label="crash offset")
        garbage = data.draw(st.one_of(st.none(), st.binary(min_size=1, max_size=64)), label="garbage after it")
        # a crash inside preallocated space: the file keeps its size, zeros after what was written
        zeros_after = data.draw(st.booleans(), label="zeros after it")
        # the segment the crash hit, and the offset inside it
        index, local = 0, cut
        while index < len(segments) - 1 and local >= sizes[index]:
            local -= sizes[index]
            index += 1
        original = segments[index].read_bytes()
        tail = b""
        if garbage is not None:  # the garbage differs from what was there in its first byte
            first = original[local] ^ 0xFF if local < len(original) else garbage[0]
            tail = bytes([first or 1]) + garbage[1:]
        damaged = original[:local] + tail
        if zeros_after:
            damaged += bytes(max(0, len(original) - len(damaged)))
        # What was fully written is the longest prefix the damaged file shares with the
        # original: zeros after the crash can rebuild a record's own trailing zero bytes (an
        # empty record cut in its last byte, a 0 there), and that record is then whole.
        written = local
        while written < min(len(damaged), len(original)) and damaged[written] == original[written]:
            written += 1
        expected = []
        for i in range(index):
            expected += _segment_records(segments[i])
        if written >= SEGMENT_HEADER_SIZE:
            expected += _segment_records(segments[index], original[:written])
        segments[index].write_bytes(damaged)
        for path in segments[index + 1 :]:
            path.unlink()
        assert _replay(directory) == expected
        assert _replay(directory) == expected, "the second recovery sees the same, already cut, journal"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(records_st, min_size=1, max_size=40), data=st.data())
def test_damage_anywhere_loses_only_the_records_it_overlaps(records: list[Record], data: st.DataObject) -> None:
    """Flip a byte, zero a run or write random bytes anywhere in any segment file, header
    included: recovery returns exactly the records whose bytes were not changed, never raises,
    and a second recovery returns the same."""
    policy = data.draw(st.sampled_from([FsyncPolicy.NONE, FsyncPolicy.BATCH]), label="policy")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "j"
        asyncio.run(_write(directory, records, policy))
        segments = [path for _seq, path in list_segments(directory)]
        # where every record lives: (segment index, offset, length)
        spans = []
        for index, path in enumerate(segments):
            offset = SEGMENT_HEADER_SIZE
            for r in _segment_records(path):
                length = RECORD_OVERHEAD + len(r.key) + len(r.payload)
                spans.append((index, offset, length, r))
                offset += length
        assert [r for *_x, r in spans] == records
        index = data.draw(st.integers(0, len(segments) - 1), label="segment")
        original = segments[index].read_bytes()
        start = data.draw(st.integers(0, len(original) - 1), label="offset")
        kind = data.draw(st.sampled_from(["flip", "zeros", "random"]), label="kind")
        if kind == "flip":
            new = bytes([original[start] ^ data.draw(st.integers(1, 255), label="xor")])
        else:
            length = data.draw(st.integers(1, min(200, len(original) - start)), label="length")
            new = bytes(length) if kind == "zeros" else data.draw(st.binary(min_size=length, max_size=length), label="bytes")
        damaged = original[:start] + new + original[start + len(new) :]
        segments[index].write_bytes(damaged)
        changed = {i for i in range(start, start + len(new)) if damaged[i] != original[i]}
        if len(segments) > 1 and data.draw(st.booleans(), label="lose journal.marker"):
            (directory / MARKER_NAME).unlink()  # the marker comes from the other segments' headers
        expected = [
            r for seg, offset, length, r in spans
            if seg != index or not any(offset <= i < offset + length for i in changed)
        ]
        assert _replay(directory) == expected
        assert _replay(directory) == expected, "the second recovery sees the same"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("set"), st.integers(0, 15), st.binary(min_size=1, max_size=120)),
            st.tuples(st.just("release"), st.integers(0, 15)),
            st.tuples(st.just("compact")),
            st.tuples(st.just("sync")),
        ),
        max_size=120,
    )
)
def test_compaction_never_loses_the_latest_state_of_a_live_key(ops: list[tuple]) -> None:
    model: dict[bytes, bytes] = {}

    def rewrite(key: bytes) -> list[tuple[int, bytes]]:
        return [(2, model[key])] if key in model else []

    async def run(directory: Path) -> None:
        journal = Journal(directory, segment_size_bytes=512, rewrite=rewrite)
        list(journal.recover())
        journal.start()
        for op in ops:
            if op[0] == "set":
                key = b"k%d" % op[1]
                model[key] = op[2]
                journal.append(1, key, op[2])
            elif op[0] == "release":
                key = b"k%d" % op[1]
                model.pop(key, None)
                journal.release(key)
            elif op[0] == "compact":
                journal.compact()
            else:
                await journal.sync()
        await journal.close()

    tmp = Path(tempfile.mkdtemp())
    try:
        asyncio.run(run(tmp / "j"))
        replayed: dict[bytes, bytes] = {}
        for record in _replay(tmp / "j"):
            replayed[record.key] = record.payload
        for key, value in model.items():
            assert replayed.get(key) == value, key
    finally:
        shutil.rmtree(tmp)
