"""A follower's log after the older reset was killed half-way (decision 009, "Fixed"): that
code renamed `journal` to `journal.aside-<time_ns>` first and then built the snapshot's log in
a new `journal` (its records and, last, a POSITION, synced in one round). Recovery puts back
the newest complete aside directory when `journal` is missing or holds no POSITION, and leaves
every directory alone (with a warning naming the aside ones) when `journal` is complete. The
directories are built here as that code left them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mesh import records
from mesh.group_log import POSITION_KEY, encode_position
from mesh.journal import Journal
from mesh.replication import EpochHistory
from tests.support.follower_logs import SIZES, recovered, task_record

ACKED = [task_record(f"acked-{n}", 100) for n in range(1, 41)]
SNAPSHOT = [task_record(f"snap-{n}", 100) for n in range(1, 31)]


def _position(last_index: int) -> tuple[int, bytes, bytes]:
    return records.POSITION, POSITION_KEY, encode_position(1, last_index, EpochHistory([(1, 1)]))


def _write(directory: Path, recs: list[tuple[int, bytes, bytes]]) -> None:
    """A journal holding `recs`, synced, as the older FollowerLog wrote one."""
    async def scenario() -> None:
        journal = Journal(directory, **SIZES)
        assert list(journal.recover()) == []
        journal.start()
        for type_, key, payload in recs:
            journal.append(type_, key, payload)
        await journal.sync()
        await journal.close()
    asyncio.run(scenario())


def _acked_log(directory: Path) -> None:
    """What the member had acked before the reset: 40 records and the POSITION after them."""
    _write(directory, [*ACKED, _position(len(ACKED))])


ACKED_LOG = (len(ACKED), [key for _t, key, _p in ACKED])


def test_a_missing_journal_beside_an_aside_directory_gets_the_aside_one_back(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    _acked_log(tmp_path / "journal.aside-1700000000000000000")  # killed right after the rename
    assert recovered(directory) == ACKED_LOG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal"]


@pytest.mark.parametrize("left", ["empty", "half-written"])
def test_an_incomplete_journal_beside_an_aside_directory_is_kept_and_the_aside_one_put_back(
        tmp_path: Path, left: str) -> None:
    directory = tmp_path / "journal"
    _acked_log(tmp_path / "journal.aside-1700000000000000000")
    # killed before the snapshot's round reached the file: an empty journal (created, started),
    # or some of the snapshot's records and not its POSITION (the round cut short)
    _write(directory, [] if left == "empty" else SNAPSHOT[:12])
    assert recovered(directory) == ACKED_LOG
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "journal" and len(names) == 2 and names[1].startswith("journal.incomplete-")
    kept = [r.key for r in Journal(tmp_path / names[1]).recover()]
    assert kept == ([] if left == "empty" else [k for _t, k, _p in SNAPSHOT[:12]])


def test_the_newest_complete_aside_directory_is_put_back(tmp_path: Path) -> None:
    """An older build restarted on an empty journal, was reset again and killed again: the
    newer aside directory is that empty journal, the older one holds what the member acked."""
    directory = tmp_path / "journal"
    _write(tmp_path / "journal.aside-900", [*ACKED[:5], _position(5)])
    _acked_log(tmp_path / "journal.aside-1000")
    _write(tmp_path / "journal.aside-2000", [])
    assert recovered(directory) == ACKED_LOG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal", "journal.aside-2000", "journal.aside-900"]


def test_a_complete_journal_is_kept_and_aside_directories_are_left_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The older reset finished (the snapshot and its POSITION synced) and was killed while it
    removed the aside directory: the journal in place is the log; nothing is deleted."""
    directory = tmp_path / "journal"
    _acked_log(tmp_path / "journal.aside-1700000000000000000")
    _write(directory, [*SNAPSHOT, _position(80)])
    with caplog.at_level("WARNING", logger="mesh.journal"):
        assert recovered(directory) == (80, [k for _t, k, _p in SNAPSHOT])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal", "journal.aside-1700000000000000000"]
    warnings = [r.getMessage() for r in caplog.records if "journal.aside-1700000000000000000" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
