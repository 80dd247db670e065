"""A failed journal (a write failure whose cut failed too) recovers when the disk does, without a
restart; while failed it refuses work at once. Faults are injected into the os calls the segment
writer makes; waits are on conditions with deadlines."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pytest

from mesh.errors import JournalError
from mesh.journal import Journal, Record
from mesh.journal import journal as journal_module
from mesh.journal import writer as writer_module


async def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.001)


def replay(directory: Path) -> list[Record]:
    journal = Journal(directory)
    records = list(journal.recover())
    asyncio.run(journal.close())
    return records


def _journal_thread() -> bool:
    thread = threading.current_thread()
    return thread is threading.main_thread() or thread.name.startswith("journal-flusher")


class Faults:
    """Makes chosen os calls raise while ``on``; counts the calls that raised."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        self.raised = 0
        self._monkeypatch = monkeypatch

    def inject(self, name: str, code: int, *, skip: int = 0) -> None:
        real = getattr(writer_module.os, name)
        passed = {"n": 0}

        def call(*args: object, **kwargs: object) -> object:
            # Only the journal's own threads see the faults: the patched function is the os
            # module's, and threads other tests left behind (servers, watchers) must not fail.
            if self.on and _journal_thread():
                if passed["n"] < skip:
                    passed["n"] += 1
                else:
                    self.raised += 1
                    raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        self._monkeypatch.setattr(writer_module.os, name, call)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOSPC])
def test_failed_journal_recovers_when_the_disk_does_and_keeps_what_was_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(journal_module, "RETRY_MIN_S", 0.005)
    monkeypatch.setattr(journal_module, "RETRY_MAX_S", 0.02)
    directory = tmp_path / "j"
    events: list[tuple[bool, str | None]] = []

    async def main() -> None:
        journal = Journal(directory, segment_size_bytes=64 * 1024)
        journal.on_health = lambda failed, why: events.append((failed, why))
        list(journal.recover())
        journal.start()
        for i in range(50):
            journal.append(1, b"kept-%d" % i, b"x" * 100)
        await journal.sync()
        assert not journal.failed and journal.failure is None
        faults = Faults(monkeypatch)
        faults.inject("pwrite", code, skip=1)  # the round's write lands; zeroing it fails
        faults.inject("fdatasync", code)
        faults.inject("truncate", code)
        faults.inject("open", code)
        faults.on = True
        journal.append(1, b"lost", b"y" * 100)
        with pytest.raises(JournalError, match=errno.errorcode[code]):
            await journal.sync()
        assert journal.failed and journal.failure is not None and errno.errorcode[code] in journal.failure
        await wait_until(lambda: events == [(True, journal.failure)])
        raised = faults.raised
        await wait_until(lambda: faults.raised >= raised + 3)  # it keeps trying
        assert journal.failed
        with pytest.raises(JournalError, match="failed"):
            await journal.sync()  # fails fast
        with pytest.raises(JournalError, match="failed"):
            journal.append(1, b"refused", b"z")
        assert not journal.sync_here()
        faults.on = False  # the disk is back
        await wait_until(lambda: not journal.failed)
        await wait_until(lambda: len(events) == 2)
        assert events[1] == (False, None) and journal.failure is None
        journal.append(1, b"after", b"ok")
        await journal.sync()
        # sync_here declines while the flusher holds the disk (it may still be re-preparing a
        # segment after the recovery); what matters is that it works again, not on first try.
        await wait_until(journal.sync_here)
        await journal.close()

    asyncio.run(main())
    recovered = replay(directory)
    assert [r.key for r in recovered] == [b"kept-%d" % i for i in range(50)] + [b"after"]


def test_a_bug_fails_the_journal_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "RETRY_MIN_S", 0.001)

    async def main() -> None:
        journal = Journal(tmp_path / "j")
        list(journal.recover())
        journal.start()
        await journal.sync()

        def broken(*_args: object, **_kwargs: object) -> bool:
            raise RuntimeError("a bug")

        journal.append(1, b"k", b"v")
        monkeypatch.setattr(journal, "_flush_round", broken)
        with pytest.raises(JournalError):
            await journal.sync()
        monkeypatch.undo()
        await wait_until(lambda: journal._thread is not None and not journal._thread.is_alive())
        assert journal.failed and "crashed" in (journal.failure or "")
        await journal.close()

    asyncio.run(main())
