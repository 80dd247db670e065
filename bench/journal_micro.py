"""Micro-benchmark of the journal: appends/s, sync() latency one-at-a-time and in batches of 100,
with segment preallocation on and off, and raw 256-byte write + os.fdatasync on the same disk,
once growing the file (append) and once overwriting a zero-filled, already-synced file.

    python bench/journal_micro.py [--dir DIR] [--policy batch] [--rounds 2000] [--repeat 2]

The modes are interleaved (--repeat times) so that a busy machine hurts both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.journal import FsyncPolicy, Journal  # noqa: E402
from mesh.journal import writer as journal_writer  # noqa: E402


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f} µs"


def summary(latencies: list[float]) -> str:
    return f"p50 {fmt_us(pct(latencies, 50))}  p99 {fmt_us(pct(latencies, 99))}  mean {fmt_us(statistics.fmean(latencies))}"


async def bench_journal(directory: Path, policy: FsyncPolicy, rounds: int, *, preallocate: bool, appends: bool) -> None:
    journal_writer.PREALLOCATE = preallocate
    label = "prealloc on " if preallocate else "prealloc off"
    journal = Journal(directory / f"journal-{label.strip().replace(' ', '-')}", policy=policy)
    list(journal.recover())
    journal.start()
    payload = b"p" * 200
    keys = [b"task-%08d" % i for i in range(200_000)]

    if appends:
        per_append = []
        for _pass in range(5):  # best and median of 5 passes: the machine may be busy
            began = time.perf_counter()
            for key in keys:
                journal.append(1, key, payload)
            per_append.append((time.perf_counter() - began) / len(keys))
            await journal.sync()
            for key in keys:
                journal.release(key)
        best, median = min(per_append), statistics.median(per_append)
        print(
            f"[{label}] append (226-byte records, new key each): {1 / best:,.0f} appends/s, "
            f"best {best * 1e6:.2f} µs, median {median * 1e6:.2f} µs each"
        )
    else:  # a journal that has already written a little, as after a start
        for key in keys[:1000]:
            journal.append(1, key, payload)
        await journal.sync()
    await asyncio.sleep(0.05)  # idle: the flusher preallocates (as it would between bursts)

    for batch in (1, 100):
        latencies = []
        for _r in range(rounds):
            for i in range(batch):
                journal.append(2, keys[i], payload)
            began = time.perf_counter()
            await journal.sync()
            latencies.append(time.perf_counter() - began)
        print(
            f"[{label}] sync() after {batch:3d} append(s), policy {policy}: {summary(latencies)}  "
            f"({rounds} rounds, {batch * rounds / sum(latencies):,.0f} records/s)"
        )
    writer = journal._writer
    fill = writer.fill_syncs if writer is not None else 0
    print(f"[{label}]   record fdatasyncs {journal.fsync_count}, zero-fill steps {fill}, size_bytes {journal.size_bytes:,}")
    await journal.close()
    journal_writer.PREALLOCATE = True


def bench_raw(directory: Path, rounds: int) -> None:
    data = b"r" * 256
    size = rounds * len(data)
    for mode in ("append (grows the file)", "overwrite (zero-filled, synced)"):
        path = directory / "raw.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        latencies = []
        try:
            if mode.startswith("overwrite"):
                os.pwrite(fd, bytes(size), 0)
                os.fdatasync(fd)
            for r in range(rounds):
                began = time.perf_counter()
                os.pwrite(fd, data, r * len(data))
                os.fdatasync(fd)
                latencies.append(time.perf_counter() - began)
        finally:
            os.close(fd)
            path.unlink()
        print(f"raw pwrite(256 B) + fdatasync, {mode:32s}: {summary(latencies)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--policy", default="batch", choices=[p.value for p in FsyncPolicy])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repetitions of every mode")
    parser.add_argument("--no-appends", action="store_true", help="skip the 1M-append throughput passes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rep in range(args.repeat):
            print(f"--- repetition {rep + 1}")
            bench_raw(Path(tmp), args.rounds)
            for preallocate in (False, True):
                asyncio.run(
                    bench_journal(
                        Path(tmp) / f"r{rep}", FsyncPolicy(args.policy), args.rounds, preallocate=preallocate, appends=not args.no_appends
                    )
                )


if __name__ == "__main__":
    main()
