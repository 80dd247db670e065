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
from tests.integration.test_helper_group_rolling import rolling_restart_under_load
from tests.support.waiting import async_wait_until, wait_until

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


def test_consul_group_deposed_leaders_late_deliveries_reach_the_node_and_are_refused(cluster, lock_agent):  # noqa: ANN001
    """The fence at the AI node, end to end: a leader stopped past its TTL still holds work it
    will send the moment it wakes (tasks waiting out a retry delay, due while it is stopped).
    Meanwhile the follower leads a higher epoch and sends the same retries to the node, which
    runs them and so has seen the new epoch. On SIGCONT the old leader's loop sends its due
    retries before it notices it lost the term: the node must refuse them (STALE_EPOCH), run
    nothing of them, and every task's effect is applied once.

    Timing: the old leader is woken within about 3 s of its stop (lock-delay 0.2 s here), before
    the node's ZMTP heartbeat (3 s timeout) drops its connection, so its late frame does arrive.
    It keeps the node alive in its table (--node-dead-after 30), as a leader that was merely
    slow would."""
    group = ConsulGroup(cluster, lock_agent, 2, "--group-lock-delay", "0.2",
                        "--node-dead-after", "30")
    group.start("h1")
    wait_until(group.leader, 20, what="h1 leads")
    offset = (cluster.workdir / "h2.log").stat().st_size if (cluster.workdir / "h2.log").exists() else 0
    group.start("h2")
    wait_until(lambda: "replicates epoch" in (cluster.workdir / "h2.log").read_text()[offset:], 20,
               what="h2 in h1's stream")
    ai = cluster.start_ai("--discovery-ttl", "1", "--concurrency", "8")
    retry_s = 2.5

    async def scenario() -> None:
        clients = await _clients(group)
        old = clients["h1"]
        try:
            async def node_seen() -> bool:
                return (await old.stats())["nodes"] == 1
            await async_wait_until(node_seen, 20, what="h1 sees the AI node")
            ids = [f"late-{n}" for n in range(20)]
            job = json.dumps({"ms": 5, "fail_times": 1, "retry_later_s": retry_s}).encode()
            results = await old.submit_results([make_task("simulate", job, task_id=t,
                                                          idempotency_key=f"k-{t}") for t in ids])
            assert all(r.code == 1 for r in results), [(r.code, r.message) for r in results]

            async def all_waiting() -> bool:  # every first attempt failed: retries due later
                return (await old.stats())["retry_waiting"] == len(ids)
            await async_wait_until(all_waiting, 10, what="every task waiting for its retry")
            old_epoch = group.leader()[1]
            group.procs["h1"].signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                new = wait_until(lambda: (lambda h: h if h and h[0] == "h2" else None)(
                    group.holder()), 10, interval_s=0.02, what="h2 leads while h1 is stopped")
                assert new[1] > old_epoch
                # h2 sends the retries when due: the node runs them under the new epoch
                wait_until(lambda: cluster.applied_effects(), 10, interval_s=0.02,
                           what="the node ran a retry sent by the new leader")
            finally:
                group.procs["h1"].signal(signal.SIGCONT)
            print(f"h1 stopped {time.monotonic() - stopped_at:.2f}s; h2 leads epoch {new[1]} "
                  f"(was {old_epoch})")
            wait_until(lambda: _stale_refused(ai) >= 1, 10, interval_s=0.05,
                       what="the node refused the deposed leader's deliveries")
            log_path = cluster.workdir / "h1.log"
            wait_until(lambda: f"stops leading epoch {old_epoch}" in log_path.read_text(), 10,
                       what="the woken leader steps down")
            await _wait_done(group, clients, ids, 30)
        finally:
            for client in clients.values():
                await client.close()
        refused = _stale_refused(ai)
        node_log = (cluster.workdir / "ai-1.log").read_text()
        late = [int(n) for n in re.findall(
            rf"refused a frame of (\d+) deliveries from \S+: epoch {old_epoch} of group g, but "
            rf"epoch {new[1]} has been seen", node_log)]
        assert sum(late) >= 1, f"no delivery of epoch {old_epoch} refused: {late}"
        _effects_once(cluster, ids)
        absorbed = [p.read_text().split() for p in cluster.effects.glob("*.absorbed")]
        assert not any(absorbed), f"tasks ran to completion twice: {absorbed}"
        print(f"frames of the deposed epoch refused by the node: {refused:.0f}, "
              f"deliveries in them: {sum(late)}")

    asyncio.run(scenario())


def test_consul_group_of_three_rolling_restart_under_load_gives_no_client_error_beyond_retries(cluster, lock_agent):  # noqa: ANN001
    """tests/integration/test_helper_group_rolling.py in Consul mode: a clean stop releases the
    key (no lock-delay after an explicit release), the client follows the leader in Consul."""
    rolling_restart_under_load(cluster, ConsulGroup(cluster, lock_agent, 3), "--discovery-ttl", "1")
