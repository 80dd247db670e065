"""Helper groups in Consul mode (decision 009): the lock is a Consul session + KV lock on the
fake agent (tests/consul/fake_agent.py), real Helper and AI node processes.

The agent allows a 1 s session TTL here and invalidates a session exactly TTL after its last
renewal (multiplier 1; Consul itself may wait up to 2 x TTL); the members run with
--group-ttl 1 --group-lock-delay 1. The leader is whoever's session holds
mesh/groups/g/leader; its value names the member and the epoch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import time
import urllib.request

import pytest
from fake_agent import FakeConsulAgent

from mesh import make_task
from tests.integration.test_helper_group import Group, _clients, _submit_until_accepted, _wait_done
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

KEY = "mesh/groups/g/leader"
FAST = ("--group-ttl", "1", "--group-lock-delay", "1", "--discovery-ttl", "1")


@pytest.fixture
def lock_agent():
    fake = FakeConsulAgent(min_deregister_critical_s=0.0, min_session_ttl_s=1.0,
                           session_ttl_multiplier=1.0).start()
    try:
        yield fake
    finally:
        fake.stop()


class ConsulGroup(Group):
    def __init__(self, cluster, agent, size: int, *extra: str) -> None:  # noqa: ANN001
        cluster.discovery = f"consul://{agent.addr}"
        super().__init__(cluster, size, *FAST, *extra)
        self.agent = agent

    def holder(self) -> tuple[str, int] | None:
        """(member, epoch) of the session holding the lock now, alive or stopped."""
        entry = self.agent.kv().get(KEY)
        if not entry or not entry.get("Session") or not entry.get("Value"):
            return None
        data = json.loads(base64.b64decode(entry["Value"]))
        if "epoch" not in data:  # acquired, its epoch not yet written (decision 009)
            return None
        return data["leader_id"], int(data["epoch"])

    def leader(self) -> tuple[str, int] | None:
        held = self.holder()
        if held is None:
            return None
        proc = self.procs.get(held[0])
        return held if proc is not None and proc.alive() else None


def _stale_refused(node) -> float:  # noqa: ANN001 - a NodeProcess
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{node.ready['metrics_port']}/metrics", timeout=5).read().decode()
    m = re.search(r'^mesh_ai_rejected_total\{reason="stale_epoch"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _effects_once(cluster, ids: list[str]) -> None:  # noqa: ANN001
    effects = cluster.applied_effects()
    assert set(ids) <= set(effects), f"accepted tasks lost: {sorted(set(ids) - set(effects))[:10]}"
    twice = {t: n for t, n in effects.items() if n > 1}
    assert not twice, f"effects applied twice: {twice}"


def test_consul_group_of_two_sigkill_leader_follower_leads_with_a_higher_epoch(cluster, lock_agent):  # noqa: ANN001
    group = ConsulGroup(cluster, lock_agent, 2)
    group.start("h1")
    wait_until(group.leader, 20, what="h1 leads")
    group.start("h2")
    ai = cluster.start_ai("--discovery-ttl", "1")

    async def scenario() -> None:
        clients = await _clients(group)
        try:
            ids = []
            for n in range(120):
                task = make_task("echo", f"{n}".encode(), task_id=f"t-{n}", idempotency_key=f"k-{n}")
                ids.append(task.task_id)
                await _submit_until_accepted(group, clients, task, 40)
                if n == 60:
                    victim, epoch = group.leader()
                    group.procs[victim].kill()  # SIGKILL: the session lapses after its TTL
                    killed_at = time.monotonic()
                    new = wait_until(lambda: (lambda h: h if h and h[0] != victim else None)(
                        group.leader()), 20, interval_s=0.05,
                        what="the follower leads after the TTL and lock-delay")
                    assert new[1] > epoch
                    print(f"consul failover: {new[0]} leads epoch {new[1]} (was {epoch}) after "
                          f"{time.monotonic() - killed_at:.2f}s")
                    group.start(victim)  # back as a follower
            await _wait_done(group, clients, ids, 60)
        finally:
            for client in clients.values():
                await client.close()
        _effects_once(cluster, ids)
        assert _stale_refused(ai) >= 0

    asyncio.run(scenario())


def test_consul_group_leader_stopped_past_its_ttl_wakes_fenced_and_steps_down(cluster, lock_agent):  # noqa: ANN001
    group = ConsulGroup(cluster, lock_agent, 2)
    group.start("h1")
    wait_until(group.leader, 20, what="h1 leads")
    group.start("h2")
    # one slot and slow tasks: the old leader holds a backlog when it is stopped
    ai = cluster.start_ai("--discovery-ttl", "1", "--concurrency", "2")

    async def scenario() -> None:
        clients = await _clients(group)
        try:
            ids = []
            for n in range(40):
                task = make_task("simulate", b'{"ms": 100}', task_id=f"s-{n}",
                                 idempotency_key=f"k-{n}")
                ids.append(task.task_id)
                await _submit_until_accepted(group, clients, task, 30)
            old, old_epoch = group.leader()
            group.procs[old].signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                new = wait_until(lambda: (lambda h: h if h and h[0] != old else None)(
                    group.holder()), 20, interval_s=0.05, what="a new leader while the old is stopped")
                assert new[1] > old_epoch
                print(f"stopped leader {old} (epoch {old_epoch}) replaced by {new[0]} "
                      f"(epoch {new[1]}) after {time.monotonic() - stopped_at:.2f}s")
            finally:
                group.procs[old].signal(signal.SIGCONT)
            log_path = cluster.workdir / f"{old}.log"
            wait_until(lambda: f"stops leading epoch {old_epoch}" in log_path.read_text(), 20,
                       what="the woken leader steps down")
            assert group.holder()[0] == new[0]
            # the woken member follows: the new leader accepts again (min-replicas 1)
            for n in range(40, 60):
                task = make_task("simulate", b'{"ms": 5}', task_id=f"s-{n}", idempotency_key=f"k-{n}")
                ids.append(task.task_id)
                await _submit_until_accepted(group, clients, task, 40)
            await _wait_done(group, clients, ids, 90)
        finally:
            for client in clients.values():
                await client.close()
        _effects_once(cluster, ids)
        print(f"deliveries refused as a deposed epoch's: {_stale_refused(ai):.0f}")

    asyncio.run(scenario())
