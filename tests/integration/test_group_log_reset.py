"""A follower's reset to its leader's snapshot survives a crash at every step (decision 009,
"Fixed"): a child process resets a follower log and is SIGKILLed at one step (the reset's own
steps, mesh.journal.replace.STEPS, and half-way through writing the snapshot); recovery then
finds the old log whole (every record the follower had acked) before the new one is complete
and durable, and the new log whole after, never neither and never a mix."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import records
from mesh.group_log import FollowerLog
from mesh.journal import replace
from mesh.replication import EpochHistory, Entry
from tests.support.follower_logs import SIZES, recovered, task_record

pytestmark = pytest.mark.timeout(120)

OLD = [task_record(f"acked-{n}", 200) for n in range(1, 41)]
NEW = [task_record(f"snap-{n}", 200) for n in range(1, 31)]

_CHILD = r"""
import asyncio, os, signal, sys
from pathlib import Path
from mesh import records
from mesh.group_log import FollowerLog
from mesh.replication import EpochHistory
from tests.integration.test_group_log_reset import NEW

directory, crash_at = Path(sys.argv[1]), sys.argv[2]

def die(name):
    if name == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)

def snapshot():
    for n, record in enumerate(NEW):
        if crash_at == "mid-build" and n == len(NEW) // 2:
            die("mid-build")
        yield record

async def main():
    kwargs = {"segment_size_bytes": 4096, "max_record_bytes": 2048}
    try:
        flog = FollowerLog(directory, reset_step=die, **kwargs)
    except TypeError:  # a build without the hook: only the mid-build crash applies
        flog = FollowerLog(directory, **kwargs)
    flog.open()
    await flog.reset(snapshot(), 2, 80, EpochHistory([(1, 1), (2, 51)]))
    await flog.close()

asyncio.run(main())
"""


def _acked_log(directory: Path) -> None:
    """A follower log holding OLD, all of it durable and acked (index 1..40, epoch 1)."""
    async def scenario() -> None:
        flog = FollowerLog(directory, **SIZES)
        flog.open()
        history = EpochHistory([(1, 1)])
        entries = [Entry(1, n, t, k, p) for n, (t, k, p) in enumerate(OLD, 1)]
        await flog.append(entries, 1, len(OLD), history)
        await flog.close()
    asyncio.run(scenario())


@pytest.mark.parametrize("crash_at", ["incoming", "mid-build", *replace.STEPS[1:], "none"])
def test_a_follower_reset_killed_at_any_step_recovers_a_whole_log_never_losing_acked_records(
        tmp_path, crash_at):  # noqa: ANN001
    directory = tmp_path / "data" / "journal"
    _acked_log(directory)
    child = subprocess.run([sys.executable, "-c", _CHILD, str(directory), crash_at],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    if crash_at == "none":
        assert child.returncode == 0, child.stderr
    else:
        assert child.returncode == -9, (child.returncode, child.stderr)

    last_index, keys = recovered(directory)
    complete = crash_at in ("sealed", "old-aside", "in-place", "old-removed", "none")
    if complete:  # the new log was durable before the step: it is the log now
        assert (last_index, keys) == (80, [k for _, k, _ in NEW])
    else:  # the old log, whole: every record the follower acked
        assert (last_index, keys) == (len(OLD), [k for _, k, _ in OLD])
    # nothing of the swap is left beside the journal, and the journal keeps its modes
    assert sorted(p.name for p in directory.parent.iterdir()) == ["journal"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_recovery_puts_back_a_set_aside_journal_when_it_is_the_only_one(tmp_path):  # noqa: ANN001
    directory = tmp_path / "journal"
    _acked_log(directory)
    os.replace(directory, replace.old(directory))
    replace.incoming(directory).mkdir()  # and an incomplete new one
    assert recovered(directory) == (len(OLD), [k for _, k, _ in OLD])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal"]


def test_a_reset_that_fails_before_the_swap_keeps_the_old_log(tmp_path):  # noqa: ANN001
    """A snapshot the journal refuses (a record over its bound): the reset raises, nothing of
    it is left, and the follower goes on from its old log."""
    directory = tmp_path / "journal"
    _acked_log(directory)

    async def scenario() -> None:
        flog = FollowerLog(directory, **SIZES)
        flog.open()
        with pytest.raises(ValueError):
            await flog.reset([*NEW[:3], (records.TASK, b"big", b"x" * 4000)], 2, 80,
                             EpochHistory([(1, 1), (2, 51)]))
        assert flog.position.last_index == len(OLD) and flog.journal is not None
        await flog.close()
    asyncio.run(scenario())
    assert recovered(directory) == (len(OLD), [k for _, k, _ in OLD])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal"]
