"""Property tests of the journal: the codec round-trips, a crash at any byte recovers exactly the
longest fully written prefix, and compaction never loses the latest state of a live key."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.journal import FsyncPolicy, Journal, Record
from mesh.journal.record import decode_run, encode
from mesh.journal.segment import SEGMENT_HEADER_SIZE, list_segments

records_st = st.builds(
    Record,
    type=st.integers(1, 255),
    key=st.binary(max_size=20),
    payload=st.binary(max_size=300),
)


@given(st.lists(records_st, max_size=50))
def test_codec_decodes_what_it_encodes(records: list[Record]) -> None:
    data = b"".join(encode(r.type, r.key, r.payload) for r in records)
    assert decode_run(data, 0) == (records, len(data), None)


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
        expected = []
        for i in range(index):
            expected += decode_run(segments[i].read_bytes(), SEGMENT_HEADER_SIZE)[0]
        if local >= SEGMENT_HEADER_SIZE:
            expected += decode_run(original[:local], SEGMENT_HEADER_SIZE)[0]
        tail = b""
        if garbage is not None:  # the garbage differs from what was there in its first byte
            first = original[local] ^ 0xFF if local < len(original) else garbage[0]
            tail = bytes([first or 1]) + garbage[1:]
        damaged = original[:local] + tail
        if zeros_after:
            damaged += bytes(max(0, len(original) - len(damaged)))
        segments[index].write_bytes(damaged)
        for path in segments[index + 1 :]:
            path.unlink()
        assert _replay(directory) == expected
        assert _replay(directory) == expected, "the second recovery sees the same, already cut, journal"


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
