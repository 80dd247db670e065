"""The mesh on Consul: real Helper and AI node processes against the in-process fake agent.

The nodes talk to the agent through py-consul over real HTTP (consul://127.0.0.1:<port>);
the tests read it back the same way. TTLs are short (--discovery-ttl 1) and the Helpers'
own missed-heartbeat detection is pushed out (--node-dead-after 60) where a test must show
that discovery, not the heartbeat path, declared a node dead.
"""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request

import consul
import pytest

from mesh import Client, make_task, wire
from nodes.launch import NodeProcess
from nodes.registration import GoneNodes
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(120)

TTL = ("--discovery-ttl", "1")


def _use(cluster, agent) -> consul.Consul:  # noqa: ANN001
    cluster.discovery = f"consul://{agent.addr}"
    return consul.Consul(host=agent.host, port=agent.port)


def _counter(node: NodeProcess, name: str, labels: str) -> float:
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{node.ready['metrics_port']}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _health(c: consul.Consul, service: str) -> dict[str, str]:
    """instance id -> aggregated status, read through py-consul over HTTP."""
    _, entries = c.health.service(service)
    out = {}
    for e in entries:
        statuses = [chk["Status"] for chk in e["Checks"]]
        out[e["Service"]["ID"]] = ("critical" if "critical" in statuses else
                                   "warning" if "warning" in statuses else "passing")
    return out


async def _nodes_seen(client: Client, count: int) -> None:
    async def enough() -> bool:
        return (await client.stats())["nodes"] >= count
    await async_wait_until(enough, 20, what=f"{count} AI nodes seen by the Helper")


async def _submit(client: Client, count: int, ms: int) -> list[str]:
    ids: list[str] = []
    payload = b'{"ms": %d}' % ms
    for start in range(0, count, 200):
        ids += await client.submit_many([make_task("simulate", payload)
                                         for _ in range(min(200, count - start))])
    return ids


async def _wait_all(client: Client, ids: list[str], timeout_s: float = 40.0) -> list:
    statuses = await asyncio.gather(*(client.wait(t, timeout=timeout_s) for t in ids))
    bad = [wire.state_name(s.state) for s in statuses if s.state != wire.SUCCEEDED]
    assert not bad, f"{len(bad)} tasks did not succeed: {bad[:5]}"
    return statuses


# ---- registration --------------------------------------------------------------------------


def test_nodes_register_name_id_address_tags_meta_and_ttl_check(cluster, agent) -> None:  # noqa: ANN001
    c = _use(cluster, agent)
    helper = cluster.start_helper(*TTL, "--deregister-after", "90")
    ai = cluster.start_ai(*TTL, "--concurrency", "4", "--deregister-after", "90")
    ai_id = f"{ai.ready['node_id']}-{ai.ready['incarnation']}"
    wait_until(lambda: _health(c, "mesh-ai") == {ai_id: "passing"}, 10, what="AI passing")
    assert _health(c, "mesh-helper") == {"helper-1": "passing"}

    services = c.agent.services()
    h = services["helper-1"]
    assert (h["Service"], h["Address"]) == ("mesh-helper", "127.0.0.1")
    assert h["Port"] == int(helper.ready["intake"].rsplit(":", 1)[1])
    assert h["Tags"] == ["helper"]
    assert h["Meta"]["ep_intake"] == helper.ready["intake"]
    assert h["Meta"]["ep_ack"] == helper.ready["acks"]
    assert h["Meta"]["ep_metrics"] == f"http://127.0.0.1:{helper.ready['metrics_port']}/metrics"
    assert h["Meta"]["protocol"] == str(wire.PROTOCOL_VERSION) and h["Meta"]["version"]

    a = services[ai_id]
    assert (a["Service"], a["Address"]) == ("mesh-ai", "127.0.0.1")
    assert a["Port"] == int(ai.ready["tasks"].rsplit(":", 1)[1])
    assert {"kind=simulate", "kind=echo", "kind=noop"} <= set(a["Tags"])
    meta = a["Meta"]
    assert meta["ep_task"] == ai.ready["tasks"]
    assert meta["ep_metrics"] == f"http://127.0.0.1:{ai.ready['metrics_port']}/metrics"
    assert (meta["node_id"], meta["incarnation"]) == (ai.ready["node_id"], ai.ready["incarnation"])
    assert meta["concurrency"] == "4" and meta["protocol"] == str(wire.PROTOCOL_VERSION)
    assert meta["version"] == h["Meta"]["version"] != "unknown"

    checks = c.agent.checks()
    chk = checks[f"service:{ai_id}:ttl"]
    assert chk["ServiceID"] == ai_id and chk["Type"] == "ttl"
    assert chk["Definition"]["TTL"] == "1s"
    assert chk["Definition"]["DeregisterCriticalServiceAfter"] == "90s"
    # the first heartbeat (ttl/3 after registering) writes the load into the check's output
    wait_until(lambda: re.fullmatch(r"running \d+/4", c.agent.checks()[chk["CheckID"]]["Output"]),
               5, what="load in the check output")
    assert checks["service:helper-1:ttl"]["Definition"]["TTL"] == "1s"


def test_custom_service_names_and_pool_pair_nodes_that_run_tasks(cluster, agent) -> None:  # noqa: ANN001
    c = _use(cluster, agent)
    names = ("--service-name", "vision-helper", "--ai-service", "vision-ai")
    cluster.start_helper(*TTL, *names, "--pool", "gpu")
    ai = cluster.start_ai(*TTL, "--service-name", "vision-ai", "--helper-service",
                          "vision-helper", "--pool", "gpu")
    wait_until(lambda: len(_health(c, "vision-ai")) == 1, 10, what="vision-ai registered")
    assert _health(c, "mesh-ai") == {} and _health(c, "mesh-helper") == {}
    _, [entry] = c.health.service("vision-ai")
    assert "pool=gpu" in entry["Service"]["Tags"] and entry["Service"]["Meta"]["pool"] == "gpu"
    _, [entry] = c.health.service("vision-helper")
    assert entry["Service"]["Tags"] == ["helper", "pool=gpu"]

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            # the AI node knows the Helper only through discovery (no --helper flag)
            statuses = await _wait_all(client, await _submit(client, 20, 1))
            assert {s.node_id for s in statuses} == {ai.ready["node_id"]}

    asyncio.run(scenario())


def test_saturated_ai_node_reports_warning_with_its_load(cluster, agent) -> None:  # noqa: ANN001
    c = _use(cluster, agent)
    cluster.start_helper(*TTL)
    ai = cluster.start_ai(*TTL, "--concurrency", "2")
    ai_id = f"{ai.ready['node_id']}-{ai.ready['incarnation']}"

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            ids = await _submit(client, 40, 200)  # 2 slots, 8 s of work
            wait_until(lambda: _health(c, "mesh-ai").get(ai_id) == "warning", 10,
                       what="saturated node in WARNING")
            out = c.agent.checks()[f"service:{ai_id}:ttl"]["Output"]
            assert out == "saturated 2/2", out
            # WARNING is not critical: the Helper keeps the node and its work
            await _wait_all(client, ids)
            assert _counter(cluster.helper, "mesh_node_deaths_total", 'cause="discovery"') == 0

    asyncio.run(scenario())


def test_ai_node_drops_a_helper_that_left_and_follows_the_next_one(cluster, agent) -> None:  # noqa: ANN001
    c = _use(cluster, agent)
    first = cluster.start_helper(*TTL, helper_id="helper-1")
    ai = cluster.start_ai(*TTL)
    wait_until(lambda: len(_health(c, "mesh-ai")) == 1, 10, what="AI registered")
    first.stop()  # SIGTERM: deregisters
    ai_log = cluster.workdir / f"{ai.name}.log"
    wait_until(lambda: "left discovery" in ai_log.read_text(), 10, what="the AI dropping helper-1")
    cluster.start_helper(*TTL, helper_id="helper-2")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _wait_all(client, await _submit(client, 20, 1))

    asyncio.run(scenario())


# ---- failures -------------------------------------------------------------------------------


def test_sigkilled_ai_node_goes_critical_and_discovery_redispatches_its_tasks(cluster, agent) -> None:  # noqa: ANN001
    c = _use(cluster, agent)
    # missed heartbeats would take 60 s: only the TTL check can find the dead node in time
    cluster.start_helper(*TTL, "--node-dead-after", "60")
    victim, survivor = (cluster.start_ai(*TTL, "--deregister-after", "2") for _ in range(2))
    victim_id = f"{victim.ready['node_id']}-{victim.ready['incarnation']}"

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 2)
            ids = await _submit(client, 600, 50)

            async def victim_busy() -> bool:
                statuses = await client.statuses(ids[:200])
                return any(s.node_id == victim.ready["node_id"] and s.state == wire.RUNNING
                           for s in statuses)
            await async_wait_until(victim_busy, 10, what="the victim running tasks")
            victim.kill()
            await async_wait_until(
                lambda: asyncio.to_thread(lambda: _health(c, "mesh-ai").get(victim_id) == "critical"),
                10, what="the victim's TTL check critical")
            statuses = await _wait_all(client, ids)
            assert survivor.ready["node_id"] in {s.node_id for s in statuses}
            assert _counter(cluster.helper, "mesh_node_deaths_total", 'cause="discovery"') == 1
            assert _counter(cluster.helper, "mesh_node_deaths_total", 'cause="missed_heartbeats"') == 0
            assert _counter(cluster.helper, "mesh_redeliveries_total", 'cause="node_discovery"') >= 1

    asyncio.run(scenario())
    effects = cluster.applied_effects()
    assert len(effects) == 600 and max(effects.values()) == 1
    # DeregisterCriticalServiceAfter: the dead run disappears from Consul
    wait_until(lambda: victim_id not in c.agent.services(), 10, what="the dead run deregistered")


def test_new_ai_node_joining_under_load_receives_work(cluster, agent) -> None:  # noqa: ANN001
    _use(cluster, agent)
    cluster.start_helper(*TTL)
    cluster.start_ai(*TTL, "--concurrency", "4")

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 1)
            ids = await _submit(client, 800, 20)  # about 4 s for one node of 4 slots
            newcomer = await asyncio.to_thread(cluster.start_ai, *TTL, "--concurrency", "16")
            statuses = await _wait_all(client, ids)
            per_node = {}
            for s in statuses:
                per_node[s.node_id] = per_node.get(s.node_id, 0) + 1
            assert per_node.get(newcomer.ready["node_id"], 0) >= 50, per_node

    asyncio.run(scenario())
    effects = cluster.applied_effects()
    assert len(effects) == 800 and max(effects.values()) == 1


def test_consul_restart_mid_run_nodes_reregister_and_no_task_is_lost(cluster, agent) -> None:  # noqa: ANN001
    c = _use(cluster, agent)
    helper = cluster.start_helper(*TTL, "--node-dead-after", "60")
    nodes = [cluster.start_ai(*TTL) for _ in range(2)]
    expected = {"helper-1", "helper-1-alerts",  # the Helper's own alert publisher
                *(f"{n.ready['node_id']}-{n.ready['incarnation']}" for n in nodes)}
    wait_until(lambda: set(c.agent.services()) == expected, 10, what="all registered")
    helper_log = cluster.workdir / "helper-1.log"

    def registered() -> set[str]:
        return (set(_health(c, "mesh-ai")) | set(_health(c, "mesh-helper"))
                | set(_health(c, "mesh-alerts")))

    async def scenario() -> None:
        async with Client(cluster.intake) as client:
            await _nodes_seen(client, 2)
            before = await _submit(client, 300, 20)
            old_index = agent.index
            agent.stop()  # the agent is gone: the mesh runs on what it knows
            during = await _submit(client, 300, 5)
            await _wait_all(client, during)

            # The dangerous moment: the agent is back, empty, and the Helper's watch reads it
            # before the AI nodes re-register (held here by SIGSTOP). "Not re-registered yet"
            # must not count as gone.
            for n in nodes:
                n.signal(signal.SIGSTOP)
            agent.start()  # same port, empty state, index back to 1 (a dev agent)
            n = 0
            while agent.index <= old_index:  # so the watch's blocking query returns at once
                c.agent.service.register("churn", service_id=f"churn-{n}")
                c.agent.service.deregister(f"churn-{n}")
                n += 1
            await async_wait_until(
                lambda: asyncio.to_thread(lambda: "to re-register before they count as gone"
                                          in helper_log.read_text()),
                10, what="the Helper's watch reading the empty registry")
            for n in nodes:
                n.signal(signal.SIGCONT)
            await async_wait_until(lambda: asyncio.to_thread(lambda: registered() == expected),
                                   20, what="every node re-registered")
            await async_wait_until(
                lambda: asyncio.to_thread(
                    lambda: set(_health(c, "mesh-ai").values()) == {"passing"}),
                10, what="re-registered nodes passing")
            after = await _submit(client, 300, 5)
            await _wait_all(client, before + after)
            # nobody was declared dead: not during the outage, not after the empty restart
            assert _counter(helper, "mesh_node_deaths_total", 'cause="discovery"') == 0
            assert (await client.stats())["nodes"] == 2

    asyncio.run(scenario())
    effects = cluster.applied_effects()
    assert len(effects) == 900 and max(effects.values()) == 1
    # the outage was noticed and its end logged: by a registration's heartbeat ("discovery is
    # back after ...") or by a watch ("discovery of 'mesh-helper' is back after ..."), as the
    # outage fell between their turns
    assert re.search(r"discovery (of '[^']+' )?is back after", cluster.logs())


def test_wrong_acl_token_stops_the_node_at_startup_with_a_clear_error(tmp_path, acl_agent) -> None:  # noqa: ANN001
    env = {"CONSUL_HTTP_ADDR": acl_agent.addr, "MESH_DISCOVERY": "", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "ai.log"
    node = NodeProcess(["ai", "--node-id", "ai-acl", *TTL],
                       env={**env, "CONSUL_HTTP_TOKEN": "not-the-token"}, log_path=log)
    try:
        with pytest.raises(RuntimeError, match="exited with 3 before READY"):
            node.start()
    finally:
        node.stop()
    text = log.read_text()
    assert "mesh ai: Consul refused the ACL token given" in text, text
    assert "ACL not found" in text and "CONSUL_HTTP_TOKEN" in text
    assert "not-the-token" not in text
    assert acl_agent.services() == {}

    # the right token from CONSUL_HTTP_TOKEN registers
    with NodeProcess(["ai", "--node-id", "ai-acl", *TTL],
                     env={**env, "CONSUL_HTTP_TOKEN": "s3cret-token"},
                     log_path=tmp_path / "ok.log") as ok:
        # the first heartbeat writes the check's output; by then the SIGTERM handler is in place
        # (nodes/runtime.py prints READY just before installing it)
        wait_until(lambda: [c["Output"] for c in acl_agent.checks().values()] == ["running 0/16"],
                   10, what="registered with the token and heart-beating")
        ok.signal(signal.SIGTERM)
        assert ok.proc.wait(10) == 0
    assert acl_agent.services() == {}


# ---- the Helper's rule for "gone" (pure) --------------------------------------------------


def test_gone_nodes_critical_at_once_absent_after_restart_only_after_grace() -> None:
    g = GoneNodes(grace_s=5.0)
    a, b = ("ai-1", 1), ("ai-2", 2)
    assert g.update([a, b], [], registry_restarted=False, now=0.0) == []
    assert g.update([a], [b], registry_restarted=False, now=1.0) == [b]  # critical: gone
    assert g.update([a], [b], registry_restarted=False, now=1.5) == []  # only once
    assert g.update([], [], registry_restarted=False, now=2.0) == [a]  # absent: gone

    g = GoneNodes(grace_s=5.0)
    g.update([a, b], [], registry_restarted=False, now=0.0)
    # the registry restarted empty: nobody is gone yet
    assert g.update([], [], registry_restarted=True, now=10.0) == []
    assert g.update([a], [], registry_restarted=False, now=11.0) == []  # a re-registered
    assert g.expire(now=12.0) == []
    assert g.expire(now=15.5) == [b]  # b never came back
    assert g.expire(now=16.0) == []


def test_gone_nodes_absent_during_grace_then_seen_again_is_not_gone() -> None:
    g = GoneNodes(grace_s=5.0)
    a = ("ai-1", 1)
    g.update([a], [], registry_restarted=False, now=0.0)
    assert g.update([], [], registry_restarted=True, now=1.0) == []
    assert g.update([a], [], registry_restarted=False, now=2.0) == []
    assert g.expire(now=7.0) == []
    assert g.update([], [], registry_restarted=False, now=8.0) == [a]  # now a real absence
