"""Every failure semantic of the task lane, proven with real Helper and AI node processes.

Retries, dead letters and the DLQ, poison pills, zombies (SIGSTOP/SIGCONT), hung handlers, TTL,
backpressure, priority, graceful shutdown of both node kinds, and a full disk under the journal.
Tests wait on conditions with deadlines; the only time bounds asserted are lower bounds (a retry
did not come before its delay) or generous ones far from the values involved.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from discovery import open_discovery
from mesh import Client, JournalError, NotFound, QueueFull, make_task, sockets, wire
from tests.support.fake_node import node_links
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(120)

FAST_RETRIES = ("--retry-base", "0.05", "--retry-cap", "0.2")


# ---- helpers ---------------------------------------------------------------------------------

def _job(**fields) -> bytes:  # noqa: ANN003
    return json.dumps(fields).encode()


async def _nodes_seen(client: Client, count: int, timeout_s: float = 20.0) -> None:
    async def enough() -> bool:
        return (await client.stats())["nodes"] == count
    await async_wait_until(enough, timeout_s, what=f"{count} AI nodes seen by the Helper")


async def _wait_all(client: Client, ids: list[str], timeout_s: float = 60.0) -> list:
    return list(await asyncio.gather(*(client.wait(t, timeout=timeout_s) for t in ids)))


async def _all_running(client: Client, ids: list[str], what: str) -> None:
    async def running() -> bool:
        return all(s.state == wire.RUNNING for s in await client.statuses(ids))
    await async_wait_until(running, 10, what=what)


def _metrics(proc) -> str:  # noqa: ANN001 - NodeProcess
    url = f"http://127.0.0.1:{proc.ready['metrics_port']}/metrics"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0.0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _reason(status) -> str:  # noqa: ANN001
    return wire.dead_reason_name(status.dead_reason)


def _absorbed(cluster) -> list[str]:  # noqa: ANN001
    """Task ids whose handler ran again after the side effect was applied (a second run)."""
    out: list[str] = []
    for path in Path(cluster.effects).glob("*.absorbed"):
        out += path.read_text().split()
    return out


def _started_ns(status) -> int:  # noqa: ANN001
    return json.loads(status.result)["started_ns"]


# ---- retries and dead letters ------------------------------------------------------------------

def test_retries_then_success_and_dead_letters_keep_the_reason_and_last_error(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper(*FAST_RETRIES, "--max-attempts", "2",
                                  "--kind-max-attempts", "simulate=3")
    cluster.start_ai()

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            flaky = await client.submit("simulate", _job(ms=1, fail_times=2))
            hopeless = await client.submit("simulate", _job(ms=1, fail_times=9))
            own_bound = await client.submit("simulate", _job(ms=1, fail_times=9), max_attempts=4)
            fatal = await client.submit("simulate", _job(fatal=True))
            later = await client.submit("simulate", _job(ms=1, fail_times=1, retry_later_s=1.0))
            s_flaky, s_hopeless, s_own, s_fatal, s_later = await _wait_all(
                client, [flaky, hopeless, own_bound, fatal, later])
            # Two failures, then success on the third attempt (the kind's bound is 3).
            assert s_flaky.state == wire.SUCCEEDED and s_flaky.attempts == 3
            assert json.loads(s_flaky.result)["attempt"] == 3
            # Attempts exhausted at the kind's bound (3, not the Helper's default 2): DEAD with
            # the last attempt's error kept.
            assert s_hopeless.state == wire.DEAD and _reason(s_hopeless) == "ATTEMPTS_EXHAUSTED"
            assert s_hopeless.attempts == 3
            assert "simulated failure on attempt 3" in s_hopeless.error
            # The task's own bound wins over the kind's.
            assert _reason(s_own) == "ATTEMPTS_EXHAUSTED" and s_own.attempts == 4
            assert "attempt 4" in s_own.error
            # Fatal: DEAD at once, no retry.
            assert s_fatal.state == wire.DEAD and _reason(s_fatal) == "FATAL_ERROR"
            assert s_fatal.attempts == 1 and "can never be processed" in s_fatal.error
            # RetryLater(1.0): the second attempt starts no earlier than 1 s after the first
            # one failed (which was after the submit), though the backoff base is 0.05 s.
            assert s_later.state == wire.SUCCEEDED and s_later.attempts == 2
            assert _started_ns(s_later) - s_later.submitted_ns >= 1.0e9

    asyncio.run(scenario())
    text = _metrics(helper)
    # flaky 2 + hopeless 2 + own 3 + later 1 failed attempts were scheduled again.
    assert _metric(text, "mesh_task_retries_total") == 8.0
    assert _metric(text, "mesh_tasks_dead_total", reason="ATTEMPTS_EXHAUSTED") == 2.0
    assert _metric(text, "mesh_tasks_dead_total", reason="FATAL_ERROR") == 1.0


def test_a_replayed_dead_letter_runs_again_on_the_node_that_failed_it_across_helper_restarts(
        cluster, tmp_path) -> None:  # noqa: ANN001
    """A task that died at attempt 1 (max_attempts 1 here; a FatalError or a poison pill do the
    same) is replayed: its attempts start again at 1, and the node that stored its failure of
    attempt 1 runs it again instead of answering that failure from its de-duplication window
    (the Helper sends how many times the task was replayed; the count is journaled, so it holds
    after a Helper restart too)."""
    helper_args = (*FAST_RETRIES, "--max-attempts", "1")
    cluster.start_helper(*helper_args)
    ai = cluster.start_ai()
    cause = tmp_path / "cause"
    cause.write_text("the handler fails while this file exists")
    marker = str(cause)

    def runs(task_id: str) -> int:  # failed runs of attempt 1 the node logged
        return ai.log_path.read_text().count(f"task {task_id} (kind simulate, attempt 1) failed")

    async def dead_again(client: Client, task_id: str, runs_before: int) -> None:
        async def ran_and_died() -> bool:
            return runs(task_id) > runs_before and \
                (await client.status(task_id)).state == wire.DEAD
        await async_wait_until(ran_and_died, 30, what="the replayed task ran and died again")

    async def scenario() -> str:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            task_id = await client.submit("simulate", _job(ms=1, fail_while_exists=marker))
            assert (await client.wait(task_id, timeout=30)).state == wire.DEAD
            assert runs(task_id) == 1
            assert (await client.dead_letters("replay", [task_id])).affected == 1
            await dead_again(client, task_id, 1)  # ran, not answered from the stored failure
            # A status is read from memory; the death's record is synced with the next sync
            # (within 10 ms, or with the next submit). An accepted submit is such a sync: after
            # it the death survives the SIGKILL below (else the task would rightly run again).
            await client.submit("simulate", _job(ms=1))
            return task_id
    task_id = asyncio.run(scenario())
    cluster.restart_helper(*helper_args)  # SIGKILL; the node keeps its window

    async def after_restart() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            assert (await client.dead_letters("replay", [task_id])).affected == 1
            await dead_again(client, task_id, 2)
            cause.unlink()  # the operator fixed the cause
            assert (await client.dead_letters("replay", [task_id])).affected == 1
            status = await client.wait(task_id, timeout=30)
            assert status.state == wire.SUCCEEDED and status.attempts == 1, status
    asyncio.run(after_restart())
    assert runs(task_id) == 3


def test_dead_letters_are_listed_inspected_replayed_and_purged_from_cli_and_client(
        cluster, tmp_path) -> None:  # noqa: ANN001
    helper_args = (*FAST_RETRIES, "--max-attempts", "2")
    cluster.start_helper(*helper_args)
    cluster.start_ai()
    marker = tmp_path / "dependency-down"
    marker.write_text("the handler fails while this file exists")

    def dlq(*args: str) -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-m", "nodes.cli", "dlq", *args, "--intake", cluster.intake],
            capture_output=True, text=True, timeout=30, env={**os.environ, **cluster.env})
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            blocked = [await client.submit("simulate", _job(ms=1, fail_while_exists=str(marker)))
                       for _ in range(2)]
            fatal = await client.submit("simulate", _job(fatal=True))
            statuses = await _wait_all(client, [*blocked, fatal])
            assert [s.state for s in statuses] == [wire.DEAD] * 3
            # Dead letters are durable: a Helper restart keeps them.
            await asyncio.to_thread(cluster.helper.stop)
            await asyncio.to_thread(cluster.start_helper, *helper_args)

            listed = dlq("list")
            assert listed[-1] == {"op": "list", "affected": 3}
            assert {d["task_id"] for d in listed[:-1]} == {*blocked, fatal}
            assert {d["dead_reason"] for d in listed[:-1]} == {"ATTEMPTS_EXHAUSTED", "FATAL_ERROR"}
            inspected = dlq("inspect", blocked[0])
            assert inspected[0]["attempts"] == 2
            assert "dependency-down exists (attempt 2)" in inspected[0]["error"]

            # A replay while the cause is still there ends DEAD again, attempts counted afresh.
            assert dlq("replay", blocked[0])[-1]["affected"] == 1
            again = await client.wait(blocked[0], timeout=30)
            assert again.state == wire.DEAD and again.attempts == 2

            marker.unlink()  # the operator fixed the cause
            assert dlq("replay", blocked[0])[-1]["affected"] == 1
            reply = await client.dead_letters("replay", [blocked[1]])
            assert reply.affected == 1
            for task_id in blocked:
                status = await client.wait(task_id, timeout=30)
                assert status.state == wire.SUCCEEDED and status.attempts == 1, status

            assert [d["task_id"] for d in dlq("list")[:-1]] == [fatal]
            assert dlq("purge", fatal)[-1]["affected"] == 1
            assert (await client.dead_letters("list")).affected == 0
            # The purge is durable too.
            await asyncio.to_thread(cluster.helper.stop)
            await asyncio.to_thread(cluster.start_helper, *helper_args)
            with pytest.raises(NotFound):
                await client.status(fatal)
            assert (await client.status(blocked[0])).state == wire.SUCCEEDED

            # purge/replay with no ids and no --all is a usage error, not "everything".
            out = subprocess.run([sys.executable, "-m", "nodes.cli", "dlq", "purge", "--intake",
                                  cluster.intake], capture_output=True, text=True, timeout=30)
            assert out.returncode == 2 and "--all" in out.stderr

    asyncio.run(scenario())
    effects = cluster.applied_effects()
    assert sorted(effects.values()) == [1, 1]


# ---- poison pills and zombies --------------------------------------------------------------

def test_poison_pill_goes_dead_after_the_delivery_bound_while_other_tasks_flow(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper("--max-lost-deliveries", "3", "--node-dead-after", "1.0")
    # Concurrency 1: only the pill is RUNNING when its node dies (a task running next to a
    # pill is charged a lost delivery too; see docs/decisions/005-failure-semantics.md).
    nodes = [cluster.start_ai("--concurrency", "1") for _ in range(2)]

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 2)
            pill = await client.submit("crash", b"")
            others = await client.submit_many(
                [make_task("simulate", _job(ms=20)) for _ in range(200)])
            deadline = time.monotonic() + 60
            while (status := await client.status(pill)).state != wire.DEAD:
                assert time.monotonic() < deadline, "the poison pill never went DEAD"
                for i, node in enumerate(nodes):
                    if not node.alive():  # it ran the pill: a new node takes its place
                        nodes[i] = cluster.start_ai("--concurrency", "1")
                await asyncio.sleep(0.05)
            assert _reason(status) == "DELIVERY_LIMIT"
            assert "poison pill" in status.error and status.deliveries >= 3
            done = await _wait_all(client, others)
            assert all(s.state == wire.SUCCEEDED for s in done)

    asyncio.run(scenario())
    # Exactly three nodes died running it: the bound, not one node after another forever.
    assert sum(1 for p in cluster.ai_nodes if not p.alive()) == 3
    assert _metric(_metrics(helper), "mesh_tasks_dead_total", reason="DELIVERY_LIMIT") == 1.0
    effects = cluster.applied_effects()
    assert len(effects) == 200 and max(effects.values()) == 1


def test_sigstopped_node_is_declared_dead_and_its_late_done_acks_count_nothing(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper("--node-dead-after", "1.0")
    zombie = cluster.start_ai("--concurrency", "4", "--prefetch", "0")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            ids = await client.submit_many(
                [make_task("simulate", _job(ms=2500)) for _ in range(4)])
            await _all_running(client, ids, "4 tasks RUNNING on the zombie-to-be")
            rescuer = cluster.start_ai("--concurrency", "4")
            await _nodes_seen(client, 2)
            zombie.signal(signal.SIGSTOP)
            await _nodes_seen(client, 1, timeout_s=10)  # declared dead by missed heartbeats
            statuses = await _wait_all(client, ids, timeout_s=30)
            assert all(s.state == wire.SUCCEEDED for s in statuses)
            assert {s.node_id for s in statuses} == {rescuer.ready["node_id"]}
            results = [s.result for s in statuses]

            zombie.signal(signal.SIGCONT)  # its handlers finish and send DONE, too late

            async def late_done_seen() -> bool:
                return (await client.stats())["duplicate_done"] >= 4
            await async_wait_until(late_done_seen, 15, what="the zombie's late DONE acks")
            await _nodes_seen(client, 2)  # back as a live node, same incarnation
            statuses = await client.statuses(ids)
            assert [s.result for s in statuses] == results, "a late DONE replaced a result"
            assert {s.node_id for s in statuses} == {rescuer.ready["node_id"]}
            # The comeback node takes new work normally: its credit is not inflated by what it
            # received before it was declared dead, and nothing in flight to it is taken for
            # lost (which would run it twice).
            more = await client.submit_many([make_task("simulate", _job(ms=1)) for _ in range(50)])
            assert all(s.state == wire.SUCCEEDED for s in await _wait_all(client, more))

    asyncio.run(scenario())
    text = _metrics(helper)
    assert _metric(text, "mesh_tasks_finished_total", state="succeeded") == 54.0
    assert _metric(text, "mesh_node_deaths_total", cause="missed_heartbeats") == 1.0
    assert _metric(text, "mesh_redeliveries_total", cause="node_missed_heartbeats") == 4.0
    assert _metric(text, "mesh_redeliveries_total", cause="not_held") == 0.0
    effects = cluster.applied_effects()
    assert len(effects) == 54 and max(effects.values()) == 1


def test_hung_sync_handler_frees_its_slot_at_the_run_timeout(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper("--max-attempts", "1")
    ai = cluster.start_ai("--concurrency", "1", "--prefetch", "0")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            hung = await client.submit("block", b"600", run_timeout_s=0.5)
            after = await client.submit("echo", b"the slot is free again")
            # The echo needs the only slot: it runs while the hung thread still sleeps.
            assert await client.result(after, timeout=6) == b"the slot is free again"
            status = await client.wait(hung, timeout=5)
            assert status.state == wire.DEAD and _reason(status) == "ATTEMPTS_EXHAUSTED"
            assert "run timeout of 0.5s" in status.error

    asyncio.run(scenario())
    assert _metric(_metrics(ai), "mesh_ai_timeouts_total") == 1.0
    assert _metric(_metrics(helper), "mesh_task_timeouts_total", timeout="run") == 1.0
    # The thread still sleeps (10 minutes); SIGTERM does not wait for it.
    ai.signal(signal.SIGTERM)
    assert ai.proc.wait(timeout=30) == 0


def test_delivery_never_started_is_sent_elsewhere_after_the_ack_timeout(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper("--ack-timeout", "0.5")

    async def scenario() -> None:
        # A node that heartbeats (so it is alive) and takes a delivery but never starts it.
        ctx = zmq.asyncio.Context()
        trust, task_link, ack_link = node_links(ctx, "silent")  # a node key of its own
        tasks_sock = ctx.socket(zmq.PULL)
        sockets.secure(tasks_sock, task_link)
        tasks_sock.bind("tcp://127.0.0.1:0")
        acks_sock = ctx.socket(zmq.PUSH)
        sockets.connect(acks_sock, cluster.helper.ready["acks"], ack_link)
        endpoint = tasks_sock.getsockopt_string(zmq.LAST_ENDPOINT)

        async def heartbeats() -> None:
            beat = 0
            while True:
                beat += 1
                await acks_sock.send(wire.encode_ack_batch(wire.Heartbeat(
                    node_id="silent", incarnation=7, task_endpoint=endpoint, concurrency=1,
                    credit=1, kinds=["echo"], beat=beat, sent_ns=time.time_ns()), []))
                await asyncio.sleep(0.1)

        beating = asyncio.create_task(heartbeats())
        try:
            async with Client(cluster.intake) as client:
                await _nodes_seen(client, 1)
                task_id = await client.submit("echo", b"not lost")
                assert await tasks_sock.poll(5000), "the silent node got no delivery"
                await tasks_sock.recv()
                ai = cluster.start_ai()
                assert await client.result(task_id, timeout=20) == b"not lost"
                status = await client.status(task_id)
                assert status.node_id == ai.ready["node_id"] and status.deliveries == 2
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
            tasks_sock.close(linger=0)
            acks_sock.close(linger=0)
            trust.release(ctx)
            ctx.term()

    asyncio.run(scenario())
    text = _metrics(helper)
    assert _metric(text, "mesh_redeliveries_total", cause="ack_timeout") == 1.0
    assert _metric(text, "mesh_task_timeouts_total", timeout="ack") == 1.0


def test_deliveries_waiting_for_a_slot_are_not_sent_again_by_the_ack_timeout(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper("--ack-timeout", "0.5")
    busy = cluster.start_ai("--concurrency", "1", "--prefetch", "4")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            ids = await client.submit_many(
                [make_task("simulate", _job(ms=600)) for _ in range(5)])

            async def all_on_busy() -> bool:
                statuses = await client.statuses(ids)
                return all(s.node_id == busy.ready["node_id"] for s in statuses)
            await async_wait_until(all_on_busy, 10, what="5 tasks on the busy node")
            cluster.start_ai("--concurrency", "4")
            await _nodes_seen(client, 2)
            statuses = await _wait_all(client, ids)
            # The node holds them (its heartbeats say so): waiting for a slot is progress.
            assert {s.node_id for s in statuses} == {busy.ready["node_id"]}
            assert [s.deliveries for s in statuses] == [1] * 5

    asyncio.run(scenario())
    assert _absorbed(cluster) == [], "a task waiting for a slot ran twice"
    assert _metric(_metrics(helper), "mesh_redeliveries_total", cause="ack_timeout") == 0.0


# ---- TTL, backpressure, priority ---------------------------------------------------------------

def test_task_whose_deadline_passes_while_no_node_is_up_goes_dead_and_never_runs(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper()

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            doomed = await client.submit("echo", b"too late", ttl_s=0.5)
            in_time = await client.submit("echo", b"in time", ttl_s=120)
            # No node is up: the task goes DEAD (EXPIRED) on its own, without a node coming.
            expired = await client.wait(doomed, timeout=10)
            assert expired.state == wire.DEAD and _reason(expired) == "EXPIRED"
            assert "deadline passed" in expired.error and expired.deliveries == 0
            assert (await client.status(in_time)).state == wire.QUEUED
            cluster.start_ai()
            ok = await client.wait(in_time, timeout=30)
            assert ok.state == wire.SUCCEEDED
            assert (await client.status(doomed)).state == wire.DEAD

    asyncio.run(scenario())
    assert len(cluster.applied_effects()) == 1  # only the task still in time ran
    assert _metric(_metrics(helper), "mesh_tasks_dead_total", reason="EXPIRED") == 1.0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_full_queue_rejects_with_queue_full_and_wait_s_waits_for_room(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper("--max-pending", "20")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            queued = await client.submit_many(
                [make_task("simulate", _job(ms=50)) for _ in range(20)])
            with pytest.raises(QueueFull, match=r"pending queue is full \(20 of 20 tasks\)"):
                await client.submit("simulate", _job(ms=1))
            # A producer that outruns the (absent) workers: every submit refused, memory flat.
            rss_before = _rss_kib(helper.pid)
            refused = 0
            for _ in range(100):
                results = await client.submit_results(
                    [make_task("simulate", b"x" * 4096) for _ in range(100)])
                refused += sum(r.code == QueueFull.code for r in results)
            assert refused == 10_000
            grown_kib = _rss_kib(helper.pid) - rss_before
            assert grown_kib < 20 * 1024, f"Helper RSS grew {grown_kib} KiB over 40 MB refused"

            async def gauges() -> bool:
                text = _metrics(helper)
                return (_metric(text, "mesh_queue_depth") == 20
                        and _metric(text, "mesh_oldest_pending_age_seconds") > 0)
            await async_wait_until(gauges, 5, what="queue depth and age gauges")

            # With wait_s the submit waits for room, and gets it once a node drains the queue.
            waiting = asyncio.create_task(client.submit("simulate", _job(ms=1), wait_s=30))
            await asyncio.sleep(0.3)  # let the request reach the Helper (no assertion on it)
            assert not waiting.done()
            cluster.start_ai()
            waited = await asyncio.wait_for(waiting, 30)
            statuses = await _wait_all(client, [*queued, waited])
            assert all(s.state == wire.SUCCEEDED for s in statuses)
            # wait_s that runs out is a QueueFull too, after the wait.
            ai_gone = cluster.ai_nodes[0]
            ai_gone.stop()
            await _nodes_seen(client, 0, timeout_s=10)
            await client.submit_many([make_task("simulate", _job(ms=1)) for _ in range(20)])
            began = time.monotonic()
            with pytest.raises(QueueFull):
                await client.submit("simulate", _job(ms=1), wait_s=0.5)
            assert time.monotonic() - began >= 0.5

    asyncio.run(scenario())
    text = _metrics(helper)
    assert _metric(text, "mesh_submit_rejected_total", reason="QueueFull") == 10_002.0


def test_queue_bound_by_task_bytes_names_the_bytes_bound(cluster) -> None:  # noqa: ANN001
    cluster.start_helper("--max-pending-bytes", "10000")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await client.submit("echo", b"x" * 6000)
            # The bound counts the whole task (payload, kind, headers, ids), not only its payload.
            with pytest.raises(QueueFull, match=r"\(1\d{4} of 10000 task bytes\)"):
                await client.submit("echo", b"y" * 6000)
            with pytest.raises(QueueFull, match=r"of 10000 task bytes"):
                await client.submit("echo", b"y" * 100, headers={"h": "v" * 4000})
            await client.submit("echo", b"z" * 3000)  # what fits still goes in

    asyncio.run(scenario())


def test_higher_priority_overtakes_queued_lower_ones_fifo_within_and_no_starvation(cluster) -> None:  # noqa: ANN001
    cluster.start_helper()
    cluster.start_ai("--concurrency", "1", "--prefetch", "0")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            blocker = await client.submit("simulate", _job(ms=500))

            async def running() -> bool:
                return (await client.status(blocker)).state == wire.RUNNING
            await async_wait_until(running, 10, what="the blocker running")
            low = [make_task("simulate", _job(ms=20), task_id=f"low-{i}") for i in range(3)]
            high = [make_task("simulate", _job(ms=20), task_id=f"high-{i}", priority=5)
                    for i in range(10)]
            await client.submit_many(low + high)  # the low ones first
            statuses = await _wait_all(client, [blocker] + [t.task_id for t in low + high])
            order = [s.task_id for s in sorted(statuses, key=_started_ns)]
            # Strict priority, FIFO within a priority, and every 8th pick (the blocker was the
            # 1st) goes to the lane whose head waited longest: low-0 is not starved.
            assert order == [blocker, *(f"high-{i}" for i in range(6)), "low-0",
                             *(f"high-{i}" for i in range(6, 10)), "low-1", "low-2"], order

    asyncio.run(scenario())


# ---- graceful shutdown -----------------------------------------------------------------------

def test_sigterm_on_an_ai_node_finishes_running_tasks_hands_back_the_rest_and_exits_0(
        cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper()
    leaving = cluster.start_ai("--concurrency", "2", "--prefetch", "4", "--drain-grace", "20")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            ids = await client.submit_many(
                [make_task("simulate", _job(ms=2000)) for _ in range(6)])

            async def all_on_leaving() -> list | None:
                statuses = await client.statuses(ids)
                running = [s.task_id for s in statuses if s.state == wire.RUNNING]
                held = all(s.node_id == leaving.ready["node_id"] for s in statuses)
                return running if held and len(running) == 2 else None
            running = await async_wait_until(all_on_leaving, 10, what="6 tasks on the node")
            staying = cluster.start_ai("--concurrency", "4")
            await _nodes_seen(client, 2)
            leaving.signal(signal.SIGTERM)

            async def draining() -> bool:  # zero credit announced: it gets nothing new
                return bool(_metric(await asyncio.to_thread(_metrics, leaving),
                                    "mesh_ai_rejected_total", reason="draining"))
            await async_wait_until(draining, 10, what="the node draining")
            late = await client.submit_many(
                [make_task("simulate", _job(ms=1)) for _ in range(4)])
            code = await asyncio.to_thread(leaving.proc.wait, 30)
            assert code == 0
            for status in await _wait_all(client, late):
                assert status.node_id == staying.ready["node_id"]
            statuses = {s.task_id: s for s in await _wait_all(client, ids)}
            assert all(s.state == wire.SUCCEEDED for s in statuses.values())
            # The running ones finished where they ran; the waiting ones ran on the other node.
            for task_id, status in statuses.items():
                expected = leaving if task_id in running else staying
                assert status.node_id == expected.ready["node_id"], (task_id, status)
                assert status.attempts == 1
            directory = open_discovery(cluster.discovery)
            try:
                _, found = directory.instances("mesh-ai", passing_only=False)
            finally:
                directory.close()
            assert [i.meta["node_id"] for i in found] == [staying.ready["node_id"]]

    asyncio.run(scenario())
    assert _absorbed(cluster) == [], "a task handed over at shutdown ran twice"
    effects = cluster.applied_effects()
    assert len(effects) == 10 and max(effects.values()) == 1
    text = _metrics(helper)
    assert _metric(text, "mesh_redeliveries_total", cause="draining") == 4.0


def test_sigterm_past_the_drain_grace_hands_running_tasks_back_to_run_elsewhere(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper()
    leaving = cluster.start_ai("--concurrency", "2", "--prefetch", "0", "--drain-grace", "0.5")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            ids = await client.submit_many(
                [make_task("simulate", _job(ms=4000)) for _ in range(2)])
            await _all_running(client, ids, "2 tasks running")
            staying = cluster.start_ai("--concurrency", "2")
            await _nodes_seen(client, 2)
            leaving.signal(signal.SIGTERM)
            assert await asyncio.to_thread(leaving.proc.wait, 20) == 0
            statuses = await _wait_all(client, ids)
            assert all(s.state == wire.SUCCEEDED for s in statuses)
            assert {s.node_id for s in statuses} == {staying.ready["node_id"]}
            assert [s.attempts for s in statuses] == [1, 1]  # handed back, not a failure

    asyncio.run(scenario())
    text = _metrics(helper)
    assert _metric(text, "mesh_redeliveries_total", cause="draining") == 2.0
    assert _metric(text, "mesh_task_retries_total") == 0.0
    effects = cluster.applied_effects()
    assert len(effects) == 2 and max(effects.values()) == 1


def test_sigterm_on_the_helper_flushes_and_a_restart_loses_nothing(cluster) -> None:  # noqa: ANN001
    helper = cluster.start_helper()
    cluster.start_ai("--concurrency", "4")

    async def scenario() -> list[str]:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            ids = await client.submit_many(
                [make_task("simulate", _job(ms=30)) for _ in range(300)])

            async def some_done() -> bool:
                statuses = await client.statuses(ids)
                return sum(s.state == wire.SUCCEEDED for s in statuses) >= 20
            await async_wait_until(some_done, 20, what="some tasks done")
        return ids

    ids = asyncio.run(scenario())
    helper.signal(signal.SIGTERM)
    assert helper.proc.wait(timeout=20) == 0
    restarted = cluster.start_helper()
    assert restarted.ready["recovered"]["queued"] + restarted.ready["recovered"]["succeeded"] \
        == 300

    async def after() -> None:
        async with Client(cluster.intake) as client:
            statuses = await _wait_all(client, ids)
            assert all(s.state == wire.SUCCEEDED for s in statuses)

    asyncio.run(after())
    effects = cluster.applied_effects()
    assert len(effects) == 300 and max(effects.values()) == 1


async def _frame_within(sock: zmq.asyncio.Socket, timeout_ms: int) -> bool:
    """A frame arrived within the timeout (a poll can wake with nothing to read, e.g. on a
    CURVE socket after handshake traffic: only a frame read counts)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while (left := deadline - time.monotonic()) > 0:
        if await sock.poll(int(left * 1000) + 1):
            try:
                await sock.recv(zmq.NOBLOCK)
                return True
            except zmq.Again:
                continue
    return False


def test_a_done_for_a_task_queued_again_after_a_helper_restart_finishes_it_for_good(
        cluster) -> None:  # noqa: ANN001
    """After a restart the Helper queues every unfinished task again. A node that finished one
    meanwhile may answer DONE before any heartbeat of its lists the task as held. That DONE
    must finish the task and take it out of the queue: a CI chaos run once saw the finished
    task (payload dropped) dispatched again as an empty shell and DISPATCHED forever.
    The node here is a raw socket, so the order of its messages is the test's to choose."""
    helper = cluster.start_helper()

    async def submit() -> str:
        async with Client(cluster.intake) as client:
            (task_id,) = await client.submit_many([make_task("simulate", _job(ms=1))])
            return task_id

    task_id = asyncio.run(submit())  # no node: it stays QUEUED
    helper.kill()
    helper = cluster.start_helper()
    assert helper.ready["recovered"]["queued"] == 1

    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        trust, task_link, ack_link = node_links(ctx, "raw-node")  # a node key of its own
        tasks_in = ctx.socket(zmq.PULL)
        sockets.secure(tasks_in, task_link)
        port = tasks_in.bind_to_random_port("tcp://127.0.0.1")
        acks_out = ctx.socket(zmq.PUSH)
        sockets.connect(acks_out, helper.ready["acks"], ack_link)
        try:
            beat = wire.Heartbeat(
                node_id="raw-node", incarnation=0x77, task_endpoint=f"tcp://127.0.0.1:{port}",
                concurrency=4, credit=8, kinds=["simulate"], beat=1)
            done = wire.Ack(task_id=task_id, delivery=1, kind=wire.DONE, attempt=1,
                            result=json.dumps({"attempt": 1}).encode())
            await acks_out.send(wire.encode_ack_batch(beat, [done]))
            async with Client(cluster.intake) as client:
                status = await client.wait(task_id, timeout=20)
                assert status.state == wire.SUCCEEDED, wire.state_name(status.state)
                # Keep the node alive with credit well past the reconcile window: the
                # Helper has nothing to send it.
                for n in range(2, 14):  # 2.4 s, past the 1 s reconcile window
                    beat.beat = n
                    await acks_out.send(wire.encode_ack_batch(beat, []))
                    assert not await _frame_within(tasks_in, 200), \
                        "a finished task was dispatched again"
                status = await client.status(task_id)
                assert status.state == wire.SUCCEEDED, wire.state_name(status.state)
                assert json.loads(status.result) == {"attempt": 1}
        finally:
            tasks_in.close(linger=0)
            acks_out.close(linger=0)
            trust.release(ctx)
            ctx.term()

    asyncio.run(scenario())


# ---- the journal's disk ------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):  # noqa: ANN001, ANN201
    """A 24 MiB tmpfs (room for the Helper's journals' preallocation), mounted for the test and
    unmounted after it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
                           capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {tried.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_fails_submits_with_journal_error_and_recovers_when_space_returns(
        cluster, small_disk) -> None:  # noqa: ANN001
    data_dir = small_disk / "helper"
    helper_args = ("--data-dir", str(data_dir), "--journal-segment-bytes", str(2**20))
    helper = cluster.start_helper(*helper_args)
    filler = small_disk / "filler"
    pad = "x" * 16_000

    def fill_the_disk() -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # every free byte (space the journal
        try:                                            # preallocated stays the journal's)
            while os.write(fd, bytes(4096)):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)

    async def scenario() -> tuple[list[str], list[str]]:
        async with Client(cluster.intake) as client:
            accepted = [await client.submit("simulate", _job(ms=1, pad=pad)) for _ in range(5)]
            await asyncio.to_thread(fill_the_disk)
            error = None
            for _ in range(2000):  # 32 MB: more than the disk holds
                try:
                    accepted.append(await client.submit("simulate", _job(ms=1, pad=pad)))
                except JournalError as exc:
                    error = exc
                    break
            assert error is not None, "the disk never filled"
            assert error.code == wire.JOURNAL_FAILED
            assert "No space left on device" in str(error) or "ENOSPC" in str(error), error
            with pytest.raises(JournalError):  # still full: still refused, clearly
                await client.submit("simulate", _job(ms=1, pad=pad))
            filler.unlink()  # space returns
            later = [await client.submit("simulate", _job(ms=1, pad=pad)) for _ in range(5)]
            return accepted, later

    accepted, later = asyncio.run(scenario())
    assert _metric(_metrics(helper), "mesh_journal_errors_total") >= 1.0
    # Nothing accepted is lost, even across a crash of the Helper.
    helper.kill()
    restarted = cluster.start_helper(*helper_args)
    assert restarted.ready["recovered"]["queued"] == len(accepted) + len(later)
    cluster.start_ai()

    async def after() -> None:
        async with Client(cluster.intake) as client:
            statuses = await _wait_all(client, accepted + later)
            assert all(s.state == wire.SUCCEEDED for s in statuses)

    asyncio.run(after())
    assert len(cluster.applied_effects()) == len(accepted) + len(later)
