"""The Consul backend against a real agent at CONSUL_HTTP_ADDR (and CONSUL_HTTP_TOKEN if set).

Skipped unless CONSUL_HTTP_ADDR is set, e.g.:
    consul agent -dev &  CONSUL_HTTP_ADDR=127.0.0.1:8500 python -m pytest tests/consul/test_real_agent.py
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from discovery import Health, Instance, consul_settings_from_env, consul_url_from_env, open_discovery
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.consul_real, pytest.mark.timeout(120)]

URL = consul_url_from_env(os.environ)
if URL is None:
    pytest.skip("CONSUL_HTTP_ADDR is not set: no real Consul agent to test against", allow_module_level=True)


@pytest.fixture
def disco():
    d = open_discovery(URL, consul=consul_settings_from_env(os.environ))
    yield d
    d.close()


def test_register_passing_ttl_expiry_and_deregister(disco):
    service = f"mesh-test-{uuid.uuid4().hex[:8]}"
    inst = Instance(service, f"{service}-1", "127.0.0.1", 5999, ("test",), {"ep_task": "tcp://127.0.0.1:5999"})
    reg = disco.register(inst, ttl_s=2, deregister_after_s=60)
    try:
        index, found = disco.instances(service)
        assert [i.instance_id for i in found] == [inst.instance_id]
        assert found[0].meta["ep_task"] == "tcp://127.0.0.1:5999" and found[0].health == Health.PASSING

        reg.heartbeat(Health.WARNING, "saturated 16/16")
        wait_until(lambda: disco.instances(service)[1] == [], 10, what="warning leaves the passing set")
        reg.heartbeat()
        wait_until(lambda: len(disco.instances(service)[1]) == 1, 10, what="passing again")

        # no heartbeat for the TTL: critical, out of the passing set, still listed otherwise
        def critical():
            _, all_found = disco.instances(service, passing_only=False)
            return all_found and all_found[0].health == Health.CRITICAL

        wait_until(critical, 15, what="TTL expiry")
        assert disco.instances(service)[1] == []
    finally:
        reg.deregister()
    wait_until(lambda: disco.instances(service, passing_only=False)[1] == [], 10, what="deregistered")


# ---- a whole mesh on the real agent -------------------------------------------------------


def _metric(node, name: str, labels: str) -> float:  # noqa: ANN001
    import re
    import urllib.request

    text = urllib.request.urlopen(
        f"http://127.0.0.1:{node.ready['metrics_port']}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_mesh_registers_passes_and_a_killed_ai_node_goes_critical_and_is_redispatched(cluster, disco):  # noqa: ANN001
    """Helper + 2 AI node processes configured only by CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN."""
    import asyncio

    from mesh import Client, make_task, wire

    suffix = uuid.uuid4().hex[:8]
    ai_service, helper_service = f"mesh-ai-{suffix}", f"mesh-helper-{suffix}"
    names = ("--service-name", helper_service, "--ai-service", ai_service)
    ttl = ("--discovery-ttl", "2")
    # an empty --discovery falls through to $MESH_DISCOVERY (blanked) and then CONSUL_HTTP_*
    cluster.discovery = ""
    cluster.env["MESH_DISCOVERY"] = ""
    helper = cluster.start_helper(*names, *ttl, "--node-dead-after", "60")
    ai_names = ("--service-name", ai_service, "--helper-service", helper_service)
    victim, survivor = (cluster.start_ai(*ai_names, *ttl) for _ in range(2))
    victim_id = f"{victim.ready['node_id']}-{victim.ready['incarnation']}"

    def health() -> dict[str, Health]:
        return {i.instance_id: i.health for i in disco.instances(ai_service, passing_only=False)[1]}

    try:
        wait_until(lambda: set(health().values()) == {Health.PASSING} and len(health()) == 2, 15,
                   what="both AI nodes passing")
        _, [h] = disco.instances(helper_service)
        assert h.meta["ep_intake"] == helper.ready["intake"] and h.health == Health.PASSING
        _, found = disco.instances(ai_service)
        assert {i.meta["ep_task"] for i in found} == {victim.ready["tasks"], survivor.ready["tasks"]}
        assert all("kind=simulate" in i.tags and i.meta["version"] for i in found)

        async def scenario() -> None:
            async with Client(helper.ready["intake"]) as client:
                async def two_nodes() -> bool:
                    return (await client.stats())["nodes"] >= 2
                deadline = time.monotonic() + 20
                while not await two_nodes():
                    assert time.monotonic() < deadline, "the Helper did not see both AI nodes"
                    await asyncio.sleep(0.05)
                ids = await client.submit_many(
                    [make_task("simulate", b'{"ms": 50}') for _ in range(400)])

                deadline = time.monotonic() + 10
                while not any(s.node_id == victim.ready["node_id"] and s.state == wire.RUNNING
                              for s in await client.statuses(ids[:100])):
                    assert time.monotonic() < deadline, "the victim never ran a task"
                    await asyncio.sleep(0.02)
                victim.kill()
                await asyncio.to_thread(wait_until, lambda: health().get(victim_id) == Health.CRITICAL,
                                        20, 0.1, "the victim's TTL check critical")
                statuses = await asyncio.gather(*(client.wait(t, timeout=60) for t in ids))
                assert all(s.state == wire.SUCCEEDED for s in statuses)

        asyncio.run(scenario())
        assert _metric(helper, "mesh_node_deaths_total", 'cause="discovery"') == 1
        effects = cluster.applied_effects()
        assert len(effects) == 400 and max(effects.values()) == 1
    finally:
        # the dead run would stay critical until DeregisterCriticalServiceAfter (1 min + reaping)
        try:
            disco.client().agent.service.deregister(victim_id)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass
    cluster.close()
    wait_until(lambda: disco.instances(ai_service, passing_only=False)[1] == [], 15,
               what="the stopped nodes deregistered")
