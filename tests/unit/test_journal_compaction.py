"""Compaction runs only when it frees space: an idle journal writes nothing, a mostly released
segment is rewritten and deleted, and rewrites stay within the documented write-amplification
bound (live_keys.REWRITE_LIVE_FRACTION)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from mesh.journal import Journal
from mesh.journal.live_keys import REWRITE_LIVE_FRACTION
from mesh.journal.segment import list_segments


async def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.001)


class Model:
    """The owner's state: a key's rewrite is its latest payload, as one record."""

    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.rewrites = 0

    def rewrite(self, key: bytes) -> list[tuple[int, bytes]]:
        self.rewrites += 1
        return [(2, self.state[key])] if key in self.state else []


def test_idle_journal_with_many_live_segments_rewrites_nothing(tmp_path: Path) -> None:
    model = Model()

    async def main() -> None:
        journal = Journal(tmp_path / "j", segment_size_bytes=4096, rewrite=model.rewrite)
        list(journal.recover())
        journal.start()
        for i in range(400):  # ~50 segments, every key live; a few records per key
            key = b"task-%d" % (i // 4)
            model.state[key] = b"p" * 100
            journal.append(1, key, b"p" * 100)
        await journal.sync()
        segments = list_segments(tmp_path / "j")
        assert len(segments) > 10
        written = journal.bytes_written
        for _tick in range(200):  # the Helper calls it every 50 ms
            assert journal.compact() == 0
            await journal.sync()
        assert model.rewrites == 0
        assert journal.bytes_written == written and journal.rewritten_bytes == 0
        assert list_segments(tmp_path / "j") == segments
        await journal.close()

    asyncio.run(main())


def test_segment_with_few_live_records_is_rewritten_and_freed_once(tmp_path: Path) -> None:
    model = Model()

    async def main() -> None:
        journal = Journal(tmp_path / "j", segment_size_bytes=4096, rewrite=model.rewrite)
        list(journal.recover())
        journal.start()
        for i in range(400):
            key = b"task-%d" % i
            model.state[key] = b"p" * 100
            journal.append(1, key, b"p" * 100)
        await journal.sync()
        segments = list_segments(tmp_path / "j")
        first = segments[0][0]
        # everything in the first segment but one key is released
        in_first = [key for key, seq in journal._live.oldest.items() if seq == first]
        assert len(in_first) > 20
        for key in in_first[1:]:
            journal.release(key)
            del model.state[key]
        assert journal.compact() > 0
        assert model.rewrites == 1
        await wait_until(lambda: list_segments(tmp_path / "j")[0][0] > first)
        await wait_until(lambda: not journal._compaction_pending)
        rewritten = journal.rewritten_bytes
        assert 0 < rewritten < 200
        for _tick in range(100):  # nothing more to gain: no more writes
            assert journal.compact() == 0
        assert model.rewrites == 1 and journal.rewritten_bytes == rewritten
        await journal.close()

    asyncio.run(main())
    journal = Journal(tmp_path / "j")
    state = {r.key: r.payload for r in journal.recover()}
    asyncio.run(journal.close())
    assert set(state) == set(model.state)


def test_rewrites_stay_within_the_write_amplification_bound_under_churn(tmp_path: Path) -> None:
    """Each rewritten byte frees at least 1/REWRITE_LIVE_FRACTION bytes, so the bytes rewritten
    are at most fraction / (1 - fraction) of the bytes appended (the rewrite of a key here is
    exactly as large as its one record, so tracked and written bytes agree)."""
    model = Model()
    rng = random.Random(3)

    async def main() -> None:
        journal = Journal(tmp_path / "j", segment_size_bytes=8192, rewrite=model.rewrite)
        list(journal.recover())
        journal.start()
        live: list[bytes] = []
        appended = 0
        for i in range(20_000):
            key = b"t%07d" % i
            payload = b"p" * rng.choice((20, 100, 400))
            model.state[key] = payload
            journal.append(2, key, payload)
            appended += 18 + len(key) + len(payload)
            live.append(key)
            while len(live) > 300 or (live and rng.random() < 0.3):
                # mostly the oldest, sometimes a random one: a few long-lived keys remain
                gone = live.pop(0 if rng.random() < 0.9 else rng.randrange(len(live)))
                journal.release(gone)
                del model.state[gone]
            if i % 50 == 0:
                journal.compact()
                await journal.sync()
        await journal.sync()
        bound = REWRITE_LIVE_FRACTION / (1 - REWRITE_LIVE_FRACTION)
        assert journal.rewritten_bytes <= bound * appended
        assert journal.segment_count < 20, "and space is reclaimed"
        await journal.close()

    asyncio.run(main())
    journal = Journal(tmp_path / "j")
    state = {r.key: r.payload for r in journal.recover()}
    asyncio.run(journal.close())
    assert {k: state[k] for k in model.state} == model.state
