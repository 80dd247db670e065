"""Leadership of a Helper group in embedded mode: the lock file, its epoch, real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.errors import ConfigError
from mesh.leadership import FileLock, Leadership, read_epoch

ROOT = Path(__file__).resolve().parents[2]


def run(coro, timeout_s: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def test_each_term_gets_a_larger_epoch_that_survives_in_the_epoch_file(tmp_path):
    a, b = FileLock(tmp_path, "orders"), FileLock(tmp_path, "orders")
    first = a.try_acquire("h1", {"ep": "x"})
    assert first == 1 and b.try_acquire("h2", {}) is None  # flock conflicts within a process too
    assert a.confirm(first)
    a.release()
    second = b.try_acquire("h2", {})
    assert second == 2 and read_epoch(tmp_path / "orders.epoch") == 2
    assert not a.confirm(first)
    b.close()
    assert FileLock(tmp_path, "orders").try_acquire("h3", {}) == 3


def test_a_replaced_lock_file_or_a_newer_epoch_ends_the_term(tmp_path):
    a = FileLock(tmp_path, "g")
    epoch = a.try_acquire("h1", {})
    os.unlink(tmp_path / "g.lock")  # someone removed it: another process could lock a new file
    assert not a.confirm(epoch)
    a.close()
    b = FileLock(tmp_path, "g")
    epoch = b.try_acquire("h1", {})
    (tmp_path / "g.epoch").write_text(f"{epoch + 1}\n")
    assert not b.confirm(epoch)
    b.close()


def test_the_holder_is_seen_by_observers_and_gone_when_released(tmp_path):
    a, watcher = FileLock(tmp_path, "g"), FileLock(tmp_path, "g")
    index, holder = watcher.leader(0, 0)
    assert holder is None
    epoch = a.try_acquire("h1", {"ep_repl": "tcp://127.0.0.1:5"})
    index2, holder = watcher.leader(index, 1.0)
    assert index2 != index and (holder.leader_id, holder.epoch, dict(holder.advert)) == (
        "h1", epoch, {"ep_repl": "tcp://127.0.0.1:5"})
    a.release()
    _, holder = watcher.leader(index2, 1.0)
    assert holder is None


def test_a_bad_group_name_or_epoch_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        FileLock(tmp_path, "../x")
    (tmp_path / "g.epoch").write_text("garbage")
    with pytest.raises(ConfigError, match="not a number"):
        FileLock(tmp_path, "g").try_acquire("h1", {})


class FakeLock:
    """A backend the test drives: confirm answers come from a list."""

    ttl_s = 1.0

    def __init__(self) -> None:
        self.answers: list[object] = []
        self.released = 0

    def try_acquire(self, leader_id, advert):
        return 7

    def confirm(self, epoch):
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer

    def leader(self, index, wait_s):
        return 1, None

    def release(self):
        self.released += 1

    def close(self):
        pass


def test_holds_reads_only_the_clock_and_ends_at_ttl_after_the_last_confirmation():
    now = [100.0]

    async def main():
        lead = Leadership(FakeLock(), group="g", candidate_id="h1", renew_interval_s=0.9, clock=lambda: now[0])
        term = await lead.campaign()
        assert term.epoch == 7 and lead.holds()
        now[0] += 0.99
        assert lead.holds()
        now[0] += 0.02
        assert not lead.holds()  # past ttl without a confirmation: no longer claim the term
        await lead.close()

    run(main())


def test_a_confirmation_that_says_lost_ends_the_term_and_calls_on_lost_once():
    calls = []

    async def main():
        backend = FakeLock()
        backend.answers = [RuntimeError("agent unreachable"), True, False]
        lead = Leadership(backend, group="g", candidate_id="h1", renew_interval_s=0.05,
                          on_lost=lambda term, why: calls.append((term.epoch, why)))
        await lead.campaign()
        await asyncio.wait_for(lead.lost.wait(), 5)
        assert lead.term is None and not lead.holds()
        await lead.close()
        await lead.close()  # idempotent
        assert backend.released == 1

    run(main())
    assert len(calls) == 1 and calls[0][0] == 7 and "lost" in calls[0][1]


def test_failing_confirmations_end_the_term_within_the_ttl():
    async def main():
        backend = FakeLock()
        backend.answers = [RuntimeError("down")] * 100
        lead = Leadership(backend, group="g", candidate_id="h1", renew_interval_s=0.1)
        await lead.campaign()
        t0 = time.monotonic()
        await asyncio.wait_for(lead.lost.wait(), 5)
        assert time.monotonic() - t0 < backend.ttl_s + 0.3
        assert "ttl" in lead.lost_reason
        await lead.close()

    run(main())


_CAMPAIGNER = """
import asyncio, sys
from mesh.leadership import FileLock, Leadership

async def main():
    lead = Leadership(FileLock(sys.argv[1], "orders"), group="orders", candidate_id=sys.argv[2],
                      advert={"pid": sys.argv[2]}, retry_interval_s=0.05)
    term = await lead.campaign()
    print("LEADER", sys.argv[2], term.epoch, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_sigkill_of_the_leader_process_lets_another_process_lead_with_a_higher_epoch(tmp_path):
    script = tmp_path / "campaign.py"
    script.write_text(_CAMPAIGNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lock_dir = tmp_path / "locks"
    procs = {name: subprocess.Popen([sys.executable, str(script), str(lock_dir), name], stdout=subprocess.PIPE,
                                    text=True, env=env)
             for name in ("h1", "h2", "h3")}
    try:
        # Exactly one leads: read the first LEADER line from whichever prints it.
        first = _first_line(procs, timeout_s=20)
        _, leader, epoch = first.split()
        others = {n: p for n, p in procs.items() if n != leader}
        time.sleep(0.3)
        assert all(p.poll() is None for p in procs.values())

        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(5)
        t0 = time.monotonic()
        second = _first_line(others, timeout_s=10)
        assert time.monotonic() - t0 < 5  # the kernel drops the flock at once; campaigners retry every 50 ms
        _, new_leader, new_epoch = second.split()
        assert new_leader != leader and int(new_epoch) == int(epoch) + 1
        assert read_epoch(lock_dir / "orders.epoch") == int(new_epoch)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()


def _first_line(procs: dict[str, subprocess.Popen], timeout_s: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    for p in procs.values():
        sel.register(p.stdout, selectors.EVENT_READ)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                line = key.fileobj.readline()
                if line.startswith("LEADER"):
                    return line
        raise AssertionError("no campaigner became leader in time")
    finally:
        sel.close()
