"""The process pool with real child processes (mesh.executors.processes), loading
tests/executors_app.py: hangs are killed, crashes and leaks cost one child, errors come back
whole. Waits are on conditions with deadlines; no test depends on speed."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import uvloop

from mesh.executors import (
    ChildDied, ChildStartFailed, ErrorClass, HandlerFailed, PoolClosed, ProcessExecutor,
    RunCancelled, RunTimedOut,
)
from tests.executors_app import decode

APP = "tests.executors_app:app"
MIB = 2**20


def run(coro, loop: str = "asyncio"):  # noqa: ANN001, ANN201
    return uvloop.run(coro) if loop == "uvloop" else asyncio.run(coro)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s}s")
        await asyncio.sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def full(pool: ProcessExecutor) -> bool:
    stats = pool.stats()
    return stats.idle + stats.busy == pool.size and stats.starting == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_hung_sync_handler_is_killed_and_replaced_within_its_timeout_while_others_run(
        loop: str) -> None:
    timeout_s = 1.0

    async def main() -> None:
        async with ProcessExecutor(APP, 2, kill_grace_s=0.5) as pool:
            t0 = time.monotonic()
            hung = pool.submit("hang", b"", timeout_s=timeout_s)
            await until(lambda: hung.pid, 5, "the hang run started")
            hung_pid = hung.pid
            served = 0
            while not hung.done():  # the other child keeps serving
                assert await pool.run("echo", b"%d" % served, timeout_s=5) == b"%d" % served
                served += 1
            with pytest.raises(RunTimedOut) as err:
                await hung
            assert err.value.started and err.value.pid == hung_pid
            # killed and replaced within its timeout + 1 s
            await until(lambda: not alive(hung_pid) and full(pool),
                        t0 + timeout_s + 1.0 - time.monotonic(), "kill and replacement")
            assert served > 0
            assert pool.stats().killed_timeout == 1
            assert hung_pid not in [c.pid for c in pool.children()]
            assert await pool.run("echo", b"after", timeout_s=5) == b"after"

    run(main(), loop)


def test_an_async_hang_and_a_handler_ignoring_sigterm_are_killed_too() -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 2, kill_grace_s=0.3) as pool:
            for kind in ("ahang", "stubborn"):
                r = pool.submit(kind, b"", timeout_s=0.5)
                with pytest.raises(RunTimedOut):
                    await r
                pid = r.child.pid
                await until(lambda pid=pid: not alive(pid), 3, f"{kind} child killed")
            await until(lambda: full(pool), 5, "replacements")
            assert pool.stats().killed_timeout == 2

    run(main())


def test_a_run_waiting_for_a_busy_pool_times_out_without_starting() -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 1, kill_grace_s=0.2) as pool:
            hung = pool.submit("hang", b"", timeout_s=5)
            with pytest.raises(RunTimedOut) as err:
                await pool.run("echo", b"", timeout_s=0.2)
            assert not err.value.started
            pool.cancel(hung)
            with pytest.raises(RunCancelled):
                await hung
            assert pool.stats().waiting == 0

    run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_os_exit_and_sigsegv_fail_only_their_own_run(loop: str) -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 3) as pool:
            others = [pool.submit("echo", b"%d" % i, timeout_s=10) for i in range(20)]
            exiting = pool.submit("exit", b"7", timeout_s=10)
            crashing = pool.submit("segv", b"", timeout_s=10)
            more = [pool.submit("aecho", b"%d" % i, timeout_s=10) for i in range(20)]
            with pytest.raises(ChildDied) as exited:
                await exiting
            assert exited.value.exit_code == 7 and exited.value.signal == 0
            with pytest.raises(ChildDied) as crashed:
                await crashing
            assert crashed.value.signal == signal.SIGSEGV and crashed.value.kind == "segv"
            assert "SIGSEGV" in str(crashed.value)
            assert [await r for r in others] == [b"%d" % i for i in range(20)]
            assert [await r for r in more] == [b"%d" % i for i in range(20)]
            await until(lambda: full(pool), 10, "both children replaced")
            assert pool.stats().died == 2

    run(main(), loop)


def test_a_leaking_handler_is_recycled_at_the_memory_bound() -> None:
    bound = 150 * MIB

    async def main() -> None:
        async with ProcessExecutor(APP, 1, max_memory_per_child_bytes=bound) as pool:
            first = decode(await pool.run("whoami", b"", timeout_s=10))["pid"]
            pids = []
            for _ in range(8):  # 40 MiB kept per call: past 150 MiB by the 4th
                pids.append(decode(await pool.run("leak", b"40", timeout_s=10))["pid"])
            assert pids[0] == first
            assert len(set(pids)) >= 2, "the leaking child was never recycled"
            switch = next(i for i in range(1, len(pids)) if pids[i] != pids[i - 1])
            assert 2 <= switch <= 4  # recycled after the task that took it past the bound
            await until(lambda: not alive(first), 5, "the leaking child exited")
            assert pool.stats().recycled_memory >= 1
            # a child the last call took past the bound may still be retiring (exiting):
            # with a base RSS under 30 MiB the 8th call is such a one
            assert all(c.rss_bytes <= bound for c in pool.children() if c.state != "retiring")

    run(main())


def test_max_tasks_per_child_recycles_and_on_child_start_runs_once_per_child() -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 1, max_tasks_per_child=3,
                                   on_child_start="tests.executors_app:named_hook") as pool:
            seen = [decode(await pool.run("whoami", b"", timeout_s=10)) for _ in range(9)]
            pids = [s["pid"] for s in seen]
            assert pids[0:3] == [pids[0]] * 3 and pids[3:6] == [pids[3]] * 3
            assert pids[6:9] == [pids[6]] * 3 and len({pids[0], pids[3], pids[6]}) == 3
            # each child ran the App's hook and the named one exactly once, before its tasks
            assert all(s["starts"] == {"app_hook": 1, "named_hook": 1, "decorated_hook": 1}
                       for s in seen)
            assert pool.stats().recycled_tasks >= 2

    run(main())


def test_a_handlers_exception_comes_back_with_class_message_and_traceback() -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 1) as pool:
            with pytest.raises(HandlerFailed) as err:
                await pool.run("boom", b"7", timeout_s=10)
            e = err.value
            assert e.error_class is ErrorClass.RETRYABLE
            assert e.type_name == "ValueError" and e.message == "bad input 7"
            assert "executors_app.py" in e.traceback and "in boom" in e.traceback
            assert e.traceback.rstrip().endswith("ValueError: bad input 7")
            with pytest.raises(HandlerFailed) as fatal:
                await pool.run("fatal", b"", timeout_s=10)  # async handler
            assert fatal.value.error_class is ErrorClass.FATAL
            assert fatal.value.type_name == "mesh.errors.FatalError"
            with pytest.raises(HandlerFailed) as dep:
                await pool.run("dependency", b"", timeout_s=10)
            assert dep.value.dependency == "ocr-api"
            assert dep.value.error_class is ErrorClass.RETRYABLE
            # the child survives its handlers' exceptions
            assert pool.stats().children_started == 1

    run(main())


def test_a_retry_later_error_keeps_its_delay() -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 1) as pool:
            with pytest.raises(HandlerFailed) as err:
                await pool.run("later", b"2.5", timeout_s=10)
            assert err.value.error_class is ErrorClass.RETRY_LATER
            assert err.value.retry_after_s == 2.5
            assert err.value.message == "quota exhausted"

    run(main())


def test_the_task_context_and_payload_bytes_cross_to_the_child() -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 1, node_id="ai-7") as pool:
            ctx = decode(await pool.run(
                "context", b"", timeout_s=10, task_id="t-1", attempt=2, delivery=5,
                idempotency_key="k-1", headers={"trace": "abc"}))
            assert ctx == {"task_id": "t-1", "attempt": 2, "delivery": 5,
                           "idempotency_key": "k-1", "headers": {"trace": "abc"},
                           "node_id": "ai-7", "kind": "context"}
            blob = os.urandom(3 * MIB)  # larger than a socket buffer, both ways
            assert await pool.run("echo", blob, timeout_s=10) == blob

    run(main())


def test_a_result_above_max_result_bytes_fails_fatal_in_the_child() -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 1, max_result_bytes=1000) as pool:
            assert len(await pool.run("big", b"1000", timeout_s=10)) == 1000
            with pytest.raises(HandlerFailed) as err:
                await pool.run("big", b"1001", timeout_s=10)
            assert err.value.error_class is ErrorClass.FATAL
            assert "1001 bytes" in err.value.message

    run(main())


def test_cancelling_a_run_kills_its_child_and_the_pool_goes_on() -> None:
    async def main() -> None:
        async with ProcessExecutor(APP, 1, kill_grace_s=0.3) as pool:
            r = pool.submit("hang", b"", timeout_s=30)
            await until(lambda: r.pid, 5, "the run started")
            pid = r.pid
            assert pool.cancel(r, "task cancelled by operator")
            assert not pool.cancel(r)
            with pytest.raises(RunCancelled):
                await r
            await until(lambda: not alive(pid), 3, "cancelled run's child killed")
            # cancelling the task that awaits a run does the same
            waiter = asyncio.create_task(pool.run("hang", b"", timeout_s=30))
            await until(lambda: pool.stats().busy == 1, 10, "the second run started")
            pid2 = pool.children()[0].pid
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await until(lambda: not alive(pid2), 3, "awaiting task's child killed")
            assert await pool.run("echo", b"ok", timeout_s=10) == b"ok"
            assert pool.stats().killed_cancel == 2

    run(main())


def test_stop_ends_every_child_and_leaves_no_fd_and_is_idempotent() -> None:
    async def main() -> None:
        before = open_fds()
        pool = ProcessExecutor(APP, 3, kill_grace_s=0.3)
        await pool.start()
        pids = [c.pid for c in pool.children()]
        hung = pool.submit("hang", b"", timeout_s=60)
        waiting = [pool.submit("echo", b"", timeout_s=60) for _ in range(2)]
        await until(lambda: hung.pid, 5, "the hang run started")
        await pool.stop(grace_s=0.2)
        with pytest.raises(PoolClosed):
            await hung
        for r in waiting:
            assert await r == b""  # free children served them within the grace
        assert not any(alive(pid) for pid in pids)
        assert pool.children() == []
        await pool.stop()
        with pytest.raises(PoolClosed):
            pool.submit("echo", b"")
        assert open_fds() == before

    run(main())


def test_an_app_that_cannot_load_or_a_failing_hook_fails_start_with_the_childs_traceback(
        ) -> None:
    async def main() -> None:
        before = open_fds()
        pool = ProcessExecutor("tests.no_such_module:app", 2)
        with pytest.raises(ChildStartFailed) as err:
            await pool.start()
        assert "No module named 'tests.no_such_module'" in str(err.value)
        assert "Traceback" in err.value.traceback
        pool = ProcessExecutor(APP, 1, on_child_start="tests.executors_app:boom")
        with pytest.raises(ChildStartFailed) as hook:
            await pool.start()
        assert "TypeError" in str(hook.value)  # boom() takes a payload
        assert pool.children() == []
        assert open_fds() == before

    run(main())
