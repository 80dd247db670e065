"""A rolling restart of a whole Helper group under load (issue 15, decision 009); embedded mode
here, Consul mode in tests/consul/test_helper_group_consul.py (same scenario).

A group of 3 (min-replicas 1), two AI nodes, and a client that follows discovery (`Client` with
the registry as its endpoint source: only the leader is registered) submitting without pause,
each task with its own idempotency key. Every member in turn is stopped with SIGTERM (a clean
stop: it must exit 0, and a leader must hand over) and started again on the same data dir; the
next one goes only once the restarted member is back in the group (in the leader's record
stream, or leading: a stopped leader's log can be the longest). The leader goes second, so the
group is restarted around it on both sides.

The client resends every task it was not told "accepted" with the same id, and the only answers
it may get besides "accepted" are the ones that mean "not stored, send again": no answer in
time (the leader it knew is gone), SHUTTING_DOWN (a member that is stopping, or stopped
leading) and NOT_ENOUGH_REPLICAS (a new leader before its followers are back in its stream).
Anything else (a journal failure, above all) is an error the restart caused; and since a new
leader starts its term with the follower it heard while planning, NOT_ENOUGH_REPLICAS should
not come either. At the end every accepted task succeeded and its effect was applied exactly
once.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time

import pytest

from mesh import Client, make_task, wire
from mesh.errors import MeshError, NotEnoughReplicas, RequestTimeout, ShuttingDown
from nodes.client_factory import DiscoverySource
from tests.integration.test_helper_group import Group, _clients, _wait_done
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

#: answers that mean "nothing was stored: send the same task again"
RETRIED_CODES = {ShuttingDown.code: "SHUTTING_DOWN", NotEnoughReplicas.code: "NOT_ENOUGH_REPLICAS"}


class Producer:
    """Submits batches of fresh tasks without pause; a task is resent (same id, same key) until
    it is accepted. Counts the retried answers and keeps every other one as an error."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.accepted: list[str] = []
        self.retried: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.stop = asyncio.Event()
        self._n = 0

    def _batch(self, size: int) -> list:
        tasks = []
        for _ in range(size):
            n = self._n
            self._n += 1
            tasks.append(make_task("echo", str(n).encode(), task_id=f"r-{n}",
                                   idempotency_key=f"k-{n}"))
        return tasks

    async def run(self) -> None:
        todo: list = []
        while not self.stop.is_set() or todo:
            if not todo:
                todo = self._batch(10)
            try:
                results = await self.client.submit_results(todo)
            except RequestTimeout as exc:  # Unavailable too: outcome unknown, same ids again
                self.retried[type(exc).__name__] += 1
                await asyncio.sleep(0.1)
                continue
            except MeshError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)
                continue
            again = []
            for task, result in zip(todo, results, strict=True):
                if result.code == wire.OK:
                    self.accepted.append(task.task_id)
                elif result.code in RETRIED_CODES:
                    self.retried[RETRIED_CODES[result.code]] += 1
                    again.append(task)
                else:
                    self.errors.append(f"{task.task_id}: code {result.code}: {result.message}")
                    again.append(task)
            todo = again
            await asyncio.sleep(0.1 if todo else 0.02)


def _log_size(cluster, member: str) -> int:  # noqa: ANN001
    path = cluster.workdir / f"{member}.log"
    return path.stat().st_size if path.exists() else 0


def _log_since(cluster, member: str, offset: int) -> str:  # noqa: ANN001
    with open(cluster.workdir / f"{member}.log", "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _restart(cluster, group: Group, member: str) -> dict:  # noqa: ANN001
    """SIGTERM `member`, check it exits cleanly (and hands over if it led), start it again on
    its data dir and wait until it is back in the leader's stream."""
    led = group.leader()
    was_leader = led is not None and led[0] == member
    offset = _log_size(cluster, member)
    proc = group.procs[member]
    stopped_at = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = proc.proc.wait(timeout=20)
    assert code == 0, f"{member} exited {code} after SIGTERM"
    took = {"member": member, "was_leader": was_leader, "exit_s": time.monotonic() - stopped_at}
    if was_leader:
        new = wait_until(lambda: (lambda h: h if h and h[0] != member else None)(group.leader()),
                         10, interval_s=0.05, what=f"a member leads after {member} stopped")
        assert new[1] > led[1], f"the new term {new} has no higher epoch than {led}"
        took["handover_s"] = time.monotonic() - stopped_at
        took["new_leader"] = new[0]
    group.start(member)

    def back() -> bool:  # a follower in the leader's stream, or the leader (its log was longest)
        text = _log_since(cluster, member, offset)
        return "replicates epoch" in text or "serves epoch" in text
    wait_until(back, 30, interval_s=0.1, what=f"{member} back in the group")
    took["back_s"] = time.monotonic() - stopped_at
    return took


def rolling_restart_under_load(cluster, group: Group, *ai_args: str) -> None:  # noqa: ANN001
    """The scenario of the module docstring on a group of 3 not started yet (embedded or
    Consul mode: `group.leader()` reads the lock)."""
    group.start("h1")
    wait_until(group.leader, 20, what="h1 leads")
    offsets = {m: _log_size(cluster, m) for m in ("h2", "h3")}
    group.start("h2")
    group.start("h3")
    for member, offset in offsets.items():
        wait_until(lambda m=member, o=offset: "replicates epoch" in _log_since(cluster, m, o), 30,
                   interval_s=0.1, what=f"{member} in the leader's stream")
    cluster.start_ai(*ai_args)
    cluster.start_ai(*ai_args)

    async def scenario() -> None:
        client = Client(endpoints=DiscoverySource(cluster.discovery), timeout_s=2.0)
        await client.start()
        producer = Producer(client)
        produce = asyncio.create_task(producer.run())
        restarts = []
        try:
            async def accepted_at_least(n: int, what: str) -> None:
                deadline = time.monotonic() + 30
                while len(producer.accepted) < n:
                    assert not produce.done(), produce
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{what}: {len(producer.accepted)} of {n} accepted; "
                                           f"retried {dict(producer.retried)}, errors "
                                           f"{producer.errors[:5]}")
                    await asyncio.sleep(0.05)

            await accepted_at_least(100, "load before the restarts")
            leader = group.leader()[0]
            followers = sorted(m for m in group.procs if m != leader)
            order = [followers[0], leader, followers[1]]  # the leader in the middle
            for member in order:
                restarts.append(await asyncio.to_thread(_restart, cluster, group, member))
                # the load goes on with the restarted member back before the next one stops
                await accepted_at_least(len(producer.accepted) + 50, f"load after {member}")
        finally:
            producer.stop.set()
            try:
                await asyncio.wait_for(produce, 60)
            finally:
                await client.close()
        print(f"rolling restart: {restarts}")
        print(f"accepted {len(producer.accepted)}, retried {dict(producer.retried)}, "
              f"errors {len(producer.errors)}")
        assert any(r["was_leader"] for r in restarts), restarts
        assert not producer.errors, f"the client saw errors beyond retries: {producer.errors[:10]}"
        # A new leader answers the Hellos it heard while planning as its term begins: a
        # follower is in its stream before its intake is advertised, nothing is refused for
        # want of a Hello.
        assert not producer.retried["NOT_ENOUGH_REPLICAS"], dict(producer.retried)
        ids = producer.accepted
        assert len(ids) == len(set(ids))
        clients = await _clients(group)
        try:
            await _wait_done(group, clients, ids, 60)
        finally:
            for c in clients.values():
                await c.close()
        effects = cluster.applied_effects()
        lost = sorted(set(ids) - set(effects))
        assert not lost, f"accepted tasks whose effect is missing: {lost[:10]} ({len(lost)})"
        twice = {t: n for t, n in effects.items() if n > 1}
        assert not twice, f"effects applied twice: {twice}"

    asyncio.run(scenario())


def test_group_of_three_rolling_restart_under_load_gives_no_client_error_beyond_retries(cluster):  # noqa: ANN001
    rolling_restart_under_load(cluster, Group(cluster, 3))
