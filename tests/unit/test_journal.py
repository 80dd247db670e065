"""The journal: round trips, torn tails, corruption, crashes, group commit, policies, I/O errors,
bounded size under compaction. Real files in tmp_path; waits are on conditions, never fixed sleeps."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mesh.errors import JournalError
from mesh.journal import FsyncPolicy, Journal, Record
from mesh.journal import writer as writer_module
from mesh.journal.live_keys import LiveKeys
from mesh.journal import journal as journal_module
from mesh.journal.record import RECORD_OVERHEAD, encode, scan
from mesh.journal.segment import SEGMENT_HEADER_SIZE, list_segments, read_marker_file
from mesh.journal.writer import PREP_NAME

REPO = Path(__file__).resolve().parents[2]


def payload_for(i: int, size: int | None = None) -> bytes:
    size = (i * 37) % 600 if size is None else size
    return bytes((i + n) % 251 for n in range(size))


def make_records(n: int, seed: int = 1) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = b"" if i % 17 == 0 else f"task-{i}".encode()
        out.append(Record(rng.randrange(1, 256), key, rng.randbytes(rng.choice((0, 1, 10, 100, 1000, 3000)))))
    return out


def replay(directory: Path, **kwargs: object) -> list[Record]:
    journal = Journal(directory, **kwargs)  # type: ignore[arg-type]
    records = list(journal.recover())
    asyncio.run(journal.close())
    return records


async def write_journal(directory: Path, records: list[Record], **kwargs: object) -> None:
    journal = Journal(directory, **kwargs)  # type: ignore[arg-type]
    assert list(journal.recover()) == []
    journal.start()
    for r in records:
        journal.append(r.type, r.key, r.payload)
    await journal.sync()
    await journal.close()


async def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.001)


def segment_records(path: Path) -> list[Record]:
    """The valid records of one segment file (format 2), decoded with its journal's marker."""
    return scan(path.read_bytes(), SEGMENT_HEADER_SIZE, read_marker_file(path.parent)).records


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- round trip


def test_round_trip_of_varied_records_across_segments(tmp_path: Path) -> None:
    records = make_records(400)
    asyncio.run(write_journal(tmp_path / "j", records, segment_size_bytes=16 * 1024))
    assert len(list_segments(tmp_path / "j")) > 5
    assert replay(tmp_path / "j") == records


def test_codec_round_trip_and_overhead() -> None:
    marker = b"\x01marker\x02"
    data = encode(7, b"k", b"payload", marker)
    assert len(data) == RECORD_OVERHEAD + 1 + 7
    decoded = scan(data, 0, marker)
    assert (decoded.records, decoded.end, decoded.damage, decoded.tail) == ([Record(7, b"k", b"payload")], len(data), [], None)


def test_reopened_journal_appends_after_the_old_records(tmp_path: Path) -> None:
    first, second = make_records(50, seed=2), make_records(50, seed=3)
    asyncio.run(write_journal(tmp_path / "j", first, segment_size_bytes=8 * 1024))

    async def more() -> None:
        journal = Journal(tmp_path / "j", segment_size_bytes=8 * 1024)
        assert list(journal.recover()) == first
        journal.start()
        for r in second:
            journal.append(r.type, r.key, r.payload)
        await journal.sync()
        await journal.close()

    asyncio.run(more())
    assert replay(tmp_path / "j") == first + second


# ---------------------------------------------------------------- torn tail and corruption


def _last_record_span(directory: Path, records: list[Record]) -> tuple[Path, int, int]:
    last = list_segments(directory)[-1][1]
    size = _data_end(last)  # the data end, before the zero tail
    r = records[-1]
    return last, size - (RECORD_OVERHEAD + len(r.key) + len(r.payload)), size


def test_torn_tail_at_every_offset_recovers_exactly_the_committed_prefix(tmp_path: Path) -> None:
    records = [Record(1, f"k{i}".encode(), payload_for(i, 40 + i)) for i in range(60)]
    original = tmp_path / "orig"
    asyncio.run(write_journal(original, records, segment_size_bytes=2048))
    last, start, end = _last_record_span(original, records)
    file_size = last.stat().st_size
    assert file_size == 2048, "the newest segment is preallocated"
    for offset in range(start, end):
        for zeros_after in (False, True):  # a torn file, or a torn record in the preallocated space
            work = tmp_path / f"cut{offset}"
            shutil.copytree(original, work)
            os.truncate(work / last.name, offset)
            if zeros_after:
                os.truncate(work / last.name, file_size)
            assert replay(work) == records[:-1], (offset, zeros_after)
            size = (work / last.name).stat().st_size
            if zeros_after and offset == start:
                assert size == file_size, "a zero tail right after a record is a clean end"
            else:
                assert size == start, "the torn record is cut off the file"
            shutil.rmtree(work)


def test_append_after_a_torn_tail_is_recovered_after_the_prefix(tmp_path: Path) -> None:
    records = [Record(1, f"k{i}".encode(), payload_for(i, 100)) for i in range(30)]
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=1024))
    last, start, end = _last_record_span(directory, records)
    os.truncate(last, start + (end - start) // 2)

    async def reopen_and_append() -> None:
        journal = Journal(directory, segment_size_bytes=1024)
        assert list(journal.recover()) == records[:-1]
        journal.start()
        journal.append(2, b"new", b"after the tear")
        await journal.sync()
        await journal.close()

    asyncio.run(reopen_and_append())
    assert replay(directory) == records[:-1] + [Record(2, b"new", b"after the tear")]


def test_flipped_byte_anywhere_in_a_record_loses_only_that_record(tmp_path: Path) -> None:
    records = [Record(3, f"key{i}".encode(), payload_for(i, 30)) for i in range(40)]
    original = tmp_path / "orig"
    asyncio.run(write_journal(original, records, segment_size_bytes=512))
    segments = list_segments(original)
    assert len(segments) >= 3
    # the second record of the second segment
    index = len(segment_records(segments[0][1])) + 1
    record_size = RECORD_OVERHEAD + len(records[index].key) + len(records[index].payload)
    before = records[index - 1]
    start = SEGMENT_HEADER_SIZE + RECORD_OVERHEAD + len(before.key) + len(before.payload)
    name = segments[1][1].name
    for offset in range(start, start + record_size):
        work = tmp_path / f"flip{offset}"
        shutil.copytree(original, work)
        data = bytearray((work / name).read_bytes())
        data[offset] ^= 0x5A
        (work / name).write_bytes(bytes(data))
        journal = Journal(work, segment_size_bytes=512)
        assert list(journal.recover()) == records[:index] + records[index + 1 :], offset
        report = journal.recovery_report
        asyncio.run(journal.close())
        assert report is not None and len(report.ranges) == 1
        damaged = report.ranges[0]
        assert (damaged.segment, damaged.offset, damaged.length) == (segments[1][0], start, record_size)
        assert report.damaged_bytes == record_size and not damaged.torn_tail
        assert report.skipped_records == (0 if offset < start + 8 else 1)  # unless the marker was hit
        assert damaged.aside_path is not None and damaged.aside_path.read_bytes() == bytes(data[start : start + record_size])
        assert damaged.aside_path.name == f"{name}.damaged-{start}-{record_size}"
        assert (work / name).read_bytes() == bytes(data), "a sealed segment keeps every byte"
        assert [p.name for _s, p in list_segments(work)] == [p.name for _s, p in segments], "no segment set aside"
        assert replay(work) == records[:index] + records[index + 1 :], "the same again"
        shutil.rmtree(work)


def test_corrupt_segment_header_loses_no_record(tmp_path: Path) -> None:
    records = [Record(3, b"k", payload_for(i, 200)) for i in range(30)]
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=1024))
    segments = list_segments(directory)
    data = bytearray(segments[1][1].read_bytes())
    data[3] ^= 1
    segments[1][1].write_bytes(bytes(data))
    journal = Journal(directory)
    assert list(journal.recover()) == records
    report = journal.recovery_report
    asyncio.run(journal.close())
    assert report is not None and [(r.segment, r.offset, r.length) for r in report.ranges] == [(segments[1][0], 0, SEGMENT_HEADER_SIZE)]
    assert list_segments(directory) == segments


def test_newest_segment_with_a_torn_header_is_removed(tmp_path: Path) -> None:
    records = make_records(20)
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records))
    seq = list_segments(directory)[-1][0]
    (directory / f"{seq + 1:020d}.seg").write_bytes(b"MESHJ")
    assert replay(directory) == records
    assert [s for s, _p in list_segments(directory)] == [seq]


# ---------------------------------------------------------------- preallocation and the zero tail


def _data_end(path: Path) -> int:
    return scan(path.read_bytes(), SEGMENT_HEADER_SIZE, read_marker_file(path.parent)).end


def test_segments_are_preallocated_and_sealed_ones_cut_to_their_data(tmp_path: Path) -> None:
    records = make_records(200, seed=4)
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=16 * 1024))
    segments = [p for _s, p in list_segments(directory)]
    assert len(segments) > 3
    for path in segments[:-1]:
        assert path.stat().st_size == _data_end(path), "a sealed segment has no zero tail"
    newest = segments[-1]
    assert newest.stat().st_size == 16 * 1024 > _data_end(newest), "the newest one is preallocated"
    assert newest.read_bytes()[_data_end(newest) :].count(0) == 16 * 1024 - _data_end(newest)
    assert not (directory / PREP_NAME).exists(), "close() removes the next segment being prepared"


def test_zero_tail_is_a_clean_end_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = make_records(30, seed=6)
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=64 * 1024))
    newest = list_segments(directory)[-1][1]
    size = newest.stat().st_size
    with caplog.at_level("WARNING", logger="mesh.journal"):
        assert replay(directory) == records
    assert not caplog.records
    assert newest.stat().st_size == size, "recovery keeps the preallocated tail"


def test_reopened_journal_writes_over_the_zero_tail(tmp_path: Path) -> None:
    first, second = make_records(20, seed=2), make_records(20, seed=3)
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, first, segment_size_bytes=256 * 1024))
    newest = list_segments(directory)[-1][1]
    size, end = newest.stat().st_size, _data_end(newest)
    assert end < size

    async def more() -> None:
        journal = Journal(directory, segment_size_bytes=256 * 1024)
        assert list(journal.recover()) == first
        journal.start()
        for r in second:
            journal.append(r.type, r.key, r.payload)
        await journal.sync()
        await journal.close()

    asyncio.run(more())
    assert replay(directory) == first + second
    assert [p for _s, p in list_segments(directory)] == [newest]
    assert newest.stat().st_size == size, "written inside the preallocated space, not after it"
    assert _data_end(newest) == end + sum(RECORD_OVERHEAD + len(r.key) + len(r.payload) for r in second)


def test_stray_bytes_in_the_zero_tail_are_copied_aside_and_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = [Record(1, b"k%d" % i, payload_for(i, 50)) for i in range(10)]
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=4096))
    newest = list_segments(directory)[-1][1]
    end = _data_end(newest)
    data = bytearray(newest.read_bytes())
    data[end + 100] = 7  # a stray byte in the zero tail: something was written there
    newest.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="mesh.journal"):
        assert replay(directory) == records
    assert any("101 damaged bytes" in r.getMessage() for r in caplog.records)
    assert newest.stat().st_size == end, "cut like any torn tail"
    assert (directory / f"{newest.name}.damaged-{end}-101").read_bytes() == bytes(100) + b"\x07"


def test_zero_tail_in_an_older_segment_is_reported_and_later_segments_replayed(tmp_path: Path) -> None:
    records = [Record(1, b"k%d" % i, payload_for(i, 200)) for i in range(20)]
    directory = tmp_path / "j"
    asyncio.run(write_journal(directory, records, segment_size_bytes=1024))
    segments = list_segments(directory)
    assert len(segments) >= 3
    first_records = segment_records(segments[0][1])
    # the first segment's last record never reached the disk, its preallocated zeros did
    path = segments[0][1]
    r = first_records[-1]
    os.truncate(path, path.stat().st_size - (RECORD_OVERHEAD + len(r.key) + len(r.payload)))
    os.truncate(path, 1024)
    journal = Journal(directory)
    assert list(journal.recover()) == [x for x in records if x != r]
    report = journal.recovery_report
    asyncio.run(journal.close())
    assert report is not None and len(report.ranges) == 1 and "end was lost" in report.ranges[0].reason
    assert report.ranges[0].aside_path is None, "zeros are not copied"
    assert list_segments(directory) == segments


def test_failed_round_is_zeroed_in_place_and_keeps_the_preallocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "j"

    async def main() -> None:
        journal = Journal(directory, segment_size_bytes=64 * 1024)
        list(journal.recover())
        journal.start()
        journal.append(1, b"a", b"kept")
        await journal.sync()
        newest = list_segments(directory)[-1][1]
        await wait_until(lambda: newest.stat().st_size == 64 * 1024)  # preallocated while idle
        end = _data_end(newest)
        monkeypatch.setattr(writer_module.os, "fdatasync", _enospc)
        journal.append(1, b"b", b"lost" * 100)
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.sync()
        monkeypatch.undo()
        assert newest.stat().st_size == 64 * 1024
        assert newest.read_bytes()[end:].count(0) == 64 * 1024 - end, "the failed round is zeroed"
        journal.append(1, b"c", b"after")
        await journal.sync()
        await journal.close()

    asyncio.run(main())
    assert replay(directory) == [Record(1, b"a", b"kept"), Record(1, b"c", b"after")]


def test_zero_fill_errors_do_not_stop_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    records = make_records(100, seed=8)
    monkeypatch.setattr(writer_module, "_fill_pwrite", _enospc)
    with caplog.at_level("WARNING", logger="mesh.journal"):
        asyncio.run(write_journal(tmp_path / "j", records, segment_size_bytes=8 * 1024))
    assert any("preallocation" in r.getMessage() for r in caplog.records)
    assert replay(tmp_path / "j") == records


# ---------------------------------------------------------------- a real crash

_CHILD = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from mesh.journal import Journal

def payload_for(i, size=None):
    size = (i * 37) % 600 if size is None else size
    return bytes((i + n) % 251 for n in range(size))

async def main():
    journal = Journal(sys.argv[1], segment_size_bytes=64 * 1024)
    count = sum(1 for _ in journal.recover())
    journal.start()
    n = 1
    while True:
        for i in range(count, count + n):
            journal.append(1, b"%d" % i, payload_for(i))
        count += n
        # Every other round on the loop thread (sync_here), as a quiet Helper does.
        if not (sys.argv[3] == "here" and n % 2 and journal.sync_here()):
            await journal.sync()
        print(count, flush=True)
        n = n % 50 + 1

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["flusher", "here"])
def test_sigkill_keeps_every_record_whose_sync_was_reported(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "j"
    rng = random.Random(7)
    reported = 0
    for _round in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(directory), str(REPO), how],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert child.stdout is not None
        lines_to_read = rng.randrange(20, 400)
        for _ in range(lines_to_read):
            line = child.stdout.readline()
            assert line, "child died early"
            reported = max(reported, int(line))
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()  # lines printed before the kill were synced too
        child.wait()
        child.stdout.close()
        for line in rest.split():
            reported = max(reported, int(line))
        recovered = replay(directory)
        assert len(recovered) >= reported
        for i, record in enumerate(recovered):
            assert record == Record(1, b"%d" % i, payload_for(i)), i


# ---------------------------------------------------------------- group commit and policies


def test_concurrent_syncs_share_fdatasyncs(tmp_path: Path) -> None:
    callers = 1000

    async def main() -> int:
        journal = Journal(tmp_path / "j")
        list(journal.recover())
        journal.start()
        await journal.sync()
        before = journal.fsync_count

        async def one(i: int) -> None:
            journal.append(1, b"%d" % i, b"x" * 100)
            await journal.sync()

        await asyncio.gather(*(one(i) for i in range(callers)))
        used = journal.fsync_count - before
        await journal.close()
        return used

    used = asyncio.run(main())
    assert len(replay(tmp_path / "j")) == callers
    assert 1 <= used < callers / 10


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_every_policy_makes_synced_records_recoverable(tmp_path: Path, policy: FsyncPolicy) -> None:
    records = make_records(300, seed=5)

    async def main() -> None:
        journal = Journal(tmp_path / "j", policy=policy, segment_size_bytes=32 * 1024, interval_ms=2)
        list(journal.recover())
        journal.start()
        journal.append(1, b"", b"warm-up")
        await journal.sync()  # the flusher is up and has opened its segment
        before = journal.fsync_count
        for i, r in enumerate(records):
            journal.append(r.type, r.key, r.payload)
            if i % 30 == 29:
                await journal.sync()
        await journal.sync()
        if policy is FsyncPolicy.ALWAYS:
            assert journal.fsync_count - before >= 10
        elif policy is FsyncPolicy.BATCH:
            assert journal.fsync_count > before
        elif policy is FsyncPolicy.INTERVAL:
            await wait_until(lambda: journal._writer is not None and journal._writer.unsynced_bytes == 0)
        elif policy is FsyncPolicy.NONE:
            assert journal._writer is not None and journal._writer.unsynced_bytes > 0
        await journal.close()

    asyncio.run(main())
    assert replay(tmp_path / "j") == [Record(1, b"", b"warm-up"), *records]


def test_always_policy_fdatasyncs_once_per_sync_call(tmp_path: Path) -> None:
    async def main() -> None:
        journal = Journal(tmp_path / "j", policy=FsyncPolicy.ALWAYS)
        list(journal.recover())
        journal.start()
        await journal.sync()  # the flusher is up and has opened its segment
        before = journal.fsync_count

        async def one(i: int) -> None:
            journal.append(1, b"k", b"%d" % i)
            await journal.sync()

        await asyncio.gather(*(one(i) for i in range(20)))
        assert journal.fsync_count - before == 20
        await journal.close()

    asyncio.run(main())


def test_fsync_hook_sees_each_batch(tmp_path: Path) -> None:
    seen: list[tuple[float, int]] = []

    async def main() -> None:
        journal = Journal(tmp_path / "j")
        list(journal.recover())
        journal.on_fsync = lambda seconds, records: seen.append((seconds, records))
        journal.start()
        for i in range(10):
            journal.append(1, b"k", b"%d" % i)
        await journal.sync()
        assert journal.last_batch_records == 10
        assert journal.last_fsync_s > 0
        await journal.close()

    asyncio.run(main())
    assert (10 in [records for _s, records in seen]) and all(s > 0 for s, _r in seen)


def test_close_is_idempotent_and_leaves_no_thread_or_file_open(tmp_path: Path) -> None:
    fds_before = open_fds()

    async def main() -> Journal:
        journal = Journal(tmp_path / "j", segment_size_bytes=4096)
        list(journal.recover())
        journal.start()
        assert any(t.name.startswith("journal-flusher") for t in threading.enumerate())
        for i in range(100):
            journal.append(1, b"k", payload_for(i, 100))
        await journal.sync()
        journal.append(1, b"k", b"unsynced but closed")
        await journal.close()
        await journal.close()
        with pytest.raises(JournalError):
            journal.append(1, b"k", b"late")
        with pytest.raises(JournalError):
            await journal.sync()
        return journal

    asyncio.run(main())
    assert not any(t.name.startswith("journal-flusher") for t in threading.enumerate())
    assert open_fds() == fds_before
    assert replay(tmp_path / "j")[-1] == Record(1, b"k", b"unsynced but closed")
    assert open_fds() == fds_before


def test_unstarted_journal_close_flushes_and_closes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    list(journal.recover())
    journal.append(1, b"k", b"v")
    asyncio.run(journal.close())
    asyncio.run(journal.close())
    assert replay(tmp_path / "j") == [Record(1, b"k", b"v")]


def test_lifecycle_misuse_raises_journal_error(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    with pytest.raises(JournalError):
        journal.append(1, b"k", b"v")
    loop = asyncio.new_event_loop()
    with pytest.raises(JournalError):
        journal.start(loop)
    loop.close()
    list(journal.recover())
    with pytest.raises(JournalError):
        list(journal.recover())
    with pytest.raises(JournalError):
        asyncio.run(journal.sync())
    asyncio.run(journal.close())


# ---------------------------------------------------------------- bad input


def test_oversized_record_raises_value_error_and_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        journal = Journal(tmp_path / "j", max_record_bytes=1000)
        list(journal.recover())
        journal.start()
        size = journal._writer.data_bytes  # size_bytes includes the preallocated space now
        with pytest.raises(ValueError, match=rf"{1001 + RECORD_OVERHEAD} bytes.*max_record_bytes=1000"):
            journal.append(1, b"k", b"x" * 1000)
        journal.append(1, b"k", b"x" * (1000 - RECORD_OVERHEAD - 1))  # exactly at the limit
        await journal.sync()
        assert journal._writer.data_bytes == size + 1000
        await journal.close()

    asyncio.run(main())
    assert replay(tmp_path / "j") == [Record(1, b"k", b"x" * (1000 - RECORD_OVERHEAD - 1))]


@pytest.mark.parametrize("type_, key", [(0, b"k"), (256, b"k"), (-1, b"k"), (1, b"k" * 256)])
def test_unframeable_type_or_key_raises_value_error(tmp_path: Path, type_: int, key: bytes) -> None:
    journal = Journal(tmp_path / "j")
    list(journal.recover())
    with pytest.raises(ValueError):
        journal.append(type_, key, b"")
    asyncio.run(journal.close())


# ---------------------------------------------------------------- I/O errors


def _enospc(*_args: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["write", "partial write", "fdatasync"])
def test_disk_full_fails_that_sync_cuts_its_records_and_the_next_sync_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    # records are written with os.pwrite at the tracked data end (segments are preallocated)
    real_write, real_fdatasync = os.pwrite, os.fdatasync
    good = make_records(40, seed=11)
    lost = [Record(9, b"lost", b"L" * 500), Record(9, b"lost2", b"L" * 300)]
    later = [Record(8, b"later", b"ok")]
    def once(real, fake):
        state = {"done": False}

        def wrapper(*args):
            if not state["done"]:
                state["done"] = True
                return fake(*args)
            return real(*args)

        return wrapper

    async def main() -> None:
        journal = Journal(tmp_path / "j", segment_size_bytes=4096)
        list(journal.recover())
        journal.start()
        for r in good:
            journal.append(r.type, r.key, r.payload)
        await journal.sync()
        size = journal._writer.data_bytes  # size_bytes includes the preallocated space now
        if failing == "write":
            monkeypatch.setattr(writer_module.os, "pwrite", once(real_write, _enospc))
        elif failing == "partial write":
            monkeypatch.setattr(writer_module.os, "pwrite", _partial_then_fail(real_write))
        else:
            monkeypatch.setattr(writer_module.os, "fdatasync", once(real_fdatasync, _enospc))
        for r in lost:
            journal.append(r.type, r.key, r.payload)
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.sync()
        monkeypatch.undo()
        assert journal._writer.data_bytes == size
        for r in later:
            journal.append(r.type, r.key, r.payload)
        await journal.sync()
        await journal.close()

    asyncio.run(main())
    assert replay(tmp_path / "j") == good + later


async def _quiet_journal(directory: Path) -> Journal:
    """A started journal whose flusher is idle: after start it zero-fills the segments ahead
    (holding the writer), and sync_here() steps aside while it does."""
    journal = Journal(directory)
    list(journal.recover())
    journal.start()
    await journal.sync()

    def idle() -> bool:
        if not journal._io_lock.acquire(blocking=False):
            return False
        try:
            return not journal._writer.fill_pending()
        finally:
            journal._io_lock.release()
    await wait_until(idle)
    return journal


def test_sync_here_makes_records_durable_on_the_loop_thread_only_when_the_flusher_is_idle(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        journal = await _quiet_journal(tmp_path / "j")
        journal.append(1, b"a", b"x" * 100)
        before = journal.fsync_count
        assert journal.sync_here()
        assert journal.fsync_count == before + 1
        assert journal.sync_here()  # nothing new: durable already, no fdatasync
        assert journal.fsync_count == before + 1
        # The flusher is at work (it holds the writer): not here, the caller uses sync().
        journal.append(1, b"b", b"y")
        with journal._io_lock:
            assert not journal.sync_here()
        # A sync() is waiting for the flusher: not here either (it would overtake it).
        waiting = journal.sync_future()
        journal.append(1, b"c", b"z")
        assert not journal.sync_here()
        await waiting
        await journal.sync()
        await journal.close()

    asyncio.run(main())
    assert [r.key for r in replay(tmp_path / "j")] == [b"a", b"b", b"c"]


def _record_fill_steps(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each zero-fill step of ``journal`` begins (monotonic seconds)."""
    writer = journal._writer
    steps: list[float] = []
    real_fill_step = writer.fill_step

    def fill_step() -> bool:
        steps.append(time.monotonic())
        return real_fill_step()

    monkeypatch.setattr(writer, "fill_step", fill_step)
    return steps


async def _journal_with_fill_to_do(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Journal, list[float]]:
    """A quiet journal whose fill steps are recorded, with one record that uses up a chunk of
    the space preallocated ahead (appended, not yet durable): zero-fill to do after its round."""
    journal = await _quiet_journal(path)
    steps = _record_fill_steps(journal, monkeypatch)
    journal.append(1, b"big", bytes(writer_module.FILL_CHUNK + 4096))
    return journal, steps


async def _round_here(journal: Journal) -> float:
    """Run a round with sync_here() (again while the flusher holds the writer for a moment,
    e.g. right after its own round); returns when the successful call began."""
    while True:
        began = time.monotonic()
        if journal.sync_here():
            return began
        await asyncio.sleep(0.001)


def test_a_round_in_sync_here_that_uses_up_preallocated_space_is_zero_filled_once_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sync_here() wakes the flusher when its round leaves zero-fill to do; the flusher fills,
    IDLE_FILL_S after that round (it counts as a round of the flusher's own)."""
    idle_s = 0.2
    monkeypatch.setattr(journal_module, "IDLE_FILL_S", idle_s)

    async def main() -> None:
        journal, steps = await _journal_with_fill_to_do(tmp_path / "j", monkeypatch)
        began = await _round_here(journal)
        assert journal._writer.fill_pending()
        await wait_until(lambda: bool(steps))
        assert steps[0] - began >= idle_s, "the zero-fill ran right beside the round on the loop thread"
        await journal.close()

    asyncio.run(main())


def test_a_round_in_sync_here_resets_the_flushers_idle_clock_so_no_zero_fill_runs_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zero-fill already due IDLE_FILL_S after a flusher round waits again after a round
    that sync_here() ran meanwhile."""
    # idle_s long beside the pause before the second round: only a loop thread late by more
    # than 1.75 s could see the fill come first (a loaded CI machine must not fail this)
    idle_s = 2.0
    monkeypatch.setattr(journal_module, "IDLE_FILL_S", idle_s)

    async def main() -> None:
        journal, steps = await _journal_with_fill_to_do(tmp_path / "j", monkeypatch)
        await journal.sync()  # a flusher round: it zero-fills once idle_s passed without a round
        await asyncio.sleep(idle_s / 8)  # well inside that wait, and well after the round
        journal.append(1, b"small", b"s")
        began = await _round_here(journal)
        await wait_until(lambda: bool(steps))
        assert steps[0] - began >= idle_s, "the zero-fill ran right beside the round on the loop thread"
        await journal.close()

    asyncio.run(main())


def test_rounds_in_sync_here_leave_a_flusher_asleep_on_its_idle_fill_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under steady load the zero-fill stays pending between idle moments: each sync_here()
    round once woke the flusher for it (a futex wake and two context switches per request,
    to go back to sleep). A flusher already waiting on the idle timer is left alone; the fill
    still comes once the journal is idle."""
    idle_s = 2.0  # no idle moment between the rounds below, even on a loaded machine
    monkeypatch.setattr(journal_module, "IDLE_FILL_S", idle_s)

    async def main() -> None:
        journal, steps = await _journal_with_fill_to_do(tmp_path / "j", monkeypatch)
        await _round_here(journal)  # leaves the fill pending: the flusher is told once
        await wait_until(lambda: journal._fill_timed)
        notified = []
        real_notify = journal._cond.notify
        monkeypatch.setattr(journal._cond, "notify", lambda *a: (notified.append(1), real_notify(*a)))
        for n in range(20):
            journal.append(1, b"small", b"s%d" % n)
            await _round_here(journal)
        assert journal._writer.fill_pending() and not steps
        assert not notified, f"{len(notified)} rounds woke the flusher waiting on its fill timer"
        await wait_until(lambda: bool(steps), timeout_s=idle_s * 5)
        await journal.close()

    asyncio.run(main())


def test_a_failed_sync_here_drops_its_records_and_the_next_sync_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        journal = await _quiet_journal(tmp_path / "j")
        journal.append(1, b"kept", b"k")
        assert journal.sync_here()
        monkeypatch.setattr(writer_module.os, "fdatasync", _enospc)
        journal.append(1, b"lost", b"l")
        assert not journal.sync_here()
        monkeypatch.undo()
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.sync()
        journal.append(1, b"later", b"ok")
        assert journal.sync_here()
        await journal.close()

    asyncio.run(main())
    assert [r.key for r in replay(tmp_path / "j")] == [b"kept", b"later"]


def test_a_bug_in_a_sync_here_round_fails_the_journal_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        journal = await _quiet_journal(tmp_path / "j")
        journal.append(1, b"k", b"v")

        def broken(*_args: object, **_kwargs: object) -> bool:
            raise RuntimeError("a bug")

        monkeypatch.setattr(journal, "_flush_round", broken)
        assert not journal.sync_here()
        monkeypatch.undo()
        with pytest.raises(JournalError, match="failed"):
            await journal.sync()
        await journal.close()

    asyncio.run(main())
    assert "journal round on the loop thread crashed" in caplog.text


def _partial_then_fail(real_write):
    state = {"n": 0}

    def fake(fd: int, data, offset: int) -> int:
        state["n"] += 1
        if state["n"] == 1:
            return real_write(fd, bytes(data)[: max(1, len(data) // 2)], offset)
        if state["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data, offset)

    return fake


# ---------------------------------------------------------------- compaction


def test_journal_stays_small_under_steady_churn_and_live_keys_survive(tmp_path: Path) -> None:
    segment = 1 << 20
    state: dict[bytes, list[tuple[int, bytes]]] = {}
    long_lived: set[bytes] = set()

    def rewrite(key: bytes) -> list[tuple[int, bytes]]:
        return [(5, b"snapshot:" + b"".join(p for _t, p in state[key][-1:]))]

    async def main() -> int:
        journal = Journal(tmp_path / "j", segment_size_bytes=segment, rewrite=rewrite)
        list(journal.recover())
        journal.start()
        largest = 0
        window: list[bytes] = []
        for i in range(120_000):
            key = b"task-%d" % i
            journal.append(1, key, b"submit:" + b"p" * 80)
            state[key] = [(1, b"p" * 80)]
            if i % 1000 == 0:
                long_lived.add(key)
            else:
                window.append(key)
            if len(window) > 200:
                old = window.pop(0)
                journal.append(2, old, b"done")
                journal.release(old)
                del state[old]
            if i % 2000 == 1999:
                await journal.sync()
                journal.compact()
                largest = max(largest, journal.size_bytes)
                # preallocation inflates size_bytes: at most one segment_size per segment file,
                # plus the next segment being prepared
                assert journal.size_bytes <= (journal.segment_count + 1) * segment
                assert journal.segment_count <= 4
        await journal.sync()
        journal.compact()
        await journal.sync()
        await journal.close()
        return largest

    largest = asyncio.run(main())
    assert largest <= 5 * segment, largest
    recovered = replay(tmp_path / "j")
    keys = {r.key for r in recovered}
    assert long_lived <= keys
    last = {r.key: r for r in recovered}
    for key in long_lived:
        assert last[key].type in (1, 5)
    assert sum(p.stat().st_size for _s, p in list_segments(tmp_path / "j")) <= 5 * segment


async def _forty_synced_records(directory: Path) -> Journal:
    """A started journal of 1 KiB segments holding k0..k39 (100 B each), all durable; a
    compaction rewrites a live key as `(7, b"state of " + key)`."""
    journal = Journal(directory, segment_size_bytes=1024,
                      rewrite=lambda key: [(7, b"state of " + key)])
    list(journal.recover())
    journal.start()
    for i in range(40):
        journal.append(1, b"k%d" % i, b"x" * 100)
    await journal.sync()
    return journal


def test_compaction_deletes_only_from_the_oldest_end_after_rewrites_are_durable(tmp_path: Path) -> None:
    async def main() -> None:
        journal = await _forty_synced_records(tmp_path / "j")
        for i in range(40):
            if i != 3:
                journal.release(b"k%d" % i)
        first = list_segments(tmp_path / "j")[0][0]
        reclaimed = journal.compact()
        assert reclaimed > 0
        await wait_until(lambda: list_segments(tmp_path / "j")[0][0] > first)
        assert journal.compact() >= 0
        await journal.close()

    asyncio.run(main())
    recovered = replay(tmp_path / "j")
    assert Record(7, b"k3", b"state of k3") in recovered
    assert all(r.key != b"k0" for r in recovered)


def test_compaction_keeps_the_old_segment_when_its_rewrite_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.pwrite

    async def main() -> None:
        journal = await _forty_synced_records(tmp_path / "j")
        for i in range(1, 40):
            journal.release(b"k%d" % i)
        segments = [s for s, _p in list_segments(tmp_path / "j")]
        # k0 keeps segment 1 alive; enough sealed segments to force its rewrite
        monkeypatch.setattr(writer_module.os, "pwrite", _enospc)
        assert journal.compact() > 0
        await wait_until(lambda: not journal._compaction_pending)
        monkeypatch.setattr(writer_module.os, "pwrite", real_write)
        assert [s for s, _p in list_segments(tmp_path / "j")] == segments
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.sync()  # the dropped rewrite is reported to the next sync()
        assert journal.compact() > 0  # tried again
        await wait_until(lambda: list_segments(tmp_path / "j")[0][0] > segments[0])
        await journal.close()

    asyncio.run(main())
    recovered = replay(tmp_path / "j")
    assert recovered[-1] == Record(7, b"k0", b"state of k0")


def test_close_reports_records_it_could_not_write_and_still_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        journal = Journal(tmp_path / "j")
        list(journal.recover())
        journal.start()
        journal.append(1, b"k", b"kept")
        await journal.sync()
        journal.append(1, b"k", b"never written")
        monkeypatch.setattr(writer_module.os, "pwrite", _enospc)
        with pytest.raises(JournalError, match="close"):
            await journal.close()
        monkeypatch.undo()
        await journal.close()

    asyncio.run(main())
    assert not any(t.name.startswith("journal-flusher") for t in threading.enumerate())
    assert replay(tmp_path / "j") == [Record(1, b"k", b"kept")]


def test_journal_that_cannot_cut_a_failed_batch_refuses_further_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        journal = Journal(tmp_path / "j")
        list(journal.recover())
        journal.start()
        journal.append(1, b"k", b"kept")
        await journal.sync()
        monkeypatch.setattr(writer_module.os, "fdatasync", _enospc)
        # the round's write lands; the cut zeroes it in place, or else truncates it: both fail
        real_pwrite, calls = os.pwrite, []

        def pwrite_once(*args):
            calls.append(args[0])
            return real_pwrite(*args) if len(calls) == 1 else _enospc()

        monkeypatch.setattr(writer_module.os, "pwrite", pwrite_once)
        monkeypatch.setattr(writer_module.os, "truncate", _enospc)
        monkeypatch.setattr(journal_module, "RETRY_MIN_S", 3600.0)  # no retry during this test
        journal.append(1, b"k", b"lost")
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.sync()
        monkeypatch.undo()
        with pytest.raises(JournalError, match="failed"):
            journal.append(1, b"k", b"refused")
        await journal.close()

    asyncio.run(main())
    assert replay(tmp_path / "j")[0] == Record(1, b"k", b"kept")


def test_compaction_after_a_failed_rotation_deletes_the_old_segment_and_writing_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        journal = Journal(tmp_path / "j", segment_size_bytes=1024, rewrite=lambda key: [])
        list(journal.recover())
        journal.start()
        for i in range(8):
            journal.append(1, b"k%d" % i, b"x" * 100)
        await journal.sync()
        assert [s for s, _p in list_segments(tmp_path / "j")] == [1]
        monkeypatch.setattr(writer_module.os, "pwrite", _enospc)
        journal.append(1, b"rotates", b"y" * 200)  # starts segment 2, which the failure takes back
        with pytest.raises(JournalError, match="ENOSPC"):
            await journal.sync()
        monkeypatch.undo()
        assert [s for s, _p in list_segments(tmp_path / "j")] == [1]
        for i in range(8):
            journal.release(b"k%d" % i)
        journal.release(b"rotates")
        assert journal.compact() > 0
        await wait_until(lambda: not journal._compaction_pending)
        assert list_segments(tmp_path / "j") == []
        journal.append(2, b"after", b"z")
        await journal.sync()
        await journal.close()

    asyncio.run(main())
    assert replay(tmp_path / "j") == [Record(2, b"after", b"z")]


def test_records_appended_before_a_failure_are_dropped_with_it_and_their_sync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdatasync = os.fdatasync
    entered = threading.Event()
    release = threading.Event()

    def slow_failing_fdatasync(fd: int) -> None:
        entered.set()
        release.wait(10)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    async def main() -> None:
        journal = Journal(tmp_path / "j")
        list(journal.recover())
        journal.start()
        journal.append(1, b"a", b"kept")
        await journal.sync()
        monkeypatch.setattr(writer_module.os, "fdatasync", slow_failing_fdatasync)
        journal.append(1, b"b", b"in the failing round")
        first = asyncio.ensure_future(journal.sync())
        await wait_until(entered.is_set)
        journal.append(1, b"c", b"buffered during the failing round")
        second = asyncio.ensure_future(journal.sync())
        await asyncio.sleep(0)  # second is registered now
        journal.append(1, b"d", b"buffered, nobody synced it yet")
        monkeypatch.setattr(writer_module.os, "fdatasync", real_fdatasync)
        release.set()
        for waiter in (first, second):
            with pytest.raises(JournalError, match="EIO"):
                await waiter
        with pytest.raises(JournalError, match="EIO"):
            await journal.sync()  # told about "d", which nobody's sync covered
        journal.append(1, b"e", b"after")
        await journal.sync()
        await journal.close()

    asyncio.run(main())
    assert replay(tmp_path / "j") == [Record(1, b"a", b"kept"), Record(1, b"e", b"after")]


# ---------------------------------------------------------------- the compaction index (pure)


def _index(live_bytes: list[int], size: int = 1000) -> LiveKeys:
    """Sealed segments of ``size`` bytes, each with one live key of ``live_bytes[i]`` bytes (none if 0)."""
    index = LiveKeys()
    for seq, live in enumerate(live_bytes, start=1):
        index.open_segment(seq)
        if live:
            index.add(b"%d" % seq, seq, live)
        index.seal(seq, size, 10)
    index.open_segment(len(live_bytes) + 1)
    return index


def test_compaction_plan_rewrites_only_where_each_rewritten_byte_frees_two() -> None:
    assert _index([0, 0, 900]).plan(can_rewrite=True) == ([1, 2], None)  # dense: left alone
    assert _index([0, 600, 600, 600]).plan(can_rewrite=True) == ([1], None)  # all over half live
    assert _index([400, 900]).plan(can_rewrite=True) == ([], 1)  # 400 live bytes free 1000
    assert _index([900, 0, 0]).plan(can_rewrite=True) == ([], 1)  # 900 free 3000 (the empties after it)
    assert _index([0, 300, 0]).plan(can_rewrite=False) == ([1], None)
    assert _index([0, 3, 0]).plan(can_rewrite=True) == ([1], 2)  # never skips past a live one
    index = _index([600, 600, 100, 100])  # 1, then 1..2 are over half live; 1..3 is not
    assert index.plan(can_rewrite=True) == ([], 1) and index.rewrite_through == 3
    index.detach(b"1", 1)
    index.forget([1])
    index.by_segment[2].add(b"2")
    assert index.plan(can_rewrite=True) == ([], 2), "the plan goes on through segment 3"


def test_compaction_index_counts_live_bytes_per_segment() -> None:
    index = _index([0, 0])
    index.add(b"a", 3, 100)
    index.grow(b"a", 3, 50)
    index.add(b"b", 3, 10)
    assert index.live_bytes[3] == 160
    index.release(b"a")
    assert index.live_bytes[3] == 10 and b"a" not in index.key_bytes


def test_compaction_index_restores_keys_whose_rewrite_was_lost() -> None:
    index = _index([0, 0])
    index.add(b"1-0", 1, 40)
    index.add(b"1-1", 1, 60)
    rewritten = [(b"1-0", index.detach(b"1-0", 1)), (b"1-1", index.detach(b"1-1", 1))]
    infos = index.forget([1])
    index.add(b"1-0", 3, 25)  # its rewrite went to the active segment
    index.restore(infos, 1, rewritten)  # 1-1 was released meanwhile: stays gone
    assert index.oldest == {b"1-0": 1}
    assert index.by_segment[1] == {b"1-0"} and index.by_segment[3] == set()
    assert index.live_bytes[1] == 40 and index.live_bytes[3] == 0
    assert 1 in index.sealed
