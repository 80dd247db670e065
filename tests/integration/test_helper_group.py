"""Replicated Helper groups (issue 15, decision 009) with real processes, embedded mode.

The leader is whoever holds `<lock dir>/<group>.lock` (its `.leader` file names it). Submits go
to the leader's intake; a refused or unanswered submit is resent with the same task id to
whoever leads next (what a Client following discovery does). Effects are counted through the
sample app's idempotency-key files: every accepted task applied exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import pytest

from mesh import Client, make_task
from mesh.errors import MeshError, NotEnoughReplicas, ShuttingDown
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Group:
    def __init__(self, cluster, size: int, *extra: str) -> None:  # noqa: ANN001
        self.cluster = cluster
        self.size = size
        self.lock_dir = cluster.workdir / "groups"
        self.intakes = {f"h{n}": f"tcp://127.0.0.1:{_free_port()}" for n in range(1, size + 1)}
        self.procs = {}
        self.extra = extra

    def start(self, member: str, *extra: str):  # noqa: ANN201
        c = self.cluster
        proc = c._start(["helper", "--helper-id", member, "--data-dir", str(c.workdir / member),
                         "--discovery", c.discovery, "--metrics-port", "0", "--no-alerts",
                         "--intake", self.intakes[member], "--group", "g",
                         "--group-size", str(self.size), "--group-lock-dir", str(self.lock_dir),
                         *self.extra, *extra], member)
        self.procs[member] = proc
        return proc

    def leader(self) -> tuple[str, int] | None:
        try:
            data = json.loads((self.lock_dir / "g.leader").read_text())
        except (OSError, ValueError):
            return None
        proc = self.procs.get(data["leader_id"])
        if proc is None or not proc.alive():
            return None
        return data["leader_id"], int(data["epoch"])


async def _submit_until_accepted(group: Group, clients: dict, task, deadline_s: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + deadline_s
    while True:
        held = group.leader()
        if held is not None:
            client = clients[held[0]]
            try:
                results = await client.submit_results([task])
                if results and results[0].code == 1:  # OK: durable on leader + min-replicas
                    return
            except (MeshError, TimeoutError, OSError):
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task.task_id} not accepted within {deadline_s}s")
        await asyncio.sleep(0.1)


async def _clients(group: Group) -> dict:
    clients = {}
    for member, endpoint in group.intakes.items():
        client = Client(endpoint, timeout_s=2.0)
        await client.start()
        clients[member] = client
    return clients


async def _wait_done(group: Group, clients: dict, ids: list[str], timeout_s: float) -> None:
    async def done() -> bool:
        held = group.leader()
        if held is None:
            return False
        try:
            statuses = await clients[held[0]].statuses(ids)
        except (MeshError, TimeoutError):
            return False
        late[:] = [(s.task_id, s.state) for s in statuses if s.state != 4]  # not SUCCEEDED
        return not late
    late: list = []
    try:
        await async_wait_until(done, timeout_s, interval_s=0.2, what="every accepted task succeeded")
    except TimeoutError:
        raise TimeoutError(f"not succeeded (id, state): {late[:20]} ({len(late)} in all)") from None


def _kill_leader_under_load(cluster, size: int, *, wipe: bool = False) -> None:  # noqa: ANN001
    group = Group(cluster, size)
    for n in range(1, size + 1):
        group.start(f"h{n}")
    cluster.start_ai()
    first = wait_until(group.leader, 20, what="a leader")

    async def scenario() -> None:
        clients = await _clients(group)
        try:
            ids = []
            for n in range(300):
                task = make_task("echo", f"{n}".encode(), task_id=f"t-{n}",
                                 idempotency_key=f"k-{n}")
                ids.append(task.task_id)
                await _submit_until_accepted(group, clients, task, 30)
                if n == 150:
                    victim, epoch = group.leader()
                    group.procs[victim].kill()  # SIGKILL
                    killed_at = time.monotonic()
                    if wipe:
                        import shutil
                        shutil.rmtree(cluster.workdir / victim, ignore_errors=True)
                    new = wait_until(lambda: (lambda h: h if h and h[0] != victim else None)(
                        group.leader()), 5.0, interval_s=0.05, what="a follower leads within 5 s")
                    assert new[1] > epoch
                    print(f"failover: {new[0]} leads epoch {new[1]} after "
                          f"{time.monotonic() - killed_at:.2f}s")
                    # the killed member comes back as a follower (caught up by a snapshot)
                    group.start(victim)
            await _wait_done(group, clients, ids, 60)
        finally:
            for client in clients.values():
                await client.close()
        effects = cluster.applied_effects()
        assert sorted(effects) == sorted(ids) or set(ids) <= set(effects), "an accepted task was lost"
        twice = {t: n for t, n in effects.items() if n > 1}
        assert not twice, f"effects applied twice: {twice}"

    assert first
    asyncio.run(scenario())


def test_group_of_two_sigkill_leader_loses_no_accepted_task(cluster):  # noqa: ANN001
    _kill_leader_under_load(cluster, 2)


def test_group_of_three_sigkill_leader_loses_no_accepted_task(cluster):  # noqa: ANN001
    _kill_leader_under_load(cluster, 3)


def test_group_of_two_failover_after_the_old_leaders_data_dir_is_deleted(cluster):  # noqa: ANN001
    _kill_leader_under_load(cluster, 2, wipe=True)


def test_group_refuses_submits_when_the_follower_is_killed(cluster):  # noqa: ANN001
    group = Group(cluster, 2)
    group.start("h1")
    wait_until(group.leader, 20, what="h1 leads")
    group.start("h2")
    cluster.start_ai()

    async def scenario() -> None:
        clients = await _clients(group)
        try:
            await _submit_until_accepted(group, clients, make_task("echo", b"a", task_id="a"), 20)
            leader = group.leader()[0]
            follower = "h2" if leader == "h1" else "h1"
            group.procs[follower].kill()

            async def refused() -> bool:
                try:
                    results = await clients[leader].submit_results(
                        [make_task("echo", b"b", task_id=f"b-{time.monotonic_ns()}")])
                except MeshError:
                    return False
                return results[0].code == 20 and "min-replicas" in results[0].message
            await async_wait_until(refused, 15, interval_s=0.2,
                                   what="NOT_ENOUGH_REPLICAS once the follower is gone")
            group.start(follower)
            await _submit_until_accepted(group, clients, make_task("echo", b"c", task_id="c"), 20)
        finally:
            for client in clients.values():
                await client.close()

    asyncio.run(scenario())


def test_group_with_min_replicas_zero_accepts_on_the_leader_alone(cluster):  # noqa: ANN001
    group = Group(cluster, 2, "--min-replicas", "0")
    group.start("h1")
    wait_until(group.leader, 20, what="h1 leads")
    cluster.start_ai()

    async def scenario() -> None:
        clients = await _clients(group)
        try:
            await _submit_until_accepted(group, clients, make_task("echo", b"a", task_id="solo"), 20)
            await _wait_done(group, clients, ["solo"], 30)
        finally:
            for client in clients.values():
                await client.close()

    asyncio.run(scenario())


def _leader_h1_follower_h2_and_a_node(cluster, *extra: str) -> Group:  # noqa: ANN001
    """A group of 2 where h1 leads and h2 is in its stream, and one AI node. `extra`: more
    `mesh helper` arguments for both members."""
    group = Group(cluster, 2, *extra)
    group.start("h1")
    wait_until(group.leader, 20, what="h1 leads")
    group.start("h2")
    wait_until(lambda: "replicates epoch" in (cluster.workdir / "h2.log").read_text(), 20,
               what="h2 in h1's stream")
    cluster.start_ai()
    return group


def test_group_submit_refused_for_want_of_replicas_is_not_logged_as_a_journal_failure(cluster):  # noqa: ANN001
    """A submit admitted while the follower looked alive, whose follower then stops before it
    has the record, is answered NOT_ENOUGH_REPLICAS once the follower timeout (3 s) passes. The
    leader's log says so, and says no journal sync failed (nothing did: the disk is fine)."""
    group = _leader_h1_follower_h2_and_a_node(cluster)

    async def scenario() -> None:
        client = Client(group.intakes["h1"], timeout_s=10.0)
        await client.start()
        try:
            await _submit_until_accepted(group, {"h1": client}, make_task("echo", b"a", task_id="a"), 20)
            group.procs["h2"].signal(signal.SIGSTOP)  # alive to the leader for 3 s more
            try:
                results = await client.submit_results([make_task("echo", b"w", task_id="w")])
            finally:
                group.procs["h2"].signal(signal.SIGCONT)
            assert results[0].code == 20, (results[0].code, results[0].message)
            assert "min-replicas" in results[0].message
        finally:
            await client.close()

    asyncio.run(scenario())
    leader_log = (cluster.workdir / "h1.log").read_text()
    assert "submits not accepted (nothing failed on disk): only 0 follower(s)" in leader_log
    assert "journal sync failed" not in leader_log


def test_group_leader_stopping_answers_waiting_submits_shutting_down_not_journal_failed(cluster):  # noqa: ANN001
    """A submit that waits for its commit when the leader is stopped (SIGTERM) was not accepted:
    it is answered SHUTTING_DOWN, which a client resends to the next leader, not JOURNAL_FAILED
    (no disk failed), and the leader logs no journal failure. The follower is stopped first so
    that the commit cannot come (it stays alive to the leader for 3 s)."""
    group = _leader_h1_follower_h2_and_a_node(cluster)

    async def scenario() -> None:
        client = Client(group.intakes["h1"], timeout_s=10.0)
        await client.start()
        try:
            await _submit_until_accepted(group, {"h1": client}, make_task("echo", b"a", task_id="a"), 20)
            group.procs["h2"].signal(signal.SIGSTOP)
            try:
                waiting = asyncio.ensure_future(client.submit_results(
                    [make_task("echo", b"w", task_id="w")]))

                async def admitted() -> bool:  # in the leader's table, waiting for its commit
                    return (await client.stats())["tasks"] >= 2
                await async_wait_until(admitted, 2, interval_s=0.02, what="the submit admitted")
                group.procs["h1"].signal(signal.SIGTERM)
                results = await waiting
            finally:
                group.procs["h2"].signal(signal.SIGCONT)
            assert results[0].code == 7, (results[0].code, results[0].message)  # SHUTTING_DOWN
            assert "stopped leading" in results[0].message
        finally:
            await client.close()

    asyncio.run(scenario())
    assert group.procs["h1"].proc.wait(timeout=20) == 0
    leader_log = (cluster.workdir / "h1.log").read_text()
    assert "journal sync failed" not in leader_log


def test_group_leader_stopping_answers_a_waiting_cancel_shutting_down_not_journal_failed(cluster):  # noqa: ANN001
    """A cancel waits for its CANCELLED record to commit like a submit does. When the leader
    stops (SIGTERM) before the commit, the cancel was not recorded by the group: it is answered
    SHUTTING_DOWN (cancel again at the next leader), as a waiting submit is, not JOURNAL_FAILED,
    and the leader logs no journal failure. The follower is stopped first so that the commit
    cannot come."""
    group = _leader_h1_follower_h2_and_a_node(cluster)

    async def scenario() -> None:
        client = Client(group.intakes["h1"], timeout_s=10.0)
        await client.start()
        try:
            running = make_task("wait", b"60", task_id="long")
            await _submit_until_accepted(group, {"h1": client}, running, 20)
            group.procs["h2"].signal(signal.SIGSTOP)
            try:
                waiting = asyncio.ensure_future(client.cancel("long"))

                async def cancelled_here() -> bool:  # in the leader's table, waiting for its commit
                    return (await client.status("long")).state.name == "CANCELLED"
                await async_wait_until(cancelled_here, 2, interval_s=0.02,
                                       what="the cancel applied on the leader")
                group.procs["h1"].signal(signal.SIGTERM)
                with pytest.raises(MeshError) as refused:
                    await waiting
            finally:
                group.procs["h2"].signal(signal.SIGCONT)
            assert isinstance(refused.value, ShuttingDown), repr(refused.value)  # SHUTTING_DOWN
            assert "stopped leading its group" in str(refused.value)
        finally:
            await client.close()

    asyncio.run(scenario())
    assert group.procs["h1"].proc.wait(timeout=20) == 0
    leader_log = (cluster.workdir / "h1.log").read_text()
    assert "journal sync failed" not in leader_log
    assert "1 cancels not accepted (nothing failed on disk)" in leader_log


def test_group_cancel_refused_for_want_of_replicas_is_answered_so_not_journal_failed(cluster):  # noqa: ANN001
    """A cancel whose follower stops before it has the CANCELLED record is answered
    NOT_ENOUGH_REPLICAS once the follower timeout (3 s) passes, as a submit is; no journal
    failure is answered or logged."""
    group = _leader_h1_follower_h2_and_a_node(cluster)

    async def scenario() -> None:
        client = Client(group.intakes["h1"], timeout_s=10.0)
        await client.start()
        try:
            await _submit_until_accepted(group, {"h1": client},
                                         make_task("wait", b"60", task_id="long"), 20)
            group.procs["h2"].signal(signal.SIGSTOP)  # alive to the leader for 3 s more
            try:
                with pytest.raises(MeshError) as refused:
                    await client.cancel("long")
            finally:
                group.procs["h2"].signal(signal.SIGCONT)
            assert isinstance(refused.value, NotEnoughReplicas), repr(refused.value)
            assert "min-replicas" in str(refused.value)
        finally:
            await client.close()

    asyncio.run(scenario())
    leader_log = (cluster.workdir / "h1.log").read_text()
    assert "1 cancels not accepted (nothing failed on disk): only 0 follower(s)" in leader_log
    assert "journal sync failed" not in leader_log


@pytest.mark.parametrize("op", ["replay", "purge"])
def test_group_dead_letter_change_is_answered_only_once_the_group_has_it(cluster, op: str):  # noqa: ANN001
    """A dead-letter replay or purge is answered once its records are durable, as a cancel is:
    with the follower stopped before it has them, the operator is told NOT_ENOUGH_REPLICAS
    (after the follower timeout), not "done" at once; with the follower back, the same request
    is answered, and the change holds (a replayed task runs and succeeds; a purged one is
    gone)."""
    group = _leader_h1_follower_h2_and_a_node(cluster)
    cause = cluster.workdir / "cause"  # the task fails while this file exists
    cause.write_text("x")

    async def scenario() -> None:
        client = Client(group.intakes["h1"], timeout_s=10.0)
        await client.start()
        try:
            job = json.dumps({"fail_while_exists": str(cause), "ms": 1}).encode()
            await _submit_until_accepted(group, {"h1": client}, make_task(
                "simulate", job, task_id="poison", max_attempts=1), 20)

            async def dead() -> bool:
                return (await client.dead_letters("list")).affected == 1
            await async_wait_until(dead, 20, interval_s=0.05, what="the task dead-lettered")
            cause.unlink()  # the operator fixed the cause
            group.procs["h2"].signal(signal.SIGSTOP)  # alive to the leader for 3 s more
            try:
                with pytest.raises(MeshError) as refused:
                    await client.dead_letters(op, ["poison"])
            finally:
                group.procs["h2"].signal(signal.SIGCONT)
            assert isinstance(refused.value, NotEnoughReplicas), repr(refused.value)
            assert f"the {op} is not known to be durable in the group" in str(refused.value)

            async def answered() -> bool:  # the follower back in the stream: the same request
                try:
                    return (await client.dead_letters(op, ["poison"])).affected in (0, 1)
                except NotEnoughReplicas:
                    return False
            await async_wait_until(answered, 20, interval_s=0.2, what=f"a {op} answered")
            if op == "replay":
                async def succeeded() -> bool:
                    return (await client.status("poison")).state.name == "SUCCEEDED"
                await async_wait_until(succeeded, 20, interval_s=0.05,
                                       what="the replayed task succeeded")
            assert (await client.dead_letters("list")).affected == 0
        finally:
            await client.close()

    asyncio.run(scenario())
    leader_log = (cluster.workdir / "h1.log").read_text()
    assert f"1 {op}s not accepted (nothing failed on disk)" in leader_log
    assert "journal sync failed" not in leader_log
