"""Compaction cost: bytes an idle journal writes, and write amplification under steady churn.

    python bench/journal_churn.py [--quick] [--live-mib 200] [--segment-mib 4] [--idle-s 60]
                                  [--load-s 30] [--dir DIR]

Uses the Journal directly, as the Helper does: a rewrite callback (here: the key's one record
again), compact() on a 50 ms tick, one sync() per batch.

1. load: ``--live-mib`` of long-lived records (1 KiB each), every key live;
2. idle: ``--idle-s`` seconds of compact() every 50 ms and nothing else; reports the bytes
   written meanwhile (target 0), from the journal's counters and /proc/self/io write_bytes;
3. steady load: short tasks (a 300-byte submit, a 60-byte result, then released) at a steady
   pace while 2 % of the long-lived keys per second, chosen at random, are released and
   replaced (so old segments thin out and compaction has to rewrite); reports
   write amplification = bytes written to segment files (records, rewrites, zero-fill) / bytes of
   records the owner appended (rewrites excluded), and the same from /proc/self/io.

``--quick``: 20 MiB live, 5 s idle, 5 s load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.journal import FsyncPolicy, Journal  # noqa: E402

TICK_S = 0.05
LONG_PAYLOAD = b"L" * 1000
SUBMIT = b"S" * 300
RESULT = b"R" * 60


def io_write_bytes() -> int:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


class Owner:
    """What the Helper keeps: the live keys; a key's rewrite is its one record."""

    def __init__(self) -> None:
        self.long: set[bytes] = set()
        self.long_list: list[bytes] = []  # the same keys, to pick one at random
        self.short: set[bytes] = set()

    def rewrite(self, key: bytes) -> list[tuple[int, bytes]]:
        if key in self.long:
            return [(1, LONG_PAYLOAD)]
        if key in self.short:
            return [(1, SUBMIT)]
        return []


async def wait_fill_settled(journal: Journal, timeout_s: float = 30.0) -> None:
    writer = journal._writer
    deadline = time.monotonic() + timeout_s
    while writer is not None and writer.fill_pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def run(directory: Path, live_bytes: int, segment_bytes: int, idle_s: float, load_s: float) -> None:
    owner = Owner()
    journal = Journal(directory, policy=FsyncPolicy.BATCH, segment_size_bytes=segment_bytes, rewrite=owner.rewrite)
    list(journal.recover())
    journal.start()

    # 1. load
    began = time.perf_counter()
    count = live_bytes // (len(LONG_PAYLOAD) + 30)
    for i in range(count):
        key = b"long-%09d" % i
        owner.long.add(key)
        owner.long_list.append(key)
        journal.append(1, key, LONG_PAYLOAD)
        if i % 1000 == 999:
            await journal.sync()
    await journal.sync()
    print(f"load: {count:,} live records, {mib(journal.appended_bytes)} in {journal.segment_count} segments "
          f"of {mib(segment_bytes)}, {time.perf_counter() - began:.1f} s")

    # 2. idle
    await wait_fill_settled(journal)
    written, filled, io_before = journal.bytes_written, journal.fill_bytes, io_write_bytes()
    rewritten, compactions = journal.rewritten_bytes, 0
    end = time.monotonic() + idle_s
    while time.monotonic() < end:
        await asyncio.sleep(TICK_S)
        if journal.compact():
            compactions += 1
            await journal.sync()
    io_after = io_write_bytes()
    print(f"idle {idle_s:.0f} s, compact() every {TICK_S * 1000:.0f} ms: record bytes written "
          f"{journal.bytes_written - written:,}, rewritten {journal.rewritten_bytes - rewritten:,}, "
          f"zero-fill {journal.fill_bytes - filled:,}, compactions {compactions}, "
          f"/proc/self/io write_bytes {io_after - io_before:,}")

    # 3. steady load
    written, filled, io_before = journal.bytes_written, journal.fill_bytes, io_write_bytes()
    appended, rewritten = journal.appended_bytes, journal.rewritten_bytes
    next_long = count
    rng = random.Random(1)
    tasks = 0
    window: list[bytes] = []
    per_tick = 500  # tasks per 50 ms tick: 10k tasks/s
    replace_per_tick = max(1, int(len(owner.long) * 0.02 * TICK_S))
    began = time.monotonic()
    largest = journal.size_bytes
    while time.monotonic() - began < load_s:
        for _ in range(per_tick):
            key = b"task-%09d" % tasks
            tasks += 1
            journal.append(1, key, SUBMIT)
            owner.short.add(key)
            window.append(key)
        while len(window) > 2000:
            key = window.pop(0)
            journal.append(2, key, RESULT)
            journal.release(key)
            owner.short.discard(key)
        for _ in range(replace_per_tick):
            pick = rng.randrange(len(owner.long_list))
            old = owner.long_list[pick]
            owner.long.discard(old)
            journal.release(old)
            key = b"long-%09d" % next_long
            next_long += 1
            owner.long.add(key)
            owner.long_list[pick] = key
            journal.append(1, key, LONG_PAYLOAD)
        await journal.sync()
        journal.compact()
        largest = max(largest, journal.size_bytes)
        await asyncio.sleep(TICK_S)
    await journal.sync()
    elapsed = time.monotonic() - began
    user = (journal.appended_bytes - appended) - (journal.rewritten_bytes - rewritten)
    disk = (journal.bytes_written - written) + (journal.fill_bytes - filled)
    io = io_write_bytes() - io_before
    print(f"steady load {elapsed:.0f} s: {tasks:,} short tasks, {next_long - count:,} long-lived replaced; "
          f"records appended {mib(user)}, rewritten {mib(journal.rewritten_bytes - rewritten)}, "
          f"written to segments {mib(disk)} (zero-fill {mib(journal.fill_bytes - filled)})")
    print(f"write amplification: {disk / user:.2f} (segment bytes / appended), "
          f"{io / user:.2f} by /proc/self/io; records only {(journal.bytes_written - written) / user:.2f}; "
          f"journal size {mib(journal.size_bytes)} (largest {mib(largest)}), {journal.segment_count} segments")
    await journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MiB live, 5 s idle, 5 s load")
    parser.add_argument("--live-mib", type=float, default=200)
    parser.add_argument("--segment-mib", type=float, default=4)
    parser.add_argument("--idle-s", type=float, default=60)
    parser.add_argument("--load-s", type=float, default=30)
    parser.add_argument("--dir", help="directory on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.live_mib, args.idle_s, args.load_s = 20, 5, 5
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        asyncio.run(run(Path(tmp) / "journal", int(args.live_mib * 2**20), int(args.segment_mib * 2**20), args.idle_s, args.load_s))


if __name__ == "__main__":
    main()
