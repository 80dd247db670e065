"""Admission: every submitted task gets a clear refusal, or is accepted for good and finishes.

Through the intake as clients use it (mesh.Client over the Helper's ROUTER): a real Helper
process with an AI node for the property test; an in-process Helper where the journal must be
made to fail on purpose.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import Client, NotFound, make_task, wire
from mesh.helper import Helper
from mesh.settings import HelperSettings
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(300)

REFUSALS = {wire.INVALID_TASK, wire.PAYLOAD_TOO_LARGE, wire.JOURNAL_FAILED, wire.QUEUE_FULL}
MIB = 2**20


async def _nodes_seen(client: Client, count: int) -> None:
    async def enough() -> bool:
        return (await client.stats())["nodes"] >= count
    await async_wait_until(enough, 20, what=f"{count} AI nodes seen by the Helper")


async def _gone(client: Client, task_id: str) -> bool:
    try:
        await client.status(task_id)
    except NotFound:
        return True
    return False


def test_a_batch_with_a_task_id_too_long_in_bytes_refuses_it_and_runs_the_others(cluster) -> None:  # noqa: ANN001
    """The task id fits 200 characters but not the journal's 255-byte key: before, the submit
    got no reply, its retry got OK(duplicate), and the batch's other tasks never ran."""
    cluster.start_helper()
    cluster.start_ai()

    async def scenario() -> None:
        async with Client(cluster.intake, timeout_s=10) as client:
            await _nodes_seen(client, 1)
            bad_id = "€" * 200  # 200 characters, 600 UTF-8 bytes
            batch = [make_task("echo", b"1"), make_task("echo", b"2", task_id=bad_id),
                     make_task("echo", b"3", headers={"h": "v" * 70_000}),
                     make_task("echo", b"4")]
            results = await client.submit_results(batch)
            codes = [r.code for r in results]
            assert codes == [wire.OK, wire.INVALID_TASK, wire.INVALID_TASK, wire.OK], results
            assert "600 UTF-8 bytes" in results[1].message
            assert "255 bytes" in results[1].message
            assert "headers of 70001 UTF-8 bytes" in results[2].message
            # The retry is refused the same way, never answered as a duplicate.
            again = await client.submit_results([make_task("echo", b"2", task_id=bad_id)])
            assert again[0].code == wire.INVALID_TASK and not again[0].duplicate
            assert await _gone(client, bad_id) and await _gone(client, batch[2].task_id)
            for task in (batch[0], batch[3]):
                assert await client.result(task.task_id, timeout=30) == task.payload
            stats = await client.stats()
            assert stats["tasks"] == 2

    asyncio.run(scenario())


_ids = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["€" * 200, "a" * 255, "a" * 256, "\U0001d11e" * 63, "\U0001d11e" * 64,
                     "é" * 128, "x" * 201]),
)
_kinds = st.one_of(
    st.sampled_from(["echo", "noop"]),
    st.text(max_size=20),
    st.sampled_from(["k" * 255, "k" * 256, "ü" * 128]),
)
_headers = st.one_of(
    st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
    st.just({f"h{i}": "" for i in range(65)}),
    st.just({"big": "\U0001d11e" * 16_385}),
)
_payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([MIB - 200, MIB, MIB + 1, 3 * MIB]).map(lambda n: b"p" * n),
)


@st.composite
def _tasks(draw) -> object:  # noqa: ANN001
    task = wire.Task(
        task_id=draw(_ids), kind=draw(_kinds), payload=draw(_payloads),
        priority=draw(st.one_of(st.integers(-3, 3), st.integers(-2**31, 2**31 - 1))),
        idempotency_key=draw(st.one_of(st.text(max_size=20), st.just("i" * 1025))),
        max_attempts=draw(st.integers(0, 3)))
    task.headers.update(draw(_headers))
    return task


def test_any_submitted_task_is_refused_clearly_or_accepted_and_finishes(cluster) -> None:  # noqa: ANN001
    # Kinds no node serves go DEAD(UNKNOWN_KIND) quickly; a handler failure is retried fast.
    cluster.env.pop("MESH_EFFECT_LOG_DIR", None)  # arbitrary idempotency keys name no file
    cluster.start_helper("--unroutable-grace", "0.2", "--retry-base", "0.02",
                         "--retry-cap", "0.05")
    cluster.start_ai()
    loop = asyncio.new_event_loop()
    client = Client(cluster.intake, timeout_s=20)
    loop.run_until_complete(client.start())
    loop.run_until_complete(_nodes_seen(client, 1))
    accepted: set[str] = set()

    async def check(task) -> None:  # noqa: ANN001
        results = await client.submit_results([task])
        assert len(results) == 1
        result = results[0]
        assert result.task_id == task.task_id
        if result.code == wire.OK:
            accepted.add(task.task_id)
            status = await client.wait(task.task_id, timeout=30)
            assert status.state in wire.TERMINAL_STATES
            if status.state == wire.SUCCEEDED and task.kind == "echo":
                assert status.result == task.payload or result.duplicate
            return
        assert result.code in REFUSALS, result
        assert len(result.message) > 20, result
        if task.task_id and task.task_id not in accepted:
            assert await _gone(client, task.task_id), "a refused task left a trace"

    @settings(max_examples=80, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(_tasks())
    def run(task) -> None:  # noqa: ANN001
        loop.run_until_complete(check(task))

    try:
        run()
        stats = loop.run_until_complete(client.stats())
        # Nothing is left half-admitted: every task the Helper holds is finished.
        assert stats["queued"] == 0 and stats["inflight"] == 0 and stats["retry_waiting"] == 0
    finally:
        loop.run_until_complete(client.close())
        loop.close()


class _FailingAppend:
    """Wraps a journal's append: raises for chosen keys, as a bug or a full journal would."""

    def __init__(self, append, bad: set[bytes], exc: Exception) -> None:  # noqa: ANN001
        self.append = append
        self.bad = bad
        self.exc = exc

    def __call__(self, type_: int, key: bytes, payload: bytes) -> None:
        if key in self.bad:
            raise self.exc
        self.append(type_, key, payload)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("record too big")])
def test_an_unexpected_journal_append_failure_refuses_that_task_and_leaves_no_trace(
        tmp_path, exc: Exception) -> None:  # noqa: ANN001
    async def scenario() -> None:
        helper = Helper(HelperSettings(helper_id="h", data_dir=str(tmp_path / "h")))
        await helper.start()
        d = helper.dispatcher
        d._append = _FailingAppend(d._append, {b"doomed"}, exc)
        try:
            async with Client(helper.intake_endpoint, timeout_s=10) as client:
                tasks = [make_task("echo", b"a"), make_task("echo", b"b", task_id="doomed"),
                         make_task("echo", b"c")]
                results = await client.submit_results(tasks)
                assert [r.code for r in results] == [wire.OK, wire.JOURNAL_FAILED, wire.OK]
                assert type(exc).__name__ in results[1].message
                assert await _gone(client, "doomed")
                assert "doomed" not in d.tasks
                # The others are accepted for good: queued, not stuck half-admitted.
                for task in (tasks[0], tasks[2]):
                    assert (await client.status(task.task_id)).state == wire.QUEUED
                d._append = d._append.append
                retried = await client.submit_results([tasks[1]])
                assert retried[0].code == wire.OK and not retried[0].duplicate
        finally:
            await helper.stop()
        # After a restart the journal holds exactly the three accepted tasks.
        again = Helper(HelperSettings(helper_id="h", data_dir=str(tmp_path / "h")))
        await again.start()
        try:
            assert sorted(again.dispatcher.tasks) == sorted(t.task_id for t in tasks)
        finally:
            await again.stop()

    asyncio.run(scenario())


def test_a_bug_in_admission_answers_every_task_of_the_request_and_keeps_nothing(
        tmp_path, monkeypatch) -> None:  # noqa: ANN001
    async def scenario() -> None:
        helper = Helper(HelperSettings(helper_id="h", data_dir=str(tmp_path / "h")))
        await helper.start()
        real = helper.dispatcher.admit
        calls = []

        def admit_then_break(task, encoded=None):  # noqa: ANN001, ANN202
            calls.append(task.task_id)
            if len(calls) == 2:
                raise KeyError("a bug after the first task")  # not from the journal
            return real(task, encoded)

        monkeypatch.setattr(helper.dispatcher, "admit", admit_then_break)
        monkeypatch.setattr(helper, "_refuse", lambda *a: (_ for _ in ()).throw(
            AssertionError("refusal path broken too")))
        try:
            async with Client(helper.intake_endpoint, timeout_s=10) as client:
                tasks = [make_task("echo", b"a"), make_task("echo", b"b")]
                results = await client.submit_results(tasks)
                assert [r.code for r in results] == [wire.JOURNAL_FAILED] * 2
                assert "nothing of it was accepted" in results[0].message
                assert helper.dispatcher.tasks == {}
                assert len(helper.dispatcher.pending) == 0
        finally:
            await helper.stop()
        again = Helper(HelperSettings(helper_id="h", data_dir=str(tmp_path / "h")))
        await again.start()
        try:
            assert again.dispatcher.tasks == {}  # the first task's record was taken back
        finally:
            await again.stop()

    asyncio.run(scenario())
