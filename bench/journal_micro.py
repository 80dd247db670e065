"""Micro-benchmark of the journal: appends/s, sync() latency one-at-a-time and in batches of 100,
and a raw os.write(256 B) + os.fdatasync on the same directory for scale.

    python bench/journal_micro.py [--dir DIR] [--policy batch] [--rounds 2000]
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


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f} µs"


async def bench_journal(directory: Path, policy: FsyncPolicy, rounds: int) -> None:
    journal = Journal(directory / "journal", policy=policy)
    list(journal.recover())
    journal.start()
    payload = b"p" * 200
    keys = [b"task-%08d" % i for i in range(200_000)]

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
        f"append (226-byte records, new key each): {1 / best:,.0f} appends/s, "
        f"best {best * 1e6:.2f} µs, median {median * 1e6:.2f} µs each"
    )

    for batch in (1, 100):
        latencies = []
        for r in range(rounds):
            for i in range(batch):
                journal.append(2, keys[i], payload)
            began = time.perf_counter()
            await journal.sync()
            latencies.append(time.perf_counter() - began)
        print(
            f"sync() after {batch:3d} append(s), policy {policy}: p50 {fmt_us(pct(latencies, 50))}  "
            f"p99 {fmt_us(pct(latencies, 99))}  ({rounds} rounds, {batch * rounds / sum(latencies):,.0f} records/s)"
        )
    await journal.close()


def bench_raw(directory: Path, rounds: int) -> None:
    fd = os.open(directory / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    data = b"r" * 256
    latencies = []
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - began)
    finally:
        os.close(fd)
    print(f"raw os.write(256 B) + os.fdatasync: p50 {fmt_us(pct(latencies, 50))}  p99 {fmt_us(pct(latencies, 99))}")
    print(f"  (mean {fmt_us(statistics.fmean(latencies))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--policy", default="batch", choices=[p.value for p in FsyncPolicy])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        asyncio.run(bench_journal(Path(tmp), FsyncPolicy(args.policy), args.rounds))
        bench_raw(Path(tmp), args.rounds)


if __name__ == "__main__":
    main()
